//! One log's audit: its files against its chain and tree (`crate::verify`), and its
//! checkpoints — the store's, its signed prunes, those from outside — against the rebuilt tree
//! and each other.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::{AuditReport, LogSummary, Seen, Verdict, describe};
use crate::LogId;
use crate::checkpoint::{Checkpointer, NoteVerdict, Registry, list_notes, note_hash, verify_note};
use crate::error::StoreError;
use crate::files::Store;
use crate::merkle::Hash;
use crate::verify::check_partition;

/// A part of the store that could not be read, and where.
pub(super) struct Unreadable {
    pub(super) place: String,
    pub(super) error: StoreError,
}

/// `r`, or what could not be read at `place`.
fn at<T>(r: Result<T, StoreError>, place: impl Into<String>) -> Result<T, Unreadable> {
    r.map_err(|error| Unreadable {
        place: place.into(),
        error,
    })
}

/// A store checkpoint of a log: as seen, its note's bytes, its file.
type Stored = (Seen, Vec<u8>, PathBuf);

/// What every log is checked with.
pub(super) struct LogAudit<'a> {
    pub(super) store: &'a Store,
    pub(super) cp_root: &'a Path,
    pub(super) keys: &'a Registry,
    pub(super) redecode: Option<&'a vigil_schemas::DecoderConfig>,
}

impl LogAudit<'_> {
    /// One log: its files against its chain and tree, its checkpoints (the store's and those
    /// from outside) against the tree and each other. Findings go to `report`.
    pub(super) fn audit_log(
        &self,
        log: LogId,
        log_origin: String,
        from_outside: Vec<Seen>,
        report: &mut AuditReport,
    ) -> Result<LogSummary, Unreadable> {
        let place = log.to_string();
        let LogId { topic, partition } = log;
        let dir = at(
            Checkpointer::log_dir(self.cp_root, &topic, partition),
            &place,
        )?;
        let mut stored = self.stored_checkpoints(&dir, &log_origin, &place, report)?;
        let pruned = self.signed_prune(&dir, &log_origin, &place, report)?;
        let want: BTreeSet<u64> = stored
            .iter()
            .map(|(s, _, _)| s.cp.size)
            .chain(from_outside.iter().map(|s| s.cp.size))
            .collect();
        let check = at(
            check_partition(
                self.store,
                &topic,
                partition,
                &want,
                self.redecode,
                pruned.as_ref(),
            ),
            &place,
        )?;
        for (path, what) in &check.problems {
            report.find(Verdict::Tampered, path.display().to_string(), what.clone());
        }
        checkpoint_times_go_forward(&stored, &from_outside, report);
        checkpoints_describe_the_tree(&stored, &from_outside, &check, &place, report);
        stored.sort_by_key(|(s, _, _)| s.cp.size);
        checkpoints_link_and_none_is_missing(&stored, &from_outside, &check, &place, report);

        let newest = stored.last().map(|(s, _, _)| s.cp.size);
        if check.tree_size > newest.unwrap_or(0) {
            report.find(
                Verdict::Incomplete,
                place.clone(),
                format!(
                    "{} records after the newest checkpoint (size {}) are not signed yet",
                    check.tree_size - newest.unwrap_or(0),
                    newest.unwrap_or(0)
                ),
            );
        }
        let anchored = from_outside.iter().map(|s| s.cp.size).max();
        if anchored.is_none() && check.tree_size > 0 {
            report.find_unvouched(
                place,
                "unanchored: nothing outside the store vouches for this log, so deleting its \
                 newest files with their checkpoints could not be seen (pass --trusted, \
                 --anchor-dir or --anchor-kafka)",
            );
        }
        Ok(LogSummary {
            topic,
            partition,
            origin: log_origin,
            files: check.files,
            records: check.records,
            rows: check.rows,
            tree_size: check.tree_size,
            root: check.merkle_root,
            pruned: check.pruned,
            checkpoints: stored.len(),
            newest_checkpoint: newest,
            anchored,
            newest_note: stored.last().map(|(_, n, _)| n.clone()),
        })
    }

    /// The store's own valid checkpoints of the log (in `dir`); the others are findings.
    fn stored_checkpoints(
        &self,
        dir: &Path,
        log_origin: &str,
        place: &str,
        report: &mut AuditReport,
    ) -> Result<Vec<Stored>, Unreadable> {
        let mut stored = Vec::new();
        for (size, path) in at(list_notes(dir), place)? {
            let where_ = path.display().to_string();
            let note = at(fs::read(&path).map_err(StoreError::io(&path)), &where_)?;
            match verify_note(&note, self.keys) {
                NoteVerdict::Valid(cp) if cp.origin != log_origin => report.find(
                    Verdict::Tampered,
                    where_,
                    format!("checkpoint of log {}, stored under {place}", cp.origin),
                ),
                NoteVerdict::Valid(cp) if cp.size != size => report.find(
                    Verdict::Tampered,
                    where_,
                    format!("checkpoint of tree size {}, stored as size {size}", cp.size),
                ),
                NoteVerdict::Valid(cp) => stored.push((Seen { cp, source: where_ }, note, path)),
                bad => report.find(Verdict::Tampered, where_, describe(&bad)),
            }
        }
        Ok(stored)
    }

    /// Where the log may start: the newest valid signed prune in `dir`, if any; the invalid
    /// ones are findings.
    fn signed_prune(
        &self,
        dir: &Path,
        log_origin: &str,
        place: &str,
        report: &mut AuditReport,
    ) -> Result<Option<crate::prune::PrunedStart>, Unreadable> {
        let mut pruned: Option<crate::prune::PrunedStart> = None;
        for (size, note_path, frontier_path) in at(crate::prune::list_pruned(dir), place)? {
            let where_ = note_path.display().to_string();
            let note = at(
                fs::read(&note_path).map_err(StoreError::io(&note_path)),
                &where_,
            )?;
            match verify_note(&note, self.keys) {
                NoteVerdict::Valid(cp)
                    if cp.origin == crate::prune::pruned_origin(log_origin) && cp.size == size =>
                {
                    match crate::prune::read_pruned_start(&cp, &frontier_path) {
                        Ok(start) if pruned.as_ref().is_none_or(|p| p.size < start.size) => {
                            pruned = Some(start);
                        }
                        Ok(_) => {}
                        Err(e) => report.find(Verdict::Tampered, where_, e.to_string()),
                    }
                }
                NoteVerdict::Valid(cp) => report.find(
                    Verdict::Tampered,
                    where_,
                    format!(
                        "a prune note of {} (size {}), stored as {place}'s of size {size}",
                        cp.origin, cp.size
                    ),
                ),
                bad => report.find(Verdict::Tampered, where_, describe(&bad)),
            }
        }
        Ok(pruned)
    }
}

/// Along a log, a larger tree is never signed at an earlier time (the signer dates no
/// checkpoint before the last): one that is was made or re-dated by someone else.
fn checkpoint_times_go_forward(stored: &[Stored], from_outside: &[Seen], report: &mut AuditReport) {
    let mut by_time: Vec<&Seen> = stored
        .iter()
        .map(|(s, _, _)| s)
        .chain(from_outside.iter())
        .collect();
    by_time.sort_by_key(|s| (s.cp.size, s.cp.time_ms));
    for w in by_time.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.cp.size > a.cp.size && b.cp.time_ms < a.cp.time_ms {
            report.find(
                Verdict::Tampered,
                b.source.clone(),
                format!(
                    "signed at {} ms, before the smaller tree (size {}) of {} at {} ms: \
                     checkpoint times go backwards",
                    b.cp.time_ms, a.cp.size, a.source, a.cp.time_ms
                ),
            );
        }
    }
}

/// Every checkpoint, wherever it came from, must describe this store's tree: no fork, none
/// past what the store holds, each root and chain head the rebuilt tree's at its size.
fn checkpoints_describe_the_tree(
    stored: &[Stored],
    from_outside: &[Seen],
    check: &crate::verify::PartitionReport,
    place: &str,
    report: &mut AuditReport,
) {
    let all = stored.iter().map(|(s, _, _)| s).chain(from_outside.iter());
    let mut by_size: BTreeMap<u64, &Seen> = BTreeMap::new();
    for seen in all {
        let cp = &seen.cp;
        if let Some(other) = by_size.get(&cp.size)
            && other.cp.root != cp.root
        {
            report.find(
                Verdict::Tampered,
                place,
                format!(
                    "fork: two checkpoints of tree size {} with different roots ({} and {})",
                    cp.size, other.source, seen.source
                ),
            );
        }
        by_size.entry(cp.size).or_insert(seen);
        if cp.size > check.tree_size {
            report.find(
                Verdict::Tampered,
                seen.source.clone(),
                format!(
                    "checkpoint covers {} records of {place}, the store holds {}: its newest \
                     records were deleted or it was rolled back",
                    cp.size, check.tree_size
                ),
            );
            continue;
        }
        if cp.size < check.pruned {
            // Its records were removed by a signed prune: nothing left to hold it against.
            continue;
        }
        match check.roots_at.get(&cp.size) {
            Some((root, chain)) if *root == cp.root && *chain == cp.chain => {}
            Some(_) => report.find(
                Verdict::Tampered,
                seen.source.clone(),
                format!(
                    "the store's tree of size {} differs from this checkpoint's (root or chain head)",
                    cp.size
                ),
            ),
            None if check.problems.is_empty() => report.find(
                Verdict::Tampered,
                seen.source.clone(),
                format!("tree size {} was never reached by the store", cp.size),
            ),
            // The damaged file is already reported.
            None => {}
        }
    }
}

/// The store's checkpoints (`stored`, by size) form one chain, each linking to the one
/// before; and every checkpoint from outside that the tree reached is among them.
fn checkpoints_link_and_none_is_missing(
    stored: &[Stored],
    from_outside: &[Seen],
    check: &crate::verify::PartitionReport,
    place: &str,
    report: &mut AuditReport,
) {
    let mut prev: Option<Hash> = None;
    for (seen, note, path) in stored {
        if seen.cp.prev != prev {
            report.find(
                Verdict::Tampered,
                path.display().to_string(),
                "does not link to the previous checkpoint (one was removed, replaced or inserted)",
            );
        }
        prev = Some(note_hash(note));
    }
    let stored_sizes: BTreeSet<u64> = stored.iter().map(|(s, _, _)| s.cp.size).collect();
    for seen in from_outside {
        if !stored_sizes.contains(&seen.cp.size) && seen.cp.size <= check.tree_size {
            report.find(
                Verdict::Tampered,
                seen.source.clone(),
                format!(
                    "the store has no checkpoint of size {} for {place}: it was removed",
                    seen.cp.size
                ),
            );
        }
    }
}
