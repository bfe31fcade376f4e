//! The threads behind the consumer: pipeline threads (decode → chain → batch) and writer
//! threads (seal → durable Parquet file), and the dead-letter producer they share.
//!
//! A partition always goes to the same pipeline thread and the same writer, so its records
//! are chained and its files written in offset order. Every queue is bounded: a pipeline
//! thread blocks on a full writer queue, which fills its own queue, which makes the consumer
//! pause the partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender, SyncSender};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use vigil_schemas::{DecodeError, Decoder};
use vigil_store::LogSigner;
use vigil_store::merkle::Frontier;
use vigil_store::{
    Appended, ChainHead, FileInfo, PartitionBatch, Piece, RecordRef, SealedBatch, Store, StoreError,
};

use crate::chunk::Chunk;
use crate::{IngestError, IngestMetrics, Key};

/// Work for a pipeline thread.
pub(crate) enum Job {
    /// A partition was assigned: continue its chain from this batch's head.
    Open {
        key: Key,
        batch: Box<PartitionBatch>,
        decoder: Decoder,
        /// Its writer, the same for all its batches so that its files are written in order.
        writer: usize,
    },
    Records(Chunk),
    /// Seal the partition's open batch now (revoke, shutdown).
    Seal(Key),
    /// Seal and forget the partition (revoked).
    Close(Key),
    /// Forget the partition and what it holds, unwritten (another instance writes its log).
    Drop(Key),
}

/// What the consumer thread hears back.
pub(crate) enum Report {
    /// A file is durable (or failed to be written).
    Written {
        key: Key,
        rows: usize,
        result: Result<FileInfo, StoreError>,
    },
    /// A pipeline thread hit an error it cannot go on from.
    Failed(IngestError),
}

/// Batch limits, shared by the pipeline threads.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub max_batch_wait: Duration,
}

/// A sealed batch for a writer thread, and when its first record arrived.
type ToWrite = (Key, SealedBatch, Instant);

struct Open {
    batch: PartitionBatch,
    decoder: Decoder,
    writer: usize,
    /// When the open batch got its first record.
    opened_at: Option<Instant>,
}

struct Pipeline {
    limits: Limits,
    parts: HashMap<Key, Open>,
    writers: Vec<SyncSender<ToWrite>>,
    metrics: Arc<IngestMetrics>,
    dlq: Option<Dlq>,
    /// Where chained rows go for detection, if it runs.
    detect: Option<crossbeam_channel::Sender<Piece>>,
}

/// Hand the rows chained since the last cut to detection (blocks while it is behind: that is
/// its backpressure).
fn cut(
    open: &mut Open,
    detect: Option<&crossbeam_channel::Sender<Piece>>,
) -> Result<(), IngestError> {
    let Some(detect) = detect else {
        return Ok(());
    };
    if let Some(piece) = open.batch.cut()? {
        detect.send(piece).map_err(|_| IngestError::DetectGone)?;
    }
    Ok(())
}

/// Seal a partition's open batch and queue it for its writer.
fn seal_open(
    open: &mut Open,
    key: &Key,
    writers: &[SyncSender<ToWrite>],
    detect: Option<&crossbeam_channel::Sender<Piece>>,
) -> Result<(), IngestError> {
    let opened_at = open.opened_at.take().unwrap_or_else(Instant::now);
    cut(open, detect)?;
    if let Some(sealed) = open.batch.seal()? {
        // Blocks while the writer is behind: that is the backpressure.
        writers
            .get(open.writer)
            .ok_or(IngestError::Internal("no such writer"))?
            .send((key.clone(), sealed, opened_at))
            .map_err(|_| IngestError::WriterGone)?;
    }
    Ok(())
}

impl Pipeline {
    fn seal(&mut self, key: &Key) -> Result<(), IngestError> {
        match self.parts.get_mut(key) {
            Some(open) => seal_open(open, key, &self.writers, self.detect.as_ref()),
            None => Ok(()),
        }
    }

    fn records(&mut self, chunk: &Chunk) -> Result<(), IngestError> {
        let Pipeline {
            limits,
            parts,
            writers,
            metrics,
            dlq,
            detect,
        } = self;
        let open = parts
            .get_mut(&chunk.key)
            .ok_or(IngestError::Internal("records for a partition not opened"))?;
        chunk.for_each(|rec| {
            match open.batch.append(rec, &open.decoder, chunk.received_ns)? {
                Appended::Decoded(n) => {
                    metrics.records_decoded.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .events_decoded
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Appended::Rejected(e) => {
                    metrics.records_rejected.fetch_add(1, Ordering::Relaxed);
                    if let Some(dlq) = dlq {
                        dead_letter(dlq, rec, &e, metrics);
                    }
                }
            }
            open.opened_at.get_or_insert_with(Instant::now);
            if open.batch.rows() >= limits.max_batch_events
                || open.batch.raw_bytes() >= limits.max_batch_bytes
            {
                seal_open(open, &chunk.key, writers, detect.as_ref())?;
            }
            Ok::<(), IngestError>(())
        })?;
        cut(open, detect.as_ref())
    }

    fn seal_expired(&mut self) -> Result<(), IngestError> {
        let wait = self.limits.max_batch_wait;
        let due: Vec<Key> = self
            .parts
            .iter()
            .filter(|(_, p)| p.opened_at.is_some_and(|t| t.elapsed() >= wait))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.seal(&k)?;
        }
        Ok(())
    }

    /// How long until the next open batch is due.
    fn next_due(&self) -> Duration {
        self.parts
            .values()
            .filter_map(|p| p.opened_at)
            .map(|t| self.limits.max_batch_wait.saturating_sub(t.elapsed()))
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    fn handle(&mut self, job: Job) -> Result<(), IngestError> {
        match job {
            Job::Open {
                key,
                batch,
                decoder,
                writer,
            } => {
                self.parts.insert(
                    key,
                    Open {
                        batch: *batch,
                        decoder,
                        writer,
                        opened_at: None,
                    },
                );
                Ok(())
            }
            Job::Records(chunk) => self.records(&chunk),
            Job::Seal(key) => self.seal(&key),
            Job::Close(key) => {
                self.seal(&key)?;
                self.parts.remove(&key);
                Ok(())
            }
            Job::Drop(key) => {
                self.parts.remove(&key);
                Ok(())
            }
        }
    }
}

fn run_pipeline(mut p: Pipeline, jobs: Receiver<Job>, reports: Sender<Report>) {
    loop {
        let result = match jobs.recv_timeout(p.next_due()) {
            Ok(job) => p.handle(job),
            Err(RecvTimeoutError::Timeout) => p.seal_expired(),
            // The consumer flushed what it needed and hung up.
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if let Err(e) = result {
            let _ = reports.send(Report::Failed(e));
            return;
        }
    }
}

/// The pipeline and writer threads, and the queues into them.
pub(crate) struct Threads {
    pub pipelines: Vec<crossbeam_channel::Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    /// Start `pipelines` pipeline threads (each queue `pipeline_queue_depth` chunks deep) and
    /// `writers` writer threads (each queue `writer_queue_depth` sealed batches deep).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        store: &Store,
        limits: Limits,
        pipelines: usize,
        pipeline_queue_depth: usize,
        writers: usize,
        writer_queue_depth: usize,
        metrics: &Arc<IngestMetrics>,
        dlq: Option<Dlq>,
        signing: &Signing,
        reports: &Sender<Report>,
        detect: Option<crossbeam_channel::Sender<Piece>>,
        stopping: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Threads, IngestError> {
        let mut handles = Vec::new();
        let mut writer_queues = Vec::new();
        for i in 0..writers.max(1) {
            let (tx, rx) = mpsc::sync_channel::<ToWrite>(writer_queue_depth.max(1));
            let (store, reports, signing) = (store.clone(), reports.clone(), signing.clone());
            let (metrics, stopping) = (metrics.clone(), stopping.clone());
            handles.push(spawn(format!("vigil-writer-{i}"), move || {
                for (key, sealed, opened_at) in rx {
                    let rows = sealed.rows();
                    let started = Instant::now();
                    // Durable file, then its checkpoint: a crash in between is caught up on
                    // the next assignment. A full volume is waited out: the batch is kept and
                    // written again once there is room (meanwhile the queues fill and the
                    // partitions pause); a half-written temp file is never a file.
                    let mut wait = Duration::from_millis(200);
                    // So is a bucket that does not answer (each put is retried for up to
                    // `store.s3_retry_timeout_ms` before it counts as failed here).
                    let mut said: Option<Instant> = None;
                    let result = loop {
                        let r = store.write(&sealed).and_then(|info| {
                            let span = &sealed.span;
                            let chain = ChainHead {
                                offset: span.last_offset,
                                hash: span.last_chain_hash,
                            };
                            signing.checkpoint(&key, chain, &span.tree)?;
                            Ok(info)
                        });
                        // What to wait out, what it is counted as, and what to say.
                        let waited = match &r {
                            Err(_) if stopping.load(std::sync::atomic::Ordering::Relaxed) => None,
                            Err(e) if vigil_store::is_volume_full(e) => Some((
                                &metrics.volume_full_retries,
                                "the data volume is full: writing again once there is room (partitions pause meanwhile)",
                            )),
                            Err(e) if vigil_store::is_bucket_unavailable(e) => Some((
                                &metrics.bucket_retries,
                                "the store's bucket does not answer: writing again until it does (partitions pause meanwhile)",
                            )),
                            _ => None,
                        };
                        match (r, waited) {
                            (Err(e), Some((counter, what))) => {
                                if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                                    tracing::error!(topic = %key.topic, partition = key.partition, error = %e, "{what}");
                                    said = Some(Instant::now());
                                }
                                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                std::thread::sleep(wait);
                                wait = (wait * 2).min(Duration::from_secs(2));
                            }
                            (r, _) => break r,
                        }
                    };
                    if said.is_some() && result.is_ok() {
                        tracing::info!(topic = %key.topic, partition = key.partition, "the data volume has room again (or the bucket answers): written");
                    }
                    if result.is_ok() {
                        metrics.flush_seconds.observe(started.elapsed());
                        metrics.batch_age_seconds.observe(opened_at.elapsed());
                    }
                    if reports.send(Report::Written { key, rows, result }).is_err() {
                        break;
                    }
                }
            })?);
            writer_queues.push(tx);
        }
        let mut queues = Vec::new();
        for i in 0..pipelines.max(1) {
            let (tx, rx) = crossbeam_channel::bounded::<Job>(pipeline_queue_depth.max(1));
            let p = Pipeline {
                limits,
                parts: HashMap::new(),
                writers: writer_queues.clone(),
                metrics: metrics.clone(),
                dlq: dlq.clone(),
                detect: detect.clone(),
            };
            let reports = reports.clone();
            handles.push(spawn(format!("vigil-pipeline-{i}"), move || {
                run_pipeline(p, rx, reports)
            })?);
            queues.push(tx);
        }
        // The writers stop once every pipeline thread (each holding their queues) has.
        drop(writer_queues);
        Ok(Threads {
            pipelines: queues,
            handles,
        })
    }

    /// Close the queues and wait for every thread to finish what it holds.
    pub(crate) fn stop(mut self) {
        self.pipelines.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, IngestError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| IngestError::Config(format!("starting a thread: {e}")))
}

/// Signs checkpoints (and anchors them), counting them; shared by the writer threads and the
/// consumer thread.
#[derive(Clone)]
pub(crate) struct Signing {
    pub signer: LogSigner,
    pub metrics: Arc<IngestMetrics>,
}

impl Signing {
    /// A checkpoint of the log at this head, if its tree has grown since the last one.
    pub(crate) fn checkpoint(
        &self,
        key: &Key,
        chain: ChainHead,
        tree: &Frontier,
    ) -> Result<(), StoreError> {
        if self.signer.sign(key, chain, tree)? {
            self.metrics
                .checkpoints_signed
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sign again the logs whose newest checkpoint is older than `max_age_ms`.
    pub(crate) fn refresh(&self, max_age_ms: i64) -> Result<(), StoreError> {
        let n = self.signer.refresh(max_age_ms)?;
        self.metrics
            .checkpoints_signed
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// What a side record (sent by the shared producer) is, for its delivery report.
const SIDE_DLQ: usize = 0;
pub(crate) const SIDE_ANCHOR: usize = 1;

pub(crate) struct SideContext {
    pub metrics: Arc<IngestMetrics>,
    /// librdkafka's own logs and errors are not logged (a one-shot caller reports the outcome).
    pub quiet: bool,
}

impl ClientContext for SideContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        if self.quiet {
            return;
        }
        match level {
            Emerg | Alert | Critical | Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            Notice | Info => tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}"),
            Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !self.quiet {
            tracing::error!(target: "rdkafka::client", "librdkafka: {error}: {reason}");
        }
    }
}

impl ProducerContext for SideContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, kind: usize) {
        use rdkafka::message::Message;
        let m = &self.metrics;
        match (result, kind) {
            (Ok(_), SIDE_DLQ) => m.dlq_delivered.fetch_add(1, Ordering::Relaxed),
            (Ok(_), _) => m.anchors_delivered.fetch_add(1, Ordering::Relaxed),
            (Err((e, msg)), SIDE_DLQ) => {
                tracing::error!(error = %e, topic = msg.topic(), "dead-letter delivery failed (the record is in the store)");
                m.dlq_failed.fetch_add(1, Ordering::Relaxed)
            }
            (Err((e, msg)), _) => {
                if !self.quiet {
                    tracing::error!(error = %e, topic = msg.topic(), "checkpoint anchor delivery failed (the checkpoint is in the store)");
                }
                m.anchors_failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// The producer for dead letters and checkpoint anchors.
pub(crate) type SideProducer = Arc<ThreadedProducer<SideContext>>;

/// Dead letters go to `<topic><suffix>`.
#[derive(Clone)]
pub(crate) struct Dlq {
    pub producer: SideProducer,
    pub suffix: String,
}

pub(crate) fn side_producer(
    mut config: ClientConfig,
    metrics: &Arc<IngestMetrics>,
    quiet: bool,
) -> Result<SideProducer, IngestError> {
    config.set("linger.ms", "5");
    let p: ThreadedProducer<SideContext> = config.create_with_context(SideContext {
        metrics: metrics.clone(),
        quiet,
    })?;
    Ok(Arc::new(p))
}

/// Copy a rejected record to `<topic><suffix>` with its headers and the reason. A record that
/// is itself a dead letter (a regex subscription can match the dead-letter topics) is not
/// copied again: that would loop, `t.dlq` → `t.dlq.dlq` → …; it is stored like any other.
fn dead_letter(dlq: &Dlq, rec: &RecordRef<'_>, err: &DecodeError, metrics: &IngestMetrics) {
    let (producer, suffix) = (&dlq.producer, &dlq.suffix);
    if rec.topic.ends_with(suffix.as_str()) {
        metrics.dlq_skipped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let topic = format!("{}{suffix}", rec.topic);
    let mut headers = OwnedHeaders::new();
    for (key, value) in rec.headers {
        headers = headers.insert(Header { key, value: *value });
    }
    let (error, kind) = (err.to_string(), err.kind_name());
    let (partition, offset) = (rec.partition.to_string(), rec.offset.to_string());
    for (key, value) in [
        ("vigil.error", error.as_str()),
        ("vigil.error_kind", kind),
        ("vigil.source_topic", rec.topic),
        ("vigil.source_partition", &partition),
        ("vigil.source_offset", &offset),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    let mut record: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(&topic, SIDE_DLQ).headers(headers);
    if let Some(k) = rec.key {
        record = record.key(k);
    }
    if let Some(v) = rec.value {
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
