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
        if let Err(e) = take_over(&cfg) {
            if !vigil_store::is_retryable(&e) {
                return Err(e);
            }
            // The bucket (or the volume) cannot be read or written now: stand by and take
            // the lease again (it is this instance's) once it can.
            tracing::warn!(error = %e, "detection could not take over yet: trying again");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
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

/// How often an instance standing by copies the holder's alert log from the bucket.
const ALERTS_MIRROR_EVERY: Duration = Duration::from_secs(2);

/// Lifecycle changes relayed to the holder at once, at most.
const RELAYS: usize = 4;
/// How long a relayed change waits to be claimed by the holder (and again to be answered).
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// Wait for the lease, dropping pieces meanwhile and relaying lifecycle changes to the
/// holder ([`super::remote`]). False: the pieces' senders are gone.
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
    let mut mirrored: Option<Instant> = None;
    // The changes being relayed now: a claimed change stays listed until it is answered.
    let relaying: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    loop {
        // Changes sent here go to the holder through the bucket, each relayed on a thread of
        // its own (at most RELAYS at once: pieces keep being drained meanwhile).
        for (name, cmd) in queue.claim() {
            let refuse = |refusal| crate::lifecycle::Reply::Refused { refusal };
            let mut in_flight = relaying.lock().unwrap_or_else(|p| p.into_inner());
            if in_flight.contains(&name) {
                continue;
            }
            let (cmd, bucket) = match (cmd, cfg.bucket.clone()) {
                (Ok(cmd), Some(b)) if in_flight.len() < RELAYS => (cmd, b),
                (Err(refusal), _) => {
                    queue.reply(&name, &refuse(refusal))?;
                    continue;
                }
                _ => {
                    queue.reply(&name, &refuse(crate::lifecycle::Refusal::Elsewhere))?;
                    continue;
                }
            };
            in_flight.insert(name.clone());
            drop(in_flight);
            let (answers, relaying) = (
                crate::lifecycle::Queue::new(&cfg.data_dir),
                relaying.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("vigil-relay".into())
                .spawn(move || {
                    let reply = super::remote::relay(&bucket, &cmd, RELAY_TIMEOUT);
                    if let Err(e) = answers.reply(&name, &reply) {
                        tracing::warn!(error = %e, "a relayed lifecycle change's answer could not be passed on");
                    }
                    relaying.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
                });
            if let Err(e) = spawned {
                return Err(DetectError::Io(e.to_string()));
            }
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
        // The holder's alert log, copied here as the bucket has it, so that this instance's
        // API and `vigil alerts` show what the holder raised (this thread alone writes the
        // local alert log, and not while it stands by).
        if let Some(b) = &cfg.bucket
            && mirrored.is_none_or(|t: Instant| t.elapsed() >= ALERTS_MIRROR_EVERY)
        {
            mirrored = Some(Instant::now());
            if let Err(e) = b.pull_alerts(&cfg.data_dir) {
                tracing::debug!(error = %e, "the alert log could not be copied from the bucket now");
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
