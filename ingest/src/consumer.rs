//! The consumer thread: polling, the rebalance callbacks (a partition's log claimed in the
//! store's bucket when assigned), each partition's offsets checked by its [`Partition`] state
//! machine, chunks handed to the pipeline threads, commits once files are durable, partitions
//! given up when the bucket fences this instance off their logs.
//!
//! Past 600 lines, and one job: everything here runs on the consumer thread, under the one
//! lock the rebalance callbacks also take, as rdkafka glue around `partition.rs` — the
//! decisions live there. `run` at the end starts the threads this one feeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use vigil_schemas::Decoder;
use vigil_store::clock::now_ns;
use vigil_store::{LogSigner, PartitionBatch, Store};

use crate::chunk::{self, Chunk};
use crate::partition::{Delivery, Partition};
use crate::pipeline::{self, Dlq, Job, Limits, Report, Signing, Threads};
use crate::{IngestConfig, IngestError, IngestMetrics, Key, client_config, reserved};

/// One assigned partition, as the consumer thread sees it.
struct Assigned {
    key: Key,
    /// Its pipeline thread.
    pipeline: usize,
    /// Records not yet handed to the pipeline.
    chunk: Option<Chunk>,
    /// Its position and flow state: every decision about its offsets.
    state: Partition<Chunk>,
}

/// Open chunks are handed on at least this often, so a quiet partition's records do not wait
/// for a full chunk.
const CHUNK_MAX_WAIT: Duration = Duration::from_millis(10);

/// How long the consumer thread waits for room in a pipeline thread's queue before it pauses
/// the partition instead.
const PIPELINE_WAIT: Duration = Duration::from_millis(500);

/// Records polled between two looks at the clock (open chunks, reports, silent resumes).
const POLLS_BETWEEN_CHORES: u32 = 64;

/// What the consumer thread holds, behind one lock (the rebalance callbacks run inside poll
/// and take it too): the assigned partitions, the queues to the pipeline threads, the reports.
struct ConsumerState {
    cfg: IngestConfig,
    store: Store,
    parts: Vec<Assigned>,
    /// Index in `parts` of the last record's partition: records come in runs.
    last_part: usize,
    pipelines: Vec<Sender<Job>>,
    reports: Receiver<Report>,
    metrics: Arc<IngestMetrics>,
    /// The first fatal error (a failed write, an unreadable store); ends the run.
    fatal: Option<IngestError>,
    chunks_sent_at: Instant,
    signing: Signing,
    refreshed_at: Instant,
}

/// librdkafka's callbacks into the consumer thread: statistics (high watermarks, for the lag)
/// and rebalances (assign, revoke).
struct Callbacks {
    core: Arc<Mutex<ConsumerState>>,
    metrics: Arc<IngestMetrics>,
}

impl ClientContext for Callbacks {
    /// The consumer's statistics (every `statistics.interval.ms`): the high watermark of each
    /// partition it fetches, for the lag.
    fn stats(&self, stats: rdkafka::Statistics) {
        let mut hw = std::collections::HashMap::new();
        for (topic, t) in stats.topics {
            for (partition, p) in t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" queue; "none" and
                // "stopped" are partitions it does not fetch (not ours now).
                if partition >= 0 && p.hi_offset >= 0 && p.fetch_state == "active" {
                    hw.insert(
                        vigil_store::LogId::new(topic.clone(), partition),
                        p.hi_offset,
                    );
                }
            }
        }
        self.metrics.set_high_watermarks(hw);
    }
}

fn lock(core: &Mutex<ConsumerState>) -> MutexGuard<'_, ConsumerState> {
    // A panic while holding the lock is a bug; the state it guards is then not trustworthy.
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConsumerContext for Callbacks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = lock(&self.core);
            let keys: Vec<Key> = tpl
                .elements()
                .iter()
                .map(|e| vigil_store::LogId::new(e.topic(), e.partition()))
                .collect();
            tracing::info!(partitions = ?keys, "partitions revoked: flushing and committing");
            if let Err(e) = core.revoke(consumer, &keys) {
                core.fatal.get_or_insert(e);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut core = lock(&self.core);
            if let Err(e) = core.assign(consumer, tpl) {
                core.fatal.get_or_insert(e);
            }
        }
    }
}

fn one(key: &Key) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.topic, key.partition);
    Ok(tpl)
}

impl ConsumerState {
    fn find(&mut self, topic: &str, partition: i32) -> Option<usize> {
        let hit = |p: &Assigned| p.key.partition == partition && p.key.topic == topic;
        if self.parts.get(self.last_part).is_some_and(hit) {
            return Some(self.last_part);
        }
        let i = self.parts.iter().position(hit)?;
        self.last_part = i;
        Some(i)
    }

    fn index(&self, key: &Key) -> Option<usize> {
        self.parts.iter().position(|p| &p.key == key)
    }

    /// Open a pipeline for each newly assigned partition at the store's head, and make the
    /// consumer resume right after it (the store, not the group's committed offset, is the
    /// authority on what is stored).
    fn assign(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        tpl: &TopicPartitionList,
    ) -> Result<(), IngestError> {
        let mut resume = TopicPartitionList::new();
        for e in tpl.elements() {
            let key: Key = vigil_store::LogId::new(e.topic(), e.partition());
            if vigil_store::is_reserved_topic(&key.topic) {
                return Err(reserved(&key.topic));
            }
            // With a bucket: this instance writes the log from now on (its files copied here
            // first, a writer still holding it elsewhere fenced at its next file).
            match self.store.claim_log(&key.topic, key.partition, true) {
                Ok(()) => {}
                Err(e) if vigil_store::is_fenced(&e) => {
                    tracing::error!(topic = %key.topic, partition = key.partition, error = %e,
                        "could not claim the partition's log: not consumed by this instance");
                    self.metrics.logs_fenced.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let log = self.store.head(&key.topic, key.partition)?;
            let head = log.chain;
            self.metrics.durable_at(&key, head.offset);
            // A crash between a file and its checkpoint leaves the newest records unsigned.
            self.signing.checkpoint(&key, head, &log.tree)?;
            // An empty store needs everything the topic still holds, whatever the group
            // committed; otherwise resume right after the store's head.
            let offset = if head.offset >= 0 {
                Offset::Offset(head.offset + 1)
            } else {
                Offset::Beginning
            };
            resume.add_partition_offset(&key.topic, key.partition, offset)?;
            tracing::info!(topic = %key.topic, partition = key.partition, store_head = head.offset, "partition assigned");
            if let Some(i) = self.index(&key) {
                // Assigned twice without a revoke in between: the pipeline is reopened at the
                // store's head below, so forget what this side held.
                self.parts.swap_remove(i);
            }
            // The least busy pipeline thread; its writer (pipelines share writers evenly).
            let pipeline = (0..self.pipelines.len())
                .min_by_key(|&p| self.parts.iter().filter(|q| q.pipeline == p).count())
                .ok_or(IngestError::Internal("no pipeline threads"))?;
            let job = Job::Open {
                writer: pipeline % self.cfg.writer_threads.max(1),
                key: key.clone(),
                batch: Box::new(PartitionBatch::new(
                    &key.topic,
                    key.partition,
                    log,
                    // Sized for a piece (a chunk's rows are cut as one), not for the batch: a
                    // piece's arrays keep the capacity they were built with, and detection
                    // holds pieces while they wait for the watermark.
                    chunk::CHUNK_MAX_RECORDS.min(self.cfg.max_batch_events),
                )),
                decoder: Decoder::new(
                    self.cfg.decoder.clone(),
                    self.cfg.formats.get(&key.topic).copied(),
                ),
            };
            self.pipelines[pipeline]
                .send(job)
                .map_err(|_| IngestError::PipelineGone)?;
            self.parts.push(Assigned {
                key,
                pipeline,
                chunk: None,
                state: Partition::assigned(head.offset, Instant::now()),
            });
        }
        consumer.assign(&resume)?;
        self.metrics
            .partitions_assigned
            .store(self.parts.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Flush and commit revoked partitions, then forget them.
    fn revoke(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        keys: &[Key],
    ) -> Result<(), IngestError> {
        let flushed = self.flush(consumer, Some(keys));
        let mut paused = TopicPartitionList::new();
        for k in keys {
            if let Some(i) = self.index(k) {
                let part = self.parts.swap_remove(i);
                if part.state.is_paused() {
                    paused.add_partition(&k.topic, k.partition);
                }
                self.signing
                    .signer
                    .checkpoints()
                    .forget(&part.key.topic, part.key.partition);
                self.store.release_log(&part.key.topic, part.key.partition);
                let _ = self.pipelines[part.pipeline].send(Job::Close(part.key));
            }
        }
        self.metrics
            .partitions_assigned
            .store(self.parts.len() as u64, Ordering::Relaxed);
        // Leave no pause behind for whoever is assigned these partitions next.
        if paused.count() > 0
            && let Err(e) = consumer.resume(&paused)
        {
            tracing::debug!(error = %e, "resuming revoked partitions");
        }
        flushed
    }

    /// Hand a partition's open chunk to its pipeline. When the pipeline's queue stays full
    /// for [`PIPELINE_WAIT`] (the store is stalled, not merely busy), keep the chunk and pause
    /// the partition so that polling — and the group membership — goes on. With `wait`, block
    /// until there is room instead.
    fn dispatch(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        i: usize,
        wait: bool,
    ) -> Result<(), IngestError> {
        let part = &mut self.parts[i];
        let queue = &self.pipelines[part.pipeline];
        if let Some(older) = part.state.take_held() {
            // Still paused with a chunk waiting: wait for room rather than hold a second one.
            queue
                .send(Job::Records(older))
                .map_err(|_| IngestError::PipelineGone)?;
        }
        let Some(chunk) = part.chunk.take() else {
            return Ok(());
        };
        self.metrics.received_at(&part.key, part.state.dispatched());
        if wait {
            return queue
                .send(Job::Records(chunk))
                .map_err(|_| IngestError::PipelineGone);
        }
        match queue.send_timeout(Job::Records(chunk), PIPELINE_WAIT) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(Job::Records(chunk))) => {
                if part.state.hold(chunk) {
                    consumer.pause(&one(&part.key)?)?;
                    self.metrics.pauses.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(topic = %part.key.topic, partition = part.key.partition,
                        "store stalled: partition paused");
                }
                Ok(())
            }
            Err(_) => Err(IngestError::PipelineGone),
        }
    }

    /// Offer waiting chunks to their pipelines again; resume partitions whose chunk got in.
    fn retry_pending(&mut self, consumer: &BaseConsumer<Callbacks>) -> Result<(), IngestError> {
        let now = Instant::now();
        for part in self.parts.iter_mut() {
            if let Some(chunk) = part.state.take_held() {
                match self.pipelines[part.pipeline].try_send(Job::Records(chunk)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(Job::Records(chunk))) => {
                        part.state.hold(chunk);
                    }
                    Err(_) => return Err(IngestError::PipelineGone),
                }
            }
            if part.state.room(now) {
                consumer.resume(&one(&part.key)?)?;
            }
        }
        Ok(())
    }

    /// Commit what a durable file holds.
    fn on_report(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        report: Report,
        mode: CommitMode,
    ) -> Result<(), IngestError> {
        let (key, rows, info) = match report {
            Report::Failed(e) => return Err(e),
            Report::Written {
                key,
                result: Err(e),
                ..
            } if vigil_store::is_fenced(&e) => {
                self.give_up(consumer, &key, &e);
                return Ok(());
            }
            Report::Written { key, rows, result } => (key, rows, result?),
        };
        self.metrics.files_written.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes_written
            .fetch_add(info.bytes, Ordering::Relaxed);
        self.metrics
            .rows_stored
            .fetch_add(rows as u64, Ordering::Relaxed);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &key.topic,
            key.partition,
            Offset::Offset(info.last_offset + 1),
        )?;
        if let Err(e) = consumer.commit(&tpl, mode) {
            // The store is the authority on what is stored; a failed commit only means
            // re-reading records that are then skipped.
            tracing::warn!(error = %e, topic = %key.topic, partition = key.partition, "offset commit failed");
        }
        self.metrics.durable_at(&key, info.last_offset);
        if let Some(i) = self.index(&key) {
            self.parts[i].state.durable(info.last_offset);
        }
        Ok(())
    }

    /// Another instance writes `key`'s log now (the bucket fenced this one off it): stop
    /// consuming the partition and drop what this instance holds of it, unwritten and
    /// uncommitted — the new writer stores it. Taken up again if the group assigns it anew.
    fn give_up(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        key: &Key,
        why: &vigil_store::StoreError,
    ) {
        let Some(i) = self.index(key) else {
            return; // Given up already: a later batch of it failed the same way.
        };
        tracing::error!(topic = %key.topic, partition = key.partition, error = %why,
            "another instance writes this partition's log now: given up by this one");
        self.metrics.logs_fenced.fetch_add(1, Ordering::Relaxed);
        let part = self.parts.swap_remove(i);
        self.last_part = 0;
        if let Ok(tpl) = one(key)
            && let Err(e) = consumer.pause(&tpl)
        {
            tracing::debug!(error = %e, "pausing a partition given up");
        }
        self.signing
            .signer
            .checkpoints()
            .forget(&key.topic, key.partition);
        self.store.release_log(&key.topic, key.partition);
        let _ = self.pipelines[part.pipeline].send(Job::Drop(key.clone()));
        self.metrics
            .partitions_assigned
            .store(self.parts.len() as u64, Ordering::Relaxed);
    }

    /// Everything that runs on the clock rather than per record: hand on open chunks,
    /// commit durable files, retry paused partitions, seek back silent resumes.
    fn chores(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        idle: bool,
    ) -> Result<(), IngestError> {
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        while let Ok(r) = self.reports.try_recv() {
            self.on_report(consumer, r, CommitMode::Async)?;
        }
        if idle || self.chunks_sent_at.elapsed() >= CHUNK_MAX_WAIT {
            for i in 0..self.parts.len() {
                self.dispatch(consumer, i, false)?;
            }
            self.chunks_sent_at = Instant::now();
        }
        // A paused partition may have no chunk waiting any more (`dispatch` hands a waiting
        // chunk on, blocking, before a newer one): it must still be resumed here, or it stays
        // paused for good.
        if self.parts.iter().any(|p| p.state.wants_room()) {
            self.retry_pending(consumer)?;
        }
        if self.refreshed_at.elapsed() >= Duration::from_secs(1) {
            self.signing
                .refresh(self.cfg.checkpoint_interval_ms as i64)?;
            self.refreshed_at = Instant::now();
        }
        self.check_silent_resumes(consumer)
    }

    /// Hand everything the given partitions (or all) hold to their pipelines, have them seal
    /// it, wait until it is durable, and commit synchronously. Used on revoke and shutdown.
    fn flush(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        only: Option<&[Key]>,
    ) -> Result<(), IngestError> {
        let idx: Vec<usize> = match only {
            Some(keys) => keys.iter().filter_map(|k| self.index(k)).collect(),
            None => (0..self.parts.len()).collect(),
        };
        for &i in &idx {
            self.dispatch(consumer, i, true)?;
            let part = &self.parts[i];
            self.pipelines[part.pipeline]
                .send(Job::Seal(part.key.clone()))
                .map_err(|_| IngestError::PipelineGone)?;
        }
        let keys: Vec<Key> = idx.iter().map(|&i| self.parts[i].key.clone()).collect();
        while keys.iter().any(|k| {
            self.index(k)
                .is_some_and(|i| !self.parts[i].state.is_flushed())
        }) {
            let r = self.reports.recv().map_err(|_| IngestError::WriterGone)?;
            self.on_report(consumer, r, CommitMode::Sync)?;
        }
        Ok(())
    }

    /// Seek back partitions whose resume point has stayed silent too long.
    fn check_silent_resumes(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
    ) -> Result<(), IngestError> {
        let now = Instant::now();
        for part in self.parts.iter_mut() {
            if let Some(target) = part.state.silent(now) {
                tracing::warn!(topic = %part.key.topic, partition = part.key.partition,
                    seek_to = target,
                    "nothing delivered since resuming; reading again from before the resume point");
                seek_back(consumer, &self.metrics, &part.key, target)?;
            }
        }
        Ok(())
    }

    /// Check one record's offset against what its partition has, and queue it for its
    /// pipeline. Re-deliveries are skipped; a record delivered past the next offset makes the
    /// broker read again from before it (see `partition.rs`).
    fn handle(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        msg: &BorrowedMessage<'_>,
    ) -> Result<(), IngestError> {
        self.metrics
            .records_received
            .fetch_add(1, Ordering::Relaxed);
        let Some(i) = self.find(msg.topic(), msg.partition()) else {
            // Not ours (a message that raced a revoke): it will be read by the new owner.
            self.metrics
                .records_not_assigned
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let part = &mut self.parts[i];
        let offset = msg.offset();
        match part.state.delivered(offset, Instant::now()) {
            Delivery::Take { gap } => {
                if gap {
                    self.metrics.offset_gaps.fetch_add(1, Ordering::Relaxed);
                }
            }
            Delivery::AlreadyHave => {
                self.metrics
                    .records_already_stored
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Delivery::SeekBack { seek_to, expected } => {
                return refetch(
                    consumer,
                    &self.metrics,
                    &part.key,
                    offset,
                    expected,
                    seek_to,
                );
            }
        }
        let chunk = part
            .chunk
            .get_or_insert_with(|| Chunk::new(part.key.clone(), now_ns()));
        let headers = msg.headers().into_iter().flat_map(|h| h.iter());
        chunk.push(
            offset,
            msg.timestamp().to_millis(),
            msg.key(),
            msg.payload(),
            headers.map(|h| (h.key, h.value)),
        );
        if chunk.is_full() {
            self.dispatch(consumer, i, false)?;
        }
        Ok(())
    }
}

/// Drop a record delivered past `next` and make the broker read again from `target`.
fn refetch(
    consumer: &BaseConsumer<Callbacks>,
    metrics: &IngestMetrics,
    key: &Key,
    got: i64,
    next: i64,
    target: i64,
) -> Result<(), IngestError> {
    tracing::warn!(topic = %key.topic, partition = key.partition, expected = next, got, seek_to = target,
        "broker delivered past the next offset; reading again from before it");
    seek_back(consumer, metrics, key, target)?;
    // This record comes again after the seek.
    metrics.records_refetched.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Make the broker read a partition again from `target` (a resume point being verified).
fn seek_back(
    consumer: &BaseConsumer<Callbacks>,
    metrics: &IngestMetrics,
    key: &Key,
    target: i64,
) -> Result<(), IngestError> {
    consumer.seek(
        &key.topic,
        key.partition,
        Offset::Offset(target),
        Duration::from_secs(10),
    )?;
    metrics.resume_seeks.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Run the ingest pipeline until `shutdown` is set or a fatal error occurs. On shutdown every
/// partition's records are written and committed before returning.
pub fn run(
    cfg: IngestConfig,
    store: Store,
    signer: LogSigner,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<IngestMetrics>,
    detect: Option<crossbeam_channel::Sender<vigil_store::Piece>>,
) -> Result<(), IngestError> {
    if cfg.topics.is_empty() {
        return Err(IngestError::Config("no topics to consume".into()));
    }
    if let Some(t) = cfg
        .topics
        .iter()
        .find(|t| vigil_store::is_reserved_topic(t))
    {
        return Err(reserved(t));
    }
    if cfg.max_batch_events == 0 || cfg.max_batch_bytes == 0 {
        return Err(IngestError::Config("batch limits must be positive".into()));
    }
    let side = match &cfg.dlq_suffix {
        Some(_) => Some(pipeline::side_producer(
            client_config(&cfg),
            &metrics,
            false,
        )?),
        None => None,
    };
    let dlq = match (&side, &cfg.dlq_suffix) {
        (Some(p), Some(suffix)) => Some(Dlq {
            producer: p.clone(),
            suffix: suffix.clone(),
        }),
        _ => None,
    };
    let signing = Signing {
        signer,
        metrics: metrics.clone(),
    };
    let (report_tx, report_rx) = mpsc::channel();
    let threads = Threads::start(
        &store,
        Limits {
            max_batch_events: cfg.max_batch_events,
            max_batch_bytes: cfg.max_batch_bytes,
            max_batch_wait: Duration::from_millis(cfg.max_batch_wait_ms),
        },
        cfg.pipeline_threads,
        cfg.pipeline_queue_depth,
        cfg.writer_threads,
        cfg.writer_queue_depth,
        &metrics,
        dlq,
        &signing,
        &report_tx,
        detect,
        &shutdown,
    )?;
    // Only the threads report; with them gone, waiting for a report fails instead of hanging.
    drop(report_tx);
    let core = Arc::new(Mutex::new(ConsumerState {
        cfg: cfg.clone(),
        store,
        parts: Vec::new(),
        last_part: 0,
        pipelines: threads.pipelines.clone(),
        reports: report_rx,
        metrics: metrics.clone(),
        fatal: None,
        chunks_sent_at: Instant::now(),
        signing,
        refreshed_at: Instant::now(),
    }));

    let mut cc = client_config(&cfg);
    cc.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Tansu and small batches: the 500 ms default wait cuts throughput by an order of magnitude.
        .set("fetch.wait.max.ms", "10")
        // The prefetch queue: 16 MiB of payload is a fraction of a second at full speed, and
        // what librdkafka holds for it is about twice that (64 MiB held 150 MiB more).
        .set("queued.max.messages.kbytes", "16384")
        // When the prefetch queue is full, librdkafka waits this long before fetching again
        // (default 1 s): with a busy pipeline that idles everything for most of a second.
        .set("fetch.queue.backoff.ms", "10")
        // High watermarks for the lag per partition (`vigil_partition_lag_records`).
        .set("statistics.interval.ms", "1000");
    for (k, v) in &cfg.kafka_properties {
        cc.set(k, v);
    }
    let result = (|| -> Result<(), IngestError> {
        let consumer: BaseConsumer<Callbacks> = cc.create_with_context(Callbacks {
            core: core.clone(),
            metrics: metrics.clone(),
        })?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let mut polls = 0u32;
        let mut idle = true;
        while !shutdown.load(Ordering::Relaxed) {
            if idle || polls >= POLLS_BETWEEN_CHORES {
                lock(&core).chores(&consumer, idle)?;
                polls = 0;
            }
            // The lock is not held across poll: rebalance callbacks run inside it.
            match consumer.poll(Duration::from_millis(if idle { 100 } else { 0 })) {
                None => idle = true,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    idle = true;
                }
                Some(Ok(msg)) => {
                    idle = false;
                    polls += 1;
                    lock(&core).handle(&consumer, &msg)?;
                }
            }
        }
        let mut c = lock(&core);
        if let Some(e) = c.fatal.take() {
            return Err(e);
        }
        c.flush(&consumer, None)
    })();

    // Closing the queues stops the threads once they have finished what they hold.
    lock(&core).pipelines.clear();
    threads.stop();
    if let Some(p) = &side {
        use rdkafka::producer::Producer;
        if let Err(e) = p.flush(Duration::from_secs(10)) {
            tracing::error!(error = %e, "dead-letter producer did not flush");
        }
    }
    result
}
