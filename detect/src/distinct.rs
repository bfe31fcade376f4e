//! The distinct-count rule kind: per group, at least N distinct values of a field among the
//! matching events within a sliding event-time window — one caller denied on many paths
//! (permission probing), one source trying many users (spraying).
//!
//! Per group it keeps at most N values (the most recently seen), each with the event that
//! last showed it: enough to tell whether N distinct values fall within one window. Lateness,
//! suppression and the bound on groups work as for [`crate::threshold`].

use crate::evidence::{EvRef, Hit, Outcome, newest};
use crate::filter::{Field, Filter, Row};
use crate::group::{BaseGroup, GroupBy, Ratio, State};

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
    /// Fire only if the matches are this share of the group's base events in the window.
    pub ratio: Option<Ratio>,
}

/// A group: its base events, and (once it matched) its distinct values, each with the newest
/// event that had it, at most N.
pub(crate) type Group = BaseGroup<Vec<(String, EvRef)>>;

impl crate::group::Items for Vec<(String, EvRef)> {
    const FIELD: &'static str = "values";
    fn is_empty(&self) -> bool {
        <[_]>::is_empty(self)
    }
}

impl crate::group::Weigh for Vec<(String, EvRef)> {
    fn heap_bytes(&self) -> usize {
        use crate::group::alloc_bytes;
        alloc_bytes(self.capacity() * std::mem::size_of::<(String, EvRef)>())
            + self
                .iter()
                .map(|(v, _)| alloc_bytes(v.capacity()))
                .sum::<usize>()
    }
}

#[derive(Debug)]
pub struct DistinctCount {
    pub(crate) spec: DistinctSpec,
    pub(crate) st: State<Group>,
}

impl DistinctCount {
    pub fn new(spec: DistinctSpec) -> DistinctCount {
        assert!(spec.count >= 1 && spec.window_ns > 0 && spec.max_groups >= 1);
        DistinctCount {
            st: State::new(spec.max_groups, spec.allowed_lateness_ns),
            spec,
        }
    }

    pub fn groups(&self) -> usize {
        self.st.groups.len()
    }

    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        let time_ns = ev.time_ns;
        let field = self.spec.field.1;
        let base = self.spec.ratio.as_ref().is_some_and(|r| r.of.matches(row));
        if !self.spec.filter.matches(row) || !crate::key::present(&field, row) {
            if base {
                self.st
                    .count_base(&self.spec.group_by, row, time_ns, self.spec.window_ns);
            }
            return Outcome::Nothing;
        }
        self.st.matched(time_ns);
        let (count, window, suppress) =
            (self.spec.count, self.spec.window_ns, self.spec.suppress_ns);
        let outcome = {
            let (key, g) = self
                .st
                .groups
                .entry(&self.spec.group_by, row, Group::default);
            let min_ratio = self.spec.ratio.as_ref().map(|r| r.min_ratio);
            let m = g.matched.get_or_insert_with(Default::default);
            if self.spec.ratio.is_some() {
                m.hits.add(time_ns, window);
                if base {
                    g.base.add(time_ns, window);
                }
            }
            let values = &mut m.items;
            match values
                .iter_mut()
                .find(|(v, _)| crate::key::value_is(&field, row, v))
            {
                Some(v) => {
                    if time_ns >= v.1.time_ns {
                        v.1 = ev;
                    }
                }
                None => {
                    // Grown one value at a time (most groups of a flood hold one; none
                    // more than N): no doubling's unused half.
                    if values.len() == values.capacity() {
                        values.reserve_exact(1);
                    }
                    values.push((crate::key::value(&field, row).unwrap_or_default(), ev));
                    if values.len() > count {
                        // Keep the N most recently seen.
                        let oldest = values
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, v)| v.1.time_ns)
                            .map(|(i, _)| i)
                            .unwrap_or(0);
                        values.swap_remove(oldest);
                    }
                }
            }
            let first = values.iter().map(|v| v.1.time_ns).min().unwrap_or(time_ns);
            let last = values.iter().map(|v| v.1.time_ns).max().unwrap_or(time_ns);
            if let Some(n) = m.open.absorb(time_ns, window, suppress) {
                Outcome::Updated { count: n, ev }
            } else if values.len() >= count
                && last - first <= window
                && min_ratio.is_none_or(|r| crate::group::enough(&m.hits, &g.base, last, window, r))
            {
                m.open.fire(last, values.len() as u64);
                let mut sorted: Vec<String> = values.iter().map(|v| v.0.clone()).collect();
                sorted.sort();
                Outcome::Fired(Hit {
                    key: key.to_key(),
                    first_ns: first,
                    last_ns: last,
                    count: values.len() as u64,
                    detail: sorted,
                    evidence: newest(values.iter().map(|v| v.1).collect()),
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
                .iter()
                .flat_map(|m| m.items.iter().map(|v| v.1.time_ns))
                .max()
                .unwrap_or(i64::MIN)
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
            ratio: None,
        })
    }

    #[test]
    fn n_distinct_values_in_the_window_fire_repeats_do_not_count() {
        let mut r = rule(3, 60);
        assert_eq!(
            r.observe(&Ev("a", Some("/x"), "deny"), at(0)),
            Outcome::Nothing
        );
        assert_eq!(
            r.observe(&Ev("a", Some("/x"), "deny"), at(S)),
            Outcome::Nothing
        );
        assert_eq!(
            r.observe(&Ev("a", None, "deny"), at(2 * S)),
            Outcome::Nothing
        );
        assert_eq!(
            r.observe(&Ev("a", Some("/y"), "allow"), at(3 * S)),
            Outcome::Nothing
        );
        assert_eq!(
            r.observe(&Ev("a", Some("/y"), "deny"), at(4 * S)),
            Outcome::Nothing
        );
        assert_eq!(
            r.observe(&Ev("a", Some("/z"), "deny"), at(60 * S)),
            Outcome::Fired(Hit {
                key: vec![Some("a".into())],
                detail: vec!["/x".into(), "/y".into(), "/z".into()],
                first_ns: S,
                last_ns: 60 * S,
                count: 3,
                evidence: vec![at(S), at(4 * S), at(60 * S)],
            })
        );
        // Another probe by the same caller updates the open alert.
        assert!(matches!(
            r.observe(&Ev("a", Some("/w"), "deny"), at(70 * S)),
            Outcome::Updated { count: 4, .. }
        ));
    }

    #[test]
    fn values_spread_wider_than_the_window_do_not_fire() {
        let mut r = rule(3, 60);
        r.observe(&Ev("a", Some("/x"), "deny"), at(0));
        r.observe(&Ev("a", Some("/y"), "deny"), at(30 * S));
        assert_eq!(
            r.observe(&Ev("a", Some("/z"), "deny"), at(61 * S)),
            Outcome::Nothing
        );
        // /x seen again inside the window makes three distinct within 60 s.
        assert!(matches!(
            r.observe(&Ev("a", Some("/x"), "deny"), at(62 * S)),
            Outcome::Fired(_)
        ));
        // Behind the others: still evaluated (lateness is the engine's to judge).
        assert_eq!(
            r.observe(&Ev("b", Some("/x"), "deny"), at(10 * S)),
            Outcome::Nothing
        );
        assert_eq!(r.groups(), 2);
    }
}
