//! The detection thread of `vigil serve`: catch up from the store, then evaluate pieces as
//! the pipeline chains them; store alerts durably, then report them; record every alert
//! revision and lifecycle change in Vigil's own chained log; apply queued lifecycle commands;
//! replace the rules when asked ([`Reloader`]); checkpoint state. [`apply_direct`] applies one
//! command when no `serve` holds the lock.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use vigil_store::{AUDIT_PARTITION, AUDIT_TOPIC, LogSigner, OwnLog, Piece, Store, WriteOptions};

use crate::alerts::{Alert, AlertLog, latest, read_revisions};
use crate::engine::{Engine, EngineError, RuleStats};
use crate::lifecycle::{Command, Queue, Reply, audit_event};
use crate::rules::Rule;
use vigil_store::clock::now_ns;

/// Settings of the detection thread.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub data_dir: PathBuf,
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
    let (engine, restored, stored) = restore(&cfg, rules)?;
    // Bounded: one reload at a time is plenty; a second waits for room or times out.
    let (tx, rx) = crossbeam_channel::bounded(1);
    let handle = std::thread::Builder::new()
        .name("vigil-detect".into())
        .spawn(move || {
            let _lock = lock;
            run(cfg, engine, restored, &stored, pieces, rx, metrics)
        })
        .map_err(|e| DetectError::Io(e.to_string()))?;
    Ok((handle, Reloader(tx)))
}

/// A request to replace the running rules.
#[derive(Debug)]
pub struct Reload {
    pub rules: Vec<Rule>,
    /// Who asked (recorded in Vigil's own log).
    pub by: String,
    pub reply: crossbeam_channel::Sender<Result<Reloaded, String>>,
}

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Reloaded {
    /// The rules running now (ids).
    pub rules: Vec<String>,
    /// Rules new or changed (another version): they start with an empty state.
    pub fresh: Vec<String>,
    /// Rules no longer running (their open alerts stay as stored; nothing updates them).
    pub removed: Vec<String>,
}

/// Replaces the rules of a running detection thread: its state is saved first (every pending
/// alert stored), then the new rules take it back as a restart would — a rule of the same id
/// and version keeps its groups and open alerts, a new or changed one starts empty — with no
/// event missed or evaluated twice. The change is recorded in Vigil's own log.
#[derive(Clone, Debug)]
pub struct Reloader(crossbeam_channel::Sender<Reload>);

impl Reloader {
    /// Ask for the reload and wait up to `wait` for it to be done.
    pub fn reload(&self, rules: Vec<Rule>, by: &str, wait: Duration) -> Result<Reloaded, String> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let req = Reload {
            rules,
            by: by.to_owned(),
            reply,
        };
        self.0
            .send_timeout(req, wait)
            .map_err(|_| "detection is busy or stopped: try again".to_owned())?;
        answer.recv_timeout(wait).map_err(|_| {
            "detection did not answer in time: the reload may still happen".to_owned()
        })?
    }
}

/// Apply one lifecycle command now, in this process, if no other holds the detection lock
/// (`Err(Locked)` otherwise: queue it for the holder instead, [`Queue`]). The change builds on
/// the alert's newest stored revision; the detection state is not touched (the next `serve`
/// takes the change from the alert log when it restores its state).
pub fn apply_direct(cfg: RunConfig, cmd: &Command) -> Result<Reply, DetectError> {
    let _lock = lock(&cfg)?;
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

/// Everything the thread keeps besides the engine.
struct ThreadState {
    cfg: RunConfig,
    log: AlertLog,
    metrics: Arc<DetectMetrics>,
    last_flush: Instant,
    last_state: Instant,
    /// When each log last came live from this process's pipeline.
    live: HashMap<String, Instant>,
    /// Per log read from the store: the last offset of the newest file read.
    tailed: HashMap<String, i64>,
    /// Vigil's own log: every alert revision and lifecycle change.
    audit: OwnLog,
    /// Lifecycle commands waiting to be applied, and the revisions they made (id, revision).
    queue: Queue,
    applied: HashMap<(String, i64), Command>,
    last_commands: Instant,
    /// Rule reloads asked for (none in [`apply_direct`]).
    reloads: Option<Receiver<Reload>>,
    /// Rules' evictions, for [`ThreadState::evictions`].
    evicted: crate::system_alerts::Evictions,
    /// When a full volume was last reported.
    volume_full_said: Option<Instant>,
}

/// A rule that keeps evicting groups alerts again after this long.
const EVICTION_ALERT_EVERY_NS: i64 = 3_600_000_000_000;

/// A log not fed live for this long is read from the store instead (its partition belongs to
/// another process of the consumer group, or was just revoked).
const LIVE_GRACE: Duration = Duration::from_secs(10);

impl ThreadState {
    fn new(cfg: RunConfig, metrics: Arc<DetectMetrics>) -> Result<ThreadState, DetectError> {
        let store = Store::open(&cfg.data_dir, WriteOptions::default())?;
        // Records stored but not signed (a crash between file and checkpoint) are signed now;
        // this also hands the log to the checkpointer's refresh.
        let mut audit = OwnLog::open(&store, AUDIT_TOPIC, AUDIT_PARTITION)?;
        if let Some(signer) = &cfg.signer {
            audit = audit.signed(signer.clone())?;
        }
        let l = ThreadState {
            log: AlertLog::open(&cfg.data_dir)?,
            queue: Queue::new(&cfg.data_dir),
            cfg,
            metrics,
            last_flush: Instant::now(),
            last_state: Instant::now(),
            live: HashMap::new(),
            tailed: HashMap::new(),
            audit,
            applied: HashMap::new(),
            last_commands: Instant::now(),
            reloads: None,
            evicted: Default::default(),
            volume_full_said: None,
        };
        Ok(l)
    }

    /// Record the stored revisions Vigil's own log lacks (a crash between the alert log's
    /// append and its own); recorded by detection, in stored order.
    fn record_missing(
        &mut self,
        engine: &mut Engine,
        store: &Store,
        stored: &[Alert],
    ) -> Result<(), DetectError> {
        let recorded = crate::lifecycle::recorded(store)?;
        let now = now_ns();
        let missing: Vec<Vec<u8>> = stored
            .iter()
            .filter(|a| !recorded.contains_key(&(a.alert_id.clone(), a.revision)))
            .map(|a| audit_event(Some(a), None, None, now))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                revisions = missing.len(),
                "alert revisions stored but not in Vigil's own log (a crash between the two): recorded now"
            );
        }
        self.record(engine, &missing)
    }

    /// Append records to Vigil's own log (one durable file), sign it, and evaluate them.
    fn record(&mut self, engine: &mut Engine, values: &[Vec<u8>]) -> Result<(), DetectError> {
        let Some(w) = self.audit.append(values, now_ns() / 1_000_000)? else {
            return Ok(());
        };
        engine.observe_followed(&w.piece, now_ns())?;
        Ok(())
    }

    /// Store revisions durably: queued for delivery (except to `skip_target`), in the alert
    /// log, in Vigil's own log.
    fn store(
        &mut self,
        engine: &mut Engine,
        alerts: &[Alert],
        skip_target: Option<&str>,
    ) -> Result<(), DetectError> {
        // Queued for delivery first: a crash between the two delivers an alert the log lacks
        // (the replay raises it again, same idempotency key), never the reverse.
        if let Some(outbox) = &self.cfg.outbox {
            outbox.enqueue_except(alerts, skip_target)?;
        }
        let now = now_ns();
        self.log.append(alerts, now)?;
        let events: Vec<Vec<u8>> = alerts
            .iter()
            .map(|a| {
                let cmd = self.applied.remove(&(a.alert_id.clone(), a.revision));
                audit_event(Some(a), cmd.as_ref(), None, now)
            })
            .collect();
        self.record(engine, &events)
    }

    /// Store pending alerts (durably), then report them.
    fn flush(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        let alerts = engine.take_pending();
        self.last_flush = Instant::now();
        if alerts.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store(engine, &alerts, None) {
            if !vigil_store::is_volume_full(&e) {
                return Err(e);
            }
            // Kept, and stored with the next flush once there is room (a delivery already
            // queued goes again with the same idempotency key).
            self.volume_full(&e, "alerts kept to be stored once there is room");
            engine.requeue(alerts);
            return Ok(());
        }
        self.metrics.alert_files.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .alert_revisions
            .fetch_add(alerts.len() as u64, Ordering::Relaxed);
        for a in alerts.iter().filter(|a| a.revision == 1) {
            self.metrics.alerts_fired.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "vigil::alert",
                alert_id = %a.alert_id, rule = %a.rule_id, severity = %a.severity,
                group = %serde_json::to_string(&a.group_key).unwrap_or_default(),
                events = a.event_count, title = %a.title,
                "alert fired"
            );
        }
        Ok(())
    }

    /// Apply one lifecycle command: pending revisions are stored first, then the change (a
    /// new revision, stored and recorded with who asked); a refusal is recorded too.
    fn apply(&mut self, engine: &mut Engine, cmd: &Command) -> Result<Reply, DetectError> {
        self.flush(engine)?;
        let stored = crate::alerts::find(&self.cfg.data_dir, &cmd.alert_id)?;
        match engine.apply(cmd, stored.as_ref()) {
            Ok(a) => {
                self.applied
                    .insert((a.alert_id.clone(), a.revision), cmd.clone());
                self.flush(engine)?;
                self.metrics
                    .commands_applied
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "vigil::alert", alert_id = %a.alert_id, status = %a.status,
                    by = %cmd.by, revision = a.revision, "alert lifecycle change");
                Ok(Reply::Applied { alert: Box::new(a) })
            }
            Err(refusal) => {
                let reason = refusal.to_string();
                let ev = audit_event(None, Some(cmd), Some(&reason), now_ns());
                self.record(engine, &[ev])?;
                self.metrics
                    .commands_refused
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Reply::Refused { refusal })
            }
        }
    }

    /// Apply the queued lifecycle commands (looked for every 100 ms).
    fn commands(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        if self.last_commands.elapsed() < Duration::from_millis(100) {
            return Ok(());
        }
        self.last_commands = Instant::now();
        for (name, cmd) in self.queue.claim() {
            let reply = match cmd {
                Ok(cmd) => self.apply(engine, &cmd)?,
                Err(refusal) => Reply::Refused { refusal },
            };
            self.queue.reply(&name, &reply)?;
        }
        Ok(())
    }

    /// Raise an alert for each delivery given up on: stored, then sent to the other targets.
    fn undeliverable(
        &mut self,
        engine: &mut Engine,
        outbox: &crate::deliver::Outbox,
    ) -> Result<(), DetectError> {
        for g in outbox.take_gave_up() {
            let a = crate::deliver::undeliverable_alert(&g, now_ns());
            self.store(engine, std::slice::from_ref(&a), Some(&g.target))?;
            self.metrics.alerts_fired.fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "vigil::alert", alert_id = %a.alert_id, rule = %a.rule_id,
                undelivered = %g.alert.alert_id, delivery_target = %g.target, "alert fired");
        }
        Ok(())
    }

    /// Raise an alert for each partition log gone silent while its topic's other partitions
    /// keep sending.
    fn silent(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        if self.cfg.silent_source_ns <= 0 {
            return Ok(());
        }
        let now = now_ns();
        for (log, seen_ns) in engine.silent_logs(now, self.cfg.silent_source_ns) {
            let a = crate::system_alerts::source_silent(&log, seen_ns, now);
            self.store_system(engine, &a)?;
            self.metrics.alerts_fired.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "vigil::alert", alert_id = %a.alert_id, rule = %a.rule_id,
                log = %log, "alert fired");
        }
        Ok(())
    }

    /// Store one of Vigil's own alerts; on a full volume, kept to be stored with the next
    /// flush.
    fn store_system(&mut self, engine: &mut Engine, a: &Alert) -> Result<(), DetectError> {
        match self.store(engine, std::slice::from_ref(a), None) {
            Err(e) if vigil_store::is_volume_full(&e) => {
                self.volume_full(&e, "alerts kept to be stored once there is room");
                engine.requeue(vec![a.clone()]);
                Ok(())
            }
            r => r,
        }
    }

    /// Say (at most every 10 s) that the data volume is full and what waits for room.
    fn volume_full(&mut self, e: &DetectError, what: &str) {
        if self
            .volume_full_said
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::error!(error = %e, "the data volume is full: {what}");
            self.volume_full_said = Some(Instant::now());
        }
    }

    /// Alert on rules that evicted groups since the last look (at most once per rule per
    /// [`EVICTION_ALERT_EVERY_NS`]).
    fn evictions(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        let stats = engine
            .stats()
            .into_iter()
            .map(|s| (s.id, s.evicted, s.groups));
        let alerts = self.evicted.check(stats, now_ns(), EVICTION_ALERT_EVERY_NS);
        for a in alerts {
            self.store_system(engine, &a)?;
            self.metrics.alerts_fired.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "vigil::alert", alert_id = %a.alert_id, rule = %a.rule_id,
                about = ?a.group_key.get("rule_id"), "alert fired");
        }
        Ok(())
    }

    /// Evaluate the new files of logs this process is not fed live (written by other processes
    /// of the consumer group sharing the data directory).
    fn tail(&mut self, engine: &mut Engine, store: &Store) -> Result<(), DetectError> {
        for id in store.partitions()? {
            if id.topic == AUDIT_TOPIC {
                continue; // written, and evaluated, by this thread
            }
            let log = id.to_string();
            if self
                .live
                .get(&log)
                .is_some_and(|t| t.elapsed() < LIVE_GRACE)
            {
                continue;
            }
            let (files, _) = store.list(&id.topic, id.partition)?;
            let Some(newest) = files.last().map(|f| f.last_offset) else {
                continue;
            };
            if self.tailed.get(&log) == Some(&newest) {
                continue;
            }
            let from = engine.position(&log).unwrap_or(0);
            for piece in vigil_store::read::LogReader::new(store, &id.topic, id.partition, from)? {
                self.observe(engine, &piece?, false)?;
            }
            self.tailed.insert(log, newest);
        }
        Ok(())
    }

    /// A piece from this process's pipeline. Rows stored before it that were never evaluated
    /// (the partition came from another process of the group, whose last files were not read
    /// yet) are read from the store first.
    fn live(&mut self, engine: &mut Engine, p: &Piece) -> Result<(), DetectError> {
        let log = p.log().to_string();
        if let Some(pos) = engine.position(&log)
            && pos < p.first_leaf_index
            && let Ok(store) = Store::open_existing(&self.cfg.data_dir)
        {
            for stored in vigil_store::read::LogReader::new(&store, &p.topic, p.partition, pos)? {
                self.observe(engine, &stored?, true)?;
            }
        }
        self.live.insert(log, Instant::now());
        self.observe(engine, p, true)
    }

    /// `live`: a piece of a log fed live, which holds the watermark; otherwise one read from
    /// the store after the fact, which follows it.
    fn observe(
        &mut self,
        engine: &mut Engine,
        piece: &Piece,
        live: bool,
    ) -> Result<(), DetectError> {
        let before = engine.rows;
        if live {
            engine.observe(piece, now_ns())?;
        } else {
            engine.observe_followed(piece, now_ns())?;
        }
        self.after(engine, before)
    }

    /// Count what the engine evaluated since `before` rows, publish its event-time figures,
    /// and store the alerts it raised (new ones at once).
    fn after(&mut self, engine: &mut Engine, before: u64) -> Result<(), DetectError> {
        self.metrics
            .rows
            .fetch_add(engine.rows - before, Ordering::Relaxed);
        self.publish_time(engine);
        let (any, new) = engine.has_pending();
        let due = self.last_flush.elapsed() >= Duration::from_millis(self.cfg.alert_flush_ms);
        if new || (any && due) {
            self.flush(engine)?;
        }
        Ok(())
    }

    /// Evaluate what the watermark allows now that no piece came for a while.
    fn tick(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        let before = engine.rows;
        engine.tick(now_ns());
        self.after(engine, before)
    }

    fn publish_time(&self, engine: &Engine) {
        let t = engine.time_stats();
        let m = &self.metrics;
        m.late.store(t.late, Ordering::Relaxed);
        m.skewed.store(t.skewed, Ordering::Relaxed);
        m.buffered.store(t.buffered as u64, Ordering::Relaxed);
        m.forced.store(t.forced, Ordering::Relaxed);
        if let Ok(mut slot) = m.time.lock() {
            *slot = t;
        }
    }

    fn publish_stats(&self, engine: &Engine) {
        let b = engine.state_budget();
        let m = &self.metrics;
        m.state_bytes.store(b.bytes as u64, Ordering::Relaxed);
        m.state_max_bytes
            .store(b.max_bytes as u64, Ordering::Relaxed);
        m.state_shed.store(b.shed, Ordering::Relaxed);
        let stats = engine.stats();
        self.publish_time(engine);
        self.metrics
            .evicted
            .store(stats.iter().map(|s| s.evicted).sum(), Ordering::Relaxed);
        if let Ok(mut m) = self.metrics.stats.lock() {
            *m = stats;
        }
    }

    /// Take the reloads asked for, one by one.
    fn reloads(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        while let Some(r) = self.reloads.as_ref().and_then(|rx| rx.try_recv().ok()) {
            match self.reload(engine, r.rules, &r.by) {
                Ok(answer) => {
                    let _ = r.reply.send(answer);
                }
                Err(e) => {
                    let _ = r.reply.send(Err(e.to_string()));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Save the state, then let `rules` take it back (as a restart would), and record it.
    /// `Ok(Err)`: the new rules could not take the state back; the old ones keep running.
    fn reload(
        &mut self,
        engine: &mut Engine,
        rules: Vec<Rule>,
        by: &str,
    ) -> Result<Result<Reloaded, String>, DetectError> {
        self.save(engine)?;
        let (mut next, _, fresh, _) = match restore_fresh(&self.cfg, rules) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "rules not reloaded: the running ones stay");
                return Ok(Err(format!(
                    "the new rules could not take the state back: {e}"
                )));
            }
        };
        next.rows = engine.rows;
        next.skipped_rows = engine.skipped_rows;
        let ids =
            |e: &Engine| -> Vec<String> { e.rules().iter().map(|r| r.meta.id.clone()).collect() };
        let now_running = ids(&next);
        let removed: Vec<String> = ids(engine)
            .into_iter()
            .filter(|id| !now_running.contains(id))
            .collect();
        let done = Reloaded {
            rules: now_running,
            fresh,
            removed,
        };
        *engine = next;
        // The state just saved is the one the new rules started from: only the stats change.
        self.publish_stats(engine);
        tracing::warn!(by, rules = done.rules.len(), fresh = ?done.fresh, removed = ?done.removed,
            "detection rules reloaded");
        let event = reload_event(by, engine, &done, now_ns());
        self.record(engine, &[event])?;
        Ok(Ok(done))
    }

    fn save(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        // Positions are past the events waiting for the watermark: evaluate them first.
        let before = engine.rows;
        engine.drain(now_ns());
        self.metrics
            .rows
            .fetch_add(engine.rows - before, Ordering::Relaxed);
        self.flush(engine)?;
        engine.expire();
        // Weighed (and shed to the budget) before it is written.
        engine.weigh_state();
        self.last_state = Instant::now();
        if let Err(e) = engine.save(&state_path(&self.cfg.data_dir)) {
            let e = DetectError::from(e);
            if !vigil_store::is_volume_full(&e) {
                return Err(e);
            }
            // The last saved state stays (a restart replays from it); saved again next time.
            self.volume_full(&e, "the detection state is saved again once there is room");
            return Ok(());
        }
        self.metrics.state_saves.fetch_add(1, Ordering::Relaxed);
        self.publish_stats(engine);
        Ok(())
    }
}

/// The `admin_audit` event of a reload: who, and the rules (id, version) running after it.
fn reload_event(by: &str, engine: &Engine, done: &Reloaded, now_ns: i64) -> Vec<u8> {
    let rules: Vec<serde_json::Value> = engine
        .rules()
        .iter()
        .map(|r| serde_json::json!({"id": r.meta.id, "version": r.meta.version}))
        .collect();
    let ev = serde_json::json!({
        "schema": vigil_schemas::NATIVE_SCHEMA_V1,
        "id": format!("rules.reload:{now_ns}"),
        "time": crate::lifecycle::time_rfc3339(now_ns),
        "kind": "admin_audit",
        "decision": "allow",
        "caller": {"principal": by},
        "callee": {"service": "vigil"},
        "action": "rules.reload",
        "resource": "rules",
        "reason": format!("{} rules; new or changed: {}; removed: {}", done.rules.len(),
            list_or_none(&done.fresh), list_or_none(&done.removed)),
        "rules": rules,
    });
    serde_json::to_vec(&ev).unwrap_or_default()
}

fn list_or_none(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}

fn run(
    cfg: RunConfig,
    mut engine: Engine,
    restored: bool,
    stored: &[Alert],
    pieces: Receiver<Piece>,
    reloads: Receiver<Reload>,
    metrics: Arc<DetectMetrics>,
) -> Result<(), DetectError> {
    let mut l = ThreadState::new(cfg, metrics)?;
    l.reloads = Some(reloads);
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
mod tests {
    use super::*;
    use vigil_schemas::Decoder;
    use vigil_store::{PartitionBatch, RecordRef, WriteOptions};

    /// Record `i` of log p/0.
    fn rec(i: i64, v: &str) -> RecordRef<'_> {
        RecordRef {
            topic: "p",
            partition: 0,
            offset: i,
            timestamp_ms: None,
            key: None,
            value: Some(v.as_bytes()),
            headers: &[],
        }
    }

    fn cfg(dir: &std::path::Path) -> RunConfig {
        RunConfig {
            data_dir: dir.to_owned(),
            alert_flush_ms: 1000,
            state_interval_ms: 1000,
            outbox: None,
            signer: None,
            // These tests are about the loop, not event time: every log counts as idle at
            // once, so a piece is evaluated whole as it comes.
            time: crate::time::TimeConfig {
                idle_source_ns: -1,
                ..Default::default()
            },
            incident_window_ns: 1_800_000_000_000,
            max_state_bytes: crate::engine::DEFAULT_MAX_STATE_BYTES,
            silent_source_ns: 0,
            assigned: None,
        }
    }

    #[test]
    fn a_taken_over_partition_is_read_from_the_store_up_to_the_first_live_piece() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
        let opa = |i: i64| {
            format!(
                r#"{{"decision_id":"d{i}","result":true,"timestamp":"2026-11-22T10:00:{:02}Z","input":{{"method":"GET","path":"/"}}}}"#,
                i % 60
            )
        };
        // Another process stored records 0..10 of p/0; this one evaluated 0..5 before the
        // partition moved, and resumes at 10.
        let mut b = PartitionBatch::new("p", 0, Default::default(), 16);
        let mut early = None;
        for i in 0..10 {
            let v = opa(i);
            b.append(&rec(i, &v), &Decoder::default(), 0).unwrap();
            if i == 4 {
                early = b.cut().unwrap();
            }
        }
        store.write(&b.seal().unwrap().unwrap()).unwrap();
        let v = opa(10);
        b.append(&rec(10, &v), &Decoder::default(), 0).unwrap();
        let live = b.cut().unwrap().unwrap();
        assert_eq!(live.first_leaf_index, 10);

        let mut engine = Engine::new(Vec::new()).with_time(cfg(dir.path()).time);
        engine.observe(&early.unwrap(), 0).unwrap();
        assert_eq!(engine.position("p/0"), Some(5));
        let mut l = ThreadState::new(cfg(dir.path()), Default::default()).unwrap();
        l.live(&mut engine, &live).unwrap();
        // 5 before, 5 from the store, 1 live: each once.
        assert_eq!(engine.rows, 11);
        assert_eq!(engine.position("p/0"), Some(11));
    }

    fn denial_rule() -> Vec<Rule> {
        rules(1, false)
    }

    /// OPA denial `i` from 9.9.9.9 (second `i` of a minute).
    fn denial(i: i64) -> String {
        format!(
            r#"{{"decision_id":"d{i}","result":false,"timestamp":"2026-11-22T10:00:0{i}Z","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"9.9.9.9","portValue":1}}}}}}}}}}}}"#
        )
    }

    /// `t.denials` at `version` (3 denials from one address in a minute), and `t.other` if
    /// `other`.
    fn rules(version: u32, other: bool) -> Vec<Rule> {
        let mut sources = vec![crate::rules::Source {
            name: "t.toml".into(),
            text: format!(
                r#"
id = "t.denials"
version = {version}
title = "denials"
severity = "high"
kind = "threshold"
filter = 'decision == "deny" and kind == "authz"'
group_by = ["caller_ip"]
count = 3
window = "1m"
suppress = "1h"
"#
            ),
            dir: None,
        }];
        if other {
            sources.push(crate::rules::Source {
                name: "o.toml".into(),
                text: r#"
id = "t.other"
version = 1
title = "errors"
severity = "low"
kind = "threshold"
filter = 'decision == "error"'
group_by = ["caller_ip"]
count = 5
window = "1m"
"#
                .into(),
                dir: None,
            });
        }
        let l = crate::rules::load(&sources, &Default::default());
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        l.rules.into_iter().map(|(r, _)| r).collect()
    }

    #[test]
    fn a_reload_keeps_unchanged_rules_state_starts_new_ones_empty_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PartitionBatch::new("p", 0, Default::default(), 16);
        let mut feed = |l: &mut ThreadState, engine: &mut Engine, range: std::ops::Range<i64>| {
            for i in range {
                let v = denial(i);
                b.append(&rec(i, &v), &Decoder::default(), 0).unwrap();
            }
            l.observe(engine, &b.cut().unwrap().unwrap(), true).unwrap();
            l.flush(engine).unwrap();
        };
        let (mut engine, _, _) = restore(&cfg(dir.path()), rules(1, false)).unwrap();
        let mut l = ThreadState::new(cfg(dir.path()), Default::default()).unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        l.reloads = Some(rx);
        let reloader = Reloader(tx);
        feed(&mut l, &mut engine, 0..2);

        // Asked for from another thread (as the API does), taken by the loop.
        let ask = |rules: Vec<Rule>, l: &mut ThreadState, engine: &mut Engine| {
            let r = reloader.clone();
            let asked =
                std::thread::spawn(move || r.reload(rules, "jwt:ana", Duration::from_secs(10)));
            while !asked.is_finished() {
                l.reloads(engine).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            asked.join().unwrap().unwrap()
        };
        let done = ask(rules(1, true), &mut l, &mut engine);
        assert_eq!(
            done,
            Reloaded {
                rules: vec!["t.denials".into(), "t.other".into()],
                fresh: vec!["t.other".into()],
                removed: vec![],
            }
        );
        // t.denials kept its two denials: the third fires.
        feed(&mut l, &mut engine, 2..3);
        assert_eq!(read_revisions(dir.path()).unwrap().len(), 1);

        // A new version starts empty; a rule left out is removed.
        let done = ask(rules(2, false), &mut l, &mut engine);
        assert_eq!(
            done,
            Reloaded {
                rules: vec!["t.denials".into()],
                fresh: vec!["t.denials".into()],
                removed: vec!["t.other".into()],
            }
        );
        feed(&mut l, &mut engine, 3..5);
        assert_eq!(
            read_revisions(dir.path()).unwrap().len(),
            1,
            "two denials after v2"
        );
        // Each event evaluated once across both reloads.
        assert_eq!(engine.position("p/0"), Some(5));
        assert_eq!(engine.position("vigil.audit/0"), Some(3));

        let reloads: Vec<_> = own_log(dir.path())
            .into_iter()
            .filter(|(_, action, _)| action == "rules.reload")
            .collect();
        let r = (
            "jwt:ana".to_owned(),
            "rules.reload".to_owned(),
            "allow".to_owned(),
        );
        assert_eq!(reloads, vec![r.clone(), r]);
    }

    /// Vigil's own log, decoded: (caller principal, action, decision) per record.
    fn own_log(dir: &std::path::Path) -> Vec<(String, String, String)> {
        let store = Store::open_existing(dir).unwrap();
        let mut out = Vec::new();
        for p in vigil_store::read::LogReader::new(&store, AUDIT_TOPIC, AUDIT_PARTITION, 0).unwrap()
        {
            let p = p.unwrap();
            let rows = crate::filter::BatchRows::new(&p.batch);
            let col = |n: &str| crate::filter::field(n).unwrap().column;
            use crate::filter::Row;
            for i in 0..rows.len() {
                let r = rows.row(i);
                let s = |n: &str| r.str(col(n)).unwrap_or_default().to_owned();
                out.push((s("caller_principal"), s("action"), s("decision")));
            }
        }
        let report = vigil_store::check_chain(&store).unwrap();
        assert!(report.ok(), "{:?}", report.problems());
        out
    }

    #[test]
    fn lifecycle_commands_through_the_queue_and_directly_are_revisions_and_own_log_records() {
        use crate::lifecycle::Action;
        let dir = tempfile::tempdir().unwrap();
        let mut b = PartitionBatch::new("p", 0, Default::default(), 16);
        for i in 0..3 {
            let v = denial(i);
            b.append(&rec(i, &v), &Decoder::default(), 0).unwrap();
        }
        let piece = b.cut().unwrap().unwrap();
        let (mut engine, _, _) = restore(&cfg(dir.path()), denial_rule()).unwrap();
        let mut l = ThreadState::new(cfg(dir.path()), Default::default()).unwrap();
        l.observe(&mut engine, &piece, true).unwrap();
        let fired = crate::alerts::latest(read_revisions(dir.path()).unwrap());
        assert_eq!(fired.len(), 1);
        let id = fired[0].alert_id.clone();

        let cmd = |action| Command {
            alert_id: id.clone(),
            action,
            by: "local:ana".into(),
            note: Some("looking into it".into()),
            at_ns: now_ns(),
        };
        // Queued (as the CLI does while serve runs), drained by the loop.
        let t = l.queue.submit(&cmd(Action::Acknowledge)).unwrap();
        let again = l.queue.submit(&cmd(Action::Acknowledge)).unwrap();
        std::thread::sleep(Duration::from_millis(110));
        l.commands(&mut engine).unwrap();
        let Reply::Applied { alert } = l.queue.wait(&t, Duration::from_secs(1)).unwrap() else {
            panic!("not applied")
        };
        assert_eq!((alert.revision, alert.status.as_str()), (2, "acknowledged"));
        let Reply::Refused { refusal } = l.queue.wait(&again, Duration::from_secs(1)).unwrap()
        else {
            panic!("applied twice")
        };
        assert!(
            refusal.to_string().contains("already acknowledged"),
            "{refusal}"
        );
        engine.save(&state_path(dir.path())).unwrap();
        drop(l);

        // Nobody holds the lock: applied directly (the state is left as it is).
        let reply = apply_direct(cfg(dir.path()), &cmd(Action::Resolve)).unwrap();
        let Reply::Applied { alert } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!((alert.revision, alert.status.as_str()), (3, "resolved"));
        assert_eq!(alert.status_note.as_deref(), Some("looking into it"));
        let stored = crate::alerts::find(dir.path(), &id).unwrap().unwrap();
        assert_eq!(stored, *alert);
        // Someone holds it: refused with Locked, nothing applied.
        assert!(!lock_held(dir.path()));
        let held = lock(&cfg(dir.path())).unwrap();
        assert!(lock_held(dir.path()));
        let err = apply_direct(cfg(dir.path()), &cmd(Action::Resolve)).unwrap_err();
        assert!(matches!(err, DetectError::Locked(_)), "{err}");
        drop(held);
        assert!(!lock_held(dir.path()));

        // The next start takes the resolution from the alert log: the open alert is closed,
        // and the group's next denials are a new alert.
        let (mut engine, _, _) = restore(&cfg(dir.path()), denial_rule()).unwrap();
        for i in 3..6 {
            let v = denial(i);
            b.append(&rec(i, &v), &Decoder::default(), 0).unwrap();
        }
        engine
            .observe(&b.cut().unwrap().unwrap(), now_ns())
            .unwrap();
        let next = engine.take_pending();
        assert_eq!(next.len(), 1, "{next:#?}");
        assert_ne!(next[0].alert_id, id);
        assert_eq!((next[0].revision, next[0].status.as_str()), (1, "open"));

        let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            own_log(dir.path()),
            vec![
                s(crate::lifecycle::SYSTEM_PRINCIPAL, "alert.raise", "allow"),
                s("local:ana", "alert.acknowledge", "allow"),
                s("local:ana", "alert.acknowledge", "deny"),
                s("local:ana", "alert.resolve", "allow"),
            ]
        );
    }

    #[test]
    fn the_alert_log_is_checked_against_vigils_own_log_and_a_missing_record_is_made_up() {
        let dir = tempfile::tempdir().unwrap();
        let a = crate::alerts::test_support::alert("a1", 1);
        // Stored, then a crash before Vigil's own log recorded it.
        AlertLog::open(dir.path())
            .unwrap()
            .append(std::slice::from_ref(&a), 1)
            .unwrap();
        let _ = Store::open(dir.path(), WriteOptions::default()).unwrap();
        let found = crate::lifecycle::check_alert_log(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert!(
            !found[0].0 && found[0].2.contains("not recorded"),
            "{found:?}"
        );

        let (mut engine, _, stored) = restore(&cfg(dir.path()), Vec::new()).unwrap();
        let mut l = ThreadState::new(cfg(dir.path()), Default::default()).unwrap();
        let store = Store::open_existing(dir.path()).unwrap();
        l.record_missing(&mut engine, &store, &stored).unwrap();
        l.record_missing(&mut engine, &store, &stored).unwrap();
        assert_eq!(own_log(dir.path()).len(), 1, "recorded once");
        assert!(
            crate::lifecycle::check_alert_log(dir.path())
                .unwrap()
                .is_empty()
        );

        // Edited in the alert log: seen.
        let files = crate::alerts::alert_files(&vigil_store::layout::alerts(dir.path())).unwrap();
        let mut edited = a.clone();
        edited.event_count += 1;
        std::fs::remove_file(&files[0]).unwrap();
        AlertLog::open(dir.path())
            .unwrap()
            .append(&[edited], 2)
            .unwrap();
        let found = crate::lifecycle::check_alert_log(dir.path()).unwrap();
        assert!(found[0].0 && found[0].2.contains("differs"), "{found:?}");
        // Deleted from it: seen.
        for f in crate::alerts::alert_files(&vigil_store::layout::alerts(dir.path())).unwrap() {
            std::fs::remove_file(f).unwrap();
        }
        let found = crate::lifecycle::check_alert_log(dir.path()).unwrap();
        assert!(found[0].0 && found[0].2.contains("missing"), "{found:?}");
    }
}
