//! The engine: every loaded rule over every event, in event time, with alert deduplication,
//! evidence, and a state checkpoint.
//!
//! Input is pieces of the store's rows (`vigil_store::Piece`: a partition log, the leaf index
//! of its first record, rows in the store schema), live from the pipeline or read back from
//! the store. The engine remembers, per log, the next leaf index it has not evaluated: rows
//! before it are skipped, so a piece seen twice (a re-delivery after a crash, catch-up
//! overlapping live input) never counts twice.
//!
//! Event time is judged across logs ([`crate::time`]): each event's time is held against its
//! receive time, events wait in a bounded buffer until the watermark (the slowest active log)
//! reaches them and are then evaluated in event-time order; one behind the watermark is
//! evaluated at once (late past the allowed lateness, and counted). Positions advance as
//! pieces are accepted, so the buffer is drained ([`Engine::drain`]) before a state save.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use std::hash::BuildHasher;

use arrow::array::{Array, AsArray, FixedSizeBinaryArray};
use arrow::datatypes::{TimestampMillisecondType, TimestampNanosecondType};
use serde::{Deserialize, Serialize};
use vigil_store::{Piece, leaf_indexes};

use crate::alerts::{Alert, Evidence, Status};
use crate::budget::Budget;
use crate::evidence::{EvRef, Hit, Outcome};
use crate::filter::{BatchRows, Context, Row, WithContext};
use crate::group::{Entry, GroupBy, PackedKey, Table};
use crate::lifecycle::{Command, Refusal, SYSTEM_PRINCIPAL};
use crate::rules::{Meta, Rule};
use crate::time::{Clocks, Pending, Reorder, SourceTime, TimeConfig};

/// Per-rule figures for metrics and `vigil rules backtest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleStats {
    pub id: String,
    pub matched: u64,
    pub late: u64,
    pub evicted: u64,
    pub fired: u64,
    pub groups: usize,
    /// The bytes its groups hold, as last weighed (detection's memory budget).
    pub bytes: usize,
    /// A rule that learns first (`first_seen`) and has not finished: it raises nothing yet.
    pub learning: bool,
    /// When its learning ends (event time), once it has started.
    pub learning_until_ns: Option<i64>,
}

/// A group's open alert: further matches within the rule's suppression window update it.
#[derive(Debug, Serialize, Deserialize)]
struct OpenAlert {
    /// Event time it fired at; it stays open for the rule's suppression window after.
    fired_ns: i64,
    alert: Alert,
}

/// Why the engine could not do something.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Store(#[from] vigil_store::StoreError),
    #[error("input: {0}")]
    Input(String),
    #[error("state {path}: {message}")]
    State { path: String, message: String },
}

/// Alert bookkeeping: open alerts per rule (found from an event's group without copying its
/// key), the changes not yet taken, and the ids already stored.
struct AlertLedger {
    /// Per rule (same index as the rules).
    open: Vec<Table<OpenAlert>>,
    /// Open alerts changed since the last take: (rule, key); their current revision is taken.
    pending: BTreeMap<String, (usize, PackedKey)>,
    /// Changed alerts that closed (or were replaced) before they were taken.
    pending_closed: Vec<Alert>,
    /// Whether anything pending is a new alert (not only updates).
    pending_new: bool,
    /// Highest revision already stored per alert id (so a re-fire after a restart updates it).
    stored: HashMap<String, i64>,
    /// Alerts stored or raised, by rule and group: (id, first and last event time). A group
    /// firing again within the rule's suppression window of one of them is that alert again
    /// (a replay in another order fires at another event, not another alert).
    known: HashMap<(String, GroupKey), Vec<KnownAlert>>,
    /// Alerts someone acknowledged, suppressed or resolved: their newest revision's status
    /// fields, carried into any later revision. A resolved alert is never raised again (a
    /// replay firing its id is that alert, already dealt with) nor updated; its group's next
    /// firing is a new alert.
    lifecycle: HashMap<String, Alert>,
    /// Per subject, its newest incident: (id, newest event time of its alerts).
    incidents: HashMap<String, (String, i64)>,
    /// Alerts about one subject whose events lie within this of its incident's newest share it.
    incident_window_ns: i64,
}

/// Who an alert is about, from its group key: a principal (the caller, the user), else an
/// address, else the partition log (alerts about a source). `None`: no subject (an alert about
/// a node, a target): it is its own incident.
pub fn incident_subject(group_key: &BTreeMap<String, Option<String>>) -> Option<String> {
    let get = |k: &str| group_key.get(k).cloned().flatten();
    for k in ["caller_principal", "caller"] {
        if let Some(v) = get(k) {
            return Some(format!("principal:{v}"));
        }
    }
    if let Some(v) = get("caller_ip") {
        return Some(format!("ip:{v}"));
    }
    match (get("kafka_topic"), get("kafka_partition")) {
        (Some(t), Some(p)) => Some(format!("log:{t}/{p}")),
        _ => None,
    }
}

type GroupKey = BTreeMap<String, Option<String>>;

/// A known alert of a rule and group: its id and first and last event time.
type KnownAlert = (String, i64, i64);

impl AlertLedger {
    /// Put a new alert in its subject's incident (a new one past the window).
    fn assign_incident(&mut self, a: &mut Alert) {
        let Some(subject) = incident_subject(&a.group_key) else {
            a.incident_id = Some(a.alert_id.clone());
            return;
        };
        let window = self.incident_window_ns;
        let id = match self.incidents.get_mut(&subject) {
            Some((id, newest)) if a.first_event_ns <= newest.saturating_add(window) => {
                *newest = (*newest).max(a.last_event_ns);
                id.clone()
            }
            _ => {
                let mut h = blake3::Hasher::new_derive_key("vigil 2026 incident id v1");
                h.update(subject.as_bytes());
                h.update(&[0]);
                h.update(a.alert_id.as_bytes());
                let id = h.finalize().to_hex()[..32].to_owned();
                self.incidents
                    .insert(subject.clone(), (id.clone(), a.last_event_ns));
                id
            }
        };
        a.incident_id = Some(id);
        a.incident_subject = Some(subject);
    }

    /// A stored alert's incident, so that alerts raised after a restart join it.
    fn remember_incident(&mut self, a: &Alert) {
        if let (Some(id), Some(subject)) = (&a.incident_id, &a.incident_subject) {
            let e = self
                .incidents
                .entry(subject.clone())
                .or_insert_with(|| (id.clone(), a.last_event_ns));
            if e.0 == *id {
                e.1 = e.1.max(a.last_event_ns);
            } else if a.last_event_ns > e.1 {
                *e = (id.clone(), a.last_event_ns);
            }
        }
    }

    /// What rule `r` said about an event (`row`): its group's open alert counts it, or a new
    /// alert is raised with its evidence (`event_id` names the events it can).
    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        r: usize,
        rule: &Rule,
        row: &impl Row,
        outcome: Outcome,
        now_ns: i64,
        logs: &LogNames,
        event_id: &dyn Fn(&EvRef) -> Option<String>,
    ) {
        let fields = rule.kind.group_fields();
        match outcome {
            Outcome::Nothing => {}
            Outcome::Updated { count, ev } => self.update(r, fields, row, count, ev),
            Outcome::Fired(hit) => {
                let evidence = evidence(logs, &hit.evidence, event_id);
                self.fire(r, &rule.meta, fields, row, hit, now_ns, evidence);
            }
        }
    }

    fn remember(&mut self, a: &Alert) {
        self.remember_incident(a);
        let r = self.stored.entry(a.alert_id.clone()).or_insert(0);
        if a.revision >= *r && a.status != Status::Open {
            self.lifecycle.insert(a.alert_id.clone(), a.clone());
        }
        *r = (*r).max(a.revision);
        let v = self
            .known
            .entry((a.rule_id.clone(), a.group_key.clone()))
            .or_default();
        match v.iter_mut().find(|(id, _, _)| *id == a.alert_id) {
            Some(e) => {
                e.1 = e.1.min(a.first_event_ns);
                e.2 = e.2.max(a.last_event_ns);
            }
            None => v.push((a.alert_id.clone(), a.first_event_ns, a.last_event_ns)),
        }
    }
}

/// Interned partition logs (`topic/partition` ↔ small ids for evidence refs).
#[derive(Default)]
struct LogNames {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl LogNames {
    fn id(&mut self, log: &str) -> u32 {
        if let Some(&id) = self.ids.get(log) {
            return id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(log.to_owned());
        self.ids.insert(log.to_owned(), id);
        id
    }
}

/// The rules, their state, and the alerts they raised that have not been taken yet.
pub struct Engine {
    rules: Vec<Rule>,
    logs: LogNames,
    /// Per log: the next leaf index not yet evaluated.
    positions: HashMap<u32, u64>,
    book: AlertLedger,
    time: TimeConfig,
    /// Per-log event times and the watermark.
    clocks: Clocks,
    /// Events waiting for the watermark, and the pieces they are rows of.
    reorder: Reorder,
    held: HashMap<u32, Held>,
    next_slot: u32,
    /// Replaying stored logs: the replay moves the watermark ([`Engine::release_until`]).
    replaying: bool,
    /// Rows skipped because their log position was already evaluated.
    pub skipped_rows: u64,
    /// Rows evaluated.
    pub rows: u64,
    /// Every rule's groups within one byte budget.
    budget: Budget,
    /// Evaluate only events whose time is within `[from, to)` (backtests).
    pub window: Option<(i64, i64)>,
}

/// A piece whose rows wait in the reorder buffer (or are being evaluated).
struct Held {
    piece: Piece,
    log: u32,
    own_log: bool,
    /// Leaf index of each row.
    indexes: Vec<u64>,
    /// Rows not evaluated yet.
    remaining: usize,
}

/// Event time as the engine reports it (metrics, the progress line, backtests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimeStats {
    /// Events at or before it have been evaluated (`i64::MIN`: none yet).
    pub watermark_ns: i64,
    /// Events waiting for the watermark.
    pub buffered: usize,
    /// Events evaluated before the watermark reached them because the buffer was full.
    pub forced: u64,
    pub skewed: u64,
    pub late: u64,
    /// Per log, by name.
    pub sources: Vec<(String, SourceTime)>,
}

/// Persisted engine state.
#[derive(Serialize, Deserialize)]
struct State {
    format: String,
    positions: BTreeMap<String, u64>,
    rules: Vec<SavedRule>,
    /// The watermark.
    newest_ns: i64,
    /// Per log: events, skewed and late counts (times start afresh after a restart).
    #[serde(default)]
    sources: BTreeMap<String, SourceTime>,
}

#[derive(Serialize, Deserialize)]
struct SavedRule {
    id: String,
    version: u32,
    /// Parsed by the rule's kind itself (no JSON tree of every group in between).
    state: Box<serde_json::value::RawValue>,
    #[serde(default)]
    open: Vec<Entry<OpenAlert>>,
}

const STATE_FORMAT: &str = "vigil-detect-state-v2";

/// `detect.max_state_bytes` unless configured: 384 MiB.
pub const DEFAULT_MAX_STATE_BYTES: usize = 384 << 20;

/// Detection's memory budget as it stands ([`Engine::state_budget`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BudgetStats {
    /// The rules' groups, as last weighed.
    pub bytes: usize,
    pub max_bytes: usize,
    /// Groups evicted to stay within it, in all.
    pub shed: u64,
    /// Times it was reached.
    pub reached: u64,
}

impl AlertLedger {
    /// Count an event into its group's open alert.
    fn update(&mut self, r: usize, fields: &GroupBy, row: &impl Row, count: u64, ev: EvRef) {
        let Some((key, open)) = self.open[r].get(fields, row) else {
            return;
        };
        let a = &mut open.alert;
        a.event_count = a.event_count.max(i64::try_from(count).unwrap_or(i64::MAX));
        a.last_event_ns = a.last_event_ns.max(ev.time_ns);
        a.first_event_ns = a.first_event_ns.min(ev.time_ns);
        // A suppressed alert counts its events but raises no revision for them.
        if a.status == Status::Suppressed {
            return;
        }
        // One new revision per take, however many events updated it.
        if !self.pending.contains_key(&a.alert_id) {
            a.revision += 1;
            self.pending.insert(a.alert_id.clone(), (r, key.clone()));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fire(
        &mut self,
        r: usize,
        meta: &Meta,
        fields: &GroupBy,
        row: &impl Row,
        hit: Hit,
        now_ns: i64,
        evidence: Vec<Evidence>,
    ) {
        // The id names the rule, the group and the event time it fired at: replaying the same
        // events fires the same id.
        let mut h = blake3::Hasher::new_derive_key("vigil 2026 alert id v1");
        h.update(meta.id.as_bytes());
        h.update(&[0]);
        h.update(&meta.version.to_le_bytes());
        for k in &hit.key {
            match k {
                Some(v) => {
                    h.update(&[1]);
                    h.update(&(v.len() as u64).to_le_bytes());
                    h.update(v.as_bytes());
                }
                None => {
                    h.update(&[0]);
                }
            }
        }
        h.update(&hit.last_ns.to_le_bytes());
        let group_key: GroupKey = meta
            .group_names
            .iter()
            .cloned()
            .zip(hit.key.iter().cloned())
            .collect();
        let suppress = meta.suppress_ns;
        let resolved = |id: &str| {
            self.lifecycle
                .get(id)
                .is_some_and(|a| a.status == Status::Resolved)
        };
        let same = self
            .known
            .get(&(meta.id.clone(), group_key.clone()))
            .and_then(|v| {
                v.iter().find(|(id, first, last)| {
                    hit.last_ns < last.saturating_add(suppress)
                        && hit.last_ns >= first.saturating_sub(suppress)
                        && !resolved(id)
                })
            });
        let id = match same {
            Some((id, _, _)) => id.clone(),
            None => h.finalize().to_hex()[..32].to_owned(),
        };
        if resolved(&id) {
            // The very firing someone resolved (replayed after a rebuild): nothing new.
            return;
        }
        let revision = self.stored.get(&id).copied().unwrap_or(0) + 1;
        let mut alert = Alert {
            alert_id: id.clone(),
            revision,
            rule_id: meta.id.clone(),
            rule_version: i32::try_from(meta.version).unwrap_or(i32::MAX),
            rule_kind: meta.kind.as_str().to_owned(),
            title: meta.title.clone(),
            severity: meta.severity,
            status: Status::Open,
            status_by: None,
            status_at_ns: None,
            status_note: None,
            group_key,
            first_event_ns: hit.first_ns,
            last_event_ns: hit.last_ns,
            detected_ns: now_ns,
            event_count: i64::try_from(hit.count).unwrap_or(i64::MAX),
            detail: hit.detail,
            evidence,
            incident_id: None,
            incident_subject: None,
        };
        // Stored alerts' incidents are known (`remember`): the same alert fired again by a
        // replay lands in the incident it was in.
        self.assign_incident(&mut alert);
        let life = self.lifecycle.get(&id);
        if let Some(l) = life {
            alert.status.clone_from(&l.status);
            alert.status_by.clone_from(&l.status_by);
            alert.status_at_ns = l.status_at_ns;
            alert.status_note.clone_from(&l.status_note);
        }
        if revision == 1 {
            self.pending_new = true;
        }
        let (_, open) = self.open[r].entry(fields, row, || OpenAlert {
            fired_ns: hit.last_ns,
            alert: alert.clone(),
        });
        // A group that fires again replaces its old open alert: keep that one's last change.
        if open.alert.alert_id != id && self.pending.remove(&open.alert.alert_id).is_some() {
            self.pending_closed.push(open.alert.clone());
        }
        open.fired_ns = hit.last_ns;
        open.alert = alert;
        self.pending.insert(id, (r, PackedKey::from_key(&hit.key)));
        let a = open.alert.clone();
        self.remember(&a);
    }
}

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Engine {
        let open = rules.iter().map(|_| Table::new(usize::MAX)).collect();
        Engine {
            rules,
            logs: LogNames::default(),
            positions: HashMap::new(),
            book: AlertLedger {
                open,
                pending: BTreeMap::new(),
                pending_closed: Vec::new(),
                pending_new: false,
                stored: HashMap::new(),
                known: HashMap::new(),
                lifecycle: HashMap::new(),
                incidents: HashMap::new(),
                incident_window_ns: 30 * 60 * 1_000_000_000,
            },
            time: TimeConfig::default(),
            clocks: Clocks::default(),
            reorder: Reorder::default(),
            held: HashMap::new(),
            next_slot: 0,
            replaying: false,
            skipped_rows: 0,
            rows: 0,
            budget: Budget::new(DEFAULT_MAX_STATE_BYTES),
            window: None,
        }
    }

    /// Every rule's groups together within `max_bytes` (`detect.max_state_bytes`).
    pub fn with_state_budget(mut self, max_bytes: usize) -> Engine {
        self.budget = Budget::new(max_bytes);
        self
    }

    /// Weigh every rule's groups now, and shed if they are past the budget (at state
    /// checkpoints; between them the budget weighs when it must).
    pub fn weigh_state(&mut self) {
        self.budget.enforce(&mut self.rules);
    }

    /// The rules' state as last weighed, its budget, the groups shed to stay within it and
    /// the times it was reached.
    pub fn state_budget(&self) -> BudgetStats {
        BudgetStats {
            bytes: self.budget.bytes(),
            max_bytes: self.budget.max_bytes(),
            shed: self.budget.shed,
            reached: self.budget.reached,
        }
    }

    /// How event time is judged (before the first event).
    pub fn with_time(mut self, time: TimeConfig) -> Engine {
        self.time = time;
        self
    }

    /// Alerts about one subject within this of each other share an incident.
    pub fn with_incident_window(mut self, window_ns: i64) -> Engine {
        self.book.incident_window_ns = window_ns.max(0);
        self
    }

    pub fn time_config(&self) -> &TimeConfig {
        &self.time
    }

    /// A partition log known to exist (assigned, or in the store): until it sends events or
    /// goes idle it holds the watermark, so that events of other logs do not overtake its.
    pub fn expect_log(&mut self, log: &str, now_ns: i64) {
        let id = self.logs.id(log);
        self.clocks.expect(id, now_ns);
    }

    /// Say whether pieces are queued for the engine (`backlog`) at wall clock `now_ns`;
    /// `caught_up_ns`: when it last had none ([`Clocks::set_backlog`]: a log whose pieces wait
    /// behind others' while detection is busy is not idle).
    pub fn set_backlog(&mut self, backlog: bool, caught_up_ns: i64, now_ns: i64) {
        self.clocks.set_backlog(backlog, caught_up_ns, now_ns);
    }

    /// Logs ingest holds: a new one is expected (it holds the watermark from now until it
    /// sends or goes idle); one with records in flight (consumed, not yet durable) counts as
    /// active now, so the watermark does not pass records still on their way.
    pub fn hold_logs(&mut self, logs: &[(String, bool)], now_ns: i64) {
        for (log, in_flight) in logs {
            let id = self.logs.id(log);
            if !self.clocks.knows(id) || *in_flight {
                self.clocks.expect(id, now_ns);
            }
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Alerts already stored (their newest revisions): firing one of them again updates it.
    /// An open alert the store has a newer revision of (a lifecycle change applied while this
    /// state was saved: by the CLI with no `serve` running) takes that revision; resolved, it
    /// is closed.
    pub fn know_stored(&mut self, alerts: &[Alert]) {
        for a in alerts {
            self.book.remember(a);
        }
        let newer: HashMap<&str, &Alert> =
            alerts.iter().map(|a| (a.alert_id.as_str(), a)).collect();
        let Engine { rules, book, .. } = self;
        for (r, rule) in rules.iter_mut().enumerate() {
            let fields = rule.kind.group_fields().clone();
            let stale: Vec<(PackedKey, Alert)> = book.open[r]
                .entries()
                .filter_map(|e| {
                    let s = newer.get(e.state.alert.alert_id.as_str())?;
                    (s.revision > e.state.alert.revision).then(|| (e.key.clone(), (*s).clone()))
                })
                .collect();
            for (key, s) in stale {
                if s.status == Status::Resolved {
                    book.open[r].remove_by_key(&fields, &key);
                    rule.kind.close(&key);
                } else if let Some(o) = book.open[r].get_by_key_mut(&fields, &key) {
                    o.alert = s;
                }
            }
        }
    }

    /// The next leaf index the engine has not evaluated in `log`, if it has seen the log.
    pub fn position(&self, log: &str) -> Option<u64> {
        self.logs
            .ids
            .get(log)
            .and_then(|id| self.positions.get(id))
            .copied()
    }

    /// Evaluate every rule on every decoded row of a piece not evaluated before, from a log
    /// fed live: it holds the watermark (see [`crate::time`]).
    pub fn observe(&mut self, piece: &Piece, now_ns: i64) -> Result<(), EngineError> {
        self.observe_as(piece, now_ns, true)
    }

    /// As [`Engine::observe`], for a log that only follows the watermark: one read from the
    /// store after the fact (another process's partition) or one this process writes itself
    /// (Vigil's own logs). Its events are ordered with the others', but no event waits for it:
    /// holding the watermark for a log that comes a second late, or for the revisions
    /// detection has just written, would hold every alert back by as much.
    pub fn observe_followed(&mut self, piece: &Piece, now_ns: i64) -> Result<(), EngineError> {
        self.observe_as(piece, now_ns, false)
    }

    fn observe_as(&mut self, piece: &Piece, now_ns: i64, holds: bool) -> Result<(), EngineError> {
        let b = &piece.batch;
        let log = self.logs.id(&piece.log().to_string());
        let (indexes, next) = leaf_indexes(b, piece.first_leaf_index)?;
        let from = self.positions.get(&log).copied().unwrap_or(0);
        if next <= from {
            self.skipped_rows += b.num_rows() as u64;
            return Ok(());
        }
        let times = b
            .column(0)
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or_else(|| EngineError::Input("event_time is not a ns timestamp".into()))?;
        // Evidence needs every row's leaf hash (read again when the row is evaluated).
        b.column_by_name("leaf_hash")
            .and_then(|c| c.as_fixed_size_binary_opt())
            .filter(|l| l.value_length() == 32)
            .ok_or_else(|| EngineError::Input("no leaf_hash column".into()))?;
        let kafka_ms = b
            .column_by_name("kafka_timestamp")
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>());
        let raw = b
            .column_by_name("raw")
            .and_then(|c| c.as_binary_opt::<i32>());
        let int64 = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>())
        };
        let (offsets, prevs) = (int64("kafka_offset"), int64("chain_prev_offset"));
        let field = |name: &str| {
            crate::filter::field(name)
                .map(|f| f.column)
                .ok_or_else(|| EngineError::Input(format!("no {name} field")))
        };
        let kind_col = field("kind")?;
        // Vigil's own log: what people did is evaluated, the revisions detection raised are
        // not (a rule matching them would feed on its own alerts).
        let own = piece.topic == vigil_store::AUDIT_TOPIC;
        let principal_col = field("caller_principal")?;
        let rows = BatchRows::new(b);
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        self.clocks.seen(log, now_ns, holds);
        let tie = foldhash::fast::FixedState::with_seed(0x7669_6769_6c21);
        let mut at_once = Vec::new();
        let mut waiting = 0usize;
        for (i, &index) in indexes.iter().enumerate() {
            if index < from {
                self.skipped_rows += 1;
                continue;
            }
            let row = rows.row(i);
            let time_ns = times.value(i);
            if self
                .window
                .is_some_and(|(from, to)| time_ns < from || time_ns >= to)
            {
                continue;
            }
            let k = kafka_ms.and_then(|c| c.is_valid(i).then(|| c.value(i)));
            // A rejected record (failed to decode) has no event to evaluate; it still moves its
            // log's clock. Nor has a revision detection wrote (its own log follows anyway).
            if own && row.str(principal_col) == Some(SYSTEM_PRINCIPAL) {
                continue;
            }
            if row.str(kind_col).is_none() {
                self.clocks.pass(log, time_ns, k, now_ns, &self.time);
                continue;
            }
            let a = self.clocks.accept(log, time_ns, k, now_ns, &self.time);
            let p = Pending {
                time_ns: a.judged.time_ns,
                tie: raw.map_or(0, |r| tie.hash_one(r.value(i))),
                log,
                index,
                slot,
                row: u32::try_from(i).unwrap_or(u32::MAX),
                skewed: a.judged.skewed,
                late: a.late,
                gap: match (offsets, prevs) {
                    (Some(o), Some(p)) => {
                        let prev = p.value(i);
                        prev >= 0 && prev != o.value(i) - 1
                    }
                    _ => false,
                },
            };
            if a.behind {
                at_once.push(p);
            } else {
                self.reorder.push(p);
                waiting += 1;
            }
        }
        self.positions.insert(log, next);
        let n = at_once.len() + waiting;
        if n > 0 {
            self.held.insert(
                slot,
                Held {
                    piece: piece.clone(),
                    log,
                    own_log: vigil_store::is_reserved_topic(&piece.topic),
                    indexes,
                    remaining: n,
                },
            );
        }
        // Behind the watermark: evaluated now, against the state their groups hold.
        self.evaluate(&at_once, now_ns);
        if !self.replaying {
            self.release(now_ns);
        }
        Ok(())
    }

    /// Evaluate what the watermark allows now (wall clock `now_ns`: sources quiet for longer
    /// than the idle time stop holding it). Call it when no piece came for a while.
    pub fn tick(&mut self, now_ns: i64) {
        if !self.replaying {
            self.release(now_ns);
        }
    }

    fn release(&mut self, now_ns: i64) {
        let w = self.clocks.advance(now_ns, &self.time);
        let mut out = Vec::new();
        let forced = self
            .reorder
            .ready(w, self.time.max_buffered_events, &mut out);
        if forced > 0 {
            self.clocks.forced += forced;
            if let Some(last) = out.last() {
                self.clocks.raise(last.time_ns.saturating_add(1));
            }
        }
        self.evaluate(&out, now_ns);
    }

    /// Replaying stored logs: pieces are accepted and wait until [`Engine::release_until`]
    /// (the replay knows which times can still come) or [`Engine::end_replay`].
    pub fn begin_replay(&mut self) {
        self.replaying = true;
    }

    /// Evaluate every waiting event earlier than `before_ns`: no event to come is.
    pub fn release_until(&mut self, before_ns: i64, now_ns: i64) {
        let mut out = Vec::new();
        let forced = self
            .reorder
            .ready(before_ns, self.time.max_buffered_events, &mut out);
        self.clocks.forced += forced;
        self.clocks
            .raise(out.last().map_or(before_ns, |p| p.time_ns.max(before_ns)));
        self.evaluate(&out, now_ns);
    }

    /// The replay is over: evaluate what waits, and go back to live watermarks.
    pub fn end_replay(&mut self, now_ns: i64) {
        self.drain(now_ns);
        self.replaying = false;
    }

    /// Evaluate every waiting event now, in order (before a state save: positions are past
    /// them). The watermark moves to the newest of them.
    pub fn drain(&mut self, now_ns: i64) {
        let mut out = Vec::new();
        self.reorder.drain(&mut out);
        if let Some(last) = out.last() {
            self.clocks.raise(last.time_ns.saturating_add(1));
        }
        self.evaluate(&out, now_ns);
    }

    /// Evaluate events in the order given.
    fn evaluate(&mut self, ready: &[Pending], now_ns: i64) {
        if ready.is_empty() {
            return;
        }
        let id_col = crate::filter::field("event_id").map_or(usize::MAX, |f| f.column);
        let Engine {
            rules,
            logs,
            book,
            held,
            budget,
            rows: evaluated,
            ..
        } = self;
        {
            let mut views: HashMap<u32, (BatchRows<'_>, Option<&FixedSizeBinaryArray>)> =
                HashMap::new();
            for p in ready {
                let Some(h) = held.get(&p.slot) else {
                    debug_assert!(false, "a pending event's piece is held");
                    continue;
                };
                let (rows, leaves) = views.entry(p.slot).or_insert_with(|| {
                    let b = &h.piece.batch;
                    let leaves = b
                        .column_by_name("leaf_hash")
                        .and_then(|c| c.as_fixed_size_binary_opt());
                    (BatchRows::new(b), leaves)
                });
                let i = p.row as usize;
                let mut leaf = [0u8; 32];
                if let Some(l) = leaves
                    && l.value_length() == 32
                {
                    leaf.copy_from_slice(l.value(i));
                }
                let inner = rows.row(i);
                let row = WithContext {
                    row: &inner,
                    ctx: Context {
                        topic: &h.piece.topic,
                        partition: h.piece.partition,
                        own_log: h.own_log,
                        skewed: p.skewed,
                        late: p.late,
                        gap: p.gap,
                    },
                };
                let ev = EvRef {
                    log: p.log,
                    index: p.index,
                    time_ns: p.time_ns,
                    leaf,
                };
                *evaluated += 1;
                for (r, rule) in rules.iter_mut().enumerate() {
                    let before = rule.kind.counters().matched;
                    let outcome = rule.kind.observe(&row, ev);
                    if p.late && rule.kind.counters().matched > before {
                        rule.kind.note_late();
                    }
                    let ids = |e: &EvRef| event_id(held, id_col, e);
                    book.take(r, rule, &row, outcome, now_ns, logs, &ids);
                }
                budget.evaluated(rules);
            }
        }
        for p in ready {
            if let Some(h) = held.get_mut(&p.slot) {
                h.remaining = h.remaining.saturating_sub(1);
                if h.remaining == 0 {
                    held.remove(&p.slot);
                }
            }
        }
        self.judge_due(now_ns);
    }

    /// Let rules that wait for the watermark (absence) decide what it has passed.
    fn judge_due(&mut self, now_ns: i64) {
        let w = self.clocks.watermark_ns();
        let Engine {
            rules,
            logs,
            book,
            clocks,
            time,
            replaying,
            ..
        } = self;
        // A replay merges its logs per event: the watermark alone says what has been read.
        let log_ns = |log: u32| {
            if *replaying {
                i64::MAX
            } else {
                clocks.progress_ns(log, now_ns, time)
            }
        };
        for (r, rule) in rules.iter_mut().enumerate() {
            for d in rule.kind.due(w, &log_ns) {
                // The group decided has no event of its own: its key stands for the row.
                let (key, outcome) = match d {
                    crate::absence::Due::Fired(hit) => (hit.key.clone(), Outcome::Fired(hit)),
                    crate::absence::Due::Updated { key, count, ev } => {
                        (key, Outcome::Updated { count, ev })
                    }
                };
                let row = crate::row::OwnedRow::from_key(rule.kind.group_fields(), &key);
                book.take(r, rule, &row, outcome, now_ns, logs, &|_| None);
            }
        }
    }

    /// Evaluate one event given as a row, at once (rule tests, replays of loose events).
    pub fn observe_row(&mut self, row: &impl Row, ev: EvRef, now_ns: i64) {
        self.clocks.raise(ev.time_ns);
        self.judge_due(now_ns);
        let Engine {
            rules,
            logs,
            book,
            budget,
            ..
        } = self;
        for (r, rule) in rules.iter_mut().enumerate() {
            let outcome = rule.kind.observe(row, ev);
            book.take(r, rule, row, outcome, now_ns, logs, &|_| None);
        }
        budget.evaluated(rules);
    }

    /// Partition logs that went silent for `silent_ns` of wall clock while another partition
    /// of the same topic kept sending (Vigil's own logs excepted: they are quiet by nature),
    /// each once per silence: (log, wall clock it last sent at).
    pub fn silent_logs(&mut self, now_ns: i64, silent_ns: i64) -> Vec<(String, i64)> {
        let names = &self.logs.names;
        let topic = |id: u32| {
            names
                .get(id as usize)
                .and_then(|n| n.rsplit_once('/'))
                .map(|(t, _)| t)
        };
        let peer = |a: u32, b: u32| {
            topic(a).is_some_and(|t| !vigil_store::is_reserved_topic(t) && topic(b) == Some(t))
        };
        self.clocks
            .newly_silent(now_ns, silent_ns, &self.time, peer)
            .into_iter()
            .map(|(id, seen)| (names.get(id as usize).cloned().unwrap_or_default(), seen))
            .collect()
    }

    /// Event time as it stands: the watermark, what waits for it, skewed and late counts.
    pub fn time_stats(&self) -> TimeStats {
        let (skewed, late) = self.clocks.totals();
        let mut sources: Vec<(String, SourceTime)> = self
            .clocks
            .sources()
            .map(|(id, s)| {
                let name = self
                    .logs
                    .names
                    .get(id as usize)
                    .cloned()
                    .unwrap_or_default();
                (name, *s)
            })
            .collect();
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        TimeStats {
            watermark_ns: self.clocks.watermark_ns(),
            buffered: self.reorder.len(),
            forced: self.clocks.forced,
            skewed,
            late,
            sources,
        }
    }

    /// Whether alerts wait to be taken; `true` in the second place when one is new.
    pub fn has_pending(&self) -> (bool, bool) {
        (
            !self.book.pending.is_empty() || !self.book.pending_closed.is_empty(),
            self.book.pending_new,
        )
    }

    /// The alert revisions raised since the last call. Store them before reporting them.
    /// Alerts [`Engine::take_pending`] gave that could not be stored (the volume was full):
    /// given again, first, by the next one.
    pub fn requeue(&mut self, mut alerts: Vec<Alert>) {
        alerts.append(&mut self.book.pending_closed);
        self.book.pending_closed = alerts;
    }

    pub fn take_pending(&mut self) -> Vec<Alert> {
        let book = &mut self.book;
        book.pending_new = false;
        let mut taken = std::mem::take(&mut book.pending_closed);
        for (_, (r, key)) in std::mem::take(&mut book.pending) {
            let fields = self.rules[r].kind.group_fields();
            if let Some(o) = book.open[r].get_by_key(fields, &key) {
                taken.push(o.alert.clone());
            }
        }
        for a in &taken {
            book.remember(a);
        }
        taken.sort_by(|a, b| {
            a.alert_id
                .cmp(&b.alert_id)
                .then(a.revision.cmp(&b.revision))
        });
        taken
    }

    /// Drop state the watermarks have passed: groups with nothing left in their windows,
    /// open alerts past their suppression windows.
    pub fn expire(&mut self) {
        let newest = self.clocks.watermark_ns();
        let book = &mut self.book;
        for (r, rule) in self.rules.iter_mut().enumerate() {
            rule.kind.expire();
            let suppress = rule.meta.suppress_ns;
            let (pending, closed) = (&mut book.pending, &mut book.pending_closed);
            book.open[r].retain(|o| {
                let keep = o.fired_ns.saturating_add(suppress) > newest;
                if !keep && pending.remove(&o.alert.alert_id).is_some() {
                    closed.push(o.alert.clone());
                }
                keep
            });
        }
        // Stored alerts matter while a group could fire them again: until the suppression
        // window after their last event has passed.
        let suppress: HashMap<&str, i64> = self
            .rules
            .iter()
            .map(|r| (r.meta.id.as_str(), r.meta.suppress_ns))
            .collect();
        let mut keep = std::collections::HashSet::new();
        book.known.retain(|(rule, _), v| {
            let s = suppress.get(rule.as_str()).copied().unwrap_or(0);
            v.retain(|(_, _, last)| last.saturating_add(s) > newest);
            keep.extend(v.iter().map(|(id, _, _)| id.clone()));
            !v.is_empty()
        });
        book.stored.retain(|id, _| keep.contains(id));
        book.lifecycle.retain(|id, _| keep.contains(id));
        // An incident no new alert can join any more.
        let window = book.incident_window_ns;
        book.incidents
            .retain(|_, (_, last)| last.saturating_add(window) > newest);
    }

    /// Apply a lifecycle change: the alert's new revision, pending like any other (take it to
    /// store it). `stored` is the alert's newest stored revision, for an alert no longer open
    /// here. Take pending revisions before, so that revisions stay in order.
    pub fn apply(&mut self, cmd: &Command, stored: Option<&Alert>) -> Result<Alert, Refusal> {
        let Engine { rules, book, .. } = self;
        let open = rules.iter().enumerate().find_map(|(r, rule)| {
            book.open[r]
                .entries()
                .find(|e| e.state.alert.alert_id == cmd.alert_id)
                .map(|e| (r, rule.kind.group_fields(), e.key.clone()))
        });
        let current = match &open {
            Some((r, fields, key)) => book.open[*r]
                .get_by_key(fields, key)
                .map(|o| o.alert.clone()),
            None => stored.cloned(),
        }
        .ok_or_else(|| Refusal::NoSuchAlert {
            alert_id: cmd.alert_id.clone(),
        })?;
        let to =
            cmd.action
                .apply_to(current.status)
                .map_err(|not_allowed| Refusal::NotAllowed {
                    alert_id: cmd.alert_id.clone(),
                    not_allowed,
                })?;
        let mut next = current;
        next.revision = next
            .revision
            .max(stored.map_or(0, |s| s.revision))
            .max(book.stored.get(&cmd.alert_id).copied().unwrap_or(0))
            + 1;
        next.status = to;
        next.status_by = Some(cmd.by.clone());
        next.status_at_ns = Some(cmd.at_ns);
        next.status_note.clone_from(&cmd.note);
        match open {
            Some((r, fields, key)) if to != Status::Resolved => {
                if let Some(o) = book.open[r].get_by_key_mut(fields, &key) {
                    o.alert = next.clone();
                }
                book.pending.insert(next.alert_id.clone(), (r, key));
            }
            Some((r, fields, key)) => {
                book.open[r].remove_by_key(fields, &key);
                rules[r].kind.close(&key);
                book.pending.remove(&next.alert_id);
                book.pending_closed.push(next.clone());
            }
            None => book.pending_closed.push(next.clone()),
        }
        book.remember(&next);
        Ok(next)
    }

    pub fn stats(&self) -> Vec<RuleStats> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let c = r.kind.counters();
                RuleStats {
                    id: r.meta.id.clone(),
                    matched: c.matched,
                    late: c.late,
                    evicted: c.evicted,
                    fired: c.fired,
                    groups: r.kind.groups(),
                    bytes: self.budget.rule_bytes(i),
                    learning: r.kind.is_learning(),
                    learning_until_ns: r.kind.learning_until().flatten(),
                }
            })
            .collect()
    }

    /// Write the state (positions, every rule's groups and open alerts) durably to `path`.
    /// Nothing may wait for the watermark ([`Engine::drain`] first): positions are past it.
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        let err = |m: String| EngineError::State {
            path: path.display().to_string(),
            message: m,
        };
        if !self.reorder.is_empty() {
            return Err(err(format!(
                "{} events still wait for the watermark (drain before saving)",
                self.reorder.len()
            )));
        }
        // The shape of `State`, borrowed: streamed to the file, never built in memory whole
        // (a million groups would take gigabytes as a JSON tree).
        #[derive(Serialize)]
        struct RuleRef<'a> {
            id: &'a str,
            version: u32,
            state: crate::rules::SavedKind<'a>,
            open: Vec<&'a Entry<OpenAlert>>,
        }
        #[derive(Serialize)]
        struct StateRef<'a> {
            format: &'a str,
            positions: BTreeMap<&'a str, u64>,
            rules: Vec<RuleRef<'a>>,
            newest_ns: i64,
            sources: BTreeMap<&'a str, SourceTime>,
        }
        let state = StateRef {
            format: STATE_FORMAT,
            positions: self
                .positions
                .iter()
                .map(|(l, p)| (self.logs.names[*l as usize].as_str(), *p))
                .collect(),
            rules: self
                .rules
                .iter()
                .enumerate()
                .map(|(r, rule)| RuleRef {
                    id: &rule.meta.id,
                    version: rule.meta.version,
                    state: rule.kind.saved(),
                    open: self.book.open[r].entries().collect(),
                })
                .collect(),
            newest_ns: self.clocks.watermark_ns(),
            sources: self
                .clocks
                .sources()
                .map(|(id, s)| (self.logs.names[id as usize].as_str(), *s))
                .collect(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        vigil_store::write_durably_with(path, |w| {
            serde_json::to_writer(w, &state).map_err(std::io::Error::other)
        })
        .map_err(|e| err(e.to_string()))
    }

    /// Restore state saved by [`Engine::save`]. Rules whose id and version match get their
    /// state back; others start empty (and say so in the returned list).
    pub fn restore(&mut self, path: &Path) -> Result<Vec<String>, EngineError> {
        let err = |m: String| EngineError::State {
            path: path.display().to_string(),
            message: m,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let state: State = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        if state.format != STATE_FORMAT {
            return Err(err(format!("unknown format {:?}", state.format)));
        }
        for (log, p) in state.positions {
            let id = self.logs.id(&log);
            self.positions.insert(id, p);
        }
        // Saved by a version that let a forged event time move the clocks (2099): no
        // clock is restored past receive time.
        let max_ns = vigil_store::clock::now_ns().saturating_add(self.time.max_future_skew_ns);
        self.clocks.restore(state.newest_ns, max_ns);
        for (log, s) in &state.sources {
            let id = self.logs.id(log);
            self.clocks.restore_counts(id, s);
        }
        let mut fresh = Vec::new();
        let mut saved: HashMap<(String, u32), SavedRule> = state
            .rules
            .into_iter()
            .map(|s| ((s.id.clone(), s.version), s))
            .collect();
        for (r, rule) in self.rules.iter_mut().enumerate() {
            match saved.remove(&(rule.meta.id.clone(), rule.meta.version)) {
                Some(s) => {
                    rule.kind
                        .restore(&s.state)
                        .map_err(|e| err(format!("rule {}: {e}", rule.meta.id)))?;
                    rule.kind.clamp_clock(max_ns);
                    for o in &s.open {
                        let rev = self
                            .book
                            .stored
                            .entry(o.state.alert.alert_id.clone())
                            .or_insert(0);
                        *rev = (*rev).max(o.state.alert.revision);
                    }
                    self.book.open[r].restore(rule.kind.group_fields(), s.open);
                }
                None => fresh.push(rule.meta.id.clone()),
            }
        }
        Ok(fresh)
    }
}

/// The event id of the row at leaf `e.index` of `e.log`, if a piece still held has it (the
/// first row of its record).
fn event_id(held: &HashMap<u32, Held>, id_col: usize, e: &EvRef) -> Option<String> {
    held.values().filter(|h| h.log == e.log).find_map(|h| {
        let i = h.indexes.partition_point(|&x| x < e.index);
        (h.indexes.get(i) == Some(&e.index))
            .then(|| {
                BatchRows::new(&h.piece.batch)
                    .row(i)
                    .str(id_col)
                    .map(str::to_owned)
            })
            .flatten()
    })
}

fn evidence(
    logs: &LogNames,
    refs: &[EvRef],
    event_id: &dyn Fn(&EvRef) -> Option<String>,
) -> Vec<Evidence> {
    refs.iter()
        .map(|e| Evidence {
            log: logs.names.get(e.log as usize).cloned().unwrap_or_default(),
            index: e.index,
            leaf_hash: hex::encode(e.leaf),
            event_time_ns: e.time_ns,
            event_id: event_id(e),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Defaults, Source, load};
    use vigil_schemas::Decoder;
    use vigil_store::{PartitionBatch, RecordRef};

    const RULE: &str = r#"
id = "t.denials"
version = 1
title = "denials"
severity = "high"
kind = "threshold"
filter = 'decision == "deny"'
group_by = ["caller_ip"]
count = 3
window = "1m"
suppress = "1h"
"#;

    fn engine(text: &str) -> Engine {
        let l = load(
            &[Source {
                name: "t.toml".into(),
                text: text.into(),
                dir: None,
            }],
            &Defaults::default(),
        );
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        // These tests are about alerts, not time: tiny clocks (`now` 7) skew nothing, and every
        // log counts as idle at once, so each piece is evaluated whole as it comes (event
        // time across logs: `crate::time_tests`).
        Engine::new(l.rules.into_iter().map(|(r, _)| r).collect()).with_time(TimeConfig {
            max_future_skew_ns: i64::MAX / 4,
            idle_source_ns: -1,
            ..TimeConfig::default()
        })
    }

    fn opa(i: usize, ip: &str, allow: bool) -> String {
        format!(
            r#"{{"decision_id":"d{i}","result":{allow},"timestamp":"2026-11-22T10:00:{:02}Z","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{ip}","portValue":1}}}}}},"request":{{"http":{{"method":"GET","path":"/"}}}}}}}}}}"#,
            i % 60
        )
    }

    /// One piece per call: records `from..from+n` of partition 0.
    struct Log {
        batch: PartitionBatch,
        next: i64,
    }

    impl Log {
        fn new() -> Log {
            Log {
                batch: PartitionBatch::new("t", 0, Default::default(), 16),
                next: 0,
            }
        }

        fn piece(&mut self, values: &[String]) -> Piece {
            for v in values {
                let rec = RecordRef {
                    topic: "t",
                    partition: 0,
                    offset: self.next,
                    timestamp_ms: None,
                    key: None,
                    value: Some(v.as_bytes()),
                    headers: &[],
                };
                self.batch.append(&rec, &Decoder::default(), 0).unwrap();
                self.next += 1;
            }
            self.batch.cut().unwrap().unwrap()
        }
    }

    #[test]
    fn a_piece_seen_twice_counts_once_and_updates_coalesce_into_one_revision() {
        let mut e = engine(RULE);
        let mut log = Log::new();
        let p1 = log.piece(&[opa(0, "1.1.1.1", false), opa(1, "1.1.1.1", false)]);
        e.observe(&p1, 7).unwrap();
        // Re-delivered (a crash before its file was durable): skipped.
        e.observe(&p1, 7).unwrap();
        assert_eq!(e.skipped_rows, 2);
        assert!(e.take_pending().is_empty());
        let p2 = log.piece(&[opa(2, "1.1.1.1", false), opa(3, "1.1.1.1", false)]);
        e.observe(&p2, 8).unwrap();
        let fired = e.take_pending();
        assert_eq!(fired.len(), 1);
        let a = &fired[0];
        // Fired by the third denial, the fourth already counted in the same piece.
        assert_eq!((a.revision, a.event_count, a.detected_ns), (1, 4, 8));
        assert_eq!(a.evidence.len(), 3);
        assert_eq!(a.evidence[2].log, "t/0");
        // The evidence is the three that fired it.
        assert_eq!(a.evidence[2].index, 2);
        assert_eq!(a.evidence[2].event_id.as_deref(), Some("d2"));
        assert_eq!(
            a.evidence[0].event_id, None,
            "not in the piece that fired it"
        );
        // Ten more denials: one new revision, not ten.
        let p3 = log.piece(
            &(4..14)
                .map(|i| opa(i, "1.1.1.1", false))
                .collect::<Vec<_>>(),
        );
        e.observe(&p3, 9).unwrap();
        let upd = e.take_pending();
        assert_eq!(upd.len(), 1);
        assert_eq!(
            (
                upd[0].alert_id.as_str(),
                upd[0].revision,
                upd[0].event_count
            ),
            (a.alert_id.as_str(), 2, 14)
        );
    }

    fn change(id: &str, action: crate::lifecycle::Action) -> Command {
        Command {
            alert_id: id.into(),
            action,
            by: "local:ana".into(),
            note: Some("on it".into()),
            at_ns: 99,
        }
    }

    #[test]
    fn lifecycle_changes_are_revisions_and_a_resolved_alert_is_never_raised_again() {
        use crate::lifecycle::Action::*;
        let mut e = engine(RULE);
        let mut log = Log::new();
        let denials = |log: &mut Log, from: usize, n: usize| {
            log.piece(
                &(from..from + n)
                    .map(|i| opa(i, "1.1.1.1", false))
                    .collect::<Vec<_>>(),
            )
        };
        e.observe(&denials(&mut log, 0, 3), 1).unwrap();
        let fired = e.take_pending();
        let id = fired[0].alert_id.clone();
        assert_eq!(
            e.apply(&change("nope", Acknowledge), None).unwrap_err(),
            Refusal::NoSuchAlert {
                alert_id: "nope".into()
            }
        );

        let acked = e.apply(&change(&id, Acknowledge), None).unwrap();
        assert_eq!((acked.revision, acked.status.as_str()), (2, "acknowledged"));
        assert_eq!(acked.status_by.as_deref(), Some("local:ana"));
        assert_eq!(e.take_pending(), vec![acked.clone()]);
        let again = e.apply(&change(&id, Acknowledge), None).unwrap_err();
        assert!(
            matches!(again, Refusal::NotAllowed { not_allowed, .. }
                if not_allowed.from == Status::Acknowledged),
            "{again}"
        );
        assert!(
            again.to_string().contains("already acknowledged"),
            "{again}"
        );
        // Later events update it and it stays acknowledged, by whom it was.
        e.observe(&denials(&mut log, 3, 2), 2).unwrap();
        let upd = e.take_pending();
        assert_eq!((upd[0].revision, upd[0].event_count), (3, 5));
        assert_eq!(upd[0].status, Status::Acknowledged);
        assert_eq!(upd[0].status_at_ns, Some(99));

        // Suppressed: counted, no revisions.
        let sup = e.apply(&change(&id, Suppress), None).unwrap();
        assert_eq!((sup.revision, sup.status.as_str()), (4, "suppressed"));
        e.take_pending();
        e.observe(&denials(&mut log, 5, 5), 3).unwrap();
        assert!(e.take_pending().is_empty());

        // Resolved: closed, with the count it reached.
        let res = e.apply(&change(&id, Resolve), None).unwrap();
        assert_eq!(
            (res.revision, res.status.as_str(), res.event_count),
            (5, "resolved", 10)
        );
        assert_eq!(e.take_pending(), vec![res.clone()]);
        assert!(
            e.apply(&change(&id, Resolve), Some(&res))
                .unwrap_err()
                .to_string()
                .contains("already resolved")
        );
        // The group's next firing is a new alert.
        e.observe(&denials(&mut log, 10, 3), 4).unwrap();
        let next = e.take_pending();
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].alert_id, id);
        assert_eq!((next[0].revision, next[0].status.as_str()), (1, "open"));

        // A rebuild replaying the same events knows the stored history: the resolved alert is
        // never raised or updated again; the firing lands in the newer alert (stored, in the
        // suppression window): an update of it, not a duplicate.
        let mut r = engine(RULE);
        let mut history = fired.clone();
        history.extend([acked, sup, res]);
        history.extend(next.clone());
        r.know_stored(&crate::alerts::latest(history));
        let mut again = Log::new();
        r.observe(&denials(&mut again, 0, 13), 5).unwrap();
        let replayed = r.take_pending();
        assert_eq!(replayed.len(), 1, "{replayed:#?}");
        assert_eq!(
            (replayed[0].alert_id.as_str(), replayed[0].revision),
            (next[0].alert_id.as_str(), 2)
        );
    }

    #[test]
    fn a_change_to_an_alert_no_longer_open_builds_on_its_stored_revision() {
        let mut e = engine(RULE);
        let mut stored = e_alert();
        stored.revision = 7;
        let a = e
            .apply(
                &change(&stored.alert_id, crate::lifecycle::Action::Resolve),
                Some(&stored),
            )
            .unwrap();
        assert_eq!(
            (a.revision, a.status.as_str(), a.event_count),
            (8, "resolved", stored.event_count)
        );
        assert_eq!(e.take_pending(), vec![a]);
    }

    fn e_alert() -> Alert {
        let mut e = engine(RULE);
        let mut log = Log::new();
        e.observe(
            &log.piece(&(0..3).map(|i| opa(i, "4.4.4.4", false)).collect::<Vec<_>>()),
            1,
        )
        .unwrap();
        e.take_pending().remove(0)
    }

    #[test]
    fn state_survives_a_restart_and_a_rule_change_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut log = Log::new();
        let mut e = engine(RULE);
        e.observe(
            &log.piece(&[opa(0, "2.2.2.2", false), opa(1, "2.2.2.2", false)]),
            1,
        )
        .unwrap();
        e.observe(
            &log.piece(&(2..5).map(|i| opa(i, "3.3.3.3", false)).collect::<Vec<_>>()),
            1,
        )
        .unwrap();
        let fired = e.take_pending();
        assert_eq!(fired.len(), 1);
        e.save(&path).unwrap();

        let mut r = engine(RULE);
        assert!(r.restore(&path).unwrap().is_empty());
        assert_eq!(r.position("t/0"), Some(5));
        r.know_stored(&fired);
        // 2.2.2.2 had two denials before the restart: one more fires.
        // 3.3.3.3's open alert is updated, not raised again.
        let p = log.piece(&[opa(5, "2.2.2.2", false), opa(6, "3.3.3.3", false)]);
        r.observe(&p, 2).unwrap();
        let got = r.take_pending();
        assert_eq!(got.len(), 2, "{got:#?}");
        let upd = got
            .iter()
            .find(|a| a.alert_id == fired[0].alert_id)
            .unwrap();
        assert_eq!((upd.revision, upd.event_count), (2, 4));
        assert!(
            got.iter()
                .any(|a| a.revision == 1 && a.group_key["caller_ip"].as_deref() == Some("2.2.2.2"))
        );

        // Version 2 of the rule: its old state does not apply.
        let mut v2 = engine(&RULE.replace("version = 1", "version = 2"));
        assert_eq!(v2.restore(&path).unwrap(), ["t.denials"]);
    }

    #[test]
    fn a_replay_firing_at_another_event_is_the_same_alert() {
        use crate::row::OwnedRow;
        let row = OwnedRow::of(&[("decision", "deny"), ("caller_ip", "9.9.9.9")]);
        let at = |t: i64| EvRef {
            time_ns: t * 1_000_000_000,
            ..EvRef::default()
        };
        let mut live = engine(RULE);
        for t in [0, 1, 2] {
            live.observe_row(&row, at(t), 0);
        }
        let first = live.take_pending();
        assert_eq!(first.len(), 1);
        // Rebuilt from history, the group fires at another event (its events interleaved
        // differently across partitions): the same alert, a new revision.
        let mut rebuilt = engine(RULE);
        rebuilt.know_stored(&first);
        for t in [5, 6, 7] {
            rebuilt.observe_row(&row, at(t), 0);
        }
        let again = rebuilt.take_pending();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].alert_id, first[0].alert_id);
        assert_eq!(again[0].revision, 2);
        // Past the suppression window (1 h) it is a new alert.
        for t in [4000, 4001, 4002] {
            rebuilt.observe_row(&row, at(t), 0);
        }
        let later = rebuilt.take_pending();
        assert_eq!(later.len(), 1);
        assert_ne!(later[0].alert_id, first[0].alert_id);
        assert_eq!(later[0].revision, 1);
    }
}
