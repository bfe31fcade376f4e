//! Proofs for one event or between two tree sizes, built from the store, checkable with
//! nothing but the signer's public key: the record's raw bytes and position, its leaf index,
//! the inclusion proof, and the signed checkpoint it is proven against.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, BinaryArray, FixedSizeBinaryArray};
use arrow::datatypes::{Int64Type, TimestampMillisecondType, UInt32Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::chain::{RecordRef, leaf_hash};
use crate::checkpoint::{Checkpoint, Checkpointer, NoteVerdict, Registry, list_notes, verify_note};
use crate::error::StoreError;
use crate::files::Store;
use crate::merkle::{
    Hash, consistency_proof, inclusion_proof, leaf_node, verify_consistency, verify_inclusion,
};
use crate::verify::{header_columns, stored_headers, stored_value};

/// A Kafka record as stored: everything its leaf hash commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl StoredRecord {
    pub fn leaf_hash(&self) -> Hash {
        let hs: Vec<(&str, Option<&[u8]>)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        leaf_hash(&RecordRef {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &hs,
        })
    }
}

/// Proof that one record is in a signed log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionBundle {
    pub record: StoredRecord,
    pub leaf_index: u64,
    pub proof: Vec<Hash>,
    /// The signed checkpoint (note bytes) the proof leads to.
    pub checkpoint: Vec<u8>,
}

/// Proof that a signed log of one size is a prefix of the same log at a larger size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyBundle {
    pub old_checkpoint: Vec<u8>,
    pub new_checkpoint: Vec<u8>,
    pub proof: Vec<Hash>,
}

/// Which record.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// Its leaf index in the log.
    Index(u64),
    /// Its Kafka offset.
    Offset(i64),
}

/// One log's records in order: (offset, leaf hash) and where to find each.
struct Leaves {
    offsets: Vec<i64>,
    leaves: Vec<Hash>,
}

fn read_leaves(store: &Store, topic: &str, partition: i32) -> Result<Leaves, StoreError> {
    let (files, _) = store.list(topic, partition)?;
    if let Some(first) = files.first()
        && crate::files::read_footer(&first.path)?.first_leaf_index > 0
    {
        // The proofs are built from every leaf; a pruned log has only the frontier of those
        // it lost (enough to verify it, not yet to prove from it).
        return Err(StoreError::Invalid(format!(
            "{topic}/{partition} was pruned (retention): proofs from a pruned log are not supported yet"
        )));
    }
    let mut out = Leaves {
        offsets: Vec::new(),
        leaves: Vec::new(),
    };
    for f in files {
        let file = File::open(&f.path).map_err(StoreError::io(&f.path))?;
        let b = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let mask = ProjectionMask::columns(
            b.parquet_schema(),
            ["kafka_offset", "record_index", "leaf_hash"],
        );
        for batch in b.with_projection(mask).build()? {
            let batch = batch.map_err(StoreError::Arrow)?;
            let col = |n: &str| {
                batch
                    .column_by_name(n)
                    .cloned()
                    .ok_or_else(|| StoreError::corrupt(&f.path, format!("no column {n}")))
            };
            let (o, i, l) = (
                col("kafka_offset")?,
                col("record_index")?,
                col("leaf_hash")?,
            );
            let (o, i, l): (_, _, &FixedSizeBinaryArray) = (
                o.as_primitive::<Int64Type>(),
                i.as_primitive::<UInt32Type>(),
                l.as_fixed_size_binary(),
            );
            for r in 0..batch.num_rows() {
                if i.value(r) == 0 {
                    out.offsets.push(o.value(r));
                    out.leaves.push(
                        l.value(r)
                            .try_into()
                            .map_err(|_| StoreError::corrupt(&f.path, "leaf hash width"))?,
                    );
                }
            }
        }
    }
    Ok(out)
}

fn read_record(
    store: &Store,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<StoredRecord, StoreError> {
    let (files, _) = store.list(topic, partition)?;
    let f = files
        .iter()
        .find(|f| f.first_offset <= offset && offset <= f.last_offset)
        .ok_or_else(|| StoreError::Key(format!("offset {offset} is not in the store")))?;
    let file = File::open(&f.path).map_err(StoreError::io(&f.path))?;
    for batch in ParquetRecordBatchReaderBuilder::try_new(file)?.build()? {
        let b = batch.map_err(StoreError::Arrow)?;
        let col = |n: &str| {
            b.column_by_name(n)
                .cloned()
                .ok_or_else(|| StoreError::corrupt(&f.path, format!("no column {n}")))
        };
        let offs = col("kafka_offset")?;
        let offs = offs.as_primitive::<Int64Type>();
        let idx = col("record_index")?;
        let idx = idx.as_primitive::<UInt32Type>();
        let Some(r) = (0..b.num_rows()).find(|&r| offs.value(r) == offset && idx.value(r) == 0)
        else {
            continue;
        };
        let ts = col("kafka_timestamp")?;
        let ts = ts.as_primitive::<TimestampMillisecondType>();
        let key = col("kafka_key")?;
        let key: &BinaryArray = key.as_binary::<i32>();
        let value = col("kafka_value")?;
        let value: &BinaryArray = value.as_binary::<i32>();
        let raw = col("raw")?;
        let raw: &BinaryArray = raw.as_binary::<i32>();
        let tomb = col("kafka_tombstone")?;
        let headers = col("kafka_headers")?;
        let headers = headers.as_list::<i32>();
        let columns = header_columns(headers).ok_or_else(|| {
            StoreError::corrupt(&f.path, "kafka_headers is not a list of (key, value)")
        })?;
        let mut hs = Vec::new();
        stored_headers(headers, columns, r, &mut hs);
        let hs = hs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
            .collect();
        let v = stored_value(tomb.as_boolean(), value, raw, r).map(<[u8]>::to_vec);
        return Ok(StoredRecord {
            topic: topic.to_owned(),
            partition,
            offset,
            timestamp_ms: ts.is_valid(r).then(|| ts.value(r)),
            key: key.is_valid(r).then(|| key.value(r).to_vec()),
            value: v,
            headers: hs,
        });
    }
    Err(StoreError::corrupt(
        &f.path,
        format!("offset {offset} not found in the file that should hold it"),
    ))
}

/// The log's stored checkpoints: (size, note bytes), smallest first.
fn notes(data_dir: &Path, topic: &str, partition: i32) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let dir = Checkpointer::log_dir(&crate::layout::checkpoints(data_dir), topic, partition)?;
    list_notes(&dir)?
        .into_iter()
        .map(|(size, p)| Ok((size, std::fs::read(&p).map_err(StoreError::io(&p))?)))
        .collect()
}

/// Build the inclusion proof of one record against the log's newest checkpoint that covers
/// it.
pub fn prove_inclusion(
    data_dir: &Path,
    topic: &str,
    partition: i32,
    target: Target,
) -> Result<InclusionBundle, StoreError> {
    let store = Store::open_existing(data_dir)?;
    let log = read_leaves(&store, topic, partition)?;
    let index = match target {
        Target::Index(i) => i,
        Target::Offset(o) => log
            .offsets
            .binary_search(&o)
            .map_err(|_| StoreError::Key(format!("offset {o} is not in {topic}/{partition}")))?
            as u64,
    };
    let offset = *log.offsets.get(index as usize).ok_or_else(|| {
        StoreError::Key(format!(
            "{topic}/{partition} has {} records; there is no leaf {index}",
            log.offsets.len()
        ))
    })?;
    let (size, note) = notes(data_dir, topic, partition)?
        .into_iter()
        .rev()
        .find(|(size, _)| *size > index && *size as usize <= log.leaves.len())
        .ok_or_else(|| {
            StoreError::Key(format!(
                "no signed checkpoint of {topic}/{partition} covers leaf {index} yet"
            ))
        })?;
    let nodes: Vec<Hash> = log.leaves[..size as usize].iter().map(leaf_node).collect();
    let proof = inclusion_proof(&nodes, index).ok_or(StoreError::Internal("leaf index"))?;
    Ok(InclusionBundle {
        record: read_record(&store, topic, partition, offset)?,
        leaf_index: index,
        proof,
        checkpoint: note,
    })
}

/// Build the consistency proof between the log's checkpoints of sizes `old` and `new`
/// (`None`: the newest).
pub fn prove_consistency(
    data_dir: &Path,
    topic: &str,
    partition: i32,
    old: u64,
    new: Option<u64>,
) -> Result<ConsistencyBundle, StoreError> {
    let store = Store::open_existing(data_dir)?;
    let all = notes(data_dir, topic, partition)?;
    let find = |size: u64| {
        all.iter()
            .find(|(s, _)| *s == size)
            .map(|(_, n)| n.clone())
            .ok_or_else(|| StoreError::Key(format!("no checkpoint of size {size}")))
    };
    let new = match new {
        Some(n) => n,
        None => all.last().map(|(s, _)| *s).unwrap_or_default(),
    };
    let (old_note, new_note) = (find(old)?, find(new)?);
    let log = read_leaves(&store, topic, partition)?;
    if new as usize > log.leaves.len() {
        return Err(StoreError::Key(format!(
            "the store holds {} records, fewer than the checkpoint's {new}",
            log.leaves.len()
        )));
    }
    let nodes: Vec<Hash> = log.leaves[..new as usize].iter().map(leaf_node).collect();
    let proof = consistency_proof(&nodes, old)
        .ok_or_else(|| StoreError::Key(format!("no consistency proof from {old} to {new}")))?;
    Ok(ConsistencyBundle {
        old_checkpoint: old_note,
        new_checkpoint: new_note,
        proof,
    })
}

/// Why a proof does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("the record belongs to {0}, the checkpoint to {1}")]
    WrongLog(String, String),
    #[error("the record's bytes do not hash to a leaf of this tree")]
    Inclusion,
    #[error("the two checkpoints are of different logs")]
    DifferentLogs,
    #[error("the older tree is not a prefix of the newer one")]
    Consistency,
}

fn checked(note: &[u8], keys: &Registry) -> Result<Checkpoint, ProofError> {
    match verify_note(note, keys) {
        NoteVerdict::Valid(cp) => Ok(cp),
        NoteVerdict::Malformed(w) | NoteVerdict::BadSignature(w) | NoteVerdict::Untrusted(w) => {
            Err(ProofError::Checkpoint(w))
        }
    }
}

/// Check an inclusion bundle with nothing but the trusted keys.
pub fn check_inclusion(b: &InclusionBundle, keys: &Registry) -> Result<Checkpoint, ProofError> {
    let cp = checked(&b.checkpoint, keys)?;
    let suffix = format!("/{}/{}", b.record.topic, b.record.partition);
    if !cp.origin.ends_with(&suffix) {
        return Err(ProofError::WrongLog(suffix, cp.origin));
    }
    let leaf = b.record.leaf_hash();
    if !verify_inclusion(b.leaf_index, cp.size, &leaf, &b.proof, &cp.root) {
        return Err(ProofError::Inclusion);
    }
    Ok(cp)
}

/// Check a consistency bundle with nothing but the trusted keys.
pub fn check_consistency(
    b: &ConsistencyBundle,
    keys: &Registry,
) -> Result<(Checkpoint, Checkpoint), ProofError> {
    let old = checked(&b.old_checkpoint, keys)?;
    let new = checked(&b.new_checkpoint, keys)?;
    if old.origin != new.origin {
        return Err(ProofError::DifferentLogs);
    }
    if !verify_consistency(old.size, new.size, &b.proof, &old.root, &new.root) {
        return Err(ProofError::Consistency);
    }
    Ok((old, new))
}

/// The proof bundles' JSON format.
pub const FORMAT: &str = "vigil-proof-v1";

fn hexes(h: &[Hash]) -> Vec<String> {
    h.iter().map(hex::encode).collect()
}

fn b64(v: &Option<Vec<u8>>) -> serde_json::Value {
    v.as_ref().map_or(serde_json::Value::Null, |v| {
        serde_json::Value::from(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            v,
        ))
    })
}

/// An inclusion bundle as the JSON `vigil proof` writes and `vigil verify-proof` reads.
pub fn inclusion_json(b: &InclusionBundle) -> serde_json::Value {
    let r = &b.record;
    serde_json::json!({
        "format": FORMAT,
        "kind": "inclusion",
        "leaf_index": b.leaf_index,
        "record": {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp_ms": r.timestamp_ms,
            "key": b64(&r.key),
            "value": b64(&r.value),
            "headers": r.headers.iter().map(|(k, v)| serde_json::json!({"key": k, "value": b64(v)})).collect::<Vec<_>>(),
        },
        "proof": hexes(&b.proof),
        "checkpoint": String::from_utf8_lossy(&b.checkpoint),
    })
}

/// A consistency bundle as JSON.
pub fn consistency_json(b: &ConsistencyBundle) -> serde_json::Value {
    serde_json::json!({
        "format": FORMAT,
        "kind": "consistency",
        "proof": hexes(&b.proof),
        "old_checkpoint": String::from_utf8_lossy(&b.old_checkpoint),
        "new_checkpoint": String::from_utf8_lossy(&b.new_checkpoint),
    })
}
