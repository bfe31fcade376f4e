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
use std::path::Path;

use crate::LogId;
use crate::checkpoint::{
    Checkpoint, Checkpointer, NoteVerdict, Registry, list_notes, origin, verify_note,
};
use crate::error::StoreError;
use crate::files::{Store, partitions_under};
use crate::merkle::Hash;

mod log;
use log::{LogAudit, Unreadable};

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
    let keys = keys_to_check_with(data_dir, trusted, &mut report);
    report.keys = keys.clone();
    let name = keys.name().unwrap_or_default().to_owned();
    let mut outside = outside_checkpoints(trusted, &keys, &mut report);
    let cp_root = crate::layout::checkpoints(data_dir);
    let logs = logs_to_check(&store, &cp_root, &name, &outside, &mut report)?;

    // Whatever is in the store that Vigil does not write there is a finding, not a reason to
    // stop: the rest is checked and reported all the same.
    for (path, what) in store.strays()? {
        report.find(Verdict::Tampered, path.display().to_string(), what);
    }
    let ctx = LogAudit {
        store: &store,
        cp_root: &cp_root,
        keys: &keys,
        redecode,
    };
    for log in logs {
        let log_origin = origin(&name, &log.topic, log.partition);
        let from_outside = outside.remove(&log_origin).unwrap_or_default();
        match ctx.audit_log(log, log_origin, from_outside, &mut report) {
            Ok(summary) => report.logs.push(summary),
            // A part that cannot be read is a finding (the verdict cannot be valid), never the
            // end: the other logs are checked all the same.
            Err(Unreadable { place, error }) => report.find(
                Verdict::Incomplete,
                place,
                format!("could not be checked: {error}"),
            ),
        }
    }
    Ok(report)
}

/// The keys checkpoints are checked with: pinned by the verifier, or (not proof of anything)
/// the store's own.
fn keys_to_check_with(data_dir: &Path, trusted: &Trusted, report: &mut AuditReport) -> Registry {
    if let Some(k) = &trusted.keys {
        return k.clone();
    }
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

/// The valid checkpoints from outside the store, by origin; the others are findings.
fn outside_checkpoints(
    trusted: &Trusted,
    keys: &Registry,
    report: &mut AuditReport,
) -> BTreeMap<String, Vec<Seen>> {
    let mut outside: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for (source, note) in &trusted.checkpoints {
        match verify_note(note, keys) {
            NoteVerdict::Valid(cp) => outside.entry(cp.origin.clone()).or_default().push(Seen {
                cp,
                source: source.clone(),
            }),
            bad => report.find(Verdict::Tampered, source.clone(), describe(&bad)),
        }
    }
    outside
}

/// Every log: those with files, those with checkpoints, those known from outside (a trusted
/// checkpoint of another store or name is a finding).
fn logs_to_check(
    store: &Store,
    cp_root: &Path,
    name: &str,
    outside: &BTreeMap<String, Vec<Seen>>,
    report: &mut AuditReport,
) -> Result<BTreeSet<LogId>, StoreError> {
    let mut logs: BTreeSet<LogId> = store.partitions()?.into_iter().collect();
    logs.extend(partitions_under(cp_root)?);
    let known: BTreeSet<String> = logs
        .iter()
        .map(|l| origin(name, &l.topic, l.partition))
        .collect();
    for o in outside.keys() {
        if !known.contains(o) {
            match parse_origin(name, o) {
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
    Ok(logs)
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
