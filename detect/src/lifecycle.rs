//! The alert lifecycle: open → acknowledged → resolved, or suppressed; who changed it, when,
//! and why.
//!
//! Changes are commands applied by the one process holding the detection lock (it alone
//! writes alert revisions): `vigil alerts ack|resolve|suppress` applies them itself when no
//! `vigil serve` runs detection on the data directory, and otherwise queues them in
//! `DIR/detect/commands/`, which the detection thread drains. Each applied change is a new
//! alert revision (stored, delivered) and an `admin_audit` event in Vigil's own chained log
//! (`vigil.audit/0`), as is every revision detection raises and every refused change.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::alerts::{Alert, Status};

/// The principal of revisions detection raises on its own (not a person's change).
pub(crate) const SYSTEM_PRINCIPAL: &str = "vigil:detect";

/// A lifecycle change someone asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Acknowledge,
    Resolve,
    Suppress,
}

impl Action {
    /// The `action` of its audit event.
    pub(crate) fn audit_name(self) -> &'static str {
        match self {
            Action::Acknowledge => "alert.acknowledge",
            Action::Resolve => "alert.resolve",
            Action::Suppress => "alert.suppress",
        }
    }

    /// The status an alert in `from` moves to, or why it cannot.
    pub(crate) fn apply_to(self, from: Status) -> Result<Status, NotAllowed> {
        use Status::*;
        match (self, from) {
            (Action::Acknowledge, Open) => Ok(Acknowledged),
            (Action::Suppress, Open | Acknowledged) => Ok(Suppressed),
            (Action::Resolve, Open | Acknowledged | Suppressed) => Ok(Resolved),
            (action, from) => Err(NotAllowed { action, from }),
        }
    }
}

/// An action the alert's status does not take (a resolved alert takes none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", self.reason())]
pub struct NotAllowed {
    pub action: Action,
    pub from: Status,
}

impl NotAllowed {
    fn reason(&self) -> String {
        let already = matches!(
            (self.action, self.from),
            (_, Status::Resolved)
                | (Action::Acknowledge, Status::Acknowledged)
                | (Action::Suppress, Status::Suppressed)
        );
        format!(
            "it is {}{}",
            if already { "already " } else { "" },
            self.from
        )
    }
}

/// Why a change was not applied: the API answers 404, 409, 400 and 503 from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// No alert has that id, open in detection or stored.
    #[error("there is no alert {alert_id}: nothing changed")]
    NoSuchAlert { alert_id: String },
    /// The alert's status does not take the action.
    #[error("alert {alert_id} not changed: {not_allowed}")]
    NotAllowed {
        alert_id: String,
        not_allowed: NotAllowed,
    },
    /// The command itself is not one (unreadable, a bad id, a note too long).
    #[error("not a valid command: {0}")]
    Invalid(String),
    /// This instance's detection stands by and no holder of the detection lease answered the
    /// change relayed to it (or none holds it).
    #[error(
        "detection runs on another instance (the holder of the bucket's detection lease), which did not answer: nothing changed"
    )]
    Elsewhere,
}

/// Longest note kept with a change, in bytes.
pub(crate) const MAX_NOTE_BYTES: usize = 4096;

/// One requested change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub alert_id: String,
    pub action: Action,
    /// Who asks (`local:<user>` from the CLI; the authenticated subject from the API).
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When it was asked for, ns since the epoch.
    pub at_ns: i64,
}

impl Command {
    /// Refuse what could not be a valid command, before it is queued.
    pub fn check(&self) -> Result<(), InvalidCommand> {
        let id_ok = !self.alert_id.is_empty()
            && self.alert_id.len() <= 64
            && self.alert_id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok {
            return Err(InvalidCommand::NotAnAlertId(
                self.alert_id.chars().take(80).collect(),
            ));
        }
        if self.by.trim().is_empty() || self.by.len() > 256 {
            return Err(InvalidCommand::WhoUnnamed);
        }
        if self.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
            return Err(InvalidCommand::NoteTooLong);
        }
        Ok(())
    }
}

/// What makes a command no command (refused before it is queued or applied).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    #[error("{0:?} is not an alert id")]
    NotAnAlertId(String),
    #[error("who makes the change must be named (at most 256 bytes)")]
    WhoUnnamed,
    #[error("the note is longer than {MAX_NOTE_BYTES} bytes")]
    NoteTooLong,
}

/// What became of a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Reply {
    /// The new revision, stored and recorded.
    Applied { alert: Box<Alert> },
    /// Not applied (recorded as a denied change).
    Refused { refusal: Refusal },
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("command queue {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(
        "vigil serve did not take the command within {0:?}: it was withdrawn, nothing changed (is detection running? `vigil serve` logs \"detection caught up\" when it is)"
    )]
    NotTaken(Duration),
    #[error(
        "vigil serve took the command but did not answer within {0:?}; `vigil alerts` shows whether it was applied"
    )]
    NoReply(Duration),
}

/// The command queue of a data directory: one file per command, renamed when claimed, a reply
/// file when done.
#[derive(Clone, Debug)]
pub struct Queue {
    dir: PathBuf,
}

const CMD: &str = ".cmd.json";
const CLAIMED: &str = ".claimed.json";
const REPLY: &str = ".reply.json";

/// A queued command's name, to wait for its reply.
#[derive(Debug)]
pub struct Ticket(String);

impl Queue {
    pub fn new(data_dir: &Path) -> Queue {
        Queue {
            dir: vigil_store::layout::detect_commands(data_dir),
        }
    }

    fn io(&self, e: impl std::fmt::Display) -> QueueError {
        QueueError::Io {
            path: self.dir.clone(),
            message: e.to_string(),
        }
    }

    /// Queue a command (durably).
    pub fn submit(&self, cmd: &Command) -> Result<Ticket, QueueError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let name = format!(
            "{:020}-{}-{:08x}",
            cmd.at_ns,
            std::process::id(),
            rand_u32()
        );
        let bytes = serde_json::to_vec(cmd).map_err(|e| self.io(e))?;
        vigil_store::write_durably(&self.dir.join(format!("{name}{CMD}")), &bytes)
            .map_err(|e| self.io(e))?;
        Ok(Ticket(name))
    }

    /// Wait for the reply. A command not taken within `timeout` is withdrawn (nothing
    /// changes); one taken gets another `timeout` to be answered.
    pub fn wait(&self, t: &Ticket, timeout: Duration) -> Result<Reply, QueueError> {
        let reply = self.dir.join(format!("{}{REPLY}", t.0));
        let cmd = self.dir.join(format!("{}{CMD}", t.0));
        let started = Instant::now();
        let mut withdrawn_at = None;
        loop {
            if let Ok(bytes) = std::fs::read(&reply) {
                let r = serde_json::from_slice(&bytes).map_err(|e| self.io(e))?;
                let _ = std::fs::remove_file(&reply);
                return Ok(r);
            }
            match withdrawn_at {
                None if started.elapsed() >= timeout => {
                    // Whoever renames or removes the command file first decides.
                    if std::fs::remove_file(&cmd).is_ok() {
                        return Err(QueueError::NotTaken(timeout));
                    }
                    withdrawn_at = Some(Instant::now());
                }
                Some(at) if at.elapsed() >= timeout => return Err(QueueError::NoReply(timeout)),
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Claim every queued command (and any claimed before a crash), oldest first. A file that
    /// is not a command is answered with a refusal.
    pub fn claim(&self) -> Vec<(String, Result<Command, Refusal>)> {
        let Ok(names) = vigil_store::files::read_dir_names(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = names
            .into_iter()
            .filter(|n| !vigil_store::files::is_temp_name(n))
            .filter(|n| n.ends_with(CMD) || n.ends_with(CLAIMED))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            let (stem, from) = match n.strip_suffix(CMD) {
                Some(s) => (s.to_owned(), self.dir.join(&n)),
                None => (
                    n.strip_suffix(CLAIMED).unwrap_or(&n).to_owned(),
                    self.dir.join(&n),
                ),
            };
            let claimed = self.dir.join(format!("{stem}{CLAIMED}"));
            if from != claimed && std::fs::rename(&from, &claimed).is_err() {
                continue; // withdrawn meanwhile
            }
            let cmd = std::fs::read(&claimed)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Command>(&b).map_err(|e| e.to_string()))
                .and_then(|c| c.check().map(|()| c).map_err(|e| e.to_string()))
                .map_err(Refusal::Invalid);
            out.push((stem, cmd));
        }
        out
    }

    /// Answer a claimed command (durably), then forget it.
    pub fn reply(&self, name: &str, r: &Reply) -> Result<(), QueueError> {
        let bytes = serde_json::to_vec(r).map_err(|e| self.io(e))?;
        vigil_store::write_durably(&self.dir.join(format!("{name}{REPLY}")), &bytes)
            .map_err(|e| self.io(e))?;
        let claimed = self.dir.join(format!("{name}{CLAIMED}"));
        std::fs::remove_file(&claimed).map_err(|e| self.io(e))
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // A name collision needs the same ns and pid: the random part only separates threads.
    let h = blake3::hash(
        &std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .to_le_bytes(),
    );
    b.copy_from_slice(&h.as_bytes()[..4]);
    u32::from_le_bytes(b)
}

/// The native `admin_audit` event recording an alert revision (raised or updated by
/// detection, or changed by someone), or a refused change.
pub fn audit_event(
    alert: Option<&Alert>,
    cmd: Option<&Command>,
    refused: Option<&str>,
    now_ns: i64,
) -> Vec<u8> {
    let (principal, action, time_ns) = match cmd {
        Some(c) => (c.by.as_str(), c.action.audit_name(), c.at_ns),
        None => (
            SYSTEM_PRINCIPAL,
            if alert.is_some_and(|a| a.revision == 1) {
                "alert.raise"
            } else {
                "alert.update"
            },
            now_ns,
        ),
    };
    let alert_id = alert
        .map(|a| a.alert_id.as_str())
        .or(cmd.map(|c| c.alert_id.as_str()))
        .unwrap_or_default();
    let time = time_rfc3339(time_ns);
    let mut ev = serde_json::json!({
        "schema": vigil_schemas::NATIVE_SCHEMA_V1,
        "id": format!("{alert_id}:{}", alert.map_or_else(|| format!("refused-{now_ns}"), |a| a.revision.to_string())),
        "time": time,
        "kind": "admin_audit",
        "decision": if refused.is_some() { "deny" } else { "allow" },
        "caller": {"principal": principal},
        "callee": {"service": "vigil"},
        "action": action,
        "resource": format!("alert/{alert_id}"),
    });
    let reason = refused
        .map(str::to_owned)
        .or_else(|| cmd.and_then(|c| c.note.clone()))
        .or_else(|| alert.map(|a| a.title.clone()));
    if let Some(r) = reason {
        ev["reason"] = r.into();
    }
    if let Some(a) = alert {
        ev["alert"] = serde_json::to_value(a).unwrap_or_default();
    }
    serde_json::to_vec(&ev).unwrap_or_default()
}

/// The alert revisions recorded in Vigil's own log, by (alert id, revision).
pub fn recorded(
    store: &vigil_store::Store,
) -> Result<std::collections::BTreeMap<(String, i64), Alert>, vigil_store::StoreError> {
    use arrow::array::AsArray;
    let mut out = std::collections::BTreeMap::new();
    let reader = vigil_store::read::LogReader::new(
        store,
        vigil_store::AUDIT_TOPIC,
        vigil_store::AUDIT_PARTITION,
        0,
    )?;
    for piece in reader {
        let piece = piece?;
        let Some(raw) = piece
            .batch
            .column_by_name("raw")
            .and_then(|c| c.as_binary_opt::<i32>())
        else {
            return Err(vigil_store::StoreError::Internal("no raw column"));
        };
        for v in raw.iter().flatten() {
            // Refused changes carry no alert.
            #[derive(Deserialize)]
            struct Rec {
                alert: Option<Alert>,
            }
            if let Ok(Rec { alert: Some(a) }) = serde_json::from_slice::<Rec>(v) {
                out.insert((a.alert_id.clone(), a.revision), a);
            }
        }
    }
    Ok(out)
}

/// How the alert log compares with Vigil's own log: (tampered?, place, what) per difference.
/// A revision the own log lacks is only incomplete (a crash between the two appends leaves
/// one; the next `serve` records it); one that differs, or one recorded but missing from the
/// alert log, was edited or deleted.
pub fn check_alert_log(
    data_dir: &Path,
) -> Result<Vec<(bool, String, String)>, crate::run::DetectError> {
    let mut findings = Vec::new();
    let Ok(store) = vigil_store::Store::open_existing(data_dir) else {
        return Ok(findings);
    };
    let mut recorded = recorded(&store)?;
    let place = |a: &str, r: i64| format!("alert {a} revision {r}");
    for a in crate::alerts::read_revisions(data_dir)? {
        match recorded.remove(&(a.alert_id.clone(), a.revision)) {
            Some(r) if r == a => {}
            Some(_) => findings.push((
                true,
                place(&a.alert_id, a.revision),
                "the alert log's revision differs from the one recorded in Vigil's own log (edited)"
                    .into(),
            )),
            None => findings.push((
                false,
                place(&a.alert_id, a.revision),
                "in the alert log but not recorded in Vigil's own log (a crash between the two; the next `vigil serve` records it)"
                    .into(),
            )),
        }
    }
    for (id, rev) in recorded.keys() {
        findings.push((
            true,
            place(id, *rev),
            "recorded in Vigil's own log but missing from the alert log (deleted)".into(),
        ));
    }
    Ok(findings)
}

pub(crate) fn time_rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    let t = std::time::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
        + Duration::from_nanos(u64::from(nanos));
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use Action::*;
        use Status::*;
        assert_eq!(Acknowledge.apply_to(Open), Ok(Acknowledged));
        assert_eq!(Resolve.apply_to(Acknowledged), Ok(Resolved));
        assert_eq!(Resolve.apply_to(Suppressed), Ok(Resolved));
        assert_eq!(Suppress.apply_to(Acknowledged), Ok(Suppressed));
        assert!(Acknowledge.apply_to(Acknowledged).is_err());
        assert!(Acknowledge.apply_to(Suppressed).is_err());
        for a in [Acknowledge, Resolve, Suppress] {
            assert!(a.apply_to(Resolved).is_err());
        }
    }

    fn cmd(id: &str) -> Command {
        Command {
            alert_id: id.into(),
            action: Action::Acknowledge,
            by: "local:ana".into(),
            note: Some("looking".into()),
            at_ns: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn commands_are_checked() {
        assert!(cmd("abc123").check().is_ok());
        assert_eq!(
            cmd("../x").check(),
            Err(InvalidCommand::NotAnAlertId("../x".into()))
        );
        assert!(matches!(
            cmd("").check(),
            Err(InvalidCommand::NotAnAlertId(_))
        ));
        let mut c = cmd("abc");
        c.by = " ".into();
        assert_eq!(c.check(), Err(InvalidCommand::WhoUnnamed));
        c.by = "x".into();
        c.note = Some("n".repeat(MAX_NOTE_BYTES + 1));
        assert_eq!(c.check(), Err(InvalidCommand::NoteTooLong));
    }

    #[test]
    fn queue_round_trip_claim_reply_and_withdraw() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path());
        let t = q.submit(&cmd("abc")).unwrap();
        std::fs::write(q.dir.join("junk.cmd.json"), b"nope").unwrap();
        let claimed = q.claim();
        assert_eq!(claimed.len(), 2);
        let (name, c) = claimed.iter().find(|(n, _)| *n == t.0).unwrap();
        assert_eq!(c.as_ref().unwrap(), &cmd("abc"));
        let (junk, bad) = claimed.iter().find(|(n, _)| n == "junk").unwrap();
        let bad = bad.as_ref().unwrap_err();
        assert!(matches!(bad, Refusal::Invalid(_)), "{bad}");
        assert!(bad.to_string().contains("not a valid command"), "{bad}");
        let refused = |id: &str| Reply::Refused {
            refusal: Refusal::NoSuchAlert {
                alert_id: id.into(),
            },
        };
        q.reply(junk, &refused("x")).unwrap();
        // Claimed before a "crash": claimed again.
        assert_eq!(q.claim().len(), 1);
        q.reply(name, &refused("no")).unwrap();
        assert_eq!(
            q.wait(&t, Duration::from_millis(10)).unwrap(),
            refused("no")
        );
        assert!(q.claim().is_empty());

        // Nobody takes it: withdrawn, and never applied later.
        let t = q.submit(&cmd("abd")).unwrap();
        let err = q.wait(&t, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, QueueError::NotTaken(_)), "{err}");
        assert!(q.claim().is_empty());
    }

    #[test]
    fn audit_events_decode_as_native_admin_audit() {
        let e = audit_event(None, Some(&cmd("abc")), Some("no alert abc"), 5);
        let d = vigil_schemas::Decoder::default();
        let mut n = 0;
        d.decode_with(&e, |ev| {
            n += 1;
            assert_eq!(ev.kind, vigil_schemas::Kind::AdminAudit);
            assert_eq!(ev.decision, vigil_schemas::Decision::Deny);
            assert_eq!(ev.caller.principal.as_deref(), Some("local:ana"));
            assert_eq!(ev.action.as_deref(), Some("alert.acknowledge"));
            assert_eq!(ev.resource.as_deref(), Some("alert/abc"));
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}
