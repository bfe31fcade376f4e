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
//!
//! One file past 600 lines for one path: observe → hold → release → evaluate is the way every
//! event goes through the watermark, read top to bottom here; alerts (`alerts.rs`, `ledger.rs`)
//! and the state file (`state.rs`) are apart.

use std::collections::{BTreeMap, HashMap};

use std::hash::BuildHasher;

use arrow::array::{Array, AsArray, FixedSizeBinaryArray};
use arrow::datatypes::{TimestampMillisecondType, TimestampNanosecondType};
use serde::Serialize;
use vigil_store::{Piece, leaf_indexes};

use crate::alerts::Evidence;
use crate::budget::Budget;
use crate::evidence::{EvRef, Outcome};
use crate::filter::{BatchRows, Context, Row, WithContext};
use crate::group::Table;
use crate::lifecycle::SYSTEM_PRINCIPAL;
use crate::rules::Rule;
use crate::time::{Clocks, Pending, Reorder, SourceTime, TimeConfig};

mod alerts;
mod ledger;
mod state;

pub(crate) use ledger::incident_subject;
use ledger::{AlertLedger, OpenAlert};

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

/// `detect.max_state_bytes` unless configured: 384 MiB.
pub(crate) const DEFAULT_MAX_STATE_BYTES: usize = 384 << 20;

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
    /// (Tests; `serve` says which logs it holds with [`Engine::hold_logs`].)
    #[cfg(test)]
    pub(crate) fn expect_log(&mut self, log: &str, now_ns: i64) {
        let id = self.logs.id(log);
        self.clocks.expect(id, now_ns);
    }

    /// Say whether pieces are queued for the engine (`backlog`) at wall clock `now_ns`;
    /// `caught_up_ns`: when it last had none ([`Clocks::set_backlog`]: a log whose pieces wait
    /// behind others' while detection is busy is not idle).
    pub(crate) fn set_backlog(&mut self, backlog: bool, caught_up_ns: i64, now_ns: i64) {
        self.clocks.set_backlog(backlog, caught_up_ns, now_ns);
    }

    /// Logs ingest holds: a new one is expected (it holds the watermark from now until it
    /// sends or goes idle); one with records in flight (consumed, not yet durable) counts as
    /// active now, so the watermark does not pass records still on their way.
    pub(crate) fn hold_logs(&mut self, logs: &[(String, bool)], now_ns: i64) {
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
    pub(crate) fn observe_followed(
        &mut self,
        piece: &Piece,
        now_ns: i64,
    ) -> Result<(), EngineError> {
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
    pub(crate) fn begin_replay(&mut self) {
        self.replaying = true;
    }

    /// Evaluate every waiting event earlier than `before_ns`: no event to come is.
    pub(crate) fn release_until(&mut self, before_ns: i64, now_ns: i64) {
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
    pub(crate) fn end_replay(&mut self, now_ns: i64) {
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
                    record: Default::default(),
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
                    // A Sigma rule's group is named by its own fields (the key it found).
                    match rule.kind.key_row() {
                        Some(k) => book.take(r, rule, k, outcome, now_ns, logs, &ids),
                        None => book.take(r, rule, &row, outcome, now_ns, logs, &ids),
                    }
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
            match rule.kind.key_row() {
                Some(k) => book.take(r, rule, k, outcome, now_ns, logs, &|_| None),
                None => book.take(r, rule, row, outcome, now_ns, logs, &|_| None),
            }
        }
        budget.evaluated(rules);
    }

    /// Partition logs that went silent for `silent_ns` of wall clock while another partition
    /// of the same topic kept sending (Vigil's own logs excepted: they are quiet by nature),
    /// each once per silence: (log, wall clock it last sent at).
    pub(crate) fn silent_logs(&mut self, now_ns: i64, silent_ns: i64) -> Vec<(String, i64)> {
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
mod tests;
