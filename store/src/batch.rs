//! One partition's open batch: records decoded, chained and appended as rows, until sealed
//! into a file.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, FixedSizeBinaryBuilder, Int32Builder, Int64Builder,
    ListBuilder, StringBuilder, StructBuilder, TimestampMillisecondBuilder,
};
use arrow::record_batch::RecordBatch;
use vigil_schemas::{DecodeError, Decoder, EventBatchBuilder};

use crate::chain::{RecordRef, chain_hash, leaf_hash};
use crate::error::StoreError;
use crate::merkle::Frontier;
use crate::schema::{header_fields, headers_item, store_schema};

/// What happened to one record.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Decoded into this many event rows.
    Decoded(usize),
    /// Failed to decode: stored as one rejected row; the error says why.
    Rejected(DecodeError),
}

/// The chain position a batch continues from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// Offset of the last chained record (`GENESIS_PREV_OFFSET` before the first).
    pub offset: i64,
    pub hash: [u8; 32],
}

/// Where a partition log stands: its chain head and its Merkle tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogHead {
    pub chain: ChainHead,
    pub tree: Frontier,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            offset: crate::chain::GENESIS_PREV_OFFSET,
            hash: crate::chain::GENESIS,
        }
    }
}

/// What a sealed batch covers; becomes the file's footer metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSpan {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The head the batch continued from (previous file's last record, or genesis).
    pub prev: ChainHead,
    pub first_chain_hash: [u8; 32],
    pub last_chain_hash: [u8; 32],
    pub records: u64,
    /// Earliest event time in the batch (ns): the file's date/hour directory.
    pub min_event_time_ns: i64,
    /// Leaf index of the first record (the tree size before the batch).
    pub first_leaf_index: u64,
    /// The partition log's tree after the batch.
    pub tree: Frontier,
}

/// A sealed batch, ready to be written: the pieces cut from it in order (one file).
pub struct SealedBatch {
    pub batches: Vec<RecordBatch>,
    pub span: BatchSpan,
}

impl SealedBatch {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Rows cut from an open batch (store schema) as soon as they are chained, for the stages
/// that read events before their file is written (detection): which log, and the leaf index
/// of the first row's record.
#[derive(Clone, Debug)]
pub struct Piece {
    pub topic: String,
    pub partition: i32,
    pub first_leaf_index: u64,
    pub batch: RecordBatch,
}

impl Piece {
    /// The log its rows belong to.
    pub fn log(&self) -> crate::LogId {
        crate::LogId::new(self.topic.clone(), self.partition)
    }
}

/// The leaf index of each row of a store-schema batch whose first row's record has leaf
/// index `first` (rows of one record share it), and the index after the batch.
pub fn leaf_indexes(batch: &RecordBatch, first: u64) -> Result<(Vec<u64>, u64), StoreError> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let col = batch
        .column_by_name("kafka_offset")
        .ok_or(StoreError::Internal("batch without kafka_offset"))?
        .as_primitive_opt::<Int64Type>()
        .ok_or(StoreError::Internal("kafka_offset is not Int64"))?;
    let mut out = Vec::with_capacity(batch.num_rows());
    let (mut next, mut last) = (first, None);
    for i in 0..batch.num_rows() {
        let o = col.value(i);
        if last != Some(o) {
            if last.is_some() {
                next += 1;
            }
            last = Some(o);
        }
        out.push(next);
    }
    Ok((out, if last.is_some() { next + 1 } else { next }))
}

/// Builds one partition's rows in the store schema, chaining each record as it is appended.
pub struct PartitionBatch {
    topic: String,
    partition: i32,
    /// The chain head after the last appended record.
    head: ChainHead,
    /// The head the open batch started from.
    start: ChainHead,
    /// The log's Merkle tree after the last appended record.
    tree: Frontier,
    /// Tree size when the open batch started.
    start_tree_size: u64,
    first: Option<(i64, [u8; 32])>,
    records: u64,
    min_event_time_ns: i64,
    events: EventBatchBuilder,
    cols: StoreCols,
    /// Pieces cut since the last seal, and their rows and raw bytes.
    pieces: Vec<RecordBatch>,
    cut_rows: usize,
    cut_raw_bytes: usize,
    /// Leaf index of the first record not yet cut.
    uncut_leaf_index: u64,
}

struct StoreCols {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    key: BinaryBuilder,
    headers: ListBuilder<StructBuilder>,
    value: BinaryBuilder,
    tombstone: BooleanBuilder,
    error: StringBuilder,
    error_kind: StringBuilder,
    prev_offset: Int64Builder,
    leaf: FixedSizeBinaryBuilder,
    chain: FixedSizeBinaryBuilder,
}

/// Per-row store values shared by the rows of one record.
struct RowCtx<'a> {
    rec: &'a RecordRef<'a>,
    prev_offset: i64,
    leaf: [u8; 32],
    chain: [u8; 32],
}

impl StoreCols {
    fn new(capacity: usize) -> Self {
        let header_builder = StructBuilder::from_fields(header_fields(), 0);
        StoreCols {
            topic: StringBuilder::with_capacity(capacity, capacity * 16),
            partition: Int32Builder::with_capacity(capacity),
            offset: Int64Builder::with_capacity(capacity),
            timestamp: TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            key: BinaryBuilder::with_capacity(capacity, 0),
            headers: ListBuilder::new(header_builder).with_field(headers_item()),
            value: BinaryBuilder::with_capacity(capacity, 0),
            tombstone: BooleanBuilder::with_capacity(capacity),
            error: StringBuilder::new(),
            error_kind: StringBuilder::new(),
            prev_offset: Int64Builder::with_capacity(capacity),
            leaf: FixedSizeBinaryBuilder::with_capacity(capacity, 32),
            chain: FixedSizeBinaryBuilder::with_capacity(capacity, 32),
        }
    }

    fn append(
        &mut self,
        c: &RowCtx<'_>,
        value: Option<&[u8]>,
        error: Option<&DecodeError>,
    ) -> Result<(), StoreError> {
        let r = c.rec;
        self.topic.append_value(r.topic);
        self.partition.append_value(r.partition);
        self.offset.append_value(r.offset);
        self.timestamp.append_option(r.timestamp_ms);
        self.key.append_option(r.key);
        let hs = self.headers.values();
        for (k, v) in r.headers {
            hs.field_builder::<StringBuilder>(0)
                .ok_or(StoreError::Internal("header key builder"))?
                .append_value(k);
            hs.field_builder::<BinaryBuilder>(1)
                .ok_or(StoreError::Internal("header value builder"))?
                .append_option(*v);
            hs.append(true);
        }
        self.headers.append(true);
        self.value.append_option(value);
        self.tombstone.append_value(r.value.is_none());
        self.error.append_option(error.map(|e| e.to_string()));
        self.error_kind.append_option(error.map(|e| e.kind_name()));
        self.prev_offset.append_value(c.prev_offset);
        self.leaf.append_value(c.leaf).map_err(StoreError::Arrow)?;
        self.chain
            .append_value(c.chain)
            .map_err(StoreError::Arrow)?;
        Ok(())
    }

    fn finish_into(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.topic.finish()));
        cols.push(Arc::new(self.partition.finish()));
        cols.push(Arc::new(self.offset.finish()));
        cols.push(Arc::new(self.timestamp.finish()));
        cols.push(Arc::new(self.key.finish()));
        cols.push(Arc::new(self.headers.finish()));
        cols.push(Arc::new(self.value.finish()));
        cols.push(Arc::new(self.tombstone.finish()));
        cols.push(Arc::new(self.error.finish()));
        cols.push(Arc::new(self.error_kind.finish()));
        cols.push(Arc::new(self.prev_offset.finish()));
        cols.push(Arc::new(self.leaf.finish()));
        cols.push(Arc::new(self.chain.finish()));
    }
}

impl PartitionBatch {
    /// An empty batch continuing the log (chain and tree) from `head`.
    pub fn new(topic: &str, partition: i32, head: LogHead, capacity: usize) -> Self {
        PartitionBatch {
            topic: topic.to_owned(),
            partition,
            head: head.chain,
            start: head.chain,
            start_tree_size: head.tree.size(),
            uncut_leaf_index: head.tree.size(),
            tree: head.tree,
            first: None,
            records: 0,
            min_event_time_ns: i64::MAX,
            events: EventBatchBuilder::with_capacity(capacity),
            cols: StoreCols::new(capacity),
            pieces: Vec::new(),
            cut_rows: 0,
            cut_raw_bytes: 0,
        }
    }

    /// The chain head after the last appended record.
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// Records appended since the last seal.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Rows (events) appended since the last seal.
    pub fn rows(&self) -> usize {
        self.cut_rows + self.events.len()
    }

    /// Raw bytes appended since the last seal.
    pub fn raw_bytes(&self) -> usize {
        self.cut_raw_bytes + self.events.raw_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Decode, chain and append one record. The record must come after the chain head
    /// (`rec.offset > head.offset`): the caller skips records the store already holds.
    pub fn append(
        &mut self,
        rec: &RecordRef<'_>,
        decoder: &Decoder,
        received_ns: i64,
    ) -> Result<Appended, StoreError> {
        if rec.topic != self.topic || rec.partition != self.partition {
            return Err(StoreError::Internal("record for another partition"));
        }
        if rec.offset <= self.head.offset {
            return Err(StoreError::OffsetNotAfterHead {
                offset: rec.offset,
                head: self.head.offset,
            });
        }
        let leaf = leaf_hash(rec);
        let chain = chain_hash(&self.head.hash, self.head.offset, rec.offset, &leaf);
        let ctx = RowCtx {
            rec,
            prev_offset: self.head.offset,
            leaf,
            chain,
        };
        let value = rec.value.unwrap_or(&[]);
        let time_ns = rec
            .timestamp_ms
            .and_then(|ms| ms.checked_mul(1_000_000))
            .unwrap_or(received_ns);

        let (events, cols) = (&mut self.events, &mut self.cols);
        let mut min_time = self.min_event_time_ns;
        let mut col_err = None;
        let decoded = decoder.decode_with(value, |e| {
            events.append(e, time_ns);
            min_time = min_time.min(e.time_ns.unwrap_or(time_ns));
            // The value is kept apart from `raw` only where it differs (gzip, arrays), and then
            // once, on the record's first row.
            let same = e.raw.len() == value.len() && e.raw.as_ref() == value;
            let kept_value = (!same && e.record_index == 0).then_some(value);
            if let Err(err) = cols.append(&ctx, kept_value, None) {
                col_err.get_or_insert(err);
            }
        });
        let outcome = match decoded {
            Ok(n) => Appended::Decoded(n),
            Err(err) => {
                events.append_rejected(value, time_ns);
                min_time = min_time.min(time_ns);
                cols.append(&ctx, None, Some(&err))?;
                Appended::Rejected(err)
            }
        };
        if let Some(err) = col_err {
            return Err(err);
        }
        self.min_event_time_ns = min_time;
        self.first.get_or_insert((rec.offset, chain));
        self.tree.append(&leaf);
        self.head = ChainHead {
            offset: rec.offset,
            hash: chain,
        };
        self.records += 1;
        Ok(outcome)
    }

    /// Cut the rows appended since the last cut into a piece (part of the open batch, and of
    /// its file when sealed); `None` when there are none.
    pub fn cut(&mut self) -> Result<Option<Piece>, StoreError> {
        if self.events.is_empty() {
            return Ok(None);
        }
        self.cut_rows += self.events.len();
        self.cut_raw_bytes += self.events.raw_bytes();
        let events = self.events.finish().map_err(StoreError::Arrow)?;
        let mut cols: Vec<ArrayRef> = events.columns().to_vec();
        self.cols.finish_into(&mut cols);
        let batch = RecordBatch::try_new(store_schema(), cols).map_err(StoreError::Arrow)?;
        let piece = Piece {
            topic: self.topic.clone(),
            partition: self.partition,
            first_leaf_index: self.uncut_leaf_index,
            batch: batch.clone(),
        };
        self.uncut_leaf_index = self.tree.size();
        self.pieces.push(batch);
        Ok(Some(piece))
    }

    /// Seal the open batch; `None` when it is empty. The next batch continues the chain. Rows
    /// not yet cut are cut first (a piece nobody saw: call [`PartitionBatch::cut`] before to
    /// see every row).
    pub fn seal(&mut self) -> Result<Option<SealedBatch>, StoreError> {
        let Some((first_offset, first_chain_hash)) = self.first.take() else {
            return Ok(None);
        };
        self.cut()?;
        let batches = std::mem::take(&mut self.pieces);
        self.cut_rows = 0;
        self.cut_raw_bytes = 0;
        let span = BatchSpan {
            topic: self.topic.clone(),
            partition: self.partition,
            first_offset,
            last_offset: self.head.offset,
            prev: self.start,
            first_chain_hash,
            last_chain_hash: self.head.hash,
            records: self.records,
            min_event_time_ns: self.min_event_time_ns,
            first_leaf_index: self.start_tree_size,
            tree: self.tree.clone(),
        };
        self.start = self.head;
        self.start_tree_size = self.tree.size();
        self.records = 0;
        self.min_event_time_ns = i64::MAX;
        Ok(Some(SealedBatch { batches, span }))
    }
}
