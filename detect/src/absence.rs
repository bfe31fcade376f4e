//! The absence rule kind: an event (the *trigger*) that should come with another (the
//! *expected*) from the same group within a time, and did not — decided by the watermark, not
//! by a timer. An allowed L4 flow to a mesh-protected port with no L7 decision (OPA, Envoy)
//! for the same source and destination within a few seconds: the traffic bypassed the
//! sidecar or the policy engine.
//!
//! A trigger is satisfied by an expected event with the same `match_by` values (its
//! connection, say) within `within` before or after it; alerts are about `group_by` (a subset:
//! the source and destination), so a workload that bypasses the sidecar on a hundred
//! connections is one alert, updated, not a hundred. It is judged only once the watermark has passed `trigger + within`, so an expected event
//! that arrives later from another partition still counts. Bounded: per group at most
//! [`MAX_PENDING`] triggers wait (more are counted, not kept) and the newest [`MAX_EXPECTED`]
//! expected times are kept.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::evidence::{EvRef, Hit, Outcome, newest};
use crate::filter::{Filter, Row};
use crate::group::{GroupBy, Key, Open, PackedKey, State};

/// Triggers waiting per group, at most.
pub(crate) const MAX_PENDING: usize = 64;
/// Expected-event times kept per group.
pub(crate) const MAX_EXPECTED: usize = 8;

#[derive(Debug)]
pub struct AbsenceSpec {
    /// The events that need a companion.
    pub trigger: Filter,
    /// The companion events.
    pub expect: Filter,
    /// The alert's group: a subset of `match_by`.
    pub group_by: GroupBy,
    /// Trigger and companion belong together when these fields are equal.
    pub match_by: GroupBy,
    /// How far apart (either way) a companion may be.
    pub within_ns: i64,
    /// Judge a trigger only if some companion was seen, by the time it is judged, for these
    /// fields' values (its destination, say; a subset of `match_by`): a destination the policy
    /// engine never decided on is not protected, and traffic to it bypasses nothing. Empty:
    /// judge every trigger.
    pub protected_by: GroupBy,
    pub suppress_ns: i64,
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
}

impl AbsenceSpec {
    /// The values of `fields` (among `match_by`) in a match key.
    fn project(&self, fields: &GroupBy, key: &PackedKey) -> Key {
        let values: Vec<Option<&str>> = key.values().collect();
        fields
            .iter()
            .map(|(name, _)| {
                self.match_by
                    .iter()
                    .position(|(n, _)| n == name)
                    .and_then(|i| values.get(i).copied().flatten())
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The `protected_by` hash of a match key.
    fn protected_hash_of_key(&self, key: &PackedKey, hasher: &impl std::hash::BuildHasher) -> u64 {
        let sub = PackedKey::from_key(&self.project(&self.protected_by, key));
        crate::key::hash_key(&self.protected_by, &sub, hasher)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Group {
    /// Newest expected-event times, ascending.
    expected: VecDeque<i64>,
    /// Triggers not yet matched, ascending.
    pending: VecDeque<EvRef>,
    open: Open,
}

crate::has_open!(Group);

impl crate::group::Weigh for Group {
    fn heap_bytes(&self) -> usize {
        crate::group::deque_bytes(&self.expected) + crate::group::deque_bytes(&self.pending)
    }
}

/// What the watermark decided for one group.
#[derive(Debug, PartialEq)]
pub enum Due {
    Fired(Hit),
    /// The group's open alert counts these events more.
    Updated {
        key: Key,
        count: u64,
        ev: EvRef,
    },
}

#[derive(Debug)]
pub struct Absence {
    pub(crate) spec: AbsenceSpec,
    pub(crate) st: State<Group>,
    /// (deadline, group) of every pending trigger, in deadline order (events come in
    /// event-time order, so deadlines do too; a late one is inserted in place).
    due: VecDeque<(i64, PackedKey)>,
    /// Triggers not kept because their group already had [`MAX_PENDING`] waiting.
    pub dropped: u64,
    /// Hashes of the `protected_by` values companions were seen for (bounded by
    /// `max_groups`; relearned after a restart).
    protected: std::collections::HashSet<u64>,
    hasher: foldhash::fast::FixedState,
}

impl Absence {
    pub fn new(spec: AbsenceSpec) -> Absence {
        assert!(spec.within_ns > 0 && spec.max_groups >= 1);
        Absence {
            st: State::new(spec.max_groups, spec.allowed_lateness_ns),
            spec,
            due: VecDeque::new(),
            dropped: 0,
            protected: Default::default(),
            hasher: foldhash::fast::FixedState::with_seed(0x0061_6273_656e_6365),
        }
    }

    fn protected_hash(&self, row: &impl Row) -> u64 {
        crate::key::hash(&self.spec.protected_by, row, &self.hasher)
    }

    pub fn groups(&self) -> usize {
        self.st.groups.len()
    }

    /// Evict the least recently seen sixteenth of the groups (detection's memory budget), and
    /// the deadlines of their triggers: how many groups went.
    pub fn shed(&mut self) -> u64 {
        let n = self.st.groups.shed();
        let (groups, by) = (&self.st.groups, &self.spec.match_by);
        self.due.retain(|(_, k)| groups.get_by_key(by, k).is_some());
        self.due.shrink_to_fit();
        n
    }

    /// The bytes the rule holds: its groups, the deadlines of their triggers, the
    /// destinations it has seen decided on.
    pub(crate) fn weigh(&self) -> usize {
        use crate::group::{alloc_bytes, deque_bytes};
        self.st.groups.weigh()
            + deque_bytes(&self.due)
            + self
                .due
                .iter()
                .map(|(_, k)| alloc_bytes(k.heap_bytes()))
                .sum::<usize>()
            + crate::group::table_bytes(self.protected.capacity(), 8)
    }

    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        let t = ev.time_ns;
        let is_expect = self.spec.expect.matches(row);
        let is_trigger = !is_expect && self.spec.trigger.matches(row);
        if !is_expect && !is_trigger {
            return Outcome::Nothing;
        }
        if is_expect && !self.spec.protected_by.is_empty() {
            let h = self.protected_hash(row);
            if self.protected.len() < self.spec.max_groups {
                self.protected.insert(h);
            }
        }
        self.st.matched(t);
        let within = self.spec.within_ns;
        let (key, g) = self
            .st
            .groups
            .entry(&self.spec.match_by, row, Group::default);
        if is_expect {
            let at = g.expected.partition_point(|&x| x <= t);
            g.expected.insert(at, t);
            if g.expected.len() > MAX_EXPECTED {
                g.expected.pop_front();
            }
            g.pending.retain(|p| (p.time_ns - t).abs() > within);
        } else if g.expected.iter().any(|&x| (x - t).abs() <= within) {
            // Its companion came first.
        } else if g.pending.len() >= MAX_PENDING {
            self.dropped += 1;
        } else {
            let at = g.pending.partition_point(|p| p.time_ns <= t);
            g.pending.insert(at, ev);
            let deadline = t.saturating_add(within);
            let at = self.due.partition_point(|(d, _)| *d <= deadline);
            self.due.insert(at, (deadline, key.clone()));
        }
        Outcome::Nothing
    }

    /// Judge the triggers whose time to find a companion ended before `watermark_ns` (every
    /// event before it has been evaluated) and before where the trigger's own log stands
    /// (`log_ns`: its newest event time; `i64::MAX` once it is idle). The second bound is for
    /// a log read behind the watermark: its trigger is evaluated at once, and its companion —
    /// the next record of the same log, perhaps in the next fetch — must still count.
    pub fn due(&mut self, watermark_ns: i64, log_ns: &dyn Fn(u32) -> i64) -> Vec<Due> {
        let mut out = Vec::new();
        let mut later = Vec::new();
        let (within, suppress) = (self.spec.within_ns, self.spec.suppress_ns);
        while self.due.front().is_some_and(|(d, _)| *d < watermark_ns) {
            let Some((deadline, key)) = self.due.pop_front() else {
                break;
            };
            let Some(g) = self.st.groups.get_by_key_mut(&self.spec.match_by, &key) else {
                continue; // evicted or expired
            };
            let ready =
                |p: &EvRef| p.time_ns.saturating_add(within) < watermark_ns.min(log_ns(p.log));
            if g.pending.front().is_some_and(|p| !ready(p)) {
                later.push((deadline, key));
                continue;
            }
            let unmatched: Vec<EvRef> = {
                let n = g.pending.iter().take_while(|p| ready(p)).count();
                g.pending.drain(..n).collect()
            };
            let Some(last) = unmatched.last().copied() else {
                continue; // matched meanwhile, or judged with an earlier entry
            };
            let spec = &self.spec;
            if !spec.protected_by.is_empty()
                && !self
                    .protected
                    .contains(&spec.protected_hash_of_key(&key, &self.hasher))
            {
                continue; // nobody decides on it: nothing was bypassed
            }
            let alert_key = spec.project(&spec.group_by, &key);
            let mut updated = None;
            for ev in &unmatched {
                if let Some(n) = g.open.absorb(ev.time_ns, within, suppress) {
                    updated = Some((n, *ev));
                }
            }
            if let Some((count, ev)) = updated {
                out.push(Due::Updated {
                    key: alert_key,
                    count,
                    ev,
                });
                continue;
            }
            let first = unmatched[0].time_ns;
            g.open.fire(last.time_ns, unmatched.len() as u64);
            self.st.counters.fired += 1;
            out.push(Due::Fired(Hit {
                key: alert_key,
                first_ns: first,
                last_ns: last.time_ns,
                count: unmatched.len() as u64,
                detail: vec![format!(
                    "no companion event within {} s",
                    within as f64 / 1e9
                )],
                evidence: newest(unmatched),
            }));
        }
        // Judged when their logs have moved on (still in deadline order: they were first).
        for d in later.into_iter().rev() {
            self.due.push_front(d);
        }
        out
    }

    /// Forget groups with nothing pending, no recent companion and no open alert.
    pub(crate) fn expire(&mut self) {
        let horizon = self.st.clock.watermark();
        let (within, suppress) = (self.spec.within_ns, self.spec.suppress_ns);
        self.st.groups.retain(|g| {
            !g.pending.is_empty()
                || g.expected
                    .back()
                    .is_some_and(|&x| x.saturating_add(within) > horizon)
                || g.open.is_open(horizon, suppress)
        });
    }

    /// After a restore: the deadlines of the groups' pending triggers.
    pub(crate) fn rebuild_due(&mut self) {
        let within = self.spec.within_ns;
        let mut due: Vec<(i64, PackedKey)> = self
            .st
            .groups
            .entries()
            .flat_map(|e| {
                e.state
                    .pending
                    .iter()
                    .map(move |p| (p.time_ns.saturating_add(within), e.key.clone()))
            })
            .collect();
        due.sort();
        self.due = due.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::at;
    use crate::filter::field;
    use crate::row::OwnedRow;

    const S: i64 = 1_000_000_000;

    fn rule() -> Absence {
        let by = vec![
            ("caller_ip".into(), field("caller_ip").unwrap()),
            ("callee_ip".into(), field("callee_ip").unwrap()),
        ];
        Absence::new(AbsenceSpec {
            trigger: Filter::parse(r#"kind == "flow""#).unwrap(),
            expect: Filter::parse(r#"kind == "authz""#).unwrap(),
            group_by: by.clone(),
            match_by: by,
            within_ns: 5 * S,
            protected_by: Vec::new(),
            suppress_ns: 600 * S,
            allowed_lateness_ns: 30 * S,
            max_groups: 100,
        })
    }

    fn ev(kind: &str, src: &str) -> OwnedRow {
        OwnedRow::of(&[
            ("kind", kind),
            ("caller_ip", src),
            ("callee_ip", "10.0.0.9"),
        ])
    }

    #[test]
    fn a_trigger_read_behind_the_watermark_waits_for_its_own_log_to_move_on() {
        let mut r = rule();
        // A lagging log: its flow is read when the watermark is already a minute past it.
        r.observe(&ev("flow", "10.1.0.3"), at(10 * S));
        // Its log has got no further than the flow: the decision may be its next record.
        assert!(r.due(70 * S, &|_| 10 * S).is_empty());
        r.observe(&ev("authz", "10.1.0.3"), at(10 * S + 1_000_000));
        assert!(r.due(70 * S, &|_| 10 * S + 1_000_000).is_empty());
        assert!(r.due(80 * S, &|_| 30 * S).is_empty(), "matched");
        // One with no decision fires once its log has moved past the window (or went idle).
        r.observe(&ev("flow", "10.6.6.7"), at(40 * S));
        assert!(r.due(90 * S, &|_| 41 * S).is_empty());
        assert_eq!(r.due(90 * S, &|_| 46 * S).len(), 1);
        r.observe(&ev("flow", "10.6.6.8"), at(50 * S));
        assert_eq!(r.due(90 * S, &|_| i64::MAX).len(), 1, "an idle log");
    }

    #[test]
    fn a_flow_with_its_decision_either_side_is_quiet_and_one_without_fires_once_the_watermark_passes()
     {
        let mut r = rule();
        // Decision first, flow 2 s later: matched.
        r.observe(&ev("authz", "10.1.0.1"), at(0));
        r.observe(&ev("flow", "10.1.0.1"), at(2 * S));
        // Flow first, its decision 4 s later (read from another partition): matched.
        r.observe(&ev("flow", "10.1.0.2"), at(10 * S));
        r.observe(&ev("authz", "10.1.0.2"), at(14 * S));
        // A flow nobody decided on.
        r.observe(&ev("flow", "10.6.6.6"), at(20 * S));
        r.observe(&ev("flow", "10.6.6.6"), at(21 * S));
        // Not yet: its companion may still come (the watermark is before 25 s).
        assert!(r.due(24 * S, &|_| i64::MAX).is_empty());
        let d = r.due(27 * S, &|_| i64::MAX);
        assert_eq!(d.len(), 1, "{d:?}");
        let Due::Fired(h) = &d[0] else {
            panic!("{d:?}")
        };
        assert_eq!(
            h.key,
            vec![Some("10.6.6.6".into()), Some("10.0.0.9".into())]
        );
        assert_eq!((h.first_ns, h.last_ns, h.count), (20 * S, 21 * S, 2));
        // More of the same later: the open alert is updated, not raised again.
        r.observe(&ev("flow", "10.6.6.6"), at(40 * S));
        assert!(matches!(
            r.due(50 * S, &|_| i64::MAX)[..],
            [Due::Updated { count: 3, .. }]
        ));
        assert_eq!(r.st.counters.fired, 1);
    }

    #[test]
    fn with_protected_by_only_destinations_the_policy_engine_decides_on_are_judged() {
        let mut r = rule();
        r.spec.protected_by = vec![("callee_ip".into(), field("callee_ip").unwrap())];
        let to = |kind: &str, src: &str, dst: &str| {
            OwnedRow::of(&[("kind", kind), ("caller_ip", src), ("callee_ip", dst)])
        };
        // Nobody ever decided on 10.0.0.50: flows to it are not judged.
        r.observe(&to("flow", "10.1.0.1", "10.0.0.50"), at(0));
        // 10.0.0.9 is protected once one decision about it was seen…
        r.observe(&to("authz", "10.1.0.2", "10.0.0.9"), at(S));
        // …so a flow to it with no decision is a bypass.
        r.observe(&to("flow", "10.6.6.6", "10.0.0.9"), at(2 * S));
        let d = r.due(60 * S, &|_| i64::MAX);
        assert!(
            matches!(&d[..], [Due::Fired(h)] if h.key[0].as_deref() == Some("10.6.6.6")),
            "{d:?}"
        );
    }

    #[test]
    fn pending_triggers_are_bounded_and_survive_a_restore() {
        let mut r = rule();
        for i in 0..(MAX_PENDING as i64 + 10) {
            r.observe(&ev("flow", "10.6.6.7"), at(i * S / 100));
        }
        assert_eq!(r.dropped, 10);
        let saved = serde_json::to_string(&r.st.groups.entries().collect::<Vec<_>>()).unwrap();
        let mut back = rule();
        back.st.groups.restore(
            &back.spec.match_by.clone(),
            serde_json::from_str(&saved).unwrap(),
        );
        back.rebuild_due();
        let d = back.due(100 * S, &|_| i64::MAX);
        assert!(
            matches!(&d[..], [Due::Fired(h)] if h.count == MAX_PENDING as u64),
            "{d:?}"
        );
    }

    #[test]
    fn matched_per_connection_alerted_per_source_and_destination() {
        let mut r = rule();
        r.spec
            .match_by
            .push(("caller_port".into(), field("caller_port").unwrap()));
        let conn = |kind: &str, port: &str| {
            let v: Vec<(&str, serde_json::Value)> = vec![
                ("kind", kind.into()),
                ("caller_ip", "10.1.0.1".into()),
                ("caller_port", port.parse::<u16>().unwrap().into()),
                ("callee_ip", "10.0.0.9".into()),
            ];
            OwnedRow::from_fields(v.iter().map(|(k, v)| (*k, v))).unwrap()
        };
        // The workload's proper calls go through the sidecar on one connection...
        r.observe(&conn("flow", "40000"), at(S));
        r.observe(&conn("authz", "40000"), at(S + 1_000_000));
        // ...and two connections of its own go around it, a decision on the first nearby.
        r.observe(&conn("flow", "40001"), at(2 * S));
        r.observe(&conn("authz", "40000"), at(3 * S));
        r.observe(&conn("flow", "40002"), at(4 * S));
        let d = r.due(60 * S, &|_| i64::MAX);
        assert_eq!(d.len(), 2, "{d:?}");
        for x in &d {
            let Due::Fired(h) = x else { panic!("{d:?}") };
            // The alert is about the source and destination, not the connection.
            assert_eq!(
                h.key,
                vec![Some("10.1.0.1".into()), Some("10.0.0.9".into())]
            );
        }
    }
}
