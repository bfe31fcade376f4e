//! The sequence rule kind: per group, at least N events of one filter followed by an event of
//! another within a window — several denials, then an allow: a brute force that worked.
//!
//! Order is event time: the `then` event must not be earlier than the `first` events it
//! completes. The sequence is judged when its `then` event arrives, against the `first` events
//! seen so far (up to the allowed lateness, a `first` event arriving after its `then` does not
//! complete it). Once fired, the `first` events are spent; the next alert needs new ones or
//! the end of the suppression window.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::evidence::{EvRef, Hit, Outcome, newest};
use crate::filter::{Filter, Row};
use crate::group::{GroupBy, Open, State};

#[derive(Debug)]
pub struct SequenceSpec {
    pub group_by: GroupBy,
    pub first: Filter,
    /// How many `first` events.
    pub first_count: usize,
    pub then: Filter,
    /// The `first` events must be a run: a `then` event that does not complete the sequence
    /// clears them.
    pub consecutive: bool,
    pub window_ns: i64,
    pub suppress_ns: i64,
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Group {
    /// The newest `first` events, at most N, ascending.
    firsts: VecDeque<EvRef>,
    open: Open,
}

crate::has_open!(Group);

impl crate::group::Weigh for Group {
    fn heap_bytes(&self) -> usize {
        crate::group::deque_bytes(&self.firsts)
    }
}

#[derive(Debug)]
pub struct Sequence {
    pub(crate) spec: SequenceSpec,
    pub(crate) st: State<Group>,
}

impl Sequence {
    pub fn new(spec: SequenceSpec) -> Sequence {
        assert!(spec.first_count >= 1 && spec.window_ns > 0 && spec.max_groups >= 1);
        Sequence {
            st: State::new(spec.max_groups, spec.allowed_lateness_ns),
            spec,
        }
    }

    pub fn groups(&self) -> usize {
        self.st.groups.len()
    }

    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        let t = ev.time_ns;
        let is_first = self.spec.first.matches(row);
        let is_then = self.spec.then.matches(row);
        if !is_first && !is_then {
            return Outcome::Nothing;
        }
        self.st.matched(t);
        let (n, window, suppress) = (
            self.spec.first_count,
            self.spec.window_ns,
            self.spec.suppress_ns,
        );
        let outcome = if is_then {
            // A `then` event only matters to a group that has `first` events.
            match self.st.groups.get(&self.spec.group_by, row) {
                None => Outcome::Nothing,
                Some((key, g)) => {
                    let in_window = |f: &&EvRef| f.time_ns <= t && f.time_ns >= t - window;
                    let absorbed = g.open.absorb(t, window, suppress);
                    if let Some(c) = absorbed {
                        Outcome::Updated { count: c, ev }
                    } else if g.firsts.iter().filter(in_window).count() >= n {
                        let mut evidence: Vec<EvRef> =
                            g.firsts.iter().filter(in_window).copied().collect();
                        g.open.fire(t, evidence.len() as u64 + 1);
                        g.firsts.retain(|f| f.time_ns > t);
                        evidence.push(ev);
                        let evidence = newest(evidence);
                        Outcome::Fired(Hit {
                            key: key.to_key(),
                            first_ns: evidence.first().map_or(t, |e| e.time_ns),
                            last_ns: t,
                            count: n as u64 + 1,
                            detail: Vec::new(),
                            evidence,
                        })
                    } else {
                        if self.spec.consecutive && !is_first {
                            // A success ends the run of failures before it.
                            g.firsts.clear();
                        }
                        Outcome::Nothing
                    }
                }
            }
        } else {
            Outcome::Nothing
        };
        if is_first && !outcome.fired() {
            let (_, g) = self.st.groups.entry(&self.spec.group_by, row, || Group {
                firsts: VecDeque::new(),
                open: Open::default(),
            });
            if g.firsts.len() == g.firsts.capacity() {
                g.firsts.reserve_exact(1);
            }
            let at = g.firsts.partition_point(|e| e.time_ns <= t);
            g.firsts.insert(at, ev);
            if g.firsts.len() > n {
                g.firsts.pop_front();
            }
        }
        self.st.outcome(outcome)
    }

    pub(crate) fn expire(&mut self) {
        let horizon = self.st.clock.watermark();
        let (window, suppress) = (self.spec.window_ns, self.spec.suppress_ns);
        self.st.groups.retain(|g| {
            let newest = g.firsts.back().map_or(i64::MIN, |e| e.time_ns);
            newest.saturating_add(window) > horizon || g.open.is_open(horizon, suppress)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::at;
    use crate::filter::field;
    use crate::row::OwnedRow;

    const S: i64 = 1_000_000_000;

    fn ev(ip: &str, decision: &str) -> OwnedRow {
        OwnedRow::of(&[("caller_ip", ip), ("decision", decision)])
    }

    fn rule() -> Sequence {
        Sequence::new(SequenceSpec {
            group_by: vec![("caller_ip".into(), field("caller_ip").unwrap())],
            first: Filter::parse(r#"decision == "deny""#).unwrap(),
            first_count: 3,
            then: Filter::parse(r#"decision == "allow""#).unwrap(),
            consecutive: false,
            window_ns: 60 * S,
            suppress_ns: 600 * S,
            allowed_lateness_ns: 30 * S,
            max_groups: 100,
        })
    }

    #[test]
    fn n_denials_then_an_allow_fires_once() {
        let mut r = rule();
        // An allow with nothing before it is nothing (and makes no group).
        assert_eq!(r.observe(&ev("1.2.3.4", "allow"), at(0)), Outcome::Nothing);
        assert_eq!(r.groups(), 0);
        r.observe(&ev("1.2.3.4", "deny"), at(S));
        r.observe(&ev("1.2.3.4", "deny"), at(2 * S));
        // Two denials are not enough.
        assert_eq!(
            r.observe(&ev("1.2.3.4", "allow"), at(3 * S)),
            Outcome::Nothing
        );
        r.observe(&ev("1.2.3.4", "deny"), at(4 * S));
        // Exactly at the window's edge (60 s after the first denial) still counts.
        let o = r.observe(&ev("1.2.3.4", "allow"), at(61 * S));
        let Outcome::Fired(h) = o else {
            panic!("{o:?}")
        };
        assert_eq!(h.count, 4);
        assert_eq!(h.evidence.len(), 4);
        assert_eq!((h.first_ns, h.last_ns), (S, 61 * S));
        // The next allow updates the open alert.
        assert!(matches!(
            r.observe(&ev("1.2.3.4", "allow"), at(62 * S)),
            Outcome::Updated { .. }
        ));
        // Another source's denials are its own.
        r.observe(&ev("5.6.7.8", "deny"), at(62 * S));
        assert_eq!(
            r.observe(&ev("5.6.7.8", "allow"), at(63 * S)),
            Outcome::Nothing
        );
    }

    #[test]
    fn consecutive_means_a_run_of_failures_ending_in_a_success() {
        let mut r = rule();
        r.spec.consecutive = true;
        // A busy client: one-off denials among its allowed calls, never three in a row.
        for i in 0..30 {
            let d = if i % 3 == 0 { "deny" } else { "allow" };
            assert_eq!(r.observe(&ev("busy", d), at(i * S)), Outcome::Nothing);
        }
        // Without `consecutive` the same traffic fires: three denials within the window.
        let mut loose = rule();
        let fired = (0..30).any(|i| {
            let d = if i % 3 == 0 { "deny" } else { "allow" };
            loose.observe(&ev("busy", d), at(i * S)).fired()
        });
        assert!(fired);
        // A run of three, then the success: fires.
        for i in 100..103 {
            r.observe(&ev("bf", "deny"), at(i * S));
        }
        assert!(r.observe(&ev("bf", "allow"), at(103 * S)).fired());
    }

    #[test]
    fn denials_outside_the_window_or_after_the_allow_do_not_complete_it() {
        let mut r = rule();
        r.observe(&ev("a", "deny"), at(0));
        r.observe(&ev("a", "deny"), at(10 * S));
        r.observe(&ev("a", "deny"), at(20 * S));
        // 61 s after the first: only two within the window.
        assert_eq!(r.observe(&ev("a", "allow"), at(61 * S)), Outcome::Nothing);
        // A denial that happened after the allow (arriving out of order) does not count.
        r.observe(&ev("b", "deny"), at(100 * S));
        r.observe(&ev("b", "deny"), at(101 * S));
        r.observe(&ev("b", "deny"), at(105 * S));
        assert_eq!(r.observe(&ev("b", "allow"), at(104 * S)), Outcome::Nothing);
        assert!(r.observe(&ev("b", "allow"), at(106 * S)).fired());
    }
}
