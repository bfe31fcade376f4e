//! Retention (`retention.max_age_days`): every log of a topic that has one pruned — by `vigil
//! prune`, and by `vigil serve` at start and every `retention.prune_interval_ms`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use vigil_store::checkpoint::Checkpointer;
use vigil_store::prune::{PruneReport, prune};
use vigil_store::{LogId, Store};

use crate::config::Config;

/// Prune every log of every topic with a retention; what each prune did.
pub fn prune_all(
    cfg: &Config,
    store: &Store,
    signer: &Checkpointer,
) -> anyhow::Result<Vec<(LogId, PruneReport)>> {
    let now_ms = vigil_store::clock::now_ms();
    let mut out = Vec::new();
    for log in store.partitions()? {
        let Some(days) = cfg.retention.max_age_days.get(&log.topic) else {
            continue;
        };
        // With several instances on one bucket, each prunes the logs it writes.
        if !store.writes_log(&log)? {
            continue;
        }
        let max_age_ms = i64::from(*days) * 86_400_000;
        let r = prune(store, signer, &log.topic, log.partition, max_age_ms, now_ms)
            .with_context(|| format!("pruning {log}"))?;
        out.push((log, r));
    }
    Ok(out)
}

/// `serve`'s retention thread (none without a retention): prunes at start and every
/// `retention.prune_interval_ms` until `stop`; a failed prune is logged and tried again then.
pub fn start(
    cfg: &Config,
    store: Store,
    signer: Arc<Checkpointer>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    if cfg.retention.max_age_days.is_empty() {
        return Ok(None);
    }
    let cfg = cfg.clone();
    let every = Duration::from_millis(cfg.retention.prune_interval_ms.max(1000));
    let handle = std::thread::Builder::new()
        .name("vigil-retention".into())
        .spawn(move || {
            let mut last: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                if last.is_none_or(|t| t.elapsed() >= every) {
                    last = Some(Instant::now());
                    match prune_all(&cfg, &store, &signer) {
                        Ok(done) => {
                            for (log, r) in done.iter().filter(|(_, r)| r.files_removed > 0) {
                                tracing::info!(log = %log, files_removed = r.files_removed,
                                    starts_at = r.starts_at, "retention: log pruned (signed)");
                            }
                        }
                        Err(e) => tracing::error!(
                            error = format!("{e:#}"),
                            "retention: pruning failed (tried again at the next interval)"
                        ),
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })?;
    Ok(Some(handle))
}
