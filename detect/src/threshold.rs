//! The threshold rule kind: events matching a filter, grouped by fields, at least N within a
//! sliding event-time window (repeated denial). One alert per group per suppression window;
//! further matches inside it update that alert's count instead of raising another.
//!
//! Event time, not arrival time: a window is `[t - window, t]` over event times. The engine
//! hands events over in event-time order as far as its watermark allows; one that arrives
//! out of order anyway is inserted where it belongs. State is bounded: at most `max_groups` groups (the least recently seen are evicted and
//! counted), and at most N events per group.

use std::collections::VecDeque;

use crate::evidence::{EvRef, Hit, Outcome, newest};
use crate::filter::{Filter, Row};
use crate::group::{BaseGroup, GroupBy, Ratio, State};

/// A threshold rule's settings.
#[derive(Debug)]
pub struct ThresholdSpec {
    pub filter: Filter,
    /// Group by these fields (their values form the group key; a missing value is its own).
    pub group_by: GroupBy,
    /// Fire at this many matching events within the window.
    pub count: usize,
    pub window_ns: i64,
    /// After an alert, further matches of the group within this long update it.
    pub suppress_ns: i64,
    /// State is kept this far behind the newest event time for events arriving out of order.
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
    /// Fire only if the matches are this share of the group's base events in the window.
    pub ratio: Option<Ratio>,
}

/// A group: its base events, and (once it matched) its newest matching events, at most
/// `count`, ascending by event time.
pub(crate) type Group = BaseGroup<VecDeque<EvRef>>;

impl crate::group::Items for VecDeque<EvRef> {
    const FIELD: &'static str = "events";
    fn is_empty(&self) -> bool {
        VecDeque::is_empty(self)
    }
}

impl crate::group::Weigh for VecDeque<EvRef> {
    fn heap_bytes(&self) -> usize {
        crate::group::deque_bytes(self)
    }
}

#[derive(Debug)]
pub struct Threshold {
    pub(crate) spec: ThresholdSpec,
    pub(crate) st: State<Group>,
}

impl Threshold {
    pub fn new(spec: ThresholdSpec) -> Threshold {
        assert!(spec.count >= 1 && spec.window_ns > 0 && spec.max_groups >= 1);
        Threshold {
            st: State::new(spec.max_groups, spec.allowed_lateness_ns),
            spec,
        }
    }

    pub fn groups(&self) -> usize {
        self.st.groups.len()
    }

    /// Evaluate one event (`ev.time_ns` is its event time).
    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        let time_ns = ev.time_ns;
        let base = self.spec.ratio.as_ref().is_some_and(|r| r.of.matches(row));
        if !self.spec.filter.matches(row) {
            // Not a match, but part of the group's base rate: counted from the group's first
            // event of either kind (a busy caller's calls before its first denial count).
            if base {
                self.st
                    .count_base(&self.spec.group_by, row, time_ns, self.spec.window_ns);
            }
            return Outcome::Nothing;
        }
        self.st.matched(time_ns);
        let (count, window, suppress) =
            (self.spec.count, self.spec.window_ns, self.spec.suppress_ns);
        let (key, g) = self
            .st
            .groups
            .entry(&self.spec.group_by, row, Group::default);
        let min_ratio = self.spec.ratio.as_ref().map(|r| r.min_ratio);
        let m = g.matched.get_or_insert_with(Default::default);
        let events = &mut m.items;
        if self.spec.ratio.is_some() {
            m.hits.add(time_ns, window);
            if base {
                g.base.add(time_ns, window);
            }
        }
        // Insert in event-time order (out-of-order arrivals land in place).
        let at = events.partition_point(|e| e.time_ns <= time_ns);
        // Grown one event (56 bytes) at a time: most groups of a flood hold one, and none
        // holds more than `count` — a doubling would leave up to half of it unused.
        if events.len() == events.capacity() {
            events.reserve_exact(1);
        }
        events.insert(at, ev);
        if events.len() > count {
            events.pop_front();
        }
        let outcome = if let Some(n) = m.open.absorb(time_ns, window, suppress) {
            Outcome::Updated { count: n, ev }
        } else {
            // N events within `window` of each other, this one among them.
            let n = events.len();
            let (first, last) = (events[0].time_ns, events[n - 1].time_ns);
            if n >= count
                && last - first <= window
                && min_ratio.is_none_or(|r| crate::group::enough(&m.hits, &g.base, last, window, r))
            {
                m.open.fire(last, n as u64);
                Outcome::Fired(Hit {
                    key: key.to_key(),
                    first_ns: first,
                    last_ns: last,
                    count: n as u64,
                    detail: Vec::new(),
                    evidence: newest(events.iter().copied().collect()),
                })
            } else {
                Outcome::Nothing
            }
        };
        self.st.outcome(outcome)
    }

    /// Forget groups with nothing in the window and no open alert as of the watermark.
    pub(crate) fn expire(&mut self) {
        let horizon = self.st.clock.watermark();
        let (window, suppress) = (self.spec.window_ns, self.spec.suppress_ns);
        self.st.groups.retain(|g| {
            let newest = g
                .matched
                .as_ref()
                .and_then(|m| m.items.back())
                .map_or(i64::MIN, |e| e.time_ns)
                .max(g.base.newest_ns(window));
            newest.saturating_add(window) > horizon || g.is_open(horizon, suppress)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::at;
    use crate::filter::field;

    const S: i64 = 1_000_000_000;

    /// An event: caller, decision.
    struct Ev(&'static str, &'static str);

    impl Row for Ev {
        fn str(&self, c: usize) -> Option<&str> {
            if c == field("caller_principal").unwrap().column {
                Some(self.0)
            } else if c == field("decision").unwrap().column {
                Some(self.1)
            } else {
                None
            }
        }
        fn int(&self, _: usize) -> Option<i64> {
            None
        }
        fn bool(&self, _: usize) -> Option<bool> {
            None
        }
    }

    fn rule(count: usize, window_s: i64, suppress_s: i64, lateness_s: i64) -> Threshold {
        Threshold::new(ThresholdSpec {
            filter: Filter::parse(r#"decision == "deny""#).unwrap(),
            group_by: vec![(
                "caller_principal".into(),
                field("caller_principal").unwrap(),
            )],
            count,
            window_ns: window_s * S,
            suppress_ns: suppress_s * S,
            allowed_lateness_ns: lateness_s * S,
            max_groups: 100,
            ratio: None,
        })
    }

    #[test]
    fn a_group_is_persisted_in_the_shape_it_had_before_its_matches_were_boxed() {
        let old = r#"{"events":[{"log":1,"index":7,"time_ns":5,"leaf":"0000000000000000000000000000000000000000000000000000000000000000"}],"open":{"alert":[5,1]},"rate":{"hits":{"buckets":[[0,1]]},"base":{"buckets":[[0,3]]}}}"#;
        let g: Group = serde_json::from_str(old).unwrap();
        assert_eq!(serde_json::to_string(&g).unwrap(), old);
        let m = g.matched.as_deref().unwrap();
        assert_eq!((m.items.len(), m.open.alert), (1, Some((5, 1))));
        // A base-only group: nothing boxed, and saved with empty matches.
        let base_only = r#"{"events":[],"open":{"alert":null},"rate":{"hits":{"buckets":[]},"base":{"buckets":[[0,3]]}}}"#;
        let g: Group = serde_json::from_str(base_only).unwrap();
        assert!(g.matched.is_none());
        assert_eq!(serde_json::to_string(&g).unwrap(), base_only);
        // Saved before ratios existed: no `rate`.
        let g: Group = serde_json::from_str(r#"{"events":[],"open":{"alert":null}}"#).unwrap();
        assert!(g.matched.is_none() && g.base.is_empty());
    }

    fn fired(o: &Outcome) -> bool {
        o.fired()
    }

    fn hit(o: Outcome) -> Hit {
        match o {
            Outcome::Fired(h) => h,
            o => panic!("expected an alert, got {o:?}"),
        }
    }

    #[test]
    fn exactly_n_within_the_window_fires_and_n_minus_one_does_not() {
        let mut r = rule(3, 60, 300, 10);
        assert_eq!(r.observe(&Ev("a", "deny"), at(0)), Outcome::Nothing);
        assert_eq!(r.observe(&Ev("a", "allow"), at(10 * S)), Outcome::Nothing);
        assert_eq!(r.observe(&Ev("a", "deny"), at(30 * S)), Outcome::Nothing);
        // The third at exactly the window's edge (60 s after the first) still counts.
        let h = hit(r.observe(&Ev("a", "deny"), at(60 * S)));
        assert_eq!(h.key, vec![Some("a".into())]);
        assert_eq!((h.first_ns, h.last_ns, h.count), (0, 60 * S, 3));
        // The evidence is the three events, oldest first.
        let times: Vec<i64> = h.evidence.iter().map(|e| e.time_ns).collect();
        assert_eq!(times, [0, 30 * S, 60 * S]);
        // Another caller has its own count.
        assert_eq!(r.observe(&Ev("b", "deny"), at(61 * S)), Outcome::Nothing);
    }

    #[test]
    fn one_past_the_window_edge_does_not_fire() {
        let mut r = rule(3, 60, 300, 100);
        r.observe(&Ev("a", "deny"), at(0));
        r.observe(&Ev("a", "deny"), at(30 * S));
        assert_eq!(
            r.observe(&Ev("a", "deny"), at(60 * S + 1)),
            Outcome::Nothing
        );
        // …but the next one within 60 s of the second does.
        assert!(fired(&r.observe(&Ev("a", "deny"), at(61 * S))));
    }

    #[test]
    fn an_open_alert_is_updated_not_repeated_until_its_suppression_ends() {
        let mut r = rule(2, 60, 300, 100);
        r.observe(&Ev("a", "deny"), at(0));
        assert!(fired(&r.observe(&Ev("a", "deny"), at(S))));
        assert!(matches!(
            r.observe(&Ev("a", "deny"), at(2 * S)),
            Outcome::Updated { count: 3, .. }
        ));
        r.observe(&Ev("a", "deny"), at(100 * S));
        assert!(matches!(
            r.observe(&Ev("a", "deny"), at(299 * S)),
            Outcome::Updated { count: 5, .. }
        ));
        // After the suppression window, a new burst is a new alert.
        r.observe(&Ev("a", "deny"), at(400 * S));
        assert!(fired(&r.observe(&Ev("a", "deny"), at(401 * S))));
        assert_eq!(r.st.counters.fired, 2);
    }

    #[test]
    fn out_of_order_events_count_where_they_belong() {
        let mut r = rule(3, 60, 300, 30);
        r.observe(&Ev("a", "deny"), at(100 * S));
        r.observe(&Ev("a", "deny"), at(160 * S));
        // Arrives after the 160 s event but happened at 130 s: within 30 s of lateness, and
        // with it three events fall within 60 s (100..160).
        assert!(fired(&r.observe(&Ev("a", "deny"), at(130 * S))));
        // Far behind the newest event time: the engine decides what is late (and says so);
        // a rule evaluates whatever it is given, in place.
        assert_eq!(r.observe(&Ev("b", "deny"), at(10 * S)), Outcome::Nothing);
        assert_eq!(r.groups(), 2);
    }

    #[test]
    fn state_is_bounded_and_eviction_is_counted() {
        let mut r = Threshold::new(ThresholdSpec {
            max_groups: 10,
            ..rule(2, 60, 300, 10).spec
        });
        let names: Vec<&'static str> = (0..50)
            .map(|i| &*Box::leak(format!("c{i}").into_boxed_str()))
            .collect();
        for (i, n) in names.iter().enumerate() {
            r.observe(&Ev(n, "deny"), at(i as i64 * S));
        }
        // Never more than the cap; the oldest go first, in sixteenths (at least one).
        assert_eq!(r.groups(), 10);
        assert_eq!(r.st.counters.evicted, 40);
        assert!(r.st.groups.entries().all(|e| {
            let n: usize = e.key.values().next().flatten().unwrap()[1..]
                .parse()
                .unwrap();
            n >= 40
        }));
        // Expiry forgets groups whose window and alert are over.
        r.observe(&Ev("z", "deny"), at(10_000 * S));
        r.expire();
        assert_eq!(r.groups(), 1);
    }
}
