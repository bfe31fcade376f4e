//! Publishing signed checkpoints to the anchor topic: the [`vigil_store::Anchor`] every signed
//! log of a `serve` process shares (the partitions' logs, Vigil's own logs).

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
