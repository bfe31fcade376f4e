//! Vigil's ingest stage: Kafka consumer groups, per-partition ordered pipelines, batching and
//! backpressure.
//!
//! **For:** turning Kafka records into decoded, bounded batches handed to the store, and
//! committing offsets only once the store says they are durable.
//! **Not for:** decoding formats (that is `vigil-schemas`), writing files or hashing (that is
//! `vigil-store`), or rules (`vigil-detect`).
//!
//! Status: the crate boundary exists so the dependency graph is fixed from the start; the
//! consumer itself lands with the "Kafka to hash-chained Parquet" issue. It exports nothing yet.
