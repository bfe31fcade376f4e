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
    current: Option<(ParquetRecordBatchReader, u64, u64, std::path::PathBuf)>,
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

    /// `<topic>/<partition>`.
    pub fn log(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }

    fn next_piece(&mut self) -> Result<Option<Piece>, StoreError> {
        loop {
            if let Some((reader, next, size, path)) = &mut self.current {
                match reader.next() {
                    Some(batch) => {
                        let batch = batch.map_err(StoreError::Arrow)?;
                        let first = *next;
                        let (_, after) = leaf_indexes(&batch, first)?;
                        *next = after;
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
            self.current = Some((reader, footer.first_leaf_index, footer.tree_size, file.path));
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<Piece, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_piece().transpose()
    }
}
