//! The first-seen rule kind: a tuple of fields (caller, callee) never seen before — the learned
//! form of "unexpected caller". For a learning period (event time, from the first event the
//! rule sees) tuples are only remembered; afterwards a new one alerts once. Tuples are
//! remembered for a history window after they were last seen, and at most `max_groups` of
//! them (evicting one means it may alert again: evictions are counted).

use serde::{Deserialize, Serialize};

use crate::evidence::{EvRef, Hit, Outcome};
use crate::filter::{Filter, Row};
use crate::group::{GroupBy, Open, State};

#[derive(Debug)]
pub struct FirstSeenSpec {
    pub filter: Filter,
    /// The tuple.
    pub group_by: GroupBy,
    /// Learn without alerting for this long (event time) after the first event.
    pub learn_ns: i64,
    /// Forget a tuple not seen for this long.
    pub forget_ns: i64,
    pub suppress_ns: i64,
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Group {
    last_ns: i64,
    open: Open,
}

crate::has_open!(Group);

impl crate::group::Weigh for Group {
    fn heap_bytes(&self) -> usize {
        0
    }
}

#[derive(Debug)]
pub struct FirstSeen {
    pub(crate) spec: FirstSeenSpec,
    pub(crate) st: State<Group>,
    /// Event time of the first event (the learning period starts there).
    pub(crate) started_ns: Option<i64>,
}

impl FirstSeen {
    pub fn new(spec: FirstSeenSpec) -> FirstSeen {
        assert!(spec.forget_ns > 0 && spec.max_groups >= 1);
        FirstSeen {
            st: State::new(spec.max_groups, spec.allowed_lateness_ns),
            started_ns: None,
            spec,
        }
    }

    pub fn groups(&self) -> usize {
        self.st.groups.len()
    }

    /// Whether the rule is still learning at event time `t`.
    pub fn learning(&self, t: i64) -> bool {
        self.started_ns
            .is_none_or(|s| t < s.saturating_add(self.spec.learn_ns))
    }

    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        let t = ev.time_ns;
        if !self.spec.filter.matches(row) {
            return Outcome::Nothing;
        }
        self.st.matched(t);
        let started = *self.started_ns.get_or_insert(t);
        let learning = t < started.saturating_add(self.spec.learn_ns);
        let suppress = self.spec.suppress_ns;
        let mut new = false;
        let (key, g) = self.st.groups.entry(&self.spec.group_by, row, || {
            new = true;
            Group {
                last_ns: t,
                open: Open::default(),
            }
        });
        g.last_ns = g.last_ns.max(t);
        let outcome = if new && !learning {
            g.open.fire(t, 1);
            Outcome::Fired(Hit {
                key: key.to_key(),
                first_ns: t,
                last_ns: t,
                count: 1,
                detail: Vec::new(),
                evidence: vec![ev],
            })
        } else if let Some(n) = g.open.absorb(t, 0, suppress) {
            Outcome::Updated { count: n, ev }
        } else {
            Outcome::Nothing
        };
        self.st.outcome(outcome)
    }

    /// Forget tuples not seen within the history window.
    pub(crate) fn expire(&mut self) {
        let horizon = self.st.clock.watermark();
        let forget = self.spec.forget_ns;
        self.st
            .groups
            .retain(|g| g.last_ns.saturating_add(forget) > horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::at;
    use crate::filter::field;
    use crate::row::OwnedRow;

    const S: i64 = 1_000_000_000;

    fn ev(caller: &str, callee: &str) -> OwnedRow {
        OwnedRow::of(&[("caller_principal", caller), ("callee_principal", callee)])
    }

    fn rule(learn_s: i64, forget_s: i64) -> FirstSeen {
        FirstSeen::new(FirstSeenSpec {
            filter: Filter::parse("caller_principal exists").unwrap(),
            group_by: vec![
                ("caller".into(), field("caller_principal").unwrap()),
                ("callee".into(), field("callee_principal").unwrap()),
            ],
            learn_ns: learn_s * S,
            forget_ns: forget_s * S,
            suppress_ns: 600 * S,
            allowed_lateness_ns: 30 * S,
            max_groups: 1000,
        })
    }

    #[test]
    fn learns_then_alerts_on_new_tuples_once() {
        let mut r = rule(100, 10_000);
        assert_eq!(r.observe(&ev("a", "b"), at(0)), Outcome::Nothing);
        // Still learning at 99 s: new tuples are learned silently.
        assert_eq!(r.observe(&ev("a", "c"), at(99 * S)), Outcome::Nothing);
        // At exactly 100 s learning is over.
        assert!(!r.learning(100 * S));
        assert_eq!(r.observe(&ev("a", "b"), at(100 * S)), Outcome::Nothing);
        let o = r.observe(&ev("x", "b"), at(100 * S));
        let Outcome::Fired(h) = o else {
            panic!("{o:?}")
        };
        assert_eq!(h.key, vec![Some("x".into()), Some("b".into())]);
        assert!(matches!(
            r.observe(&ev("x", "b"), at(101 * S)),
            Outcome::Updated { count: 2, .. }
        ));
        // After the suppression window the tuple is known: nothing more.
        assert_eq!(r.observe(&ev("x", "b"), at(800 * S)), Outcome::Nothing);
        assert_eq!(r.st.counters.fired, 1);
    }

    #[test]
    fn tuples_are_forgotten_after_the_history_window() {
        let mut r = rule(0, 1000);
        r.observe(&ev("a", "b"), at(0));
        r.observe(&ev("c", "d"), at(1500 * S));
        r.expire();
        assert_eq!(r.groups(), 1);
        assert!(r.observe(&ev("a", "b"), at(1501 * S)).fired());
        // An event behind the others is still evaluated: a new tuple alerts.
        assert!(r.observe(&ev("e", "f"), at(1400 * S)).fired());
    }
}
