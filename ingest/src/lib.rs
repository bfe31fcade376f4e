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
//! Threads and queues (each queue bounded):
//!
//! ```text
//! consumer thread ──chunks──▶ pipeline threads ──sealed batches──▶ writer threads
//!   poll, offsets, resume      decode, chain, batch,               Parquet file, fsync
//!   checks, commit ◀──────────────── reports (file durable / failure) ───────┘
//! ```
//!
//! The consumer thread runs [`run`]: it polls, asks each partition's state machine what to do
//! with each record's offset (resume verification, re-deliveries, gaps, pause and resume: a
//! sans-IO core in `partition.rs`, unit-tested against a model broker), copies records into
//! chunks of at most 1 024 records / 1 MiB (`chunk.rs`), and commits
//! offsets once their file is durable. librdkafka runs the rebalance callbacks inside poll, on
//! this thread too. A partition always goes to the same pipeline thread and the same writer,
//! so it is chained and written in offset order. When a pipeline thread's queue is full the
//! partition is paused until it has room: that is how a slow store slows the consumer.

mod anchor;
mod chunk;
mod consumer;
mod metrics;
mod partition;
mod pipeline;
mod prometheus;

use std::collections::HashMap;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use vigil_schemas::{DecoderConfig, SourceFormat};
use vigil_store::StoreError;

pub use anchor::{AnchorPublisher, read_anchor_topic};
pub use consumer::run;
pub use metrics::{Histogram, IngestMetrics, MetricsSnapshot, PartitionLag};

/// A partition log, as ingest keys everything it holds per partition.
pub(crate) type Key = vigil_store::LogId;

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
    /// Threads decoding, chaining and batching; a partition always uses the same one.
    pub pipeline_threads: usize,
    /// Chunks each pipeline thread may hold queued before partitions are paused.
    pub pipeline_queue_depth: usize,
    pub writer_threads: usize,
    /// Sealed batches each writer may hold queued before pipeline threads wait.
    pub writer_queue_depth: usize,
    /// A log whose newest checkpoint is this old is signed again (same tree, fresh time).
    pub checkpoint_interval_ms: u64,
    /// Topic every checkpoint is also published to (an anchor outside the store), by an
    /// [`AnchorPublisher`] the caller gives [`run`]'s signer; `None` disables it.
    pub checkpoint_topic: Option<String>,
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
    #[error("detection stopped unexpectedly")]
    DetectGone,
    #[error("pipeline thread stopped unexpectedly")]
    PipelineGone,
    #[error("anchor topic {topic}: {what}")]
    AnchorTopic { topic: String, what: String },
    #[error("internal: {0}")]
    Internal(&'static str),
}

pub(crate) fn client_config(cfg: &IngestConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    c
}

pub(crate) fn reserved(topic: &str) -> IngestError {
    IngestError::Config(format!(
        "topic {topic:?} is reserved: Vigil writes its own audit log under that name; leave it out of the subscription"
    ))
}
