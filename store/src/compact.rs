//! Compaction: consecutive small files of a partition log rewritten as one, with the same rows
//! (the same raw bytes, leaf and chain hashes) and a footer that spans them. The chain, the
//! Merkle tree and every signed checkpoint verify exactly as before.
//!
//! The new file is written (atomically, durably) before the files it replaces are removed; a
//! crash in between leaves files covered by a larger one, which [`Store::head`] removes. With
//! a bucket, the new file is put and the log's head moved over it before the old files go, so
//! a copy of the bucket never needs them (a log another instance writes is not compacted).

use std::fs::{self, File};

use arrow::array::AsArray;
use arrow::compute::{concat_batches, min};
use arrow::datatypes::TimestampNanosecondType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::batch::{BatchSpan, ChainHead, SealedBatch};
use crate::error::StoreError;
use crate::files::{FileEntry, Footer, Store, fsync_dir, read_footer};
use crate::schema::store_schema;

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub files_before: usize,
    pub files_after: usize,
    pub records: u64,
}

/// Rewrite runs of consecutive files of one partition log into files of up to
/// `target_records` records each. Refuses a log whose files do not link up.
pub fn compact(
    store: &Store,
    topic: &str,
    partition: i32,
    target_records: u64,
) -> Result<CompactReport, StoreError> {
    if let Some(b) = store.bucket() {
        // The replaced files must go: under Object Lock they cannot.
        if b.object_lock_days() > 0 {
            return Err(StoreError::Invalid(
                "a store under S3 Object Lock is not compacted (the files it replaces could not be removed)".into(),
            ));
        }
        // Only a log no other instance writes (its head is this directory's, or it has none);
        // claimed, so that this compaction is fenced like any writer.
        store.claim_log(topic, partition, false)?;
    }
    // Resolve an interrupted compaction first.
    store.head(topic, partition)?;
    let (files, _) = store.list(topic, partition)?;
    let mut report = CompactReport {
        files_before: files.len(),
        ..Default::default()
    };
    let footers: Vec<Footer> = files
        .iter()
        .map(|f| read_footer(&f.path))
        .collect::<Result<_, _>>()?;
    for (w, f) in footers.windows(2).zip(&files[1..]) {
        if w[1].prev_offset != w[0].last_offset || w[1].prev_chain_hash != w[0].last_chain_hash {
            return Err(StoreError::corrupt(
                &f.path,
                "does not continue the previous file's chain; verify the store before compacting",
            ));
        }
    }
    let mut group: Vec<usize> = Vec::new();
    let mut group_records = 0;
    let mut groups = Vec::new();
    for (i, f) in footers.iter().enumerate() {
        if !group.is_empty() && group_records + f.records > target_records {
            groups.push(std::mem::take(&mut group));
            group_records = 0;
        }
        group.push(i);
        group_records += f.records;
    }
    groups.push(group);
    report.files_after = groups.len();
    for g in groups.into_iter().filter(|g| g.len() > 1) {
        let run: Vec<(&FileEntry, &Footer)> = g.iter().map(|&i| (&files[i], &footers[i])).collect();
        rewrite(store, &run)?;
    }
    report.records = footers.iter().map(|f| f.records).sum();
    Ok(report)
}

fn rewrite(store: &Store, run: &[(&FileEntry, &Footer)]) -> Result<(), StoreError> {
    let (first, last) = (run[0].1, run[run.len() - 1].1);
    let mut batches = Vec::new();
    for (f, _) in run {
        let file = File::open(&f.path).map_err(StoreError::io(&f.path))?;
        for b in ParquetRecordBatchReaderBuilder::try_new(file)?.build()? {
            batches.push(b.map_err(StoreError::Arrow)?);
        }
    }
    let batch = concat_batches(&store_schema(), &batches).map_err(StoreError::Arrow)?;
    let times = batch.column(0).as_primitive::<TimestampNanosecondType>();
    let span = BatchSpan {
        topic: first.topic.clone(),
        partition: first.partition,
        first_offset: first.first_offset,
        last_offset: last.last_offset,
        prev: ChainHead {
            offset: first.prev_offset,
            hash: first.prev_chain_hash,
        },
        first_chain_hash: first.first_chain_hash,
        last_chain_hash: last.last_chain_hash,
        records: run.iter().map(|(_, f)| f.records).sum(),
        min_event_time_ns: min(times).unwrap_or_default(),
        first_leaf_index: first.first_leaf_index,
        tree: last.frontier.clone(),
    };
    let replaced: Vec<std::path::PathBuf> = run.iter().map(|(f, _)| f.path.clone()).collect();
    let written = store.write_compacted(
        &SealedBatch {
            batches: vec![batch],
            span,
        },
        &replaced,
    )?;
    for (f, _) in run {
        if f.path != written.path {
            fs::remove_file(&f.path).map_err(StoreError::io(&f.path))?;
            if let Some(dir) = f.path.parent() {
                fsync_dir(dir)?;
            }
            // Here first, then in the bucket: a crash between leaves the bucket a file the
            // head's walk passes over, and this copy nothing it lacks.
            if let Some(b) = store.bucket() {
                b.unpublish(store.data_dir(), &f.path)?;
            }
        }
    }
    Ok(())
}
