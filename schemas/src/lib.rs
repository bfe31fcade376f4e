//! Vigil's event model and decoders.
//!
//! **For:** the one canonical Arrow schema every event is stored in ([`schema`]), the borrowed
//! [`Event`] view decoders produce, the [`EventBatchBuilder`] that turns events into Arrow
//! record batches in bulk, and the [`Decoder`] for the formats services really emit: OPA
//! decision logs, Envoy/Istio access logs, Cilium Hubble flows, Kubernetes audit events
//! (plus AKS's and GKE's wrappings) and Vigil's native JSON.
//!
//! **Not for:** Kafka, files, hashing or rules. This crate does no I/O; every other stage
//! depends on it and it depends on none of them.
//!
//! Decoding is all or nothing per record and never loses input: a record that cannot be
//! decoded yields a [`DecodeError`] that says what was wrong and where (a JSON-pointer path,
//! expected vs found) and carries the record's bytes.
//!
//! ```
//! use vigil_schemas::{Decoder, EventBatchBuilder};
//!
//! let record = br#"{"decision_id":"d1","path":"authz/allow","result":false,
//!                   "timestamp":"2024-01-01T00:00:00Z","input":{"method":"GET","path":"/admin"}}"#;
//! let mut batch = EventBatchBuilder::with_capacity(1);
//! let n = Decoder::default().decode_into(record, 0, &mut batch).unwrap();
//! assert_eq!(n, 1);
//! let batch = batch.finish().unwrap();
//! assert_eq!(batch.num_rows(), 1);
//! ```

mod batch;
mod decode;
mod error;
mod json;
mod model;
pub mod out;
pub mod schema;

pub use batch::EventBatchBuilder;
pub use decode::NATIVE_SCHEMA_V1;
pub use decode::{Decoder, DecoderConfig, inflated_len};
pub use error::{DecodeError, DecodeErrorKind};
pub use model::{Decision, Event, Identity, Kind, SourceFormat};
pub use schema::canonical_schema;
