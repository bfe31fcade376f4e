//! Retention: whole files removed from the old end of a partition log, and a signed record of
//! where the log now starts, so that a verifier accepts the missing prefix — and nothing else.
//!
//! A prune of a log up to tree size `L` (the end of its last removed file) leaves, in the
//! log's checkpoint directory:
//!
//! ```text
//! pruned-<L>.note       a checkpoint note (signed like the log's checkpoints) of origin
//!                       `<log origin>/pruned`: size L, the root and chain head at L, linked to
//!                       the log's checkpoint at L, dated when the prune was signed
//! pruned-<L>.frontier   the Merkle tree's frontier at L (its root is the signed root, so it
//!                       needs no signature of its own): where a verifier resumes the tree
//! ```
//!
//! Files are removed only after both are durable (and in the bucket). A file is old by when it
//! was written — the time of the checkpoint signed right after it — never by the event times
//! inside it (a producer's to choose). The newest file of a log is never removed (it says
//! where the log stands).

use std::path::{Path, PathBuf};

use crate::batch::ChainHead;
use crate::checkpoint::{Checkpoint, Checkpointer, list_notes, note_hash, parse_note};
use crate::error::StoreError;
use crate::files::{Store, create_dirs_durably, read_footer, write_durably};
use crate::merkle::Frontier;

/// Where a pruned log starts: verified against a signed prune note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedStart {
    /// Records before this leaf index were removed.
    pub size: u64,
    pub chain: ChainHead,
    pub frontier: Frontier,
    /// When the prune was signed.
    pub time_ms: i64,
}

/// What one log's prune did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub files_removed: usize,
    /// The log now starts at this leaf index (unchanged when nothing was removed).
    pub starts_at: u64,
}

/// The origin of a log's prune notes.
pub(crate) fn pruned_origin(log_origin: &str) -> String {
    format!("{log_origin}/pruned")
}

fn note_path(dir: &Path, size: u64) -> PathBuf {
    dir.join(format!("pruned-{size:020}.note"))
}

fn frontier_path(dir: &Path, size: u64) -> PathBuf {
    dir.join(format!("pruned-{size:020}.frontier"))
}

/// A log's prune records: (size, note path, frontier path), by size.
pub(crate) fn list_pruned(dir: &Path) -> Result<Vec<(u64, PathBuf, PathBuf)>, StoreError> {
    let mut out: Vec<(u64, PathBuf, PathBuf)> = crate::files::read_dir_names(dir)?
        .into_iter()
        .filter_map(|name| {
            let size = name
                .strip_prefix("pruned-")?
                .strip_suffix(".note")?
                .parse()
                .ok()?;
            Some((size, note_path(dir, size), frontier_path(dir, size)))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A prune record's frontier, checked against the (already verified) prune checkpoint: same
/// size and root.
pub(crate) fn read_pruned_start(
    cp: &Checkpoint,
    frontier_file: &Path,
) -> Result<PrunedStart, StoreError> {
    let text = std::fs::read_to_string(frontier_file).map_err(StoreError::io(frontier_file))?;
    let frontier = Frontier::decode(text.trim())
        .map_err(|e| StoreError::corrupt(frontier_file, e.to_string()))?;
    if frontier.size() != cp.size || frontier.root() != cp.root {
        return Err(StoreError::corrupt(
            frontier_file,
            format!("the frontier is not the signed tree of size {}", cp.size),
        ));
    }
    Ok(PrunedStart {
        size: cp.size,
        chain: cp.chain,
        frontier,
        time_ms: cp.time_ms,
    })
}

/// Remove the files of one log written more than `max_age_ms` before `now_ms`, oldest first,
/// up to (never including) its newest file, after signing and storing where the log then
/// starts. Refused in a bucket under an Object Lock longer than the retention.
pub fn prune(
    store: &Store,
    signer: &Checkpointer,
    topic: &str,
    partition: i32,
    max_age_ms: i64,
    now_ms: i64,
) -> Result<PruneReport, StoreError> {
    if let Some(b) = store.bucket()
        && i64::from(b.object_lock_days()) * 86_400_000 > max_age_ms
    {
        return Err(StoreError::Invalid(format!(
            "retention of {} days is shorter than the bucket's Object Lock ({} days): its \
             files cannot be removed yet",
            max_age_ms / 86_400_000,
            b.object_lock_days()
        )));
    }
    // Never `head`: it removes temp files, and a writer's (serve runs beside a prune) is one.
    // Files left overlapping by an interrupted compaction are for `head` to resolve first.
    let (files, _) = store.list(topic, partition)?;
    if let Some(w) = files
        .windows(2)
        .find(|w| w[1].first_offset <= w[0].last_offset)
    {
        return Err(StoreError::corrupt(
            &w[1].path,
            format!(
                "overlaps {} (an interrupted compaction: `vigil serve` or `vigil compact` resolves it)",
                w[0].path.display()
            ),
        ));
    }
    let data_dir = store.data_dir();
    let cp_dir = Checkpointer::log_dir(&crate::layout::checkpoints(data_dir), topic, partition)?;
    let notes: std::collections::BTreeMap<u64, PathBuf> =
        list_notes(&cp_dir)?.into_iter().collect();
    let mut report = PruneReport::default();
    if let Some(f) = files.first() {
        report.starts_at = read_footer(&f.path)?.first_leaf_index;
    }
    // The longest run of old files from the start, the newest file never among them.
    let cutoff_ms = now_ms.saturating_sub(max_age_ms);
    let mut last = None;
    let mut count = 0;
    for f in files.iter().take(files.len().saturating_sub(1)) {
        let footer = read_footer(&f.path)?;
        // When it was written: the checkpoint signed after it. None (a crash before it was
        // signed): not known to be old.
        let Some(note) = notes.get(&footer.tree_size) else {
            break;
        };
        let bytes = std::fs::read(note).map_err(StoreError::io(note))?;
        let signed = parse_note(&bytes).map_err(|e| StoreError::corrupt(note, e.to_string()))?;
        if signed.time_ms >= cutoff_ms {
            break;
        }
        last = Some((footer, bytes));
        count += 1;
    }
    let Some((footer, log_note)) = last else {
        return Ok(report);
    };
    let log_origin = crate::checkpoint::origin(&signer.store_name(), topic, partition);
    let cp = Checkpoint {
        origin: pruned_origin(&log_origin),
        size: footer.tree_size,
        root: footer.merkle_root,
        chain: ChainHead {
            offset: footer.last_offset,
            hash: footer.last_chain_hash,
        },
        prev: Some(note_hash(&log_note)),
        time_ms: now_ms,
    };
    let note = signer.sign(&cp)?;
    create_dirs_durably(&cp_dir)?;
    let (np, fp) = (note_path(&cp_dir, cp.size), frontier_path(&cp_dir, cp.size));
    let frontier = footer.frontier.encode().into_bytes();
    // In the bucket before it has its name here (as every file of the store).
    if let Some(b) = store.bucket() {
        b.put(data_dir, &fp, frontier.clone(), false)?;
        b.put(data_dir, &np, note.clone(), false)?;
    }
    write_durably(&fp, &frontier)?;
    write_durably(&np, &note)?;
    // Removed here first, then from the bucket: a crash in between leaves the bucket with
    // files the next start fetches back (and the next prune removes), never a local file the
    // bucket lacks.
    for f in &files[..count] {
        tracing::info!(path = %f.path.display(), "retention: removing a file past its age");
        std::fs::remove_file(&f.path).map_err(StoreError::io(&f.path))?;
        if let Some(b) = store.bucket() {
            b.unpublish(data_dir, &f.path)?;
        }
    }
    report.files_removed = count;
    report.starts_at = cp.size;
    Ok(report)
}
