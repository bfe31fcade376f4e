//! Vigil's store: every Kafka record, decoded or not, as a row of hash-chained Parquet.
//!
//! **For:** turning one partition's records into rows of the store schema ([`schema`]) while
//! chaining them ([`chain`]) and growing each partition log's Merkle tree over the same leaves
//! ([`merkle`]: frontier, inclusion and consistency proofs), sealing batches into files written
//! atomically and durably ([`files`]), knowing where each partition log stands after a restart
//! ([`Store::head`]), and checking chain and tree ([`verify`]).
//! **Not for:** Kafka (that is `vigil-ingest`, which drives this crate), SQL (`vigil-query`),
//! or deciding what Vigil's own logs ([`own_log`]: alert revisions, lifecycle changes) say.
//!
//! Invariants: a file holds one contiguous run of one partition's chain; its footer records
//! first/last offset, first/last chain hash, the previous file's last chain hash, the leaf
//! index of its first record, and the tree size, root and frontier after it; a file
//! either exists complete and durable or not at all; the store's own files say which offset
//! each partition is at, so nothing is stored twice.

mod anchor;
pub mod audit;
pub mod batch;
pub mod bucket;
pub mod chain;
pub mod checkpoint;
pub mod clock;
pub mod compact;
pub mod error;
pub mod files;
pub mod layout;
mod log_id;
pub mod merkle;
pub mod own_log;
pub mod proof;
pub mod prune;
pub mod read;
pub mod schema;
pub mod trusted;
pub mod verify;

pub use anchor::{Anchor, LogSigner};
pub use batch::{
    Appended, BatchSpan, ChainHead, LogHead, PartitionBatch, Piece, SealedBatch, leaf_indexes,
};
pub use bucket::{Bucket, BucketOptions, BucketUrl, HeadObject, Lease, PullReport};
pub use chain::RecordRef;
pub use error::{StoreError, is_bucket_unavailable, is_fenced, is_retryable, is_volume_full};
pub use files::{FileInfo, Store, WriteOptions, write_durably, write_durably_with};
pub use log_id::{LogId, LogIdError};
pub use own_log::{
    API_TOPIC, AUDIT_PARTITION, AUDIT_TOPIC, Headers as RecordHeaders, OPA_TOPIC, OwnLog, claim,
    claim_with, is_reserved_topic,
};
pub use schema::store_schema;
pub use verify::{ChainReport, check_chain};
