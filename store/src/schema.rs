//! The stored row: the canonical event columns, then the Kafka position and the chain.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use vigil_schemas::canonical_schema;

/// Parquet footer keys (key-value metadata) every file carries.
pub mod meta {
    pub const FORMAT: &str = "vigil.store_format";
    pub const TOPIC: &str = "vigil.topic";
    pub const PARTITION: &str = "vigil.partition";
    pub(crate) const FIRST_OFFSET: &str = "vigil.first_offset";
    pub(crate) const LAST_OFFSET: &str = "vigil.last_offset";
    /// Chain hash of the file's first record.
    pub(crate) const FIRST_CHAIN_HASH: &str = "vigil.first_chain_hash";
    /// Chain hash of the file's last record: the partition's chain head when it was sealed.
    pub(crate) const LAST_CHAIN_HASH: &str = "vigil.last_chain_hash";
    /// Last chain hash of the previous file (the genesis hash for the first file).
    pub(crate) const PREV_CHAIN_HASH: &str = "vigil.prev_chain_hash";
    /// Offset of the record the file's first record links to (-1 at genesis).
    pub(crate) const PREV_OFFSET: &str = "vigil.prev_offset";
    pub const RECORDS: &str = "vigil.records";
    /// Leaf index (in the partition log's Merkle tree) of the file's first record: the tree
    /// size before the file.
    pub(crate) const FIRST_LEAF_INDEX: &str = "vigil.first_leaf_index";
    /// Tree size after the file's last record.
    pub(crate) const TREE_SIZE: &str = "vigil.tree_size";
    /// Merkle root of the log up to and including the file's last record.
    pub(crate) const MERKLE_ROOT: &str = "vigil.merkle_root";
    /// The tree's frontier after the file (`SIZE:HASH,…`), so appends resume in O(log n).
    pub(crate) const MERKLE_FRONTIER: &str = "vigil.merkle_frontier";
}

/// Version of the stored layout (`vigil.store_format` in every footer).
pub(crate) const STORE_FORMAT: &str = "2";

/// The store columns, after the canonical ones, with their meaning.
pub(crate) const STORE_COLUMNS: &[(&str, &str)] = &[
    ("kafka_topic", "Topic the record was read from."),
    ("kafka_partition", "Partition the record was read from."),
    (
        "kafka_offset",
        "Offset of the record. Rows of one record (an OPA upload array) share it.",
    ),
    (
        "kafka_timestamp",
        "Kafka timestamp (create or log-append time), UTC ms; null if the broker gave none.",
    ),
    ("kafka_key", "Record key bytes; null for no key."),
    (
        "kafka_headers",
        "Record headers in order: list of {key, value}; value null for a null header value.",
    ),
    (
        "kafka_value",
        "The record's value when it differs from the row's `raw` (gzip or multi-event records), on the record's first row only; null otherwise, where `raw` is the value.",
    ),
    (
        "kafka_tombstone",
        "True when the record's value was null (a tombstone).",
    ),
    (
        "store_error",
        "Why the record failed to decode (a rejected record); null for decoded events.",
    ),
    (
        "store_error_kind",
        "Stable name of the decode error kind (`syntax`, `shape`, `too_large`, …); null for decoded events.",
    ),
    (
        "chain_prev_offset",
        "Offset of the record this one's chain link follows (-1 at genesis); a value other than kafka_offset - 1 is a recorded gap.",
    ),
    (
        "leaf_hash",
        "blake3 leaf hash over the record's position, timestamp, key, value and headers (store/src/chain.rs).",
    ),
    (
        "chain_hash",
        "blake3 chain hash over the previous chain hash, prev offset, offset and leaf.",
    ),
];

/// The fields of one header: `{key: Utf8, value: Binary (nullable)}`.
pub(crate) fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// The list item of `kafka_headers`.
pub(crate) fn headers_item() -> FieldRef {
    Arc::new(Field::new("item", DataType::Struct(header_fields()), false))
}

/// The headers list type: `List<Struct<key: Utf8, value: Binary>>`.
pub(crate) fn headers_type() -> DataType {
    DataType::List(headers_item())
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let canonical = canonical_schema();
    let mut fields: Vec<Field> = canonical
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let types: [(DataType, bool); 13] = [
        (DataType::Utf8, false),
        (DataType::Int32, false),
        (DataType::Int64, false),
        (
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        (DataType::Binary, true),
        (headers_type(), false),
        (DataType::Binary, true),
        (DataType::Boolean, false),
        (DataType::Utf8, true),
        (DataType::Utf8, true),
        (DataType::Int64, false),
        (DataType::FixedSizeBinary(32), false),
        (DataType::FixedSizeBinary(32), false),
    ];
    for ((name, doc), (ty, nullable)) in STORE_COLUMNS.iter().zip(types) {
        fields.push(
            Field::new(*name, ty, nullable)
                .with_metadata(HashMap::from([("doc".to_owned(), (*doc).to_owned())])),
        );
    }
    let mut meta = canonical.metadata().clone();
    meta.insert(meta::FORMAT.to_owned(), STORE_FORMAT.to_owned());
    Arc::new(Schema::new_with_metadata(fields, meta))
});

/// The schema of every stored file.
pub fn store_schema() -> SchemaRef {
    SCHEMA.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_columns_use_reserved_prefixes_and_follow_the_canonical_ones() {
        let s = store_schema();
        let n = canonical_schema().fields().len();
        assert_eq!(s.fields().len(), n + STORE_COLUMNS.len());
        for f in &s.fields()[n..] {
            assert!(
                vigil_schemas::schema::RESERVED_PREFIXES
                    .iter()
                    .any(|p| f.name().starts_with(p)),
                "{}",
                f.name()
            );
        }
    }
}
