//! The distinct-count rule kind: per group, at least N distinct values of a field among the
//! matching events within a sliding event-time window — one caller denied on many paths
//! (permission probing), one source trying many users (spraying).
//!
//! Per group it keeps at most N values (the most recently seen), each with the time it was
//! last seen: enough to tell whether N distinct values fall within one window. Lateness,
//! suppression and the bound on groups work as for [`crate::threshold`].

use std::hash::Hasher;

use crate::filter::{Field, Filter, Row};
use crate::group::{self, Clock, GroupBy, Key, Open, Table};
use crate::threshold::Counters;

#[derive(Debug)]
pub struct DistinctSpec {
    pub filter: Filter,
    pub group_by: GroupBy,
    /// Count distinct values of this field (events without it are not counted).
    pub field: (String, Field),
    pub count: usize,
    pub window_ns: i64,
    pub suppress_ns: i64,
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Nothing,
    /// A new alert: the group, the distinct values seen in the window (at most N), the
    /// window's first and last event time.
    Fired {
        key: Key,
        values: Vec<String>,
        first_ns: i64,
        last_ns: i64,
    },
    Updated {
        key: Key,
        count: u64,
    },
    Late,
}

#[derive(Debug)]
struct Group {
    /// (value hash, value, last seen), at most N.
    values: Vec<(u64, String, i64)>,
    open: Open,
}

#[derive(Debug)]
pub struct DistinctCount {
    spec: DistinctSpec,
    groups: Table<Group>,
    clock: Clock,
    pub counters: Counters,
}

impl DistinctCount {
    pub fn new(spec: DistinctSpec) -> DistinctCount {
        assert!(spec.count >= 1 && spec.window_ns > 0 && spec.max_groups >= 1);
        DistinctCount {
            groups: Table::new(spec.max_groups),
            clock: Clock::new(spec.allowed_lateness_ns),
            spec,
            counters: Counters::default(),
        }
    }

    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    pub fn observe(&mut self, row: &impl Row, time_ns: i64) -> Outcome {
        if self.clock.is_late(time_ns) {
            self.counters.late += 1;
            return Outcome::Late;
        }
        let field = self.spec.field.1;
        if !self.spec.filter.matches(row) || !group::present(&field, row) {
            return Outcome::Nothing;
        }
        self.counters.matched += 1;
        self.clock.advance(time_ns);
        let (count, window, suppress) =
            (self.spec.count, self.spec.window_ns, self.spec.suppress_ns);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        group::hash_value(&field, row, &mut h);
        let vh = h.finish();
        let outcome = {
            let (key, g) = self.groups.entry(&self.spec.group_by, row, || Group {
                values: Vec::with_capacity(count.min(64)),
                open: Open::default(),
            });
            match g.values.iter_mut().find(|(h, _, _)| *h == vh) {
                Some(v) => v.2 = v.2.max(time_ns),
                None => {
                    g.values
                        .push((vh, group::value(&field, row).unwrap_or_default(), time_ns));
                    if g.values.len() > count {
                        // Keep the N most recently seen.
                        let oldest = g
                            .values
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, v)| v.2)
                            .map(|(i, _)| i)
                            .unwrap_or(0);
                        g.values.swap_remove(oldest);
                    }
                }
            }
            let first = g.values.iter().map(|v| v.2).min().unwrap_or(time_ns);
            let last = g.values.iter().map(|v| v.2).max().unwrap_or(time_ns);
            if let Some(n) = g.open.absorb(time_ns, window, suppress) {
                Outcome::Updated {
                    key: key.clone(),
                    count: n,
                }
            } else if g.values.len() >= count && last - first <= window {
                g.open.fire(last, g.values.len() as u64);
                let mut values: Vec<String> = g.values.iter().map(|v| v.1.clone()).collect();
                values.sort();
                Outcome::Fired {
                    key: key.clone(),
                    values,
                    first_ns: first,
                    last_ns: last,
                }
            } else {
                Outcome::Nothing
            }
        };
        if matches!(outcome, Outcome::Fired { .. }) {
            self.counters.fired += 1;
        }
        self.counters.evicted = self.groups.evicted;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::field;

    const S: i64 = 1_000_000_000;

    /// caller, resource, decision
    struct Ev(&'static str, Option<&'static str>, &'static str);

    impl Row for Ev {
        fn str(&self, c: usize) -> Option<&str> {
            if c == field("caller_principal").unwrap().column {
                Some(self.0)
            } else if c == field("resource").unwrap().column {
                self.1
            } else if c == field("decision").unwrap().column {
                Some(self.2)
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

    fn rule(count: usize, window_s: i64) -> DistinctCount {
        DistinctCount::new(DistinctSpec {
            filter: Filter::parse(r#"decision == "deny""#).unwrap(),
            group_by: vec![(
                "caller_principal".into(),
                field("caller_principal").unwrap(),
            )],
            field: ("resource".into(), field("resource").unwrap()),
            count,
            window_ns: window_s * S,
            suppress_ns: 600 * S,
            allowed_lateness_ns: 30 * S,
            max_groups: 100,
        })
    }

    #[test]
    fn n_distinct_values_in_the_window_fire_repeats_do_not_count() {
        let mut r = rule(3, 60);
        assert_eq!(r.observe(&Ev("a", Some("/x"), "deny"), 0), Outcome::Nothing);
        assert_eq!(r.observe(&Ev("a", Some("/x"), "deny"), S), Outcome::Nothing);
        assert_eq!(r.observe(&Ev("a", None, "deny"), 2 * S), Outcome::Nothing);
        assert_eq!(
            r.observe(&Ev("a", Some("/y"), "allow"), 3 * S),
            Outcome::Nothing
        );
        assert_eq!(
            r.observe(&Ev("a", Some("/y"), "deny"), 4 * S),
            Outcome::Nothing
        );
        assert_eq!(
            r.observe(&Ev("a", Some("/z"), "deny"), 60 * S),
            Outcome::Fired {
                key: vec![Some("a".into())],
                values: vec!["/x".into(), "/y".into(), "/z".into()],
                first_ns: S,
                last_ns: 60 * S
            }
        );
        // Another probe by the same caller updates the open alert.
        assert!(matches!(
            r.observe(&Ev("a", Some("/w"), "deny"), 70 * S),
            Outcome::Updated { count: 4, .. }
        ));
    }

    #[test]
    fn values_spread_wider_than_the_window_do_not_fire() {
        let mut r = rule(3, 60);
        r.observe(&Ev("a", Some("/x"), "deny"), 0);
        r.observe(&Ev("a", Some("/y"), "deny"), 30 * S);
        assert_eq!(
            r.observe(&Ev("a", Some("/z"), "deny"), 61 * S),
            Outcome::Nothing
        );
        // /x seen again inside the window makes three distinct within 60 s.
        assert!(matches!(
            r.observe(&Ev("a", Some("/x"), "deny"), 62 * S),
            Outcome::Fired { .. }
        ));
        assert_eq!(
            r.observe(&Ev("b", Some("/x"), "deny"), 10 * S),
            Outcome::Late
        );
        assert_eq!(r.groups(), 1);
    }
}
