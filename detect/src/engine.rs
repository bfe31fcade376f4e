//! The engine: every loaded rule over every event, in event time, with alert deduplication,
//! evidence, and a state checkpoint.
//!
//! Input is pieces of the store's rows (`vigil_store::Piece`: a partition log, the leaf index
//! of its first record, rows in the store schema), live from the pipeline or read back from
//! the store. The engine remembers, per log, the next leaf index it has not evaluated: rows
//! before it are skipped, so a piece seen twice (a re-delivery after a crash, catch-up
//! overlapping live input) never counts twice.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::TimestampNanosecondType;
use serde::{Deserialize, Serialize};
use vigil_store::{Piece, leaf_indexes};

use crate::alerts::{Alert, Evidence};
use crate::filter::{BatchRows, Row};
use crate::group::Key;
use crate::hit::{EvRef, Hit, Outcome};
use crate::rules::Rule;

/// Per-rule figures for metrics and `vigil rules backtest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleStats {
    pub id: String,
    pub matched: u64,
    pub late: u64,
    pub evicted: u64,
    pub fired: u64,
    pub groups: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct OpenAlert {
    rule: String,
    key: Key,
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

/// The rules, their state, and the alerts they raised that have not been taken yet.
pub struct Engine {
    rules: Vec<Rule>,
    logs: Vec<String>,
    log_ids: HashMap<String, u32>,
    /// Per log: the next leaf index not yet evaluated.
    positions: HashMap<u32, u64>,
    open: HashMap<(usize, Key), OpenAlert>,
    /// Alert revisions raised and not yet taken, by id.
    pending: BTreeMap<String, Alert>,
    /// Whether `pending` holds a new alert (not only updates).
    pending_new: bool,
    /// Highest revision already stored per alert id (so a re-fire after a restart is an update).
    stored: HashMap<String, i64>,
    newest_ns: i64,
    /// Rows skipped because their log position was already evaluated.
    pub skipped_rows: u64,
    /// Rows evaluated.
    pub rows: u64,
    /// Evaluate only events whose time is within `[from, to)` (backtests).
    pub window: Option<(i64, i64)>,
}

/// Persisted engine state.
#[derive(Serialize, Deserialize)]
struct State {
    format: String,
    positions: BTreeMap<String, u64>,
    rules: Vec<SavedRule>,
    open: Vec<OpenAlert>,
    newest_ns: i64,
}

#[derive(Serialize, Deserialize)]
struct SavedRule {
    id: String,
    version: u32,
    state: serde_json::Value,
}

const STATE_FORMAT: &str = "vigil-detect-state-v1";

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Engine {
        Engine {
            rules,
            logs: Vec::new(),
            log_ids: HashMap::new(),
            positions: HashMap::new(),
            open: HashMap::new(),
            pending: BTreeMap::new(),
            pending_new: false,
            stored: HashMap::new(),
            newest_ns: i64::MIN,
            skipped_rows: 0,
            rows: 0,
            window: None,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Alerts already stored (id → highest revision): firing one of them again updates it.
    pub fn know_stored(&mut self, alerts: &[Alert]) {
        for a in alerts {
            let r = self.stored.entry(a.alert_id.clone()).or_insert(0);
            *r = (*r).max(a.revision);
        }
    }

    fn log_id(&mut self, log: &str) -> u32 {
        if let Some(&id) = self.log_ids.get(log) {
            return id;
        }
        let id = u32::try_from(self.logs.len()).unwrap_or(u32::MAX);
        self.logs.push(log.to_owned());
        self.log_ids.insert(log.to_owned(), id);
        id
    }

    /// The next leaf index the engine has not evaluated in `log`, if it has seen the log.
    pub fn position(&self, log: &str) -> Option<u64> {
        self.log_ids
            .get(log)
            .and_then(|id| self.positions.get(id))
            .copied()
    }

    /// Evaluate every rule on every decoded row of a piece not evaluated before.
    pub fn observe(&mut self, piece: &Piece, now_ns: i64) -> Result<(), EngineError> {
        let b = &piece.batch;
        let log = self.log_id(&format!("{}/{}", piece.topic, piece.partition));
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
        let leaves = b
            .column_by_name("leaf_hash")
            .and_then(|c| c.as_fixed_size_binary_opt())
            .ok_or_else(|| EngineError::Input("no leaf_hash column".into()))?;
        let kind_col = crate::filter::field("kind")
            .ok_or_else(|| EngineError::Input("no kind field".into()))?
            .column;
        let rows = BatchRows::new(b);
        let mut hits: Vec<(usize, Outcome)> = Vec::new();
        for (i, &index) in indexes.iter().enumerate() {
            if index < from {
                self.skipped_rows += 1;
                continue;
            }
            let row = rows.row(i);
            // A rejected record (failed to decode) has no event to evaluate.
            if row.str(kind_col).is_none() {
                continue;
            }
            let time_ns = times.value(i);
            if self
                .window
                .is_some_and(|(from, to)| time_ns < from || time_ns >= to)
            {
                continue;
            }
            self.rows += 1;
            let mut leaf = [0u8; 32];
            leaf.copy_from_slice(leaves.value(i));
            let ev = EvRef {
                log,
                index,
                time_ns,
                leaf,
            };
            self.newest_ns = self.newest_ns.max(ev.time_ns);
            for (r, rule) in self.rules.iter_mut().enumerate() {
                match rule.kind.observe(&row, ev) {
                    Outcome::Nothing | Outcome::Late => {}
                    o => hits.push((r, o)),
                }
            }
        }
        self.positions.insert(log, next);
        if hits.is_empty() {
            return Ok(());
        }
        // Event ids of this piece's rows, for the evidence.
        let ids = crate::filter::field("event_id").map(|f| f.column);
        let event_id = |index: u64| -> Option<String> {
            let i = indexes.iter().position(|&x| x == index)?;
            rows.row(i).str(ids?).map(str::to_owned)
        };
        for (r, o) in hits {
            self.apply(r, o, now_ns, &|ev: &EvRef| {
                (ev.log == log).then(|| event_id(ev.index)).flatten()
            });
        }
        Ok(())
    }

    /// Evaluate one event given as a row (rule tests, backtests of loose events).
    pub fn observe_row(&mut self, row: &impl Row, ev: EvRef, now_ns: i64) {
        self.newest_ns = self.newest_ns.max(ev.time_ns);
        let outcomes: Vec<(usize, Outcome)> = self
            .rules
            .iter_mut()
            .enumerate()
            .map(|(r, rule)| (r, rule.kind.observe(row, ev)))
            .filter(|(_, o)| !matches!(o, Outcome::Nothing | Outcome::Late))
            .collect();
        for (r, o) in outcomes {
            self.apply(r, o, now_ns, &|_| None);
        }
    }

    fn evidence(
        &self,
        refs: &[EvRef],
        event_id: &dyn Fn(&EvRef) -> Option<String>,
    ) -> Vec<Evidence> {
        refs.iter()
            .map(|e| Evidence {
                log: self.logs.get(e.log as usize).cloned().unwrap_or_default(),
                index: e.index,
                leaf_hash: e.leaf.iter().map(|b| format!("{b:02x}")).collect(),
                event_time_ns: e.time_ns,
                event_id: event_id(e),
            })
            .collect()
    }

    fn apply(
        &mut self,
        r: usize,
        o: Outcome,
        now_ns: i64,
        event_id: &dyn Fn(&EvRef) -> Option<String>,
    ) {
        match o {
            Outcome::Fired(hit) => self.fire(r, hit, now_ns, event_id),
            Outcome::Updated { key, count, ev } => {
                if let Some(open) = self.open.get_mut(&(r, key)) {
                    let a = &mut open.alert;
                    a.revision += 1;
                    a.event_count = a.event_count.max(i64::try_from(count).unwrap_or(i64::MAX));
                    a.last_event_ns = a.last_event_ns.max(ev.time_ns);
                    a.first_event_ns = a.first_event_ns.min(ev.time_ns);
                    self.pending.insert(a.alert_id.clone(), a.clone());
                }
            }
            Outcome::Nothing | Outcome::Late => {}
        }
    }

    fn fire(
        &mut self,
        r: usize,
        hit: Hit,
        now_ns: i64,
        event_id: &dyn Fn(&EvRef) -> Option<String>,
    ) {
        let rule = &self.rules[r].meta;
        // The id names the rule, the group and the event time it fired at: replaying the same
        // events fires the same id.
        let mut h = blake3::Hasher::new_derive_key("vigil 2026 alert id v1");
        h.update(rule.id.as_bytes());
        h.update(&[0]);
        h.update(&rule.version.to_le_bytes());
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
        let id = h.finalize().to_hex()[..32].to_owned();
        let revision = self.stored.get(&id).copied().unwrap_or(0) + 1;
        let alert = Alert {
            alert_id: id.clone(),
            revision,
            rule_id: rule.id.clone(),
            rule_version: i32::try_from(rule.version).unwrap_or(i32::MAX),
            rule_kind: rule.kind.as_str().to_owned(),
            title: rule.title.clone(),
            severity: rule.severity.as_str().to_owned(),
            status: "open".into(),
            group_key: rule
                .group_names
                .iter()
                .cloned()
                .zip(hit.key.iter().cloned())
                .collect(),
            first_event_ns: hit.first_ns,
            last_event_ns: hit.last_ns,
            detected_ns: now_ns,
            event_count: i64::try_from(hit.count).unwrap_or(i64::MAX),
            detail: hit.detail.clone(),
            evidence: self.evidence(&hit.evidence, event_id),
        };
        if revision == 1 {
            self.pending_new = true;
        }
        self.pending.insert(id, alert.clone());
        self.open.insert(
            (r, hit.key.clone()),
            OpenAlert {
                rule: self.rules[r].meta.id.clone(),
                key: hit.key,
                fired_ns: hit.last_ns,
                alert,
            },
        );
    }

    /// Whether alerts wait to be taken; `true` in the second place when one is new.
    pub fn has_pending(&self) -> (bool, bool) {
        (!self.pending.is_empty(), self.pending_new)
    }

    /// The alert revisions raised since the last call. Store them before reporting them.
    pub fn take_pending(&mut self) -> Vec<Alert> {
        self.pending_new = false;
        let taken: Vec<Alert> = std::mem::take(&mut self.pending).into_values().collect();
        for a in &taken {
            let r = self.stored.entry(a.alert_id.clone()).or_insert(0);
            *r = (*r).max(a.revision);
        }
        taken
    }

    /// Drop state the watermarks have passed: groups with nothing left in their windows,
    /// open alerts past their suppression windows.
    pub fn expire(&mut self) {
        for r in &mut self.rules {
            r.kind.expire();
        }
        let newest = self.newest_ns;
        let rules = &self.rules;
        self.open.retain(|(r, _), o| {
            let suppress = rules.get(*r).map_or(0, |x| x.meta.suppress_ns);
            o.fired_ns.saturating_add(suppress) > newest
        });
        self.stored
            .retain(|id, _| self.open.values().any(|o| &o.alert.alert_id == id));
    }

    pub fn stats(&self) -> Vec<RuleStats> {
        self.rules
            .iter()
            .map(|r| {
                let c = r.kind.counters();
                RuleStats {
                    id: r.meta.id.clone(),
                    matched: c.matched,
                    late: c.late,
                    evicted: c.evicted,
                    fired: c.fired,
                    groups: r.kind.groups(),
                }
            })
            .collect()
    }

    /// Write the state (positions, every rule's groups, open alerts) durably to `path`.
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        let err = |m: String| EngineError::State {
            path: path.display().to_string(),
            message: m,
        };
        let mut rules = Vec::new();
        for r in &self.rules {
            rules.push(SavedRule {
                id: r.meta.id.clone(),
                version: r.meta.version,
                state: r.kind.save().map_err(|e| err(e.to_string()))?,
            });
        }
        let state = State {
            format: STATE_FORMAT.into(),
            positions: self
                .positions
                .iter()
                .map(|(l, p)| (self.logs[*l as usize].clone(), *p))
                .collect(),
            rules,
            open: self
                .open
                .values()
                .map(|o| OpenAlert {
                    rule: o.rule.clone(),
                    key: o.key.clone(),
                    fired_ns: o.fired_ns,
                    alert: o.alert.clone(),
                })
                .collect(),
            newest_ns: self.newest_ns,
        };
        let bytes = serde_json::to_vec(&state).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        vigil_store::write_durably(path, &bytes).map_err(|e| err(e.to_string()))
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
            let id = self.log_id(&log);
            self.positions.insert(id, p);
        }
        self.newest_ns = state.newest_ns;
        let mut fresh = Vec::new();
        let mut saved: HashMap<(String, u32), serde_json::Value> = state
            .rules
            .into_iter()
            .map(|s| ((s.id, s.version), s.state))
            .collect();
        for r in &mut self.rules {
            match saved.remove(&(r.meta.id.clone(), r.meta.version)) {
                Some(v) => r
                    .kind
                    .restore(v)
                    .map_err(|e| err(format!("rule {}: {e}", r.meta.id)))?,
                None => fresh.push(r.meta.id.clone()),
            }
        }
        for o in state.open {
            if let Some(r) = self.rules.iter().position(|r| r.meta.id == o.rule) {
                let r_id = o.alert.alert_id.clone();
                let rev = o.alert.revision;
                self.open.insert((r, o.key.clone()), o);
                let s = self.stored.entry(r_id).or_insert(0);
                *s = (*s).max(rev);
            }
        }
        Ok(fresh)
    }
}

/// The current time in ns since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
