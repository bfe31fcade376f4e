//! The detection thread of `vigil serve`: catch up from the store, then evaluate pieces as
//! the pipeline chains them; store alerts durably, then report them; checkpoint state.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use vigil_store::{Piece, Store};

use crate::alerts::{AlertLog, latest, read_revisions};
use crate::engine::{Engine, EngineError, RuleStats, now_ns};
use crate::rules::Rule;

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
}

/// Counters `serve` reports.
#[derive(Debug, Default)]
pub struct DetectMetrics {
    pub rows: AtomicU64,
    pub alerts_fired: AtomicU64,
    pub alert_revisions: AtomicU64,
    pub alert_files: AtomicU64,
    pub late: AtomicU64,
    pub evicted: AtomicU64,
    pub state_saves: AtomicU64,
    /// Set once catch-up from the store is done and live pieces are being evaluated.
    pub live: AtomicBool,
    pub stats: std::sync::Mutex<Vec<RuleStats>>,
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
}

/// Where the engine's state lives in a data directory.
pub fn state_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("detect").join("state.json")
}

/// Lock the data directory's detection state and start the thread. It runs until `pieces`
/// is closed (every sender dropped), then writes its alerts and state and returns.
pub fn start(
    cfg: RunConfig,
    rules: Vec<Rule>,
    pieces: Receiver<Piece>,
    metrics: Arc<DetectMetrics>,
) -> Result<JoinHandle<Result<(), DetectError>>, DetectError> {
    let dir = cfg.data_dir.join("detect");
    std::fs::create_dir_all(&dir)
        .map_err(|e| DetectError::Io(format!("{}: {e}", dir.display())))?;
    let lock_path = dir.join("state.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| DetectError::Io(format!("{}: {e}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(DetectError::Locked(lock_path.display().to_string()));
    }
    let mut engine = Engine::new(rules);
    let state = state_path(&cfg.data_dir);
    let restored = state.exists();
    if restored {
        let fresh = engine.restore(&state)?;
        if !fresh.is_empty() {
            tracing::info!(rules = ?fresh, "rules new or changed since the last state: they start empty");
        }
    }
    engine.know_stored(&latest(read_revisions(&cfg.data_dir)?));
    std::thread::Builder::new()
        .name("vigil-detect".into())
        .spawn(move || {
            let _lock = lock;
            run(cfg, engine, restored, pieces, metrics)
        })
        .map_err(|e| DetectError::Io(e.to_string()))
}

/// Everything the thread keeps besides the engine.
struct Loop {
    cfg: RunConfig,
    log: AlertLog,
    metrics: Arc<DetectMetrics>,
    last_flush: Instant,
    last_state: Instant,
    /// When each log last came live from this process's pipeline.
    live: HashMap<String, Instant>,
    /// Per log read from the store: the last offset of the newest file read.
    tailed: HashMap<String, i64>,
}

/// A log not fed live for this long is read from the store instead (its partition belongs to
/// another process of the consumer group, or was just revoked).
const LIVE_GRACE: Duration = Duration::from_secs(10);

impl Loop {
    /// Store pending alerts (durably), then report them.
    fn flush(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        let alerts = engine.take_pending();
        self.last_flush = Instant::now();
        if alerts.is_empty() {
            return Ok(());
        }
        // Queued for delivery first: a crash between the two delivers an alert the log lacks
        // (the replay raises it again, same idempotency key), never the reverse.
        if let Some(outbox) = &self.cfg.outbox {
            outbox.enqueue(&alerts)?;
        }
        self.log.append(&alerts, now_ns())?;
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

    /// Raise an alert for each delivery given up on: stored, then sent to the other targets.
    fn undeliverable(&mut self, outbox: &crate::deliver::Outbox) -> Result<(), DetectError> {
        for g in outbox.take_gave_up() {
            let a = crate::deliver::undeliverable_alert(&g, now_ns());
            outbox.enqueue_except(std::slice::from_ref(&a), Some(&g.target))?;
            self.log.append(std::slice::from_ref(&a), now_ns())?;
            self.metrics.alerts_fired.fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "vigil::alert", alert_id = %a.alert_id, rule = %a.rule_id,
                undelivered = %g.alert.alert_id, delivery_target = %g.target, "alert fired");
        }
        Ok(())
    }

    /// Evaluate the new files of logs this process is not fed live (written by other processes
    /// of the consumer group sharing the data directory).
    fn tail(&mut self, engine: &mut Engine, store: &Store) -> Result<(), DetectError> {
        for (topic, partition) in store.partitions()? {
            let log = format!("{topic}/{partition}");
            if self
                .live
                .get(&log)
                .is_some_and(|t| t.elapsed() < LIVE_GRACE)
            {
                continue;
            }
            let (files, _) = store.list(&topic, partition)?;
            let Some(newest) = files.last().map(|f| f.last_offset) else {
                continue;
            };
            if self.tailed.get(&log) == Some(&newest) {
                continue;
            }
            let from = engine.position(&log).unwrap_or(0);
            for piece in vigil_store::read::LogReader::new(store, &topic, partition, from)? {
                self.observe(engine, &piece?)?;
            }
            self.tailed.insert(log, newest);
        }
        Ok(())
    }

    /// A piece from this process's pipeline. Rows stored before it that were never evaluated
    /// (the partition came from another process of the group, whose last files were not read
    /// yet) are read from the store first.
    fn live(&mut self, engine: &mut Engine, p: &Piece) -> Result<(), DetectError> {
        let log = format!("{}/{}", p.topic, p.partition);
        if let Some(pos) = engine.position(&log)
            && pos < p.first_leaf_index
            && let Ok(store) = Store::open_existing(&self.cfg.data_dir)
        {
            for stored in vigil_store::read::LogReader::new(&store, &p.topic, p.partition, pos)? {
                self.observe(engine, &stored?)?;
            }
        }
        self.live.insert(log, Instant::now());
        self.observe(engine, p)
    }

    fn observe(&mut self, engine: &mut Engine, piece: &Piece) -> Result<(), DetectError> {
        let before = engine.rows;
        engine.observe(piece, now_ns())?;
        self.metrics
            .rows
            .fetch_add(engine.rows - before, Ordering::Relaxed);
        let (any, new) = engine.has_pending();
        let due = self.last_flush.elapsed() >= Duration::from_millis(self.cfg.alert_flush_ms);
        if new || (any && due) {
            self.flush(engine)?;
        }
        Ok(())
    }

    fn publish_stats(&self, engine: &Engine) {
        let stats = engine.stats();
        self.metrics
            .late
            .store(stats.iter().map(|s| s.late).sum(), Ordering::Relaxed);
        self.metrics
            .evicted
            .store(stats.iter().map(|s| s.evicted).sum(), Ordering::Relaxed);
        if let Ok(mut m) = self.metrics.stats.lock() {
            *m = stats;
        }
    }

    fn save(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        self.flush(engine)?;
        engine.expire();
        engine.save(&state_path(&self.cfg.data_dir))?;
        self.metrics.state_saves.fetch_add(1, Ordering::Relaxed);
        self.last_state = Instant::now();
        self.publish_stats(engine);
        Ok(())
    }
}

fn run(
    cfg: RunConfig,
    mut engine: Engine,
    restored: bool,
    pieces: Receiver<Piece>,
    metrics: Arc<DetectMetrics>,
) -> Result<(), DetectError> {
    let log = AlertLog::open(&cfg.data_dir)?;
    let mut l = Loop {
        cfg,
        log,
        metrics,
        last_flush: Instant::now(),
        last_state: Instant::now(),
        live: HashMap::new(),
        tailed: HashMap::new(),
    };
    // Catch up: stored events the state has not evaluated (all of them without a state: the
    // state is rebuilt from the stored history).
    let store = Store::open_existing(&l.cfg.data_dir).ok();
    if let Some(store) = &store {
        let started = Instant::now();
        crate::replay::replay(&mut engine, store, |e, p| l.observe(e, &p))?;
        tracing::info!(
            rows = engine.rows,
            skipped = engine.skipped_rows,
            restored,
            secs = started.elapsed().as_secs_f64(),
            "detection caught up with the store"
        );
    }
    l.save(&mut engine)?;
    l.metrics.live.store(true, Ordering::Relaxed);
    let flush_every = Duration::from_millis(l.cfg.alert_flush_ms.max(1));
    let state_every = Duration::from_millis(l.cfg.state_interval_ms.max(1));
    let tail_every = Duration::from_secs(1);
    let mut last_tail = Instant::now();
    loop {
        match pieces.recv_timeout(flush_every) {
            Ok(p) => l.live(&mut engine, &p)?,
            Err(RecvTimeoutError::Timeout) => {}
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
        }
        if let Some(outbox) = l.cfg.outbox.clone() {
            l.undeliverable(&outbox)?;
        }
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
            let rec = RecordRef {
                topic: "p",
                partition: 0,
                offset: i,
                timestamp_ms: None,
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            };
            b.append(&rec, &Decoder::default(), 0).unwrap();
            if i == 4 {
                early = b.cut().unwrap();
            }
        }
        store.write(&b.seal().unwrap().unwrap()).unwrap();
        let v = opa(10);
        let rec = RecordRef {
            topic: "p",
            partition: 0,
            offset: 10,
            timestamp_ms: None,
            key: None,
            value: Some(v.as_bytes()),
            headers: &[],
        };
        b.append(&rec, &Decoder::default(), 0).unwrap();
        let live = b.cut().unwrap().unwrap();
        assert_eq!(live.first_leaf_index, 10);

        let mut engine = Engine::new(Vec::new());
        engine.observe(&early.unwrap(), 0).unwrap();
        assert_eq!(engine.position("p/0"), Some(5));
        let mut l = Loop {
            cfg: RunConfig {
                data_dir: dir.path().to_owned(),
                alert_flush_ms: 1000,
                state_interval_ms: 1000,
                outbox: None,
            },
            log: AlertLog::open(dir.path()).unwrap(),
            metrics: Default::default(),
            last_flush: Instant::now(),
            last_state: Instant::now(),
            live: HashMap::new(),
            tailed: HashMap::new(),
        };
        l.live(&mut engine, &live).unwrap();
        // 5 before, 5 from the store, 1 live: each once.
        assert_eq!(engine.rows, 11);
        assert_eq!(engine.position("p/0"), Some(11));
    }
}
