//! The chain check: re-derive every leaf and chain hash from the stored raw bytes, follow the
//! chain across files, rebuild each partition log's Merkle tree and compare it with every
//! file's footer, and report the first mismatch per partition. (Signatures and anchors come
//! with `vigil verify`.)

use std::fs::File;
use std::path::PathBuf;

use arrow::array::{
    Array, AsArray, BinaryArray, FixedSizeBinaryArray, Int32Array, Int64Array, ListArray,
    StringArray, StructArray,
};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType, UInt32Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::chain::{GENESIS, GENESIS_PREV_OFFSET, RecordRef, chain_hash, leaf_hash};
use crate::error::StoreError;
use crate::files::{Store, read_footer};
use crate::merkle::{Frontier, Hash};

/// What the check found in one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    pub files: usize,
    pub records: u64,
    pub rows: u64,
    pub first_offset: Option<i64>,
    pub last_offset: Option<i64>,
    /// Recorded gaps: (offset before, offset after).
    pub gaps: Vec<(i64, i64)>,
    /// The log's Merkle tree size and root, rebuilt from the stored records.
    pub tree_size: u64,
    pub merkle_root: Hash,
    /// The first mismatch, if any: where and what.
    pub problem: Option<String>,
}

/// The whole store's check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub partitions: Vec<PartitionReport>,
}

impl ChainReport {
    pub fn ok(&self) -> bool {
        self.partitions.iter().all(|p| p.problem.is_none())
    }

    pub fn problems(&self) -> Vec<String> {
        self.partitions
            .iter()
            .filter_map(|p| p.problem.clone())
            .collect()
    }
}

const COLUMNS: &[&str] = &[
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "kafka_key",
    "kafka_headers",
    "kafka_value",
    "kafka_tombstone",
    "raw",
    "record_index",
    "chain_prev_offset",
    "leaf_hash",
    "chain_hash",
];

/// Check every partition in the store.
pub fn check_chain(store: &Store) -> Result<ChainReport, StoreError> {
    let mut report = ChainReport::default();
    for (topic, partition) in store.partitions()? {
        report
            .partitions
            .push(check_partition(store, &topic, partition)?);
    }
    Ok(report)
}

struct Cursor {
    /// The chain head after the last complete record.
    offset: i64,
    hash: [u8; 32],
    /// The record whose further rows (record_index > 0) may follow.
    current: Option<(i64, [u8; 32], [u8; 32])>,
    tree: Frontier,
}

/// Check one partition; I/O errors are errors, mismatches are reported in the result.
pub fn check_partition(
    store: &Store,
    topic: &str,
    partition: i32,
) -> Result<PartitionReport, StoreError> {
    let mut r = PartitionReport {
        topic: topic.to_owned(),
        partition,
        ..Default::default()
    };
    let (files, _tmp) = store.list(topic, partition)?;
    r.files = files.len();
    let mut cur = Cursor {
        offset: GENESIS_PREV_OFFSET,
        hash: GENESIS,
        current: None,
        tree: Frontier::default(),
    };
    for f in &files {
        if let Err(problem) = check_file(&f.path, topic, partition, &mut cur, &mut r)? {
            r.problem = Some(format!("{}: {problem}", f.path.display()));
            break;
        }
    }
    r.tree_size = cur.tree.size();
    r.merkle_root = cur.tree.root();
    Ok(r)
}

fn check_file(
    path: &PathBuf,
    topic: &str,
    partition: i32,
    cur: &mut Cursor,
    r: &mut PartitionReport,
) -> Result<Result<(), String>, StoreError> {
    let footer = read_footer(path)?;
    if footer.topic != topic || footer.partition != partition {
        return Ok(Err(format!(
            "footer names {}/{}, file is under {topic}/{partition}",
            footer.topic, footer.partition
        )));
    }
    if footer.prev_offset != cur.offset || footer.prev_chain_hash != cur.hash {
        return Ok(Err(format!(
            "file does not continue the chain: it links to offset {}, the chain stands at offset {}",
            footer.prev_offset, cur.offset
        )));
    }
    if footer.first_leaf_index != cur.tree.size() {
        return Ok(Err(format!(
            "file starts at leaf {}, the log's tree holds {} leaves",
            footer.first_leaf_index,
            cur.tree.size()
        )));
    }
    let file = File::open(path).map_err(StoreError::io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), COLUMNS.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()?;
    let (mut first, mut records) = (None, 0u64);
    for batch in reader {
        let b = batch.map_err(StoreError::Arrow)?;
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or(StoreError::corrupt(path, format!("no column {name}")))
        };
        let topics: &StringArray = col("kafka_topic")?.as_string::<i32>();
        let partitions: &Int32Array = col("kafka_partition")?.as_primitive::<Int32Type>();
        let offsets: &Int64Array = col("kafka_offset")?.as_primitive::<Int64Type>();
        let ts = col("kafka_timestamp")?.as_primitive::<TimestampMillisecondType>();
        let keys: &BinaryArray = col("kafka_key")?.as_binary::<i32>();
        let headers: &ListArray = col("kafka_headers")?.as_list::<i32>();
        let values: &BinaryArray = col("kafka_value")?.as_binary::<i32>();
        let tomb = col("kafka_tombstone")?.as_boolean();
        let raws: &BinaryArray = col("raw")?.as_binary::<i32>();
        let idx = col("record_index")?.as_primitive::<UInt32Type>();
        let prevs: &Int64Array = col("chain_prev_offset")?.as_primitive::<Int64Type>();
        let leaves: &FixedSizeBinaryArray = col("leaf_hash")?.as_fixed_size_binary();
        let chains: &FixedSizeBinaryArray = col("chain_hash")?.as_fixed_size_binary();
        for i in 0..b.num_rows() {
            r.rows += 1;
            let offset = offsets.value(i);
            let leaf: [u8; 32] = leaves
                .value(i)
                .try_into()
                .map_err(|_| StoreError::corrupt(path, "leaf hash width"))?;
            let chain: [u8; 32] = chains
                .value(i)
                .try_into()
                .map_err(|_| StoreError::corrupt(path, "chain hash width"))?;
            if idx.value(i) > 0 {
                // A further event of the record on the previous row: same position, same hashes.
                if cur.current != Some((offset, leaf, chain)) {
                    return Ok(Err(format!(
                        "offset {offset}: row {} of a record does not match its first row",
                        idx.value(i)
                    )));
                }
                continue;
            }
            if topics.value(i) != topic || partitions.value(i) != partition {
                return Ok(Err(format!("offset {offset}: row names another partition")));
            }
            if offset <= cur.offset || prevs.value(i) != cur.offset {
                return Ok(Err(format!(
                    "offset {offset}: out of order or unlinked (links to {}, chain stands at {})",
                    prevs.value(i),
                    cur.offset
                )));
            }
            let hs = header_pairs(headers, i);
            let hs_ref: Vec<(&str, Option<&[u8]>)> =
                hs.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            let value = if tomb.value(i) {
                None
            } else if values.is_valid(i) {
                Some(values.value(i))
            } else {
                Some(raws.value(i))
            };
            let rec = RecordRef {
                topic,
                partition,
                offset,
                timestamp_ms: ts.is_valid(i).then(|| ts.value(i)),
                key: keys.is_valid(i).then(|| keys.value(i)),
                value,
                headers: &hs_ref,
            };
            if leaf_hash(&rec) != leaf {
                return Ok(Err(format!(
                    "offset {offset}: leaf hash does not match the stored bytes"
                )));
            }
            let expect = chain_hash(&cur.hash, cur.offset, offset, &leaf);
            if expect != chain {
                return Ok(Err(format!("offset {offset}: chain hash does not match")));
            }
            if cur.offset != GENESIS_PREV_OFFSET && offset != cur.offset + 1 {
                r.gaps.push((cur.offset, offset));
            }
            first.get_or_insert((offset, chain));
            r.first_offset.get_or_insert(offset);
            r.last_offset = Some(offset);
            cur.offset = offset;
            cur.hash = chain;
            cur.current = Some((offset, leaf, chain));
            cur.tree.append(&leaf);
            records += 1;
            r.records += 1;
        }
    }
    match first {
        Some((o, h)) if o == footer.first_offset && h == footer.first_chain_hash => {}
        _ => return Ok(Err("first record differs from the footer".to_owned())),
    }
    if cur.offset != footer.last_offset
        || cur.hash != footer.last_chain_hash
        || records != footer.records
    {
        return Ok(Err(format!(
            "file ends at offset {} after {records} records; its footer says offset {} after {}",
            cur.offset, footer.last_offset, footer.records
        )));
    }
    if cur.tree.size() != footer.tree_size
        || cur.tree.root() != footer.merkle_root
        || cur.tree != footer.frontier
    {
        return Ok(Err(format!(
            "Merkle tree after the file (size {}) differs from the footer's (size {})",
            cur.tree.size(),
            footer.tree_size
        )));
    }
    Ok(Ok(()))
}

/// One row's headers, copied out (the list value is a temporary array).
fn header_pairs(headers: &ListArray, i: usize) -> Vec<(String, Option<Vec<u8>>)> {
    let list = headers.value(i);
    let Some(s) = list.as_any().downcast_ref::<StructArray>() else {
        return Vec::new();
    };
    let (Some(k), Some(v)) = (
        s.column(0).as_string_opt::<i32>(),
        s.column(1).as_binary_opt::<i32>(),
    ) else {
        return Vec::new();
    };
    (0..s.len())
        .map(|j| {
            (
                k.value(j).to_owned(),
                v.is_valid(j).then(|| v.value(j).to_vec()),
            )
        })
        .collect()
}
