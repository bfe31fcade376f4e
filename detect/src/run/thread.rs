//! The detection thread's state between pieces: the engine's companions (the alert log, Vigil's
//! own log, the lifecycle queue, metrics) and what it does with each piece, tick, command and
//! checkpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use vigil_store::clock::now_ns;
use vigil_store::{AUDIT_PARTITION, AUDIT_TOPIC, OwnLog, Piece, Store, WriteOptions};

use super::reload::Reload;
use super::{DetectError, DetectMetrics, RunConfig, state_path};
use crate::alerts::{Alert, AlertLog};
use crate::engine::Engine;
use crate::lifecycle::{Command, Queue, Reply, audit_event};

/// Everything the thread keeps besides the engine.
pub(super) struct ThreadState {
    pub(super) cfg: RunConfig,
    pub(super) log: AlertLog,
    pub(super) metrics: Arc<DetectMetrics>,
    pub(super) last_flush: Instant,
    pub(super) last_state: Instant,
    /// When each log last came live from this process's pipeline.
    pub(super) live: HashMap<String, Instant>,
    /// Per log read from the store: the last offset of the newest file read.
    pub(super) tailed: HashMap<String, i64>,
    /// Vigil's own log: every alert revision and lifecycle change.
    pub(super) audit: OwnLog,
    /// Lifecycle commands waiting to be applied, and the revisions they made (id, revision).
    pub(super) queue: Queue,
    pub(super) applied: HashMap<(String, i64), Command>,
    pub(super) last_commands: Instant,
    /// Rule reloads asked for (none in [`apply_direct`]).
    pub(super) reloads: Option<Receiver<Reload>>,
    /// Rules' evictions, for [`ThreadState::evictions`].
    pub(super) evicted: crate::system_alerts::Evictions,
    /// When a full volume was last reported.
    pub(super) volume_full_said: Option<Instant>,
    /// The detection lease, when several instances share the bucket.
    pub(super) lease: Option<super::leased::Held>,
    /// When the changes relayed through the bucket were last looked for.
    pub(super) last_relayed: Option<Instant>,
}

/// A rule that keeps evicting groups alerts again after this long.
pub(super) const EVICTION_ALERT_EVERY_NS: i64 = 3_600_000_000_000;

/// A log not fed live for this long is read from the store instead (its partition belongs to
/// another process of the consumer group, or was just revoked).
pub(super) const LIVE_GRACE: Duration = Duration::from_secs(10);

impl ThreadState {
    pub(super) fn new(
        cfg: RunConfig,
        metrics: Arc<DetectMetrics>,
    ) -> Result<ThreadState, DetectError> {
        let mut store = Store::open(&cfg.data_dir, WriteOptions::default())?;
        if let Some(b) = &cfg.bucket {
            store = store.with_bucket(b.clone());
        }
        // Records stored but not signed (a crash between file and checkpoint) are signed now;
        // this also hands the log to the checkpointer's refresh.
        // With a bucket, detection's log is this instance's from now on: another instance
        // still running detection is fenced off it at its next record (one detection at a
        // time; the lease that makes it so is not built yet).
        store.claim_log(AUDIT_TOPIC, AUDIT_PARTITION, true)?;
        let mut audit = OwnLog::open(&store, AUDIT_TOPIC, AUDIT_PARTITION)?;
        if let Some(signer) = &cfg.signer {
            audit = audit.signed(signer.clone())?;
        }
        let l = ThreadState {
            log: AlertLog::open(&cfg.data_dir, cfg.bucket.clone())?,
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
            lease: None,
            last_relayed: None,
        };
        Ok(l)
    }

    /// Record the stored revisions Vigil's own log lacks (a crash between the alert log's
    /// append and its own); recorded by detection, in stored order.
    pub(super) fn record_missing(
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
    pub(super) fn record(
        &mut self,
        engine: &mut Engine,
        values: &[Vec<u8>],
    ) -> Result<(), DetectError> {
        let Some(w) = self.audit.append(values, now_ns() / 1_000_000)? else {
            return Ok(());
        };
        engine.observe_followed(&w.piece, now_ns())?;
        Ok(())
    }

    /// Store revisions durably: queued for delivery (except to `skip_target`), in the alert
    /// log, in Vigil's own log.
    pub(super) fn store(
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

    /// Renew the detection lease when it is due; lost, detection stops here.
    pub(super) fn renew_lease(&mut self) -> Result<(), DetectError> {
        match &self.lease {
            Some(l) => l.renew_if_due(),
            None => Ok(()),
        }
    }

    /// Before storing alerts or state: is the lease still this instance's (renewed first if
    /// this process may have been paused past half its time)?
    fn guard(&mut self) -> Result<(), DetectError> {
        match &self.lease {
            Some(l) => l.ensure(),
            None => Ok(()),
        }
    }

    /// Store pending alerts (durably), then report them.
    pub(super) fn flush(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        let alerts = engine.take_pending();
        self.last_flush = Instant::now();
        if alerts.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.guard() {
            engine.requeue(alerts);
            // The bucket not answering: the lease cannot be checked, and nothing could be
            // stored anyway; kept for the next flush.
            if vigil_store::is_retryable(&e) {
                self.volume_full(&e, "alerts kept to be stored once there is room");
                return Ok(());
            }
            return Err(e);
        }
        if let Err(e) = self.store(engine, &alerts, None) {
            if !vigil_store::is_retryable(&e) {
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
    pub(super) fn apply(
        &mut self,
        engine: &mut Engine,
        cmd: &Command,
    ) -> Result<Reply, DetectError> {
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
    pub(super) fn commands(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
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
        // Holding the lease: the changes other instances relayed through the bucket (looked
        // for every second: a listing each time).
        if let (Some(_), Some(bucket)) = (&self.lease, self.cfg.bucket.clone())
            && self
                .last_relayed
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_relayed = Some(Instant::now());
            let relayed = match super::remote::claim(&bucket) {
                Ok(r) => r,
                Err(e) if vigil_store::is_bucket_unavailable(&e) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            for (name, cmd) in relayed {
                let reply = self.apply(engine, &cmd)?;
                super::remote::answer(&bucket, &name, &reply)?;
            }
        }
        Ok(())
    }

    /// Raise an alert for each delivery given up on: stored, then sent to the other targets.
    pub(super) fn undeliverable(
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
    pub(super) fn silent(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
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
    pub(super) fn store_system(
        &mut self,
        engine: &mut Engine,
        a: &Alert,
    ) -> Result<(), DetectError> {
        match self.store(engine, std::slice::from_ref(a), None) {
            Err(e) if vigil_store::is_retryable(&e) => {
                self.volume_full(&e, "alerts kept to be stored once there is room");
                engine.requeue(vec![a.clone()]);
                Ok(())
            }
            r => r,
        }
    }

    /// Say (at most every 10 s) that the store cannot be written now (the data volume is full,
    /// or the bucket does not answer) and what waits for it.
    pub(super) fn volume_full(&mut self, e: &DetectError, what: &str) {
        if self
            .volume_full_said
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::error!(error = %e, "the store cannot be written now (the data volume is full, or the bucket does not answer): {what}");
            self.volume_full_said = Some(Instant::now());
        }
    }

    /// Alert on rules that evicted groups since the last look (at most once per rule per
    /// [`EVICTION_ALERT_EVERY_NS`]).
    pub(super) fn evictions(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
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
    pub(super) fn tail(&mut self, engine: &mut Engine, store: &Store) -> Result<(), DetectError> {
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
    /// yet) are read from the store first. Rows before it neither evaluated nor stored yet
    /// (pieces dropped while this instance stood by for the detection lease, on their way to
    /// a file) leave the piece too to the store: the log is read from there, in order, until
    /// its pieces follow on from what was evaluated.
    pub(super) fn live(&mut self, engine: &mut Engine, p: &Piece) -> Result<(), DetectError> {
        let log = p.log().to_string();
        if let Some(pos) = engine.position(&log)
            && pos < p.first_leaf_index
        {
            if let Ok(store) = Store::open_existing(&self.cfg.data_dir) {
                for stored in vigil_store::read::LogReader::new(&store, &p.topic, p.partition, pos)?
                {
                    self.observe(engine, &stored?, true)?;
                }
            }
            if engine
                .position(&log)
                .is_some_and(|pos| pos < p.first_leaf_index)
            {
                self.live.remove(&log);
                return Ok(());
            }
        }
        self.live.insert(log, Instant::now());
        self.observe(engine, p, true)
    }

    /// `live`: a piece of a log fed live, which holds the watermark; otherwise one read from
    /// the store after the fact, which follows it.
    pub(super) fn observe(
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
    pub(super) fn after(&mut self, engine: &mut Engine, before: u64) -> Result<(), DetectError> {
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
    pub(super) fn tick(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        let before = engine.rows;
        engine.tick(now_ns());
        self.after(engine, before)
    }

    pub(super) fn publish_time(&self, engine: &Engine) {
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

    pub(super) fn publish_stats(&self, engine: &Engine) {
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

    pub(super) fn save(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
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
        let saved = self.guard().and_then(|()| {
            engine
                .save(&state_path(&self.cfg.data_dir))
                .map_err(DetectError::from)
                .and_then(|()| match (&self.lease, &self.cfg.bucket) {
                    // Where the next holder takes over from.
                    (Some(_), Some(b)) => b
                        .publish(&self.cfg.data_dir, &state_path(&self.cfg.data_dir))
                        .map_err(DetectError::from),
                    _ => Ok(()),
                })
        });
        if let Err(e) = saved {
            if !vigil_store::is_retryable(&e) {
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
