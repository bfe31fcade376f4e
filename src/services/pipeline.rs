//! The ingest settings and the checkpoint signer, from the configuration.

use std::sync::Arc;

use anyhow::Context;

use vigil_ingest::IngestConfig;
use vigil_schemas::SourceFormat;
use vigil_store::checkpoint::{Checkpointer, KeyRing};

use crate::config::{Config, nonempty};

/// The ingest settings from the configuration.
pub fn ingest_config(cfg: &Config) -> anyhow::Result<IngestConfig> {
    let mut formats = std::collections::HashMap::new();
    for (topic, f) in &cfg.kafka.formats {
        let f: SourceFormat = f
            .parse()
            .map_err(|e: String| anyhow::anyhow!("kafka.formats.{topic}: {e}"))?;
        formats.insert(topic.clone(), f);
    }
    Ok(IngestConfig {
        brokers: cfg.kafka.brokers.clone(),
        topics: cfg.kafka.topics.clone(),
        group_id: cfg.kafka.group_id.clone(),
        formats,
        dlq_suffix: (!cfg.kafka.dlq_suffix.is_empty()).then(|| cfg.kafka.dlq_suffix.clone()),
        kafka_properties: cfg
            .kafka
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        decoder: cfg.decode.decoder_config()?,
        max_batch_events: cfg.store.max_batch_events,
        max_batch_bytes: cfg.store.max_batch_bytes,
        max_batch_wait_ms: cfg.store.max_batch_wait_ms,
        pipeline_threads: cfg.store.pipeline_threads,
        pipeline_queue_depth: cfg.store.pipeline_queue_depth,
        writer_threads: cfg.store.writer_threads,
        writer_queue_depth: cfg.store.writer_queue_depth,
        checkpoint_interval_ms: cfg.checkpoint.interval_ms,
        checkpoint_topic: (!cfg.checkpoint.kafka_topic.is_empty())
            .then(|| cfg.checkpoint.kafka_topic.clone()),
    })
}

/// The checkpoint signer: the configured (or the data directory's) keys, able to sign now;
/// every checkpoint and the key registry put into `bucket` too, when the store is in one.
pub fn checkpointer(
    cfg: &Config,
    bucket: Option<&Arc<vigil_store::Bucket>>,
) -> anyhow::Result<Arc<Checkpointer>> {
    let keys = KeyRing::open(
        &cfg.store.data_dir,
        nonempty(&cfg.checkpoint.signing_key_file),
    )
    .context("opening the checkpoint signing keys")?;
    keys.check_can_sign()?;
    for k in &keys.registry.keys {
        tracing::info!(public_key = %k.vkey, valid_from_ms = k.valid_from_ms,
            valid_until_ms = ?k.valid_until_ms, "checkpoint signing key (pin it to verify the store)");
    }
    let mut cps = Checkpointer::new(
        &cfg.store.data_dir,
        keys,
        nonempty(&cfg.checkpoint.mirror_dir).map(std::path::Path::to_path_buf),
    );
    if let Some(b) = bucket {
        cps = cps
            .with_bucket(b.clone())
            .with_context(|| format!("putting the key registry into {}", b.url()))?;
    }
    Ok(Arc::new(cps))
}
