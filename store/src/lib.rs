//! Vigil's store stage: Parquet files, the per-partition blake3 hash chain, checkpoints.
//!
//! **For:** durable, verifiable storage of every record's raw bytes and canonical columns.
//! **Not for:** Kafka (that is `vigil-ingest`), decoding (`vigil-schemas`), or SQL
//! (`vigil-query`).
//!
//! Status: the crate boundary exists so the dependency graph is fixed from the start; the store
//! lands with the "Kafka to hash-chained Parquet" issue. It exports nothing yet.
