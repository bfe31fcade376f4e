//! Vigil's query stage: SQL (DataFusion) over the store and the analyst HTTP API (axum).
//!
//! **For:** read-only, sandboxed SQL over events, alerts and checkpoints, and the API around it.
//! **Not for:** writing data or running rules.
//!
//! Status: the crate boundary exists so the dependency graph is fixed from the start; SQL lands
//! with the "Kafka to hash-chained Parquet" issue and the API with "The analyst API". It exports
//! nothing yet.
