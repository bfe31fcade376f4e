//! The threshold rule kind: events matching a filter, grouped by fields, at least N within a
//! sliding event-time window (repeated denial). One alert per group per suppression window;
//! further matches inside it update that alert's count instead of raising another.
//!
//! Event time, not arrival time: a window is `[t - window, t]` over event times, and events
//! may arrive out of order. The caller says how late an event may be (`allowed_lateness`
//! behind the newest event time seen); later ones are counted as late and not evaluated.
//! State is bounded: at most `max_groups` groups (the least recently seen is evicted and
//! counted), and at most N timestamps per group.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use crate::filter::{Field, FieldType, Filter, Row};

/// A threshold rule's settings.
#[derive(Debug)]
pub struct ThresholdSpec {
    pub filter: Filter,
    /// Group by these fields (their values form the group key; a missing value is its own).
    pub group_by: Vec<(String, Field)>,
    /// Fire at this many matching events within the window.
    pub count: usize,
    pub window_ns: i64,
    /// After an alert, further matches of the group within this long update it.
    pub suppress_ns: i64,
    /// Events this far behind the newest event time are late: counted, not evaluated.
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
}

/// What one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Did not match the filter (or matched below the threshold).
    Nothing,
    /// A new alert for this group: the key values, the window's first and last event time, the
    /// count in the window.
    Fired(Alert),
    /// The group's open alert (within its suppression window) counts one more event.
    Updated {
        key: Vec<Option<String>>,
        count: u64,
    },
    /// Too late to evaluate.
    Late,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub key: Vec<Option<String>>,
    pub first_ns: i64,
    pub last_ns: i64,
    pub count: u64,
}

#[derive(Debug)]
struct Group {
    key: Vec<Option<String>>,
    /// The newest matching event times, at most `count`, ascending.
    times: VecDeque<i64>,
    /// The open alert: when it fired (event time) and how many events it has counted.
    alert: Option<(i64, u64)>,
    /// Logical clock of the last event, for eviction.
    seen: u64,
}

/// Counters a rule keeps for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub matched: u64,
    pub late: u64,
    pub evicted: u64,
    pub fired: u64,
}

#[derive(Debug)]
pub struct Threshold {
    spec: ThresholdSpec,
    groups: HashMap<u64, Vec<Group>>,
    group_count: usize,
    /// The newest event time seen.
    max_time: i64,
    clock: u64,
    pub counters: Counters,
}

fn key_hash(fields: &[(String, Field)], row: &impl Row) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (_, f) in fields {
        match f.ty {
            FieldType::Str => row.str(f.column).hash(&mut h),
            FieldType::Int => row.int(f.column).hash(&mut h),
            FieldType::Bool => row.bool(f.column).hash(&mut h),
        }
    }
    h.finish()
}

/// A group key value as the alert reports it (allocated once, when the group is created).
fn value(f: &Field, row: &impl Row) -> Option<String> {
    match f.ty {
        FieldType::Str => row.str(f.column).map(str::to_owned),
        FieldType::Int => row.int(f.column).map(|i| i.to_string()),
        FieldType::Bool => row.bool(f.column).map(|b| b.to_string()),
    }
}

/// Whether the row belongs to the group with this key, without allocating.
fn same_key(fields: &[(String, Field)], key: &[Option<String>], row: &impl Row) -> bool {
    fields.iter().zip(key).all(|((_, f), k)| match f.ty {
        FieldType::Str => row.str(f.column) == k.as_deref(),
        FieldType::Int => row.int(f.column) == k.as_deref().and_then(|k| k.parse().ok()),
        FieldType::Bool => row.bool(f.column) == k.as_deref().and_then(|k| k.parse().ok()),
    })
}

impl Threshold {
    pub fn new(spec: ThresholdSpec) -> Threshold {
        assert!(spec.count >= 1 && spec.window_ns > 0 && spec.max_groups >= 1);
        Threshold {
            spec,
            groups: HashMap::new(),
            group_count: 0,
            max_time: i64::MIN,
            clock: 0,
            counters: Counters::default(),
        }
    }

    pub fn groups(&self) -> usize {
        self.group_count
    }

    /// Evaluate one event with its event time.
    pub fn observe(&mut self, row: &impl Row, time_ns: i64) -> Outcome {
        if self.max_time != i64::MIN && time_ns < self.max_time - self.spec.allowed_lateness_ns {
            self.counters.late += 1;
            return Outcome::Late;
        }
        if !self.spec.filter.matches(row) {
            return Outcome::Nothing;
        }
        self.counters.matched += 1;
        self.max_time = self.max_time.max(time_ns);
        self.clock += 1;
        let hash = key_hash(&self.spec.group_by, row);
        let fields = &self.spec.group_by;
        let bucket = self.groups.entry(hash).or_default();
        let i = match bucket.iter().position(|g| same_key(fields, &g.key, row)) {
            Some(i) => i,
            None => {
                bucket.push(Group {
                    key: fields.iter().map(|(_, f)| value(f, row)).collect(),
                    times: VecDeque::with_capacity(self.spec.count.min(64)),
                    alert: None,
                    seen: 0,
                });
                self.group_count += 1;
                bucket.len() - 1
            }
        };
        let g = &mut bucket[i];
        g.seen = self.clock;
        // Insert in event-time order (out-of-order arrivals land in place).
        let at = g.times.partition_point(|&t| t <= time_ns);
        g.times.insert(at, time_ns);
        if g.times.len() > self.spec.count {
            g.times.pop_front();
        }
        let (window, suppress) = (self.spec.window_ns, self.spec.suppress_ns);
        let outcome = match g.alert {
            Some((fired, n)) if time_ns < fired + suppress && time_ns >= fired - window => {
                g.alert = Some((fired, n + 1));
                Outcome::Updated {
                    key: g.key.clone(),
                    count: n + 1,
                }
            }
            _ => {
                // N events within `window` of each other, this one among them.
                let n = g.times.len();
                let first = g.times[0];
                let last = g.times[n - 1];
                if n >= self.spec.count && last - first <= window {
                    g.alert = Some((last, n as u64));
                    self.counters.fired += 1;
                    Outcome::Fired(Alert {
                        key: g.key.clone(),
                        first_ns: first,
                        last_ns: last,
                        count: n as u64,
                    })
                } else {
                    Outcome::Nothing
                }
            }
        };
        if self.group_count > self.spec.max_groups {
            self.evict_one();
        }
        outcome
    }

    /// Drop the least recently seen group. A linear scan, run only when a new group pushes the
    /// count over the cap; the engine will keep the groups in recency order instead.
    fn evict_one(&mut self) {
        let oldest = self
            .groups
            .iter()
            .flat_map(|(h, b)| b.iter().enumerate().map(move |(i, g)| (g.seen, *h, i)))
            .min();
        if let Some((_, h, i)) = oldest
            && let Some(b) = self.groups.get_mut(&h)
        {
            b.swap_remove(i);
            if b.is_empty() {
                self.groups.remove(&h);
            }
            self.group_count -= 1;
            self.counters.evicted += 1;
        }
    }

    /// Forget groups with nothing in the window and no open alert as of the watermark.
    pub fn expire(&mut self) {
        let horizon = self.max_time - self.spec.allowed_lateness_ns;
        let (window, suppress) = (self.spec.window_ns, self.spec.suppress_ns);
        let mut dropped = 0;
        self.groups.retain(|_, b| {
            b.retain(|g| {
                let newest = g.times.back().copied().unwrap_or(i64::MIN);
                let alert_open = g.alert.is_some_and(|(f, _)| f + suppress > horizon);
                let keep = newest.saturating_add(window) > horizon || alert_open;
                dropped += usize::from(!keep);
                keep
            });
            !b.is_empty()
        });
        self.group_count -= dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        })
    }

    fn fired(o: &Outcome) -> bool {
        matches!(o, Outcome::Fired(_))
    }

    #[test]
    fn exactly_n_within_the_window_fires_and_n_minus_one_does_not() {
        let mut r = rule(3, 60, 300, 10);
        assert_eq!(r.observe(&Ev("a", "deny"), 0), Outcome::Nothing);
        assert_eq!(r.observe(&Ev("a", "allow"), 10 * S), Outcome::Nothing);
        assert_eq!(r.observe(&Ev("a", "deny"), 30 * S), Outcome::Nothing);
        // The third at exactly the window's edge (60 s after the first) still counts.
        let o = r.observe(&Ev("a", "deny"), 60 * S);
        assert_eq!(
            o,
            Outcome::Fired(Alert {
                key: vec![Some("a".into())],
                first_ns: 0,
                last_ns: 60 * S,
                count: 3
            })
        );
        // Another caller has its own count.
        assert_eq!(r.observe(&Ev("b", "deny"), 61 * S), Outcome::Nothing);
    }

    #[test]
    fn one_past_the_window_edge_does_not_fire() {
        let mut r = rule(3, 60, 300, 100);
        r.observe(&Ev("a", "deny"), 0);
        r.observe(&Ev("a", "deny"), 30 * S);
        assert_eq!(r.observe(&Ev("a", "deny"), 60 * S + 1), Outcome::Nothing);
        // …but the next one within 60 s of the second does.
        assert!(fired(&r.observe(&Ev("a", "deny"), 61 * S)));
    }

    #[test]
    fn an_open_alert_is_updated_not_repeated_until_its_suppression_ends() {
        let mut r = rule(2, 60, 300, 100);
        r.observe(&Ev("a", "deny"), 0);
        assert!(fired(&r.observe(&Ev("a", "deny"), S)));
        assert_eq!(
            r.observe(&Ev("a", "deny"), 2 * S),
            Outcome::Updated {
                key: vec![Some("a".into())],
                count: 3
            }
        );
        r.observe(&Ev("a", "deny"), 100 * S);
        assert!(matches!(
            r.observe(&Ev("a", "deny"), 299 * S),
            Outcome::Updated { count: 5, .. }
        ));
        // After the suppression window, a new burst is a new alert.
        r.observe(&Ev("a", "deny"), 400 * S);
        assert!(fired(&r.observe(&Ev("a", "deny"), 401 * S)));
        assert_eq!(r.counters.fired, 2);
    }

    #[test]
    fn out_of_order_events_count_where_they_belong_and_late_ones_are_counted_apart() {
        let mut r = rule(3, 60, 300, 30);
        r.observe(&Ev("a", "deny"), 100 * S);
        r.observe(&Ev("a", "deny"), 160 * S);
        // Arrives after the 160 s event but happened at 130 s: within 30 s of lateness, and
        // with it three events fall within 60 s (100..160).
        assert!(fired(&r.observe(&Ev("a", "deny"), 130 * S)));
        // More than 30 s behind the newest event time (160 s): late, not evaluated.
        assert_eq!(r.observe(&Ev("b", "deny"), 129 * S), Outcome::Late);
        assert_eq!(r.counters.late, 1);
        assert_eq!(r.groups(), 1);
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
            r.observe(&Ev(n, "deny"), i as i64 * S);
        }
        assert_eq!(r.groups(), 10);
        assert_eq!(r.counters.evicted, 40);
        // Expiry forgets groups whose window and alert are over.
        r.observe(&Ev("z", "deny"), 10_000 * S);
        r.expire();
        assert_eq!(r.groups(), 1);
    }
}
