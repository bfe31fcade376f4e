//! `vigil compact`: rewrite runs of small files of every partition log into larger ones — the
//! same rows and hashes, so the chain, the trees and every signed checkpoint still verify.
//! Run while `vigil serve` is stopped.

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
    anyhow::ensure!(
        crate::services::bucket::resolve(&mut cfg)?.is_none(),
        "compaction of a store kept in a bucket (store.url = {}) is not supported yet",
        cfg.store.url
    );
    let dir = args.data_dir.unwrap_or_else(|| cfg.store.data_dir.clone());
    anyhow::ensure!(dir.is_dir(), "no store at {}", dir.display());
    let store = Store::open(
        &dir,
        WriteOptions {
            zstd_level: args.zstd_level.unwrap_or(cfg.store.zstd_level),
            max_row_group_rows: args.row_group_rows,
        },
    )?;
    for vigil_store::LogId { topic, partition } in store.partitions()? {
        let r = compact(&store, &topic, partition, args.target_records.max(1))
            .with_context(|| format!("compacting {topic}/{partition}"))?;
        println!(
            "{topic}/{partition}: {} records, {} files → {}",
            r.records, r.files_before, r.files_after
        );
    }
    Ok(ExitCode::SUCCESS)
}
