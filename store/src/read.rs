//! Reading partition logs back as pieces, in log order (detection catch-up, backtests).

use std::fs::File;

use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::batch::{Piece, leaf_indexes};
use crate::error::StoreError;
use crate::files::{FileEntry, Store, read_footer};

/// One partition log's stored rows as pieces, in log order, from the file holding leaf index
/// `from_index` on (the first piece may start before it: each piece says where it starts).
/// Files are opened one at a time.
pub struct LogReader {
    topic: String,
    partition: i32,
    files: std::vec::IntoIter<FileEntry>,
    from_index: u64,
    current: Option<Open>,
}

/// The file being read.
struct Open {
    reader: ParquetRecordBatchReader,
    /// The leaf index after the rows read so far.
    next: u64,
    /// Its footer's tree size.
    size: u64,
    path: std::path::PathBuf,
    /// The Kafka offset of the last row read: a record's rows (an upload's events) can run
    /// past a reader batch, and the next batch's first rows are then the same leaf.
    last: Option<i64>,
}

/// The Kafka offsets of a batch's first and last rows.
fn edge_offsets(
    batch: &arrow::record_batch::RecordBatch,
) -> Result<Option<(i64, i64)>, StoreError> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let col = batch
        .column_by_name("kafka_offset")
        .ok_or(StoreError::Internal("batch without kafka_offset"))?
        .as_primitive_opt::<Int64Type>()
        .ok_or(StoreError::Internal("kafka_offset is not Int64"))?;
    Ok((!col.is_empty()).then(|| (col.value(0), col.value(col.len() - 1))))
}

impl LogReader {
    pub fn new(
        store: &Store,
        topic: &str,
        partition: i32,
        from_index: u64,
    ) -> Result<LogReader, StoreError> {
        let (files, _) = store.list(topic, partition)?;
        Ok(LogReader {
            topic: topic.to_owned(),
            partition,
            files: files.into_iter(),
            from_index,
            current: None,
        })
    }

    /// The log it reads.
    pub fn log(&self) -> crate::LogId {
        crate::LogId::new(self.topic.clone(), self.partition)
    }

    fn next_piece(&mut self) -> Result<Option<Piece>, StoreError> {
        loop {
            if let Some(Open {
                reader,
                next,
                size,
                path,
                last,
            }) = &mut self.current
            {
                match reader.next() {
                    Some(batch) => {
                        let batch = batch.map_err(StoreError::Arrow)?;
                        let Some((first_offset, last_offset)) = edge_offsets(&batch)? else {
                            continue;
                        };
                        // The rest of the previous batch's last record: the same leaf.
                        let first = if *last == Some(first_offset) {
                            *next - 1
                        } else {
                            *next
                        };
                        let (_, after) = leaf_indexes(&batch, first)?;
                        *next = after;
                        *last = Some(last_offset);
                        return Ok(Some(Piece {
                            topic: self.topic.clone(),
                            partition: self.partition,
                            first_leaf_index: first,
                            batch,
                        }));
                    }
                    None => {
                        if *next != *size {
                            return Err(StoreError::corrupt(
                                path.clone(),
                                "its rows disagree with its footer's tree size",
                            ));
                        }
                        self.current = None;
                    }
                }
            }
            let Some(file) = self.files.next() else {
                return Ok(None);
            };
            let footer = read_footer(&file.path)?;
            if footer.tree_size <= self.from_index {
                continue;
            }
            let f = File::open(&file.path).map_err(StoreError::io(&file.path))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(f)?.build()?;
            self.current = Some(Open {
                reader,
                next: footer.first_leaf_index,
                size: footer.tree_size,
                path: file.path,
                last: None,
            });
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<Piece, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_piece().transpose()
    }
}
