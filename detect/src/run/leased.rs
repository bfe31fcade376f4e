//! Detection on one of several instances sharing a bucket: stand by until this instance
//! holds the detection lease, take over from the state and the alert log the last holder
//! saved in the bucket, run as on one machine, and stand by again if the lease is lost.
//!
//! Standing by, the pieces this instance's pipeline chains are dropped: the holder evaluates
//! those rows from the store (this instance's files, which it follows from the bucket), and a
//! holder that takes over reads from the store whatever its saved state has not evaluated.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use vigil_store::{Lease, Piece};

use super::{DetectError, DetectMetrics, LeaseConfig, Reload, RunConfig, restore};
use crate::rules::Rule;

/// The lease while this instance holds it: renewed by the detection loop.
pub(crate) struct Held {
    lease: Arc<Mutex<Lease>>,
    next: Mutex<Instant>,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renew when due (a third of the lease's time); a bucket that does not answer is said
    /// and tried again (what the lease guards waits for it: [`Held::ensure`]).
    pub(crate) fn renew_if_due(&self) -> Result<(), DetectError> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if Instant::now() < *next {
            return Ok(());
        }
        let mut lease = self.lock();
        *next = Instant::now() + lease.tick_every();
        match lease.tick() {
            Ok(true) => Ok(()),
            Ok(false) => Err(DetectError::LeaseLost),
            Err(e) if vigil_store::is_bucket_unavailable(&e) => {
                tracing::warn!(error = %e, "the detection lease could not be renewed now");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Still this instance's, checked against the bucket when the last renewal is old.
    pub(crate) fn ensure(&self) -> Result<(), DetectError> {
        match self.lock().ensure() {
            Ok(true) => Ok(()),
            Ok(false) => Err(DetectError::LeaseLost),
            Err(e) => Err(e.into()),
        }
    }
}

/// The detection thread with a lease: until `pieces` is closed (the process stops).
pub(super) fn run(
    cfg: RunConfig,
    lc: LeaseConfig,
    lease: Lease,
    rules: Vec<Rule>,
    pieces: Receiver<Piece>,
    reloads: Receiver<Reload>,
    metrics: Arc<DetectMetrics>,
) -> Result<(), DetectError> {
    let lease = Arc::new(Mutex::new(lease));
    let mut rules = Some(rules);
    loop {
        if !stand_by(&cfg, &lease, &pieces, &metrics)? {
            return Ok(()); // Stopping while standing by.
        }
        take_over(&cfg)?;
        let rules = rules.take().unwrap_or_else(|| (lc.rules)());
        let (engine, restored, stored) = restore(&cfg, rules)?;
        let held = Held {
            lease: lease.clone(),
            next: Mutex::new(Instant::now()),
        };
        let r = super::run(
            cfg.clone(),
            engine,
            restored,
            &stored,
            pieces.clone(),
            reloads.clone(),
            metrics.clone(),
            Some(held),
        );
        match r {
            // Fenced off Vigil's own log: another instance (or `vigil alerts` elsewhere) took
            // it, which only a holder of the lease does.
            Err(DetectError::LeaseLost)
            | Err(DetectError::Store(vigil_store::StoreError::Fenced { .. })) => {
                tracing::warn!(
                    "detection lease lost (another instance runs detection now): standing by"
                );
                metrics
                    .live
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            r => {
                // A clean stop hands detection on at once.
                let mut l = lease.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = l.release() {
                    tracing::warn!(error = %e, "the detection lease could not be released (it expires)");
                }
                return r;
            }
        }
    }
}

/// Wait for the lease, dropping pieces meanwhile and refusing lifecycle commands (they go to
/// the holder). False: the pieces' senders are gone.
fn stand_by(
    cfg: &RunConfig,
    lease: &Arc<Mutex<Lease>>,
    pieces: &Receiver<Piece>,
    metrics: &DetectMetrics,
) -> Result<bool, DetectError> {
    use std::sync::atomic::Ordering;
    let queue = crate::lifecycle::Queue::new(&cfg.data_dir);
    let mut next = Instant::now();
    let mut said = false;
    loop {
        for (name, _) in queue.claim() {
            let refused = crate::lifecycle::Reply::Refused {
                refusal: crate::lifecycle::Refusal::Elsewhere,
            };
            queue.reply(&name, &refused)?;
        }
        if Instant::now() >= next {
            let mut l = lease.lock().unwrap_or_else(|p| p.into_inner());
            next = Instant::now() + l.tick_every();
            match l.tick() {
                Ok(true) => {
                    metrics.standby.store(false, Ordering::Relaxed);
                    return Ok(true);
                }
                Ok(false) => {
                    if !said {
                        tracing::info!(
                            "detection stands by: another instance holds the detection lease"
                        );
                        said = true;
                    }
                    metrics.standby.store(true, Ordering::Relaxed);
                }
                Err(e) if vigil_store::is_bucket_unavailable(&e) => {
                    tracing::warn!(error = %e, "the detection lease could not be read now");
                }
                Err(e) => return Err(e.into()),
            }
        }
        match pieces.recv_timeout(Duration::from_millis(100)) {
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(false),
        }
    }
}

/// Before running: the detection state, the alert log and the delivery outbox as the last
/// holder left them in the bucket (the local copy of the state is replaced; without one in
/// the bucket, a local state stays — a store that had one instance).
fn take_over(cfg: &RunConfig) -> Result<(), DetectError> {
    let Some(bucket) = &cfg.bucket else {
        return Ok(());
    };
    bucket.pull_alerts(&cfg.data_dir)?;
    if cfg.outbox.is_some() {
        bucket.pull_outbox(&cfg.data_dir)?;
    }
    let state = super::state_path(&cfg.data_dir);
    if bucket.fetch_file(&cfg.data_dir, &state)? {
        tracing::info!("detection taken over from the state saved in the bucket");
    }
    Ok(())
}
