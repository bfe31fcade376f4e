//! The detection thread of `vigil serve`: catch up from the store, then evaluate pieces as
//! the pipeline chains them; store alerts durably, then report them; record every alert
//! revision and lifecycle change in Vigil's own chained log; apply queued lifecycle commands;
//! replace the rules when asked ([`Reloader`]); checkpoint state. [`apply_direct`] applies one
//! command when no `serve` holds the lock.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use vigil_store::{LogSigner, Piece, Store};

use crate::alerts::{Alert, latest, read_revisions};
use crate::engine::{Engine, EngineError, RuleStats};
use crate::lifecycle::{Command, Reply};
use crate::rules::Rule;
use vigil_store::clock::now_ns;

mod leased;
mod reload;
mod remote;
mod thread;

pub use reload::{Reload, ReloadError, Reloaded, Reloader};
use thread::{EVICTION_ALERT_EVERY_NS, ThreadState};

/// Settings of the detection thread.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub data_dir: PathBuf,
    /// The bucket the store is kept in (`store.url`): Vigil's own log and the alert log are
    /// put there too.
    pub bucket: Option<Arc<vigil_store::Bucket>>,
    /// Updates of open alerts are written at most this often (new alerts at once).
    pub alert_flush_ms: u64,
    /// State checkpoint (and expiry) interval.
    pub state_interval_ms: u64,
    /// Where alerts are queued for delivery, if anywhere.
    pub outbox: Option<crate::deliver::Outbox>,
    /// Signs (and anchors) Vigil's own log after each append (unsigned without).
    pub signer: Option<LogSigner>,
    /// How event time is judged across logs.
    pub time: crate::time::TimeConfig,
    /// Alerts about one subject within this of each other share an incident.
    pub incident_window_ns: i64,
    /// Every rule's groups together within this many bytes (`detect.max_state_bytes`).
    pub max_state_bytes: usize,
    /// A partition log silent this long (wall clock) while the topic's other partitions send
    /// is an alert (`vigil.telemetry.source_silent`); 0: never.
    pub silent_source_ns: i64,
    /// The partition logs (`topic/partition`) this process's ingest has been assigned: each
    /// holds the watermark from its assignment, so that a partition fetched later than the
    /// others is not overtaken before its first records arrive; and one whose records ingest
    /// has consumed but not yet made durable holds it however long the store takes (it is
    /// not idle: its records are on their way).
    pub assigned: Option<Assigned>,
    /// With several instances on one bucket: detection runs where the bucket's lease is.
    pub lease: Option<LeaseConfig>,
}

/// Detection on one of several instances sharing a bucket: the instance holding the lease
/// `leases/detect.json` runs it; the others stand by, and one takes over (from the state and
/// alert log last saved in the bucket) when the holder stops renewing.
#[derive(Clone)]
pub struct LeaseConfig {
    /// This instance's name ([`vigil_store::Store::instance_id`]).
    pub me: String,
    /// The lease's time: a holder silent this long is taken over from.
    pub ttl_ms: u64,
    /// The rules, loaded again when this instance takes detection over a second time.
    pub rules: Arc<dyn Fn() -> Vec<Rule> + Send + Sync>,
}

impl LeaseConfig {
    /// The detection lease in `bucket`, as this instance holds it or waits for it.
    fn lease(&self, bucket: &Arc<vigil_store::Bucket>) -> Result<vigil_store::Lease, DetectError> {
        Ok(vigil_store::Lease::new(
            bucket.clone(),
            "detect",
            &self.me,
            self.ttl_ms,
        )?)
    }
}

impl std::fmt::Debug for LeaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseConfig")
            .field("me", &self.me)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

/// The partition logs ingest has been assigned (`topic/partition`), each with whether it has
/// records consumed but not yet durable.
#[derive(Clone)]
pub struct Assigned(pub Arc<dyn Fn() -> Vec<(String, bool)> + Send + Sync>);

impl std::fmt::Debug for Assigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Assigned")
    }
}

/// Counters `serve` reports.
#[derive(Debug, Default)]
pub struct DetectMetrics {
    pub rows: AtomicU64,
    pub alerts_fired: AtomicU64,
    pub alert_revisions: AtomicU64,
    pub alert_files: AtomicU64,
    /// Events behind the watermark by more than the allowed lateness (evaluated all the same).
    pub late: AtomicU64,
    /// Events dated further ahead of their receive time than the allowed skew.
    pub skewed: AtomicU64,
    /// Events waiting for the watermark now, and those evaluated before it because the buffer
    /// was full.
    pub buffered: AtomicU64,
    pub forced: AtomicU64,
    pub evicted: AtomicU64,
    /// Detection's memory budget: the rules' groups as last weighed, the budget, and the
    /// groups evicted to stay within it.
    pub state_bytes: AtomicU64,
    pub state_max_bytes: AtomicU64,
    pub state_shed: AtomicU64,
    pub state_saves: AtomicU64,
    /// Lifecycle commands applied and refused.
    pub commands_applied: AtomicU64,
    pub commands_refused: AtomicU64,
    /// Set once catch-up from the store is done and live pieces are being evaluated.
    pub live: AtomicBool,
    /// Standing by: another instance holds the detection lease.
    pub standby: AtomicBool,
    pub stats: std::sync::Mutex<Vec<RuleStats>>,
    /// Event time per log (watermark, skewed and late counts).
    pub time: std::sync::Mutex<crate::engine::TimeStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Alerts(#[from] crate::alerts::AlertError),
    #[error("{0}")]
    Store(#[from] vigil_store::StoreError),
    #[error(
        "detection state {0} is locked by another process: one `vigil serve` per data directory runs detection"
    )]
    Locked(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Deliver(#[from] crate::deliver::DeliverError),
    #[error("{0}")]
    Queue(#[from] crate::lifecycle::QueueError),
    #[error("the detection lease was lost: another instance runs detection now")]
    LeaseLost,
}

/// Where the engine's state lives in a data directory.
pub fn state_path(data_dir: &std::path::Path) -> PathBuf {
    vigil_store::layout::detect_state(data_dir)
}

/// Lock the data directory's detection state and start the thread. It runs until `pieces`
/// is closed (every sender dropped), then writes its alerts and state and returns. The
/// [`Reloader`] replaces its rules while it runs.
pub fn start(
    cfg: RunConfig,
    rules: Vec<Rule>,
    pieces: Receiver<Piece>,
    metrics: Arc<DetectMetrics>,
) -> Result<(JoinHandle<Result<(), DetectError>>, Reloader), DetectError> {
    let lock = lock(&cfg)?;
    // Bounded: one reload at a time is plenty; a second waits for room or times out.
    let (tx, rx) = crossbeam_channel::bounded(1);
    if let (Some(bucket), Some(lc)) = (cfg.bucket.clone(), cfg.lease.clone()) {
        let lease = lc.lease(&bucket)?;
        let handle = std::thread::Builder::new()
            .name("vigil-detect".into())
            .spawn(move || {
                let _lock = lock;
                leased::run(cfg, lc, lease, rules, pieces, rx, metrics)
            })
            .map_err(|e| DetectError::Io(e.to_string()))?;
        return Ok((handle, Reloader(tx)));
    }
    let (engine, restored, stored) = restore(&cfg, rules)?;
    let handle = std::thread::Builder::new()
        .name("vigil-detect".into())
        .spawn(move || {
            let _lock = lock;
            run(cfg, engine, restored, &stored, pieces, rx, metrics, None)
        })
        .map_err(|e| DetectError::Io(e.to_string()))?;
    Ok((handle, Reloader(tx)))
}

/// Apply one lifecycle command now, in this process, if no other holds the detection lock
/// (`Err(Locked)` otherwise: queue it for the holder instead, [`crate::lifecycle::Queue`]). The change builds on
/// the alert's newest stored revision; the detection state is not touched (the next `serve`
/// takes the change from the alert log when it restores its state).
pub fn apply_direct(cfg: RunConfig, cmd: &Command) -> Result<Reply, DetectError> {
    let _lock = lock(&cfg)?;
    // With a bucket, only while no instance runs detection: the lease taken for the change.
    let mut lease = match (&cfg.bucket, &cfg.lease) {
        (Some(b), Some(lc)) => {
            let mut lease = lc.lease(b)?;
            if !lease.tick()? {
                return Ok(Reply::Refused {
                    refusal: crate::lifecycle::Refusal::Elsewhere,
                });
            }
            Some(lease)
        }
        _ => None,
    };
    let r = apply_held(cfg, cmd);
    if let Some(l) = &mut lease
        && let Err(e) = l.release()
    {
        tracing::warn!(error = %e, "the detection lease could not be released (it expires)");
    }
    r
}

fn apply_held(cfg: RunConfig, cmd: &Command) -> Result<Reply, DetectError> {
    let (mut engine, _, _) = restore(&cfg, Vec::new())?;
    let mut l = ThreadState::new(cfg, Arc::default())?;
    l.apply(&mut engine, cmd)
}

/// Whether a process holds the data directory's detection lock now (it may change at once:
/// callers fall back on [`DetectError::Locked`] anyway).
pub fn lock_held(data_dir: &std::path::Path) -> bool {
    let path = vigil_store::layout::detect_lock(data_dir);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .is_ok_and(|f| f.try_lock().is_err())
}

/// Take the data directory's detection lock (held while the file stays open).
fn lock(cfg: &RunConfig) -> Result<File, DetectError> {
    let dir = vigil_store::layout::detect(&cfg.data_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| DetectError::Io(format!("{}: {e}", dir.display())))?;
    let lock_path = vigil_store::layout::detect_lock(&cfg.data_dir);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| DetectError::Io(format!("{}: {e}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(DetectError::Locked(lock_path.display().to_string()));
    }
    Ok(lock)
}

/// The engine with its saved state and the stored alerts it must know; whether a state was
/// found; the stored alert revisions.
fn restore(cfg: &RunConfig, rules: Vec<Rule>) -> Result<(Engine, bool, Vec<Alert>), DetectError> {
    let (engine, restored, _, stored) = restore_fresh(cfg, rules)?;
    Ok((engine, restored, stored))
}

/// [`restore`], and the rules that found no saved state (new or changed).
fn restore_fresh(
    cfg: &RunConfig,
    rules: Vec<Rule>,
) -> Result<(Engine, bool, Vec<String>, Vec<Alert>), DetectError> {
    let mut engine = Engine::new(rules)
        .with_time(cfg.time)
        .with_incident_window(cfg.incident_window_ns)
        .with_state_budget(cfg.max_state_bytes);
    let state = state_path(&cfg.data_dir);
    let restored = state.exists() && !engine.rules().is_empty();
    let fresh = if restored {
        let fresh = engine.restore(&state)?;
        if !fresh.is_empty() {
            tracing::info!(rules = ?fresh, "rules new or changed since the last state: they start empty");
        }
        fresh
    } else {
        engine.rules().iter().map(|r| r.meta.id.clone()).collect()
    };
    let stored = read_revisions(&cfg.data_dir)?;
    engine.know_stored(&latest(stored.clone()));
    Ok((engine, restored, fresh, stored))
}

#[allow(clippy::too_many_arguments)]
fn run(
    cfg: RunConfig,
    mut engine: Engine,
    restored: bool,
    stored: &[Alert],
    pieces: Receiver<Piece>,
    reloads: Receiver<Reload>,
    metrics: Arc<DetectMetrics>,
    lease: Option<leased::Held>,
) -> Result<(), DetectError> {
    let mut l = ThreadState::new(cfg, metrics)?;
    l.reloads = Some(reloads);
    l.lease = lease;
    let store = Store::open_existing(&l.cfg.data_dir).ok();
    if let Some(store) = &store {
        l.record_missing(&mut engine, store, stored)?;
    }
    // Catch up: stored events the state has not evaluated (all of them without a state: the
    // state is rebuilt from the stored history).
    if let Some(store) = &store {
        let started = Instant::now();
        crate::replay::replay(&mut engine, store, |e, p| l.observe(e, &p, true))?;
        tracing::info!(
            rows = engine.rows,
            skipped = engine.skipped_rows,
            restored,
            secs = started.elapsed().as_secs_f64(),
            "detection caught up with the store"
        );
    }
    l.save(&mut engine)?;
    // Evictions so far (the restored state's, the catch-up's) are not news.
    let stats = engine
        .stats()
        .into_iter()
        .map(|s| (s.id, s.evicted, s.groups));
    l.evicted.check(stats, now_ns(), EVICTION_ALERT_EVERY_NS);
    l.metrics.live.store(true, Ordering::Relaxed);
    let flush_every = Duration::from_millis(l.cfg.alert_flush_ms.max(1));
    let state_every = Duration::from_millis(l.cfg.state_interval_ms.max(1));
    let tail_every = Duration::from_secs(1);
    let mut last_tail = Instant::now();
    let mut last_assigned: Option<Instant> = None;
    let mut caught_up_ns = now_ns();
    loop {
        let got = pieces.recv_timeout(flush_every);
        // Pieces still queued behind this one: detection is behind (busy since it was last
        // caught up), and no log is idle for that.
        let at = now_ns();
        let backlog = !pieces.is_empty();
        engine.set_backlog(backlog, caught_up_ns, at);
        if !backlog {
            caught_up_ns = at;
        }
        // Assigned partitions hold the watermark before their first records arrive.
        if let Some(a) = &l.cfg.assigned
            && last_assigned.is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
        {
            last_assigned = Some(Instant::now());
            engine.hold_logs(&(a.0)(), now_ns());
        }
        l.renew_lease()?;
        match got {
            Ok(p) => l.live(&mut engine, &p)?,
            Err(RecvTimeoutError::Timeout) => l.tick(&mut engine)?,
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_tail.elapsed() >= tail_every {
            last_tail = Instant::now();
            // The store appears with the first file of a fresh data directory.
            let store = match &store {
                Some(s) => Some(s.clone()),
                None => Store::open_existing(&l.cfg.data_dir).ok(),
            };
            if let Some(store) = store {
                l.tail(&mut engine, &store)?;
            }
            l.silent(&mut engine)?;
            l.evictions(&mut engine)?;
        }
        if let Some(outbox) = l.cfg.outbox.clone() {
            l.undeliverable(&mut engine, &outbox)?;
        }
        l.commands(&mut engine)?;
        l.reloads(&mut engine)?;
        if l.last_flush.elapsed() >= flush_every {
            l.flush(&mut engine)?;
        }
        if l.last_state.elapsed() >= state_every {
            l.save(&mut engine)?;
        }
    }
    l.save(&mut engine)?;
    tracing::info!(rows = engine.rows, "detection stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
