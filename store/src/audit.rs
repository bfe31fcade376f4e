//! The full verification behind `vigil verify`: every leaf, chain hash and Merkle root
//! recomputed from the raw bytes ([`crate::verify`]), every signed checkpoint checked against
//! trusted keys and against the rebuilt trees, successive checkpoints linked, and the store
//! compared with what is known outside it (a trusted state, anchors) so that deleting its
//! newest files or rolling it back to an older copy is caught.
//!
//! The verdict never says "valid" when it could not tell: keys taken from the store itself
//! (not pinned by the verifier) or a log nothing outside the store vouches for make it
//! [`Verdict::Incomplete`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::LogId;
use crate::checkpoint::{
    Checkpoint, Checkpointer, NoteVerdict, Registry, list_notes, note_hash, origin, verify_note,
};
use crate::error::StoreError;
use crate::files::{Store, partitions_under};
use crate::merkle::Hash;
use crate::verify::check_partition;

/// The outcome, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Everything checked and nothing wrong.
    Valid,
    /// Something could not be checked (keys not pinned, a log not anchored, records not yet
    /// signed): not proven valid.
    Incomplete,
    /// Something is wrong: edited, deleted, reordered, forged or rolled back.
    Tampered,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Valid => 0,
            Verdict::Tampered => 1,
            Verdict::Incomplete => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Incomplete => "incomplete",
            Verdict::Tampered => "tampered",
        }
    }
}

/// One thing found: how bad, where, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    /// A file, a checkpoint, a log (`topic/partition`) or `keys`.
    pub place: String,
    pub what: String,
    /// Only that nothing outside the store vouches for it (keys not pinned, a log not
    /// anchored): what a first trusted state is made to fix.
    pub unvouched: bool,
}

/// What the verifier trusts, from outside the store.
#[derive(Clone, Debug, Default)]
pub struct Trusted {
    /// Pinned public keys; `None`: the store's own registry is used (and the verdict can be no
    /// better than incomplete).
    pub keys: Option<Registry>,
    /// Checkpoints seen before (a trusted state file) or published outside the store (anchors).
    pub checkpoints: Vec<(String, Vec<u8>)>,
}

/// One partition log's summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSummary {
    pub topic: String,
    pub partition: i32,
    pub origin: String,
    pub files: usize,
    pub records: u64,
    pub rows: u64,
    pub tree_size: u64,
    pub root: Hash,
    /// Leaves removed from the log's start by a signed prune (0: none).
    pub pruned: u64,
    pub checkpoints: usize,
    pub newest_checkpoint: Option<u64>,
    /// The largest tree size vouched for outside the store.
    pub anchored: Option<u64>,
    /// The newest valid checkpoint in the store (for a trusted state update).
    pub newest_note: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Default)]
pub struct AuditReport {
    pub logs: Vec<LogSummary>,
    pub findings: Vec<Finding>,
    /// The keys the checkpoints were checked with.
    pub keys: Registry,
}

impl AuditReport {
    pub fn verdict(&self) -> Verdict {
        self.findings
            .iter()
            .map(|f| f.verdict)
            .max()
            .unwrap_or(Verdict::Valid)
    }

    pub fn records(&self) -> u64 {
        self.logs.iter().map(|l| l.records).sum()
    }

    pub fn rows(&self) -> u64 {
        self.logs.iter().map(|l| l.rows).sum()
    }

    /// Add a finding (checks outside this crate add theirs: the alert log's).
    pub fn find(&mut self, verdict: Verdict, place: impl Into<String>, what: impl Into<String>) {
        self.findings.push(Finding {
            verdict,
            place: place.into(),
            what: what.into(),
            unvouched: false,
        });
    }

    /// An incomplete finding that says only that nothing outside vouches for `place`.
    fn find_unvouched(&mut self, place: impl Into<String>, what: impl Into<String>) {
        self.findings.push(Finding {
            verdict: Verdict::Incomplete,
            place: place.into(),
            what: what.into(),
            unvouched: true,
        });
    }

    /// Whether a trusted state may record what was found: when it is valid, or — making the
    /// first one — when all that keeps it from valid is that nothing outside vouched for it
    /// yet (trust on first use; anything else found, it is not recorded).
    pub fn may_be_trusted(&self, first_use: bool) -> bool {
        match self.verdict() {
            Verdict::Valid => true,
            Verdict::Incomplete => first_use && self.findings.iter().all(|f| f.unvouched),
            Verdict::Tampered => false,
        }
    }
}

/// A valid checkpoint and where it came from.
struct Seen {
    cp: Checkpoint,
    source: String,
}

/// Verify the store under `data_dir` against what is trusted.
/// With `redecode`, every record's bytes are also decoded again (with that configuration) and
/// compared with the stored event columns, which the hashes do not cover.
pub fn audit(
    data_dir: &Path,
    trusted: &Trusted,
    redecode: Option<&vigil_schemas::DecoderConfig>,
) -> Result<AuditReport, StoreError> {
    let store = Store::open_existing(data_dir)?;
    let mut report = AuditReport::default();

    // Keys: pinned by the verifier, or (not proof of anything) the store's own.
    let keys = match &trusted.keys {
        Some(k) => k.clone(),
        None => {
            let path = crate::layout::registry(data_dir);
            report.find_unvouched(
                "keys",
                "public keys not pinned: checked with the store's own registry, which whoever \
                 controls the store can replace (pass --trusted)",
            );
            match fs::read_to_string(&path) {
                Ok(t) => Registry::parse(&t).unwrap_or_else(|e| {
                    report.find(Verdict::Tampered, path.display().to_string(), e.to_string());
                    Registry::default()
                }),
                Err(e) => {
                    report.find(
                        Verdict::Incomplete,
                        path.display().to_string(),
                        format!("no key registry: {e}"),
                    );
                    Registry::default()
                }
            }
        }
    };
    report.keys = keys.clone();
    let name = keys.name().unwrap_or_default().to_owned();

    // Checkpoints from outside the store, by origin.
    let mut outside: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for (source, note) in &trusted.checkpoints {
        match verify_note(note, &keys) {
            NoteVerdict::Valid(cp) => outside.entry(cp.origin.clone()).or_default().push(Seen {
                cp,
                source: source.clone(),
            }),
            bad => report.find(Verdict::Tampered, source.clone(), describe(&bad)),
        }
    }

    // Every log: those with files, those with checkpoints, those known from outside.
    let cp_root = crate::layout::checkpoints(data_dir);
    let mut logs: BTreeSet<LogId> = store.partitions()?.into_iter().collect();
    logs.extend(partitions_under(&cp_root)?);
    let known: BTreeMap<String, LogId> = logs
        .iter()
        .map(|l| (origin(&name, &l.topic, l.partition), l.clone()))
        .collect();
    for o in outside.keys() {
        if !known.contains_key(o) {
            match parse_origin(&name, o) {
                Some(log) => {
                    logs.insert(log);
                }
                None => report.find(
                    Verdict::Tampered,
                    o.clone(),
                    "a trusted checkpoint names a log of another store or name",
                ),
            }
        }
    }

    // Whatever is in the store that Vigil does not write there is a finding, not a reason to
    // stop: the rest is checked and reported all the same.
    for (path, what) in store.strays()? {
        report.find(Verdict::Tampered, path.display().to_string(), what);
    }
    // A part that cannot be read is a finding (the verdict cannot be valid), never the end.
    macro_rules! or_finding {
        ($e:expr, $place:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    report.find(
                        Verdict::Incomplete,
                        $place,
                        format!("could not be checked: {e}"),
                    );
                    continue;
                }
            }
        };
    }

    for log in logs {
        let place = log.to_string();
        let LogId { topic, partition } = log;
        let log_origin = origin(&name, &topic, partition);
        // The store's own checkpoints of this log.
        let mut stored: Vec<(Seen, Vec<u8>, PathBuf)> = Vec::new();
        let dir = or_finding!(
            Checkpointer::log_dir(&cp_root, &topic, partition),
            place.clone()
        );
        for (size, path) in or_finding!(list_notes(&dir), place.clone()) {
            let note = or_finding!(
                fs::read(&path).map_err(StoreError::io(&path)),
                path.display().to_string()
            );
            match verify_note(&note, &keys) {
                NoteVerdict::Valid(cp) if cp.origin != log_origin => report.find(
                    Verdict::Tampered,
                    path.display().to_string(),
                    format!("checkpoint of log {}, stored under {place}", cp.origin),
                ),
                NoteVerdict::Valid(cp) if cp.size != size => report.find(
                    Verdict::Tampered,
                    path.display().to_string(),
                    format!("checkpoint of tree size {}, stored as size {size}", cp.size),
                ),
                NoteVerdict::Valid(cp) => stored.push((
                    Seen {
                        cp,
                        source: path.display().to_string(),
                    },
                    note,
                    path,
                )),
                bad => report.find(
                    Verdict::Tampered,
                    path.display().to_string(),
                    describe(&bad),
                ),
            }
        }
        // Signed prunes of this log: where it may start (the newest valid one).
        let mut pruned: Option<crate::prune::PrunedStart> = None;
        for (size, note_path, frontier_path) in
            or_finding!(crate::prune::list_pruned(&dir), place.clone())
        {
            let where_ = note_path.display().to_string();
            let note = or_finding!(
                fs::read(&note_path).map_err(StoreError::io(&note_path)),
                where_
            );
            match verify_note(&note, &keys) {
                NoteVerdict::Valid(cp)
                    if cp.origin == crate::prune::pruned_origin(&log_origin) && cp.size == size =>
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
        let from_outside = outside.remove(&log_origin).unwrap_or_default();
        let want: BTreeSet<u64> = stored
            .iter()
            .map(|(s, _, _)| s.cp.size)
            .chain(from_outside.iter().map(|s| s.cp.size))
            .collect();
        let check = or_finding!(
            check_partition(&store, &topic, partition, &want, redecode, pruned.as_ref()),
            place.clone()
        );
        for (path, what) in &check.problems {
            report.find(Verdict::Tampered, path.display().to_string(), what.clone());
        }

        // Along a log, a larger tree is never signed at an earlier time (the signer dates no
        // checkpoint before the last): one that is was made or re-dated by someone else.
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

        // Every checkpoint, wherever it came from, must describe this store's tree.
        let all = stored.iter().map(|(s, _, _)| s).chain(from_outside.iter());
        let mut by_size: BTreeMap<u64, &Seen> = BTreeMap::new();
        for seen in all {
            let cp = &seen.cp;
            if let Some(other) = by_size.get(&cp.size)
                && other.cp.root != cp.root
            {
                report.find(
                    Verdict::Tampered,
                    place.clone(),
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

        // The store's checkpoints form one chain, each linking to the one before.
        stored.sort_by_key(|(s, _, _)| s.cp.size);
        let mut prev: Option<Hash> = None;
        for (seen, note, path) in &stored {
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
        for seen in &from_outside {
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
                place.clone(),
                "unanchored: nothing outside the store vouches for this log, so deleting its \
                 newest files with their checkpoints could not be seen (pass --trusted, \
                 --anchor-dir or --anchor-kafka)",
            );
        }
        report.logs.push(LogSummary {
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
        });
    }
    Ok(report)
}

fn describe(v: &NoteVerdict) -> String {
    match v {
        NoteVerdict::Valid(_) => "valid".into(),
        NoteVerdict::Malformed(w) => format!("malformed checkpoint: {w}"),
        NoteVerdict::BadSignature(w) => format!("bad signature: {w}"),
        NoteVerdict::Untrusted(w) => format!("not signed by a trusted key: {w}"),
    }
}

/// `<name>/<topic>/<partition>` back into its log.
fn parse_origin(name: &str, origin: &str) -> Option<LogId> {
    origin.strip_prefix(name)?.strip_prefix('/')?.parse().ok()
}

/// Read every checkpoint note under an anchor directory (a `checkpoint.mirror_dir`).
pub fn read_anchor_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for LogId { topic, partition } in partitions_under(dir)? {
        let log = Checkpointer::log_dir(dir, &topic, partition)?;
        for (_, path) in list_notes(&log)? {
            out.push((
                path.display().to_string(),
                fs::read(&path).map_err(StoreError::io(&path))?,
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_state_records_only_a_valid_store_or_a_first_one_lacking_only_vouchers() {
        let mut r = AuditReport::default();
        assert!(r.may_be_trusted(false) && r.may_be_trusted(true));
        r.find_unvouched("audit/0", "unanchored");
        assert!(
            r.may_be_trusted(true),
            "first use: what the state will vouch for"
        );
        assert!(
            !r.may_be_trusted(false),
            "an existing state is updated only when valid"
        );
        r.find(Verdict::Incomplete, "audit/0", "3 records not signed yet");
        assert!(!r.may_be_trusted(true) && !r.may_be_trusted(false));
        let mut t = AuditReport::default();
        t.find(Verdict::Tampered, "f", "leaf hash does not match");
        assert!(!t.may_be_trusted(true) && !t.may_be_trusted(false));
    }
}
