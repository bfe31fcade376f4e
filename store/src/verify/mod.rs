//! The chain check: re-derive every leaf and chain hash from the stored raw bytes, follow the
//! chain across files, rebuild each partition log's Merkle tree and compare it with every
//! file's footer, and report the first mismatch per partition. (Signatures and anchors come
//! with `vigil verify`.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Condvar, Mutex};

use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, FixedSizeBinaryArray, Int32Array, Int64Array,
    ListArray, StringArray, StructArray,
};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType, UInt32Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use vigil_schemas::DecoderConfig;

use crate::batch::ChainHead;
use crate::chain::{GENESIS_PREV_OFFSET, RecordRef, chain_hash, leaf_hash};
use crate::error::StoreError;
use crate::files::{Footer, Store, read_footer};
use crate::merkle::{Frontier, Hash};

mod redecode;

use redecode::redecode_file;

/// What the check found in one partition log.
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
    /// Every mismatch, per file (the check goes on after one, from the next file's footer).
    pub problems: Vec<(PathBuf, String)>,
    /// The tree root and chain head at each requested size (for checkpoints) the log reached.
    pub roots_at: BTreeMap<u64, (Hash, ChainHead)>,
    /// Where the log starts when its oldest records were pruned (a signed prune), else 0.
    pub pruned: u64,
}

/// The whole store's check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub partitions: Vec<PartitionReport>,
}

impl ChainReport {
    pub fn ok(&self) -> bool {
        self.partitions.iter().all(|p| p.problems.is_empty())
    }

    pub fn problems(&self) -> Vec<String> {
        self.partitions
            .iter()
            .flat_map(|p| p.problems.iter())
            .map(|(path, what)| format!("{}: {what}", path.display()))
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
    for crate::LogId { topic, partition } in store.partitions()? {
        report.partitions.push(check_partition(
            store,
            &topic,
            partition,
            &BTreeSet::new(),
            None,
            None,
        )?);
    }
    Ok(report)
}

/// What one file says on its own: its records re-hashed and chained from its footer's start.
struct FileScan {
    path: PathBuf,
    footer: Option<Footer>,
    problem: Option<String>,
    leaves: Vec<Hash>,
    rows: u64,
    gaps: Vec<(i64, i64)>,
    first_offset: Option<i64>,
    last_offset: Option<i64>,
    /// (tree size after the record, chain head) for requested sizes, assuming the footer's
    /// first leaf index (checked when the file is joined to the log).
    chains_at: Vec<(u64, ChainHead)>,
}

/// Files scanned at once per partition (bounds memory: their leaf hashes).
fn window(threads: usize) -> usize {
    threads * 2
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Check one partition log: every file's records re-hashed (files in parallel), then the files
/// joined in order — footers linked, the Merkle tree rebuilt and compared with every footer.
/// `want`: tree sizes whose root and chain head to report (checkpoint sizes). I/O errors on
/// the directory are errors; anything wrong with a file is reported in the result.
pub(crate) fn check_partition(
    store: &Store,
    topic: &str,
    partition: i32,
    want: &BTreeSet<u64>,
    redecode: Option<&DecoderConfig>,
    pruned: Option<&crate::prune::PrunedStart>,
) -> Result<PartitionReport, StoreError> {
    let mut r = PartitionReport {
        topic: topic.to_owned(),
        partition,
        ..Default::default()
    };
    let (files, _tmp) = store.list(topic, partition)?;
    r.files = files.len();
    let mut cur = ChainHead::default();
    let mut tree = Frontier::default();
    // A log whose first file starts exactly where a signed prune says it does resumes the
    // chain and the tree from there; any other start is checked from genesis (and a missing
    // prefix is a break in the chain).
    if let (Some(p), Some(first)) = (pruned, files.first())
        && let Ok(f) = read_footer(&first.path)
        && f.first_leaf_index == p.size
        && f.first_leaf_index > 0
        && (f.prev_offset, f.prev_chain_hash) == (p.chain.offset, p.chain.hash)
    {
        cur = p.chain;
        tree = p.frontier.clone();
        r.pruned = p.size;
        if want.contains(&p.size) {
            r.roots_at.insert(p.size, (tree.root(), cur));
        }
    }
    // Files are scanned by worker threads at most `window` ahead of the file being joined,
    // and joined in order on this thread as they arrive.
    let (threads, window) = (threads(), window(threads()));
    let next = AtomicUsize::new(0);
    let gate = (Mutex::new(0usize), Condvar::new());
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, FileScan)>();
        for _ in 0..threads.min(files.len()) {
            let (tx, next, gate, files) = (tx.clone(), &next, &gate, &files);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, AtomicOrdering::Relaxed);
                    let Some(f) = files.get(i) else { break };
                    let mut joined = gate.0.lock().unwrap_or_else(|p| p.into_inner());
                    while i >= *joined + window {
                        joined = gate.1.wait(joined).unwrap_or_else(|p| p.into_inner());
                    }
                    drop(joined);
                    if tx
                        .send((i, scan_file(&f.path, topic, partition, want, redecode)))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut arrived = BTreeMap::new();
        let mut joined = 0;
        for (i, scan) in rx {
            arrived.insert(i, scan);
            while let Some(scan) = arrived.remove(&joined) {
                join(scan, topic, partition, &mut cur, &mut tree, &mut r);
                joined += 1;
                *gate.0.lock().unwrap_or_else(|p| p.into_inner()) = joined;
                gate.1.notify_all();
            }
        }
    });
    r.tree_size = tree.size();
    r.merkle_root = tree.root();
    r.problem = r
        .problems
        .first()
        .map(|(path, what)| format!("{}: {what}", path.display()));
    Ok(r)
}

/// Join a scanned file to the log: it must continue the chain and the tree where the previous
/// file left them. After a mismatch the log continues from the file's own footer.
fn join(
    scan: FileScan,
    topic: &str,
    partition: i32,
    cur: &mut ChainHead,
    tree: &mut Frontier,
    r: &mut PartitionReport,
) {
    let mut problem = scan.problem.clone();
    let Some(footer) = scan.footer else {
        r.problems
            .push((scan.path, problem.unwrap_or_else(|| "no footer".into())));
        return;
    };
    if problem.is_none() {
        problem = if footer.topic != topic || footer.partition != partition {
            Some(format!(
                "footer names {}/{}, file is under {topic}/{partition}",
                footer.topic, footer.partition
            ))
        } else if footer.prev_offset != cur.offset {
            Some(format!(
                "file does not continue the chain: it links to offset {}, the chain stands at offset {}",
                footer.prev_offset, cur.offset
            ))
        } else if footer.prev_chain_hash != cur.hash {
            Some(format!(
                "file does not continue the chain: it links to another chain hash at offset {}",
                cur.offset
            ))
        } else if footer.first_leaf_index != tree.size() {
            Some(format!(
                "file starts at leaf {}, the log's tree holds {} leaves",
                footer.first_leaf_index,
                tree.size()
            ))
        } else {
            None
        };
    }
    if problem.is_none() {
        // The scan noted the chain head at each requested size, in order, counting from the
        // footer's first leaf index — which is the tree's size here (checked above).
        let mut chains = scan.chains_at.iter().peekable();
        for leaf in &scan.leaves {
            tree.append(leaf);
            if let Some(&&(size, chain)) = chains.peek()
                && size == tree.size()
            {
                r.roots_at.insert(size, (tree.root(), chain));
                chains.next();
            }
        }
        if tree.size() != footer.tree_size
            || tree.root() != footer.merkle_root
            || *tree != footer.frontier
        {
            problem = Some(format!(
                "Merkle tree after the file (size {}) differs from the footer's (size {})",
                tree.size(),
                footer.tree_size
            ));
        }
    }
    r.records += scan.leaves.len() as u64;
    r.rows += scan.rows;
    r.gaps.extend(scan.gaps);
    if r.first_offset.is_none() {
        r.first_offset = scan.first_offset;
    }
    r.last_offset = scan.last_offset.or(r.last_offset);
    if let Some(p) = problem {
        r.problems.push((scan.path, p));
        // Go on from what the file claims, so that later files are still checked.
        *cur = ChainHead {
            offset: footer.last_offset,
            hash: footer.last_chain_hash,
        };
        *tree = footer.frontier;
        return;
    }
    *cur = ChainHead {
        offset: footer.last_offset,
        hash: footer.last_chain_hash,
    };
}

impl FileScan {
    fn failed(path: &Path, problem: String) -> FileScan {
        FileScan {
            path: path.to_path_buf(),
            footer: None,
            problem: Some(problem),
            leaves: Vec::new(),
            rows: 0,
            gaps: Vec::new(),
            first_offset: None,
            last_offset: None,
            chains_at: Vec::new(),
        }
    }
}

/// Re-hash one file's records and chain them from its footer's start.
fn scan_file(
    path: &Path,
    topic: &str,
    partition: i32,
    want: &BTreeSet<u64>,
    redecode: Option<&DecoderConfig>,
) -> FileScan {
    let footer = match read_footer(path) {
        Ok(f) => f,
        Err(e) => return FileScan::failed(path, format!("unreadable footer: {e}")),
    };
    let mut scan = FileScan {
        footer: Some(footer.clone()),
        ..FileScan::failed(path, String::new())
    };
    scan.problem = match scan_rows(path, topic, partition, &footer, want, &mut scan) {
        Ok(Ok(())) => None,
        Ok(Err(problem)) => Some(problem),
        Err(e) => Some(format!("unreadable: {e}")),
    };
    if scan.problem.is_none()
        && let Some(config) = redecode
    {
        scan.problem = match redecode_file(path, config) {
            Ok(Ok(())) => None,
            Ok(Err(problem)) => Some(problem),
            Err(e) => Some(format!("unreadable: {e}")),
        };
    }
    scan
}

fn scan_rows(
    path: &Path,
    topic: &str,
    partition: i32,
    footer: &Footer,
    want: &BTreeSet<u64>,
    scan: &mut FileScan,
) -> Result<Result<(), String>, StoreError> {
    let file = File::open(path).map_err(StoreError::io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), COLUMNS.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()?;
    let mut cur = ChainHead {
        offset: footer.prev_offset,
        hash: footer.prev_chain_hash,
    };
    // The record whose further rows (record_index > 0) may follow.
    let mut current: Option<(i64, Hash, Hash)> = None;
    let mut first = None;
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
        let (header_keys, header_values) = header_columns(headers).ok_or_else(|| {
            StoreError::corrupt(path, "kafka_headers is not a list of (key, value)")
        })?;
        let mut hs: Vec<(&str, Option<&[u8]>)> = Vec::new();
        for i in 0..b.num_rows() {
            scan.rows += 1;
            let offset = offsets.value(i);
            let (Ok(leaf), Ok(chain)) = (
                <Hash>::try_from(leaves.value(i)),
                <Hash>::try_from(chains.value(i)),
            ) else {
                return Ok(Err(format!("offset {offset}: hash width")));
            };
            if idx.value(i) > 0 {
                // A further event of the record on the previous row: same position, same hashes.
                if current != Some((offset, leaf, chain)) {
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
            stored_headers(headers, (header_keys, header_values), i, &mut hs);
            let value = stored_value(tomb, values, raws, i);
            let rec = RecordRef {
                topic,
                partition,
                offset,
                timestamp_ms: ts.is_valid(i).then(|| ts.value(i)),
                key: keys.is_valid(i).then(|| keys.value(i)),
                value,
                headers: &hs,
            };
            if leaf_hash(&rec) != leaf {
                return Ok(Err(format!(
                    "offset {offset}: leaf hash does not match the stored bytes"
                )));
            }
            if chain_hash(&cur.hash, cur.offset, offset, &leaf) != chain {
                return Ok(Err(format!("offset {offset}: chain hash does not match")));
            }
            if cur.offset != GENESIS_PREV_OFFSET && offset != cur.offset + 1 {
                scan.gaps.push((cur.offset, offset));
            }
            first.get_or_insert((offset, chain));
            scan.first_offset.get_or_insert(offset);
            scan.last_offset = Some(offset);
            cur = ChainHead {
                offset,
                hash: chain,
            };
            current = Some((offset, leaf, chain));
            scan.leaves.push(leaf);
            let size = footer.first_leaf_index + scan.leaves.len() as u64;
            if want.contains(&size) {
                scan.chains_at.push((size, cur));
            }
        }
    }
    match first {
        Some((o, h)) if o == footer.first_offset && h == footer.first_chain_hash => {}
        _ => return Ok(Err("first record differs from the footer".to_owned())),
    }
    let records = scan.leaves.len() as u64;
    if cur.offset != footer.last_offset
        || cur.hash != footer.last_chain_hash
        || records != footer.records
    {
        return Ok(Err(format!(
            "file ends at offset {} after {records} records; its footer says offset {} after {}",
            cur.offset, footer.last_offset, footer.records
        )));
    }
    Ok(Ok(()))
}

/// A stored record's Kafka value: `None` for a tombstone; `kafka_value` where the record's
/// bytes differ from its first row's `raw` (gzip, arrays), else `raw`.
pub(crate) fn stored_value<'a>(
    tomb: &BooleanArray,
    values: &'a BinaryArray,
    raws: &'a BinaryArray,
    row: usize,
) -> Option<&'a [u8]> {
    if tomb.value(row) {
        None
    } else if values.is_valid(row) {
        Some(values.value(row))
    } else {
        Some(raws.value(row))
    }
}

/// A stored record's headers into `out` (cleared first), borrowed from the columns.
pub(crate) fn stored_headers<'a>(
    headers: &ListArray,
    (keys, values): (&'a StringArray, &'a BinaryArray),
    row: usize,
    out: &mut Vec<(&'a str, Option<&'a [u8]>)>,
) {
    out.clear();
    if headers.is_valid(row) {
        let offsets = headers.value_offsets();
        for j in offsets[row] as usize..offsets[row + 1] as usize {
            out.push((keys.value(j), values.is_valid(j).then(|| values.value(j))));
        }
    }
}

/// The key and value columns of the headers' entries.
pub(crate) fn header_columns(headers: &ListArray) -> Option<(&StringArray, &BinaryArray)> {
    let s = headers.values().as_any().downcast_ref::<StructArray>()?;
    Some((
        s.column(0).as_string_opt::<i32>()?,
        s.column(1).as_binary_opt::<i32>()?,
    ))
}
