//! `vigil prune`: retention. Removes whole files from the old end of each partition log whose
//! topic has `retention.max_age_days`, after signing where the log now starts, so that `vigil
//! verify` accepts the missing prefix and still calls any other missing data tampering.

use std::path::PathBuf;
use std::process::ExitCode;

use vigil_store::{Store, WriteOptions};

use crate::config::Config;

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Store directory (overrides `store.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn run(cfg: &Config, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = cfg.clone();
    let bucket = crate::services::bucket::open(&mut cfg)?;
    let dir = args.data_dir.unwrap_or_else(|| cfg.store.data_dir.clone());
    anyhow::ensure!(dir.is_dir(), "no store at {}", dir.display());
    if cfg.retention.max_age_days.is_empty() {
        eprintln!("vigil: no topic has retention.max_age_days: nothing to prune");
        return Ok(ExitCode::SUCCESS);
    }
    cfg.store.data_dir = dir.clone();
    let signer = crate::services::pipeline::checkpointer(&cfg, bucket.as_ref())?;
    let mut store = Store::open(&dir, WriteOptions::default())?;
    if let Some(b) = bucket {
        store = store.with_bucket(b);
    }
    for (log, r) in crate::services::retention::prune_all(&cfg, &store, &signer)? {
        println!(
            "{log}: {} files removed, the log starts at leaf {}",
            r.files_removed, r.starts_at
        );
    }
    Ok(ExitCode::SUCCESS)
}
