//! `vigil compact`: rewrite runs of small files of every partition log into larger ones — the
//! same rows and hashes, so the chain, the trees and every signed checkpoint still verify.
//! Run while `vigil serve` is stopped. With a bucket (`--store s3://…`), on an instance's
//! own data directory: the logs that instance writes are compacted there and in the bucket
//! (each log's head moved over its new files); a log another instance writes is left to it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vigil_store::compact::compact;
use vigil_store::{Store, WriteOptions};

use crate::config::Config;

#[derive(clap::Args)]
pub struct CompactArgs {
    /// Store directory (overrides `store.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Most records per compacted file.
    #[arg(long, default_value_t = 1_000_000)]
    target_records: u64,
    /// zstd level of the compacted files (default: `store.zstd_level`).
    #[arg(long)]
    zstd_level: Option<i32>,
    /// Most rows per Parquet row group (default: one row group per file).
    #[arg(long)]
    row_group_rows: Option<usize>,
}

pub fn run(cfg: &Config, args: CompactArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = cfg.clone();
    let bucket = crate::services::bucket::open(&mut cfg)?;
    let dir = args.data_dir.unwrap_or_else(|| cfg.store.data_dir.clone());
    anyhow::ensure!(dir.is_dir(), "no store at {}", dir.display());
    if let Some(b) = &bucket {
        // A writer's working copy, brought up to the bucket first (as `serve` does).
        use crate::services::bucket::{CopyFor, copy};
        copy(b, &dir, CopyFor::Writer)?;
    }
    let mut store = Store::open(
        &dir,
        WriteOptions {
            zstd_level: args.zstd_level.unwrap_or(cfg.store.zstd_level),
            max_row_group_rows: args.row_group_rows,
        },
    )?;
    if let Some(b) = bucket {
        store = store.with_bucket(b);
    }
    for vigil_store::LogId { topic, partition } in store.partitions()? {
        let r = match compact(&store, &topic, partition, args.target_records.max(1)) {
            // Another instance writes it: compacted there (with its serve stopped), not here.
            Err(e @ vigil_store::StoreError::Fenced { .. }) => {
                println!("{topic}/{partition}: not compacted: {e}");
                continue;
            }
            r => r.with_context(|| format!("compacting {topic}/{partition}"))?,
        };
        println!(
            "{topic}/{partition}: {} records, {} files → {}",
            r.records, r.files_before, r.files_after
        );
    }
    Ok(ExitCode::SUCCESS)
}
