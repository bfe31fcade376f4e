//! Event time across sources, sans I/O: per-source watermarks, event times held against the
//! time Vigil received them, and the order in which the engine evaluates events.
//!
//! A *source* is a partition log (`topic/partition`). For each, the engine keeps the newest
//! effective event time it has accepted. The **watermark** is the minimum of those over the
//! *active* sources — the ones that sent something within `idle_source_ns` of wall-clock time
//! (an idle source does not hold the others back) — and never moves back. Only logs fed live
//! hold it: a log read from the store after the fact (another process's partition) or written
//! by this process (Vigil's own logs) *follows* — its events are ordered with the others', but
//! nothing waits for it, or every alert would wait as long as it comes late. A record that
//! failed to decode is not evaluated but still moves its log's clock, so a log sending only
//! garbage cannot hold the others. Events before the
//! watermark are evaluated in event-time order (events at one instant in the order of a hash
//! of their raw bytes); the others wait in a bounded buffer
//! (`Reorder`). So a partition that runs ahead of another does not make the other's events
//! late, and the same events give the same alerts however they are spread over partitions.
//!
//! An event's time is *held against receive time* (`judge`): further ahead of it than
//! `max_future_skew_ns` and it is **skewed** — evaluated at the time its source had reached
//! (the watermark, or its receive time, when the source has sent nothing else) and never
//! counted into its source's clock, so that one forged timestamp (a decision dated 2099)
//! moves no clock at all, live or in a catch-up where the wall clock is far ahead of the
//! stream. Receive time is the record's Kafka timestamp or the wall clock, whichever is
//! earlier (a producer can forge the former, not the latter).
//!
//! An event that arrives behind the watermark (a source that was idle, a producer whose clock
//! is behind, a backdated record) is evaluated at once against the state its groups hold —
//! never skipped. Behind it by more than `allowed_lateness_ns` it is also **late**: counted
//! per source and visible to rules (`time_late`), so that backdating is itself seen.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};

/// How the engine treats event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeConfig {
    /// An event time further ahead of its receive time than this is skewed.
    pub max_future_skew_ns: i64,
    /// An event further behind the watermark than this is late (it is still evaluated).
    pub allowed_lateness_ns: i64,
    /// A source that sent nothing for this long (wall clock) does not hold the watermark.
    pub idle_source_ns: i64,
    /// Events waiting for the watermark, at most; past it the oldest are evaluated anyway
    /// (counted as forced) and the watermark moves to them.
    pub max_buffered_events: usize,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            max_future_skew_ns: 5 * 60 * 1_000_000_000,
            allowed_lateness_ns: 30 * 1_000_000_000,
            idle_source_ns: 1_000_000_000,
            max_buffered_events: 200_000,
        }
    }
}

/// An event's time as the engine uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Judged {
    /// The event time, or the receive time for a skewed event.
    pub time_ns: i64,
    pub skewed: bool,
}

/// Hold an event time against the time its record was received: the Kafka timestamp (ms, if
/// the record has one) or `now_ns`, whichever is earlier.
pub(crate) fn judge(event_ns: i64, kafka_ms: Option<i64>, now_ns: i64, cfg: &TimeConfig) -> Judged {
    let received = kafka_ms
        .and_then(|ms| ms.checked_mul(1_000_000))
        .map_or(now_ns, |k| k.min(now_ns));
    if event_ns > received.saturating_add(cfg.max_future_skew_ns) {
        Judged {
            time_ns: received,
            skewed: true,
        }
    } else {
        Judged {
            time_ns: event_ns,
            skewed: false,
        }
    }
}

/// One source's event-time figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceTime {
    /// Newest effective event time accepted from it (`i64::MIN`: none yet).
    pub newest_ns: i64,
    /// Events accepted, skewed and late.
    pub events: u64,
    pub skewed: u64,
    pub late: u64,
    /// Wall clock of the last piece from it (not persisted: a restart starts every source
    /// afresh).
    #[serde(skip)]
    pub seen_ns: i64,
    /// Said to be silent since it last sent (cleared when it sends again).
    #[serde(skip)]
    pub silent: bool,
    /// A log that never holds the watermark: one read from the store after the fact (another
    /// process's partition) or written by this process itself (Vigil's own logs). Its events
    /// are ordered with the others' but nothing waits for it (not persisted).
    #[serde(skip)]
    pub follows: bool,
}

/// Per-source times and the watermark.
#[derive(Debug, Default)]
pub(crate) struct Clocks {
    sources: HashMap<u32, SourceTime>,
    /// Events before it have been evaluated (or are being); it never moves back. An event at
    /// it or later may still come from a source that has sent nothing later yet.
    watermark_ns: Option<i64>,
    /// Events evaluated before the watermark reached them because the buffer was full.
    pub forced: u64,
    /// While the engine works through a backlog of pieces, the clock that judges idle sources
    /// stands here (where the engine was last caught up): a source is not idle because the
    /// engine was busy. Every wall clock given to the idleness methods goes through it.
    backlog_since_ns: Option<i64>,
}

/// What [`Clocks::accept`] decided for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub judged: Judged,
    /// Behind the watermark: evaluate now, do not buffer.
    pub behind: bool,
    /// Behind it by more than the allowed lateness.
    pub late: bool,
}

impl Clocks {
    /// The watermark (`i64::MIN` before anything was evaluated).
    pub(crate) fn watermark_ns(&self) -> i64 {
        self.watermark_ns.unwrap_or(i64::MIN)
    }

    /// Start from a saved watermark, never past `max_ns` (a state saved by a version that let
    /// a forged time move it).
    pub(crate) fn restore(&mut self, watermark_ns: i64, max_ns: i64) {
        self.watermark_ns = (watermark_ns != i64::MIN).then(|| watermark_ns.min(max_ns));
    }

    /// A piece from `source` arrived at wall clock `now_ns`. `holds`: whether the source holds
    /// the watermark (a live partition log) or only follows it (see [`SourceTime::follows`]).
    pub(crate) fn seen(&mut self, source: u32, now_ns: i64, holds: bool) {
        let now_ns = self.idle_now(now_ns);
        let s = self.sources.entry(source).or_insert(SourceTime {
            newest_ns: i64::MIN,
            ..SourceTime::default()
        });
        s.seen_ns = now_ns;
        s.silent = false;
        s.follows = !holds;
    }

    /// Sources that sent events once and then nothing for `silent_ns` (wall clock) while a
    /// peer — a source `peer` calls one — sent within the last `idle_source_ns`; each is
    /// returned once per silence.
    pub(crate) fn newly_silent(
        &mut self,
        now_ns: i64,
        silent_ns: i64,
        cfg: &TimeConfig,
        peer: impl Fn(u32, u32) -> bool,
    ) -> Vec<(u32, i64)> {
        let now_ns = self.idle_now(now_ns);
        let recent: Vec<u32> = self
            .sources
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.seen_ns) <= cfg.idle_source_ns.max(1))
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for (k, s) in self.sources.iter_mut() {
            // Only a source that has sent something can go silent (an expected partition that
            // never had a record is not one).
            if !s.silent
                && s.events > 0
                && now_ns.saturating_sub(s.seen_ns) > silent_ns
                && recent.iter().any(|&r| r != *k && peer(*k, r))
            {
                s.silent = true;
                out.push((*k, s.seen_ns));
            }
        }
        out.sort_unstable();
        out
    }

    /// One event of `source` (after [`Clocks::seen`]).
    pub(crate) fn accept(
        &mut self,
        source: u32,
        event_ns: i64,
        kafka_ms: Option<i64>,
        now_ns: i64,
        cfg: &TimeConfig,
    ) -> Accepted {
        let judged = self.judge_for(source, event_ns, kafka_ms, now_ns, cfg);
        let w = self.watermark_ns;
        let s = self.stand(source, judged, now_ns);
        let behind = w.is_some_and(|w| judged.time_ns < w);
        let late = !judged.skewed
            && w.is_some_and(|w| judged.time_ns < w.saturating_sub(cfg.allowed_lateness_ns));
        s.events += 1;
        s.skewed += u64::from(judged.skewed);
        s.late += u64::from(late);
        Accepted {
            judged,
            behind,
            late,
        }
    }

    /// A row of `source` that is not evaluated (a record that failed to decode) still says
    /// where its source stands: otherwise a log sending only such rows would hold the
    /// watermark, with no event, for as long as it kept sending. Not counted as an event.
    pub(crate) fn pass(
        &mut self,
        source: u32,
        event_ns: i64,
        kafka_ms: Option<i64>,
        now_ns: i64,
        cfg: &TimeConfig,
    ) {
        let judged = self.judge_for(source, event_ns, kafka_ms, now_ns, cfg);
        self.stand(source, judged, now_ns);
    }

    /// [`judge`], and a skewed time held to where its log stands (or the watermark, or the
    /// slowest other log), not the receive time: in a catch-up or a replay the wall clock is
    /// far ahead of the stream, and a forged time must move no clock.
    fn judge_for(
        &self,
        source: u32,
        event_ns: i64,
        kafka_ms: Option<i64>,
        now_ns: i64,
        cfg: &TimeConfig,
    ) -> Judged {
        let mut judged = judge(event_ns, kafka_ms, now_ns, cfg);
        if judged.skewed {
            let newest = |s: &SourceTime| Some(s.newest_ns).filter(|&t| t != i64::MIN);
            let anchor = self
                .sources
                .get(&source)
                .and_then(newest)
                .or(self.watermark_ns)
                .or_else(|| self.sources.values().filter_map(newest).min());
            if let Some(a) = anchor {
                judged.time_ns = judged.time_ns.min(a);
            }
        }
        judged
    }

    /// Move `source`'s newest time by a judged time (a skewed one only for a source that has
    /// none yet: a log that sent only forged times must not hold the others forever).
    fn stand(&mut self, source: u32, judged: Judged, now_ns: i64) -> &mut SourceTime {
        let seen_ns = self.idle_now(now_ns);
        let s = self.sources.entry(source).or_insert(SourceTime {
            newest_ns: i64::MIN,
            seen_ns,
            ..SourceTime::default()
        });
        if !judged.skewed || s.newest_ns == i64::MIN {
            s.newest_ns = s.newest_ns.max(judged.time_ns);
        }
        s
    }

    /// Where the watermark may go now: the minimum newest time over the sources seen within
    /// the idle time of `now_ns` (followers aside), or, when none is active, the newest time
    /// of any. An active source with no time yet (expected: assigned, or with records on their
    /// way) holds it where it is until it sends one or goes idle. Never behind the current
    /// watermark.
    pub(crate) fn advance(&mut self, now_ns: i64, cfg: &TimeConfig) -> i64 {
        let now_ns = self.idle_now(now_ns);
        let active =
            |s: &SourceTime| !s.follows && now_ns.saturating_sub(s.seen_ns) <= cfg.idle_source_ns;
        let mut min: Option<i64> = None;
        let mut max: Option<i64> = None;
        let mut hold = false;
        for s in self.sources.values() {
            let has = s.newest_ns != i64::MIN;
            if has {
                max = Some(max.map_or(s.newest_ns, |m| m.max(s.newest_ns)));
            }
            if active(s) {
                if has {
                    min = Some(min.map_or(s.newest_ns, |m| m.min(s.newest_ns)));
                } else {
                    hold = true;
                }
            }
        }
        // Nothing active: everything accepted may go (the newest event included).
        if !hold && let Some(c) = min.or(max.map(|m| m.saturating_add(1))) {
            self.raise(c);
        }
        self.watermark_ns()
    }

    /// A source expected to send (a partition log known to exist): it holds the watermark
    /// from now on as if it had sent a piece, until it sends events or goes idle.
    pub(crate) fn expect(&mut self, source: u32, now_ns: i64) {
        self.seen(source, now_ns, true);
    }

    /// Where `source` stands for a rule waiting on it: its newest event time while it is
    /// active, `i64::MAX` once it is idle or unknown (nothing more is coming soon from it).
    pub(crate) fn progress_ns(&self, source: u32, now_ns: i64, cfg: &TimeConfig) -> i64 {
        let now_ns = self.idle_now(now_ns);
        match self.sources.get(&source) {
            Some(s) if !s.follows && now_ns.saturating_sub(s.seen_ns) <= cfg.idle_source_ns => {
                s.newest_ns
            }
            _ => i64::MAX,
        }
    }

    /// Whether pieces are queued for the engine (`backlog`) at wall clock `now_ns`;
    /// `caught_up_ns`: when it last had none. While they are, the idle clock stands where
    /// the engine was last caught up; when the backlog is worked off, the sources seen
    /// meanwhile count as seen now. So a source whose pieces wait in the queue behind others'
    /// is not taken for idle and overtaken.
    pub(crate) fn set_backlog(&mut self, backlog: bool, caught_up_ns: i64, now_ns: i64) {
        match (backlog, self.backlog_since_ns) {
            (true, None) => self.backlog_since_ns = Some(caught_up_ns.min(now_ns)),
            (false, Some(since)) => {
                self.backlog_since_ns = None;
                for s in self.sources.values_mut() {
                    if s.seen_ns >= since {
                        s.seen_ns = s.seen_ns.max(now_ns);
                    }
                }
            }
            _ => {}
        }
    }

    /// The clock idleness is judged by: the wall clock, or where a backlog began.
    fn idle_now(&self, now_ns: i64) -> i64 {
        self.backlog_since_ns.unwrap_or(now_ns)
    }

    /// Whether the source has been seen (or expected) at all.
    pub(crate) fn knows(&self, source: u32) -> bool {
        self.sources.contains_key(&source)
    }

    /// Move the watermark to `t` if that is ahead (the caller evaluated everything up to it).
    pub(crate) fn raise(&mut self, t: i64) {
        self.watermark_ns = Some(self.watermark_ns.map_or(t, |w| w.max(t)));
    }

    /// Every source's figures.
    pub(crate) fn sources(&self) -> impl Iterator<Item = (u32, &SourceTime)> {
        self.sources.iter().map(|(k, v)| (*k, v))
    }

    /// Totals over the sources: (skewed, late).
    pub(crate) fn totals(&self) -> (u64, u64) {
        self.sources
            .values()
            .fold((0, 0), |(s, l), t| (s + t.skewed, l + t.late))
    }

    /// Figures restored from a saved state (counts carry on; times start afresh).
    pub(crate) fn restore_counts(&mut self, source: u32, saved: &SourceTime) {
        let s = self.sources.entry(source).or_insert(SourceTime {
            newest_ns: i64::MIN,
            ..SourceTime::default()
        });
        s.events = saved.events;
        s.skewed = saved.skewed;
        s.late = saved.late;
    }
}

/// An event waiting for the watermark, ordered by effective time, then by a hash of its raw
/// bytes (so that events at the same instant come in the same order however they were
/// partitioned), then by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pending {
    pub time_ns: i64,
    pub tie: u64,
    pub log: u32,
    pub index: u64,
    /// Which held piece, and which row of it.
    pub slot: u32,
    pub row: u32,
    pub skewed: bool,
    pub late: bool,
    /// The record does not follow the one before it in its log (a recorded offset gap).
    pub gap: bool,
}

/// The events waiting for the watermark, bounded.
#[derive(Debug, Default)]
pub(crate) struct Reorder {
    heap: BinaryHeap<Reverse<Pending>>,
}

impl Reorder {
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub(crate) fn push(&mut self, p: Pending) {
        self.heap.push(Reverse(p));
    }

    /// Take, in order, the events before `watermark_ns`, then as many of the oldest as
    /// keep at most `max` waiting; the second number is how many were forced out that way.
    pub(crate) fn ready(&mut self, watermark_ns: i64, max: usize, out: &mut Vec<Pending>) -> u64 {
        while let Some(Reverse(p)) = self.heap.peek() {
            if p.time_ns >= watermark_ns {
                break;
            }
            out.extend(self.heap.pop().map(|r| r.0));
        }
        let mut forced = 0;
        while self.heap.len() > max {
            out.extend(self.heap.pop().map(|r| r.0));
            forced += 1;
        }
        forced
    }

    /// Take everything, in order.
    pub(crate) fn drain(&mut self, out: &mut Vec<Pending>) {
        out.reserve(self.heap.len());
        while let Some(Reverse(p)) = self.heap.pop() {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests;
