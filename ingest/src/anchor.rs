//! The anchor topic: publishing signed checkpoints to it ([`AnchorPublisher`], the
//! [`vigil_store::Anchor`] every signed log of a `serve` process shares), and reading them all
//! back for a verifier ([`read_anchor_topic`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::producer::{BaseRecord, Producer};

use crate::pipeline::{self, SIDE_ANCHOR, SideProducer};
use crate::{IngestConfig, IngestError, IngestMetrics, client_config};

/// Publishes signed checkpoints to the anchor topic (`checkpoint_topic`), keyed by their log's
/// origin, counted in ingest's metrics (`anchors_sent`, `anchors_delivered`, `anchors_failed`).
pub struct AnchorPublisher {
    producer: SideProducer,
    topic: String,
    metrics: Arc<IngestMetrics>,
}

impl AnchorPublisher {
    /// `None` when checkpoints are not anchored in Kafka (`checkpoint_topic` unset). `quiet`:
    /// librdkafka's own logs are dropped and the topic is not looked up (a one-shot caller
    /// reports the outcome of [`Self::flush`]); otherwise a missing topic is logged loudly.
    pub fn new(
        cfg: &IngestConfig,
        metrics: Arc<IngestMetrics>,
        quiet: bool,
    ) -> Result<Option<AnchorPublisher>, IngestError> {
        let Some(topic) = &cfg.checkpoint_topic else {
            return Ok(None);
        };
        let producer = pipeline::side_producer(client_config(cfg), &metrics, quiet)?;
        if !quiet {
            check_anchor_topic(&producer, topic);
        }
        Ok(Some(AnchorPublisher {
            producer,
            topic: topic.clone(),
            metrics,
        }))
    }

    /// Wait up to `timeout` for what was queued to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), IngestError> {
        Ok(self.producer.flush(timeout)?)
    }
}

impl vigil_store::Anchor for AnchorPublisher {
    /// Queue the note for the anchor topic (a failure is logged and counted; the checkpoint
    /// is in the store).
    fn publish(&self, origin: &str, note: &[u8]) {
        let record: BaseRecord<'_, str, [u8], usize> =
            BaseRecord::with_opaque_to(&self.topic, SIDE_ANCHOR)
                .key(origin)
                .payload(note);
        match self.producer.send(record) {
            Ok(()) => self.metrics.anchors_sent.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::error!(error = %e, topic = %self.topic, "checkpoint anchor enqueue failed");
                self.metrics.anchors_failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Warn, loudly, when checkpoints cannot be anchored: the topic does not exist.
fn check_anchor_topic(p: &SideProducer, topic: &str) {
    match p
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
    {
        Ok(md) => {
            let ok = md
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            if !ok {
                tracing::error!(%topic, "the checkpoint anchor topic does not exist: checkpoints are signed and kept in the store, but not anchored outside it until it is created (or set checkpoint.kafka_topic = \"\" to anchor elsewhere)");
            }
        }
        Err(e) => {
            tracing::warn!(%topic, error = %e, "could not look up the checkpoint anchor topic")
        }
    }
}

/// A consumer context that does not log reaching a partition's end as an error (it is how the
/// anchor reader knows it is done).
struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            && !reason.contains("reached end of partition")
        {
            tracing::warn!(%error, reason, "anchor consumer");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// How long reading the anchor topic may take in all.
const READ_ANCHORS_MAX: Duration = Duration::from_secs(60);
/// After every partition reported its end, how long to keep reading (a broker whose end
/// trails by a batch).
const READ_ANCHORS_SETTLE: Duration = Duration::from_secs(1);

/// Every checkpoint in `topic` at `brokers` (with librdkafka `properties`: TLS, SASL), read
/// from the beginning to the end of each partition, each named by its place
/// (`anchor TOPIC/PARTITION@OFFSET`). Bounded: an error if the ends are not reached within a
/// minute. Nothing is committed (a group of its own, no offsets stored).
pub fn read_anchor_topic(
    brokers: &str,
    topic: &str,
    properties: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, Vec<u8>)>, IngestError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let fail = |what: String| IngestError::AnchorTopic {
        topic: topic.to_owned(),
        what,
    };
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers)
        .set("group.id", format!("vigil-verify-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10");
    for (k, v) in properties {
        cc.set(k, v);
    }
    let consumer: BaseConsumer<QuietEof> = cc.create_with_context(QuietEof)?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| fail(format!("metadata: {e}")))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(fail("no partitions".to_owned()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    let mut settled: Option<std::time::Instant> = None;
    while start.elapsed() < READ_ANCHORS_MAX
        && settled.is_none_or(|t| t.elapsed() < READ_ANCHORS_SETTLE)
    {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(v) = m.payload() {
                    out.push((
                        format!("anchor {topic}/{}@{}", m.partition(), m.offset()),
                        v.to_vec(),
                    ));
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(fail(format!("reading: {e}"))),
            None => {}
        }
        if settled.is_none() && partitions.iter().all(|p| at_end.contains(p)) {
            settled = Some(std::time::Instant::now());
        }
    }
    if settled.is_none() {
        return Err(fail(format!(
            "did not reach the end of every partition within {READ_ANCHORS_MAX:?}"
        )));
    }
    Ok(out)
}
