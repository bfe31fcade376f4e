//! Vigil's ingest stage: a Kafka consumer group feeding the hash-chained store.
//!
//! **For:** consuming the configured topics (names or `^regex`) in a consumer group; running
//! each partition as its own ordered pipeline (decode → chain → batch → write); bounding
//! every batch (events, bytes, wait) and every queue; pausing partitions when the store falls
//! behind; copying records that fail to decode to a dead-letter topic; committing offsets only
//! once the file that holds them is durable; and resuming each assigned partition from the
//! store's own record of where it stands.
//! **Not for:** decoding formats (`vigil-schemas`) or file layout and hashing (`vigil-store`).
//!
//! Threads: one consumer thread runs [`run`] (poll, decode, chain, append — and the rebalance
//! callbacks, which librdkafka runs inside poll); `writer_threads` writer threads seal batches
//! into files. A partition always goes to the same writer, so its files are written in order.
//! Queues between them hold at most `writer_queue_depth` batches per writer.

mod metrics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use vigil_schemas::{DecodeError, Decoder, DecoderConfig, SourceFormat};
use vigil_store::{Appended, FileInfo, PartitionBatch, RecordRef, SealedBatch, Store, StoreError};

pub use metrics::{IngestMetrics, MetricsSnapshot};

/// Everything the ingest stage is configured with.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic names; a name starting with `^` is a regex (librdkafka's convention).
    pub topics: Vec<String>,
    pub group_id: String,
    /// Formats pinned per topic; other topics are detected per record.
    pub formats: HashMap<String, SourceFormat>,
    /// Suffix of the dead-letter topic (`<topic><suffix>`); `None` disables it.
    pub dlq_suffix: Option<String>,
    /// librdkafka properties passed through as given (TLS, SASL, tuning); they override
    /// Vigil's defaults.
    pub kafka_properties: Vec<(String, String)>,
    pub decoder: DecoderConfig,
    /// A partition's batch is sealed into a file at this many events…
    pub max_batch_events: usize,
    /// …or this many raw bytes…
    pub max_batch_bytes: usize,
    /// …or this long after its first record.
    pub max_batch_wait_ms: u64,
    pub writer_threads: usize,
    /// Sealed batches each writer may hold queued before partitions are paused.
    pub writer_queue_depth: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("writer thread stopped unexpectedly")]
    WriterGone,
}

type Key = (String, i32);

struct WriteJob {
    key: Key,
    sealed: SealedBatch,
}

struct Written {
    key: Key,
    rows: usize,
    result: Result<FileInfo, StoreError>,
}

/// One assigned partition's pipeline state.
struct Part {
    decoder: Decoder,
    batch: PartitionBatch,
    opened_at: Option<Instant>,
    /// Batches handed to the writer and not yet confirmed durable.
    in_flight: usize,
    /// A sealed batch the writer queue had no room for; the partition is paused meanwhile.
    pending: Option<SealedBatch>,
    paused: bool,
    /// Until the broker has delivered a record at or before the resume point, a later first
    /// record is not trusted as a gap: some brokers (Tansu 0.6) skip the rest of a record batch
    /// when a fetch starts inside it (after an assignment, a seek, or a pause). We then seek
    /// back before it, widening the window each time.
    resume: Option<Resume>,
    /// A jump in offsets seen once: (head, next offset delivered). It is recorded as a gap only
    /// when the broker shows the same jump again, reading on from before it.
    suspect_gap: Option<(i64, i64)>,
}

#[derive(Clone, Copy, Debug)]
struct Resume {
    /// The next offset the store needs.
    next: i64,
    /// How far before `next` the next seek-back goes.
    window: i64,
    /// When the partition was (re)positioned. A broker that skips to the next batch may have
    /// none to give (the resume point is in the last batch): silence past
    /// [`RESUME_SILENCE`] also means "seek back".
    since: Instant,
}

impl Resume {
    fn new(next: i64) -> Resume {
        Resume {
            next,
            window: RESUME_WINDOW,
            since: Instant::now(),
        }
    }

    /// Where to seek back to now, and the state for the next attempt: the window widens
    /// fourfold, down to offset 0, after which whatever the broker gives is what it holds.
    fn step_back(self) -> (i64, Resume) {
        let target = (self.next - self.window).max(0);
        let window = if target == 0 {
            0
        } else {
            self.window.saturating_mul(4)
        };
        (
            target,
            Resume {
                next: self.next,
                window,
                since: Instant::now(),
            },
        )
    }
}

/// How long a resuming partition may stay silent before we seek back anyway.
const RESUME_SILENCE: Duration = Duration::from_secs(2);

/// First seek-back window; widened fourfold each time the broker again starts too late.
const RESUME_WINDOW: i64 = 1024;

struct Core {
    cfg: IngestConfig,
    store: Store,
    parts: HashMap<Key, Part>,
    writers: Vec<SyncSender<WriteJob>>,
    done: Receiver<Written>,
    metrics: Arc<IngestMetrics>,
    /// The first fatal error (a failed write, an unreadable store); ends the run.
    fatal: Option<IngestError>,
}

struct Ctx {
    core: Arc<Mutex<Core>>,
}

impl ClientContext for Ctx {}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // A panic while holding the lock is a bug; the state it guards is then not trustworthy.
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = lock(&self.core);
            let keys: Vec<Key> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            tracing::info!(partitions = ?keys, "partitions revoked: flushing and committing");
            if let Err(e) = core.flush(consumer, Some(&keys)) {
                core.fatal.get_or_insert(e);
            }
            let mut paused = TopicPartitionList::new();
            for k in &keys {
                if core.parts.remove(k).is_some_and(|p| p.paused) {
                    paused.add_partition(&k.0, k.1);
                }
            }
            // Leave no pause behind for whoever is assigned these partitions next.
            if paused.count() > 0
                && let Err(e) = consumer.resume(&paused)
            {
                tracing::debug!(error = %e, "resuming revoked partitions");
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

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

impl Core {
    /// Open a pipeline for each newly assigned partition at the store's head, and make the
    /// consumer resume right after it (the store, not the group's committed offset, is the
    /// authority on what is stored).
    fn assign(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        tpl: &TopicPartitionList,
    ) -> Result<(), IngestError> {
        let mut resume = TopicPartitionList::new();
        for e in tpl.elements() {
            let (topic, partition) = (e.topic().to_owned(), e.partition());
            let head = self.store.head(&topic, partition)?;
            // An empty store needs everything the topic still holds, whatever the group
            // committed; otherwise resume right after the store's head.
            let offset = if head.offset >= 0 {
                Offset::Offset(head.offset + 1)
            } else {
                Offset::Beginning
            };
            resume.add_partition_offset(&topic, partition, offset)?;
            tracing::info!(%topic, partition, store_head = head.offset, "partition assigned");
            let decoder = Decoder::new(
                self.cfg.decoder.clone(),
                self.cfg.formats.get(&topic).copied(),
            );
            let batch = PartitionBatch::new(
                &topic,
                partition,
                head,
                self.cfg.max_batch_events.min(1 << 16),
            );
            let verify = (head.offset >= 0).then(|| Resume::new(head.offset + 1));
            self.parts.insert(
                (topic, partition),
                Part {
                    decoder,
                    batch,
                    opened_at: None,
                    in_flight: 0,
                    pending: None,
                    paused: false,
                    resume: verify,
                    suspect_gap: None,
                },
            );
        }
        consumer.assign(&resume)?;
        Ok(())
    }

    fn writer_for(&self, key: &Key) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.writers.len() as u64) as usize
    }

    /// Seal a partition's batch and hand it to its writer; pause the partition when the
    /// writer's queue is full.
    fn seal(&mut self, consumer: &BaseConsumer<Ctx>, key: &Key) -> Result<(), IngestError> {
        let w = self.writer_for(key);
        let Some(part) = self.parts.get_mut(key) else {
            return Ok(());
        };
        let Some(sealed) = part.batch.seal()? else {
            return Ok(());
        };
        part.opened_at = None;
        if let Some(older) = part.pending.take() {
            // Still paused with a batch waiting: wait for room rather than hold a second one.
            self.writers[w]
                .send(WriteJob {
                    key: key.clone(),
                    sealed: older,
                })
                .map_err(|_| IngestError::WriterGone)?;
            part.in_flight += 1;
        }
        match self.writers[w].try_send(WriteJob {
            key: key.clone(),
            sealed,
        }) {
            Ok(()) => part.in_flight += 1,
            Err(TrySendError::Full(job)) => {
                part.pending = Some(job.sealed);
                if !part.paused {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&key.0, key.1);
                    consumer.pause(&tpl)?;
                    part.paused = true;
                    self.metrics.pauses.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %key.0, partition = key.1, "store behind: partition paused");
                }
            }
            Err(TrySendError::Disconnected(_)) => return Err(IngestError::WriterGone),
        }
        Ok(())
    }

    /// Handle one confirmation from a writer: commit the offsets now durable; resume a paused
    /// partition when its waiting batch fits.
    fn on_written(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        w: Written,
        mode: CommitMode,
    ) -> Result<(), IngestError> {
        let info = w.result?;
        self.metrics.files_written.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes_written
            .fetch_add(info.bytes, Ordering::Relaxed);
        self.metrics
            .rows_stored
            .fetch_add(w.rows as u64, Ordering::Relaxed);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&w.key.0, w.key.1, Offset::Offset(info.last_offset + 1))?;
        if let Err(e) = consumer.commit(&tpl, mode) {
            // The store is the authority on what is stored; a failed commit only means
            // re-reading records that are then skipped.
            tracing::warn!(error = %e, topic = %w.key.0, partition = w.key.1, "offset commit failed");
        }
        if let Some(part) = self.parts.get_mut(&w.key) {
            part.in_flight = part.in_flight.saturating_sub(1);
        }
        // A writer has room again: offer it every batch that was waiting for one.
        self.retry_pending(consumer)
    }

    /// Hand waiting batches to their writers where there is room; resume their partitions.
    fn retry_pending(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), IngestError> {
        let waiting: Vec<Key> = self
            .parts
            .iter()
            .filter(|(_, p)| p.pending.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            let idx = self.writer_for(&key);
            let Some(part) = self.parts.get_mut(&key) else {
                continue;
            };
            if let Some(sealed) = part.pending.take() {
                match self.writers[idx].try_send(WriteJob {
                    key: key.clone(),
                    sealed,
                }) {
                    Ok(()) => part.in_flight += 1,
                    Err(TrySendError::Full(job)) => part.pending = Some(job.sealed),
                    Err(TrySendError::Disconnected(_)) => return Err(IngestError::WriterGone),
                }
            }
            if part.paused && part.pending.is_none() {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&key.0, key.1);
                consumer.resume(&tpl)?;
                part.paused = false;
            }
        }
        Ok(())
    }

    fn drain_written(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), IngestError> {
        while let Ok(w) = self.done.try_recv() {
            self.on_written(consumer, w, CommitMode::Async)?;
        }
        Ok(())
    }

    /// Seal and write everything the given partitions (or all) hold, wait until it is
    /// durable, and commit synchronously. Used on revoke and shutdown.
    fn flush(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        only: Option<&[Key]>,
    ) -> Result<(), IngestError> {
        let keys: Vec<Key> = match only {
            Some(k) => k.to_vec(),
            None => self.parts.keys().cloned().collect(),
        };
        for k in &keys {
            self.seal(consumer, k)?;
            let w = self.writer_for(k);
            if let Some(part) = self.parts.get_mut(k)
                && let Some(sealed) = part.pending.take()
            {
                self.writers[w]
                    .send(WriteJob {
                        key: k.clone(),
                        sealed,
                    })
                    .map_err(|_| IngestError::WriterGone)?;
                part.in_flight += 1;
            }
        }
        while keys
            .iter()
            .any(|k| self.parts.get(k).is_some_and(|p| p.in_flight > 0))
        {
            let w = self.done.recv().map_err(|_| IngestError::WriterGone)?;
            self.on_written(consumer, w, CommitMode::Sync)?;
        }
        Ok(())
    }

    /// Seek back partitions whose resume point has stayed silent too long.
    fn check_silent_resumes(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), IngestError> {
        for (key, part) in self.parts.iter_mut() {
            let Some(r) = part.resume else { continue };
            if part.paused || r.window == 0 || r.since.elapsed() < RESUME_SILENCE {
                continue;
            }
            let (target, next_try) = r.step_back();
            tracing::warn!(topic = %key.0, partition = key.1, expected = r.next, seek_to = target,
                "nothing delivered since resuming; reading again from before the resume point");
            seek_back(consumer, &self.metrics, key, target)?;
            part.resume = Some(next_try);
        }
        Ok(())
    }

    /// Seal batches that have waited long enough.
    fn seal_expired(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), IngestError> {
        let wait = Duration::from_millis(self.cfg.max_batch_wait_ms);
        let due: Vec<Key> = self
            .parts
            .iter()
            .filter(|(_, p)| p.opened_at.is_some_and(|t| t.elapsed() >= wait))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.seal(consumer, &k)?;
        }
        Ok(())
    }

    /// Drop a record delivered past `next` and make the broker read again from `target`.
    fn refetch(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        key: &Key,
        got: i64,
        next: i64,
        target: i64,
    ) -> Result<Option<DecodeError>, IngestError> {
        tracing::warn!(topic = %key.0, partition = key.1, expected = next, got, seek_to = target,
            "broker delivered past the next offset; reading again from before it");
        seek_back(consumer, &self.metrics, key, target)?;
        // This record comes again after the seek.
        self.metrics
            .records_refetched
            .fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }

    /// Decode, chain and append one record. Returns the rejected record's error, if any, for
    /// the dead-letter topic.
    fn handle(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        msg: &BorrowedMessage<'_>,
    ) -> Result<Option<DecodeError>, IngestError> {
        self.metrics
            .records_received
            .fetch_add(1, Ordering::Relaxed);
        let key = (msg.topic().to_owned(), msg.partition());
        let Some(part) = self.parts.get_mut(&key) else {
            // Not ours (a message that raced a revoke): it will be read by the new owner.
            self.metrics
                .records_not_assigned
                .fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let head = part.batch.head().offset;
        if let Some(r) = part.resume {
            if msg.offset() <= r.next || r.window == 0 {
                // Delivered at or before the resume point (or read from offset 0): the stream
                // is trusted from here.
                part.resume = None;
            } else {
                // The broker started after the resume point: not a gap we can trust yet.
                let (target, next_try) = r.step_back();
                part.resume = Some(next_try);
                return self.refetch(consumer, &key, msg.offset(), r.next, target);
            }
        }
        if msg.offset() <= head {
            self.metrics
                .records_already_stored
                .fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        if head >= 0 && msg.offset() > head + 1 {
            if part.suspect_gap == Some((head, msg.offset())) {
                // Seen twice, the second time reading on from before it: a real gap
                // (compaction, transaction markers, retention). The chain records it.
                part.suspect_gap = None;
                self.metrics.offset_gaps.fetch_add(1, Ordering::Relaxed);
            } else {
                part.suspect_gap = Some((head, msg.offset()));
                let (target, next_try) = Resume::new(head + 1).step_back();
                part.resume = Some(next_try);
                return self.refetch(consumer, &key, msg.offset(), head + 1, target);
            }
        }
        let headers: Vec<(&str, Option<&[u8]>)> = match msg.headers() {
            Some(h) => h.iter().map(|h| (h.key, h.value)).collect(),
            None => Vec::new(),
        };
        let rec = RecordRef {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key(),
            value: msg.payload(),
            headers: &headers,
        };
        let outcome = part.batch.append(&rec, &part.decoder, now_ns())?;
        part.opened_at.get_or_insert_with(Instant::now);
        let full = part.batch.rows() >= self.cfg.max_batch_events
            || part.batch.raw_bytes() >= self.cfg.max_batch_bytes;
        let rejected = match outcome {
            Appended::Decoded(n) => {
                self.metrics.records_decoded.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .events_decoded
                    .fetch_add(n as u64, Ordering::Relaxed);
                None
            }
            Appended::Rejected(e) => {
                self.metrics
                    .records_rejected
                    .fetch_add(1, Ordering::Relaxed);
                Some(e)
            }
        };
        if full {
            self.seal(consumer, &key)?;
        }
        Ok(rejected)
    }
}

/// Make the broker read a partition again from `target` (a resume point being verified).
fn seek_back(
    consumer: &BaseConsumer<Ctx>,
    metrics: &IngestMetrics,
    key: &Key,
    target: i64,
) -> Result<(), IngestError> {
    consumer.seek(
        &key.0,
        key.1,
        Offset::Offset(target),
        Duration::from_secs(10),
    )?;
    metrics.resume_seeks.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

struct DlqContext {
    metrics: Arc<IngestMetrics>,
}

impl ClientContext for DlqContext {}

impl ProducerContext for DlqContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.metrics.dlq_delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, m)) => {
                tracing::error!(error = %e, topic = m.topic(), "dead-letter delivery failed (the record is in the store)");
                self.metrics.dlq_failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn client_config(cfg: &IngestConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    c
}

fn dead_letter(
    producer: &ThreadedProducer<DlqContext>,
    suffix: &str,
    msg: &BorrowedMessage<'_>,
    err: &DecodeError,
    metrics: &IngestMetrics,
) {
    let topic = format!("{}{suffix}", msg.topic());
    let mut headers = OwnedHeaders::new();
    if let Some(h) = msg.headers() {
        for h in h.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let (error, kind) = (err.to_string(), err.kind_name());
    let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
    headers = headers
        .insert(Header {
            key: "vigil.error",
            value: Some(error.as_bytes()),
        })
        .insert(Header {
            key: "vigil.error_kind",
            value: Some(kind.as_bytes()),
        })
        .insert(Header {
            key: "vigil.source_topic",
            value: Some(msg.topic().as_bytes()),
        })
        .insert(Header {
            key: "vigil.source_partition",
            value: Some(partition.as_bytes()),
        })
        .insert(Header {
            key: "vigil.source_offset",
            value: Some(offset.as_bytes()),
        });
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic).headers(headers);
    if let Some(k) = msg.key() {
        record = record.key(k);
    }
    if let Some(v) = msg.payload() {
        record = record.payload(v);
    }
    match producer.send(record) {
        Ok(()) => metrics.dlq_sent.fetch_add(1, Ordering::Relaxed),
        Err((e, _)) => {
            tracing::error!(error = %e, %topic, "dead-letter enqueue failed (the record is in the store)");
            metrics.dlq_failed.fetch_add(1, Ordering::Relaxed)
        }
    };
}

fn spawn_writers(
    store: &Store,
    n: usize,
    depth: usize,
    done: mpsc::Sender<Written>,
) -> (Vec<SyncSender<WriteJob>>, Vec<JoinHandle<()>>) {
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for i in 0..n.max(1) {
        let (tx, rx) = mpsc::sync_channel::<WriteJob>(depth.max(1));
        let (store, done) = (store.clone(), done.clone());
        let h = std::thread::Builder::new()
            .name(format!("vigil-writer-{i}"))
            .spawn(move || {
                for job in rx {
                    let rows = job.sealed.batch.num_rows();
                    let result = store.write(&job.sealed);
                    if done
                        .send(Written {
                            key: job.key,
                            rows,
                            result,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .expect("spawning a writer thread");
        senders.push(tx);
        handles.push(h);
    }
    (senders, handles)
}

/// Run the ingest pipeline until `shutdown` is set or a fatal error occurs. On shutdown every
/// partition's open batch is written and committed before returning.
pub fn run(
    cfg: IngestConfig,
    store: Store,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<IngestMetrics>,
) -> Result<(), IngestError> {
    if cfg.topics.is_empty() {
        return Err(IngestError::Config("no topics to consume".into()));
    }
    if cfg.max_batch_events == 0 || cfg.max_batch_bytes == 0 {
        return Err(IngestError::Config("batch limits must be positive".into()));
    }
    let (done_tx, done_rx) = mpsc::channel();
    let (writers, handles) =
        spawn_writers(&store, cfg.writer_threads, cfg.writer_queue_depth, done_tx);
    let core = Arc::new(Mutex::new(Core {
        cfg: cfg.clone(),
        store,
        parts: HashMap::new(),
        writers,
        done: done_rx,
        metrics: metrics.clone(),
        fatal: None,
    }));

    let mut cc = client_config(&cfg);
    cc.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Tansu and small batches: the 500 ms default wait cuts throughput by an order of magnitude.
        .set("fetch.wait.max.ms", "10")
        .set("queued.max.messages.kbytes", "65536");
    for (k, v) in &cfg.kafka_properties {
        cc.set(k, v);
    }
    let consumer: BaseConsumer<Ctx> = cc.create_with_context(Ctx { core: core.clone() })?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;

    let dlq: Option<(ThreadedProducer<DlqContext>, String)> = match &cfg.dlq_suffix {
        Some(suffix) => {
            let mut pc = client_config(&cfg);
            pc.set("linger.ms", "5");
            let p: ThreadedProducer<DlqContext> = pc.create_with_context(DlqContext {
                metrics: metrics.clone(),
            })?;
            Some((p, suffix.clone()))
        }
        None => None,
    };

    let result = (|| -> Result<(), IngestError> {
        while !shutdown.load(Ordering::Relaxed) {
            {
                let mut c = lock(&core);
                if let Some(e) = c.fatal.take() {
                    return Err(e);
                }
                c.drain_written(&consumer)?;
                c.seal_expired(&consumer)?;
                c.check_silent_resumes(&consumer)?;
            }
            // The lock is not held across poll: rebalance callbacks run inside it.
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                Some(Ok(msg)) => {
                    let rejected = lock(&core).handle(&consumer, &msg)?;
                    if let (Some(err), Some((p, suffix))) = (rejected, &dlq) {
                        dead_letter(p, suffix, &msg, &err, &metrics);
                    }
                }
            }
        }
        let mut c = lock(&core);
        if let Some(e) = c.fatal.take() {
            return Err(e);
        }
        c.flush(&consumer, None)
    })();

    if let Some((p, _)) = &dlq {
        use rdkafka::producer::Producer;
        if let Err(e) = p.flush(Duration::from_secs(10)) {
            tracing::error!(error = %e, "dead-letter producer did not flush");
        }
    }
    drop(consumer);
    // Closing the job queues stops the writers once they have finished what they hold.
    lock(&core).writers.clear();
    for h in handles {
        let _ = h.join();
    }
    result
}
