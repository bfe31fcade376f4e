//! A compiled rule of any kind ([`Kind`]): one dispatch over the kinds' state machines for
//! evaluation, expiry, weighing, and saving and restoring their state.

use serde::{Deserialize, Serialize};

use crate::allowlist::Allowlist;
use crate::distinct::DistinctCount;
use crate::evidence::{Counters, EvRef, Outcome};
use crate::filter::Row;
use crate::first_seen::FirstSeen;
use crate::group::GroupBy;
use crate::rate_spike::RateSpike;
use crate::sequence::Sequence;
use crate::threshold::Threshold;

/// `$e` with `$r` bound to the kind's own state machine, whichever it is.
macro_rules! each {
    ($self:expr, $r:ident => $e:expr) => {
        match $self {
            Kind::Threshold($r) => $e,
            Kind::DistinctCount($r) => $e,
            Kind::Allowlist($r) => $e,
            Kind::FirstSeen($r) => $e,
            Kind::Sequence($r) => $e,
            Kind::RateSpike($r) => $e,
            Kind::Absence($r) => $e,
            Kind::Sigma($r) => $e,
        }
    };
}

/// A rule state machine of any kind.
#[derive(Debug)]
pub enum Kind {
    Threshold(Threshold),
    DistinctCount(DistinctCount),
    Allowlist(Allowlist),
    FirstSeen(FirstSeen),
    Sequence(Sequence),
    RateSpike(RateSpike),
    Absence(crate::absence::Absence),
    Sigma(crate::sigma::Sigma),
}

impl Kind {
    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        each!(self, r => r.observe(row, ev))
    }

    pub(crate) fn expire(&mut self) {
        each!(self, r => r.expire())
    }

    /// Close the group's open alert (it was resolved): its next match can fire a new one.
    pub fn close(&mut self, key: &crate::group::PackedKey) {
        use crate::group::HasOpen;
        let fields = self.group_fields().clone();
        each!(self, r => {
            if let Some(o) = r.st.groups.get_by_key_mut(&fields, key).and_then(|g| g.open_mut()) {
                o.alert = None;
            }
        })
    }

    /// The fields that make a group's key.
    pub(crate) fn group_fields(&self) -> &GroupBy {
        match self {
            Kind::Threshold(r) => &r.spec.group_by,
            Kind::DistinctCount(r) => &r.spec.group_by,
            Kind::Allowlist(r) => &r.group_by,
            Kind::FirstSeen(r) => &r.spec.group_by,
            Kind::Sequence(r) => &r.spec.group_by,
            Kind::RateSpike(r) => &r.spec.group_by,
            Kind::Absence(r) => &r.spec.group_by,
            Kind::Sigma(r) => &r.spec.group_by,
        }
    }

    /// For a Sigma rule: the key of the group its last match fell in, as a row (its group is
    /// named by fields of its own, not by canonical columns); `None` for every other kind.
    pub(crate) fn key_row(&self) -> Option<&crate::sigma::KeyRow> {
        match self {
            Kind::Sigma(r) => Some(&r.key),
            _ => None,
        }
    }

    pub fn counters(&self) -> Counters {
        each!(self, r => r.st.counters)
    }

    /// For a rule that learns before it alerts (`first_seen`): `Some(until)`, the event time
    /// its learning ends (`None`: it has seen nothing yet, so it has not started); `None` for
    /// every other kind.
    pub fn learning_until(&self) -> Option<Option<i64>> {
        match self {
            Kind::FirstSeen(r) => Some(r.started_ns.map(|s| s.saturating_add(r.spec.learn_ns))),
            _ => None,
        }
    }

    /// Whether the rule is still learning (before its first event, or until its learning
    /// period has passed in event time).
    pub(crate) fn is_learning(&self) -> bool {
        match self {
            Kind::FirstSeen(r) => r
                .started_ns
                .is_none_or(|s| r.st.clock.newest_ns < s.saturating_add(r.spec.learn_ns)),
            _ => false,
        }
    }

    /// What the watermark decided (absence rules: triggers whose companion never came; see
    /// `absence::Absence::due` for `log_ns`).
    pub fn due(
        &mut self,
        watermark_ns: i64,
        log_ns: &dyn Fn(u32) -> i64,
    ) -> Vec<crate::absence::Due> {
        match self {
            Kind::Absence(r) => r.due(watermark_ns, log_ns),
            _ => Vec::new(),
        }
    }

    /// Count a late event this rule matched (the engine judges lateness).
    pub(crate) fn note_late(&mut self) {
        each!(self, r => r.st.counters.late += 1)
    }

    /// Keep the rule's clock at or before `max_ns` (a restored state saved by a version that
    /// let a forged event time move it).
    pub(crate) fn clamp_clock(&mut self, max_ns: i64) {
        each!(self, r => r.st.clock.clamp(max_ns))
    }

    pub fn groups(&self) -> usize {
        match self {
            Kind::Sigma(r) => r.groups(),
            k => each!(k, r => r.st.groups.len()),
        }
    }

    /// The bytes the rule's state holds (its groups and what indexes them).
    pub(crate) fn weigh(&self) -> usize {
        match self {
            Kind::Absence(r) => r.weigh(),
            Kind::Sigma(r) => r.weigh(),
            k => each!(k, r => r.st.groups.weigh()),
        }
    }

    /// Evict the least recently seen sixteenth of the groups (detection's memory budget):
    /// how many went; counted as evictions.
    pub fn shed(&mut self) -> u64 {
        let n = match &mut *self {
            Kind::Absence(r) => r.shed(),
            Kind::Sigma(r) => r.shed(),
            k => each!(k, r => r.st.groups.shed()),
        };
        each!(self, r => r.st.counters.evicted = r.st.groups.evicted);
        n
    }

    /// The state, for the engine's checkpoint: serialized straight from the groups (no copy
    /// of them is built, however many there are).
    pub fn saved(&self) -> SavedKind<'_> {
        SavedKind(self)
    }

    /// Restore state saved by [`Kind::saved`] (of the same rule version).
    pub fn restore(&mut self, v: &serde_json::value::RawValue) -> serde_json::Result<()> {
        #[derive(Deserialize)]
        struct Saved<S> {
            clock: crate::group::Clock,
            counters: Counters,
            extra: Option<i64>,
            groups: Vec<crate::group::Entry<S>>,
        }
        /// A Sigma correlation's windows, saved beside its open alerts.
        #[derive(Deserialize)]
        struct Windows {
            #[serde(default)]
            sigma: Option<rsigma_eval::CorrelationSnapshot>,
        }
        fn load<S: serde::de::DeserializeOwned>(
            st: &mut crate::group::State<S>,
            by: &GroupBy,
            v: &serde_json::value::RawValue,
        ) -> serde_json::Result<Option<i64>> {
            let s: Saved<S> = serde_json::from_str(v.get())?;
            st.clock.newest_ns = s.clock.newest_ns;
            st.counters = s.counters;
            st.groups.restore(by, s.groups);
            Ok(s.extra)
        }
        let by = self.group_fields().clone();
        match self {
            Kind::FirstSeen(r) => r.started_ns = load(&mut r.st, &by, v)?,
            Kind::Absence(r) => {
                // Its groups are keyed by what pairs events, not by the alert's key.
                let by = r.spec.match_by.clone();
                load(&mut r.st, &by, v)?;
                r.rebuild_due();
            }
            Kind::Sigma(r) => {
                load(&mut r.st, &by, v)?;
                let w: Windows = serde_json::from_str(v.get())?;
                if let Some(s) = w.sigma {
                    r.restore_snapshot(s);
                }
            }
            _ => {
                each!(self, r => load(&mut r.st, &by, v)?);
            }
        }
        Ok(())
    }
}

/// A rule's state as [`Kind::saved`] writes it: clock, counters, the kind's extra figure and
/// every group, borrowed.
pub struct SavedKind<'a>(&'a Kind);

impl Serialize for SavedKind<'_> {
    fn serialize<Ser: serde::Serializer>(&self, ser: Ser) -> Result<Ser::Ok, Ser::Error> {
        #[derive(Serialize)]
        struct Table<'a, S> {
            clock: &'a crate::group::Clock,
            counters: &'a Counters,
            extra: Option<i64>,
            groups: Vec<&'a crate::group::Entry<S>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            sigma: Option<rsigma_eval::CorrelationSnapshot>,
        }
        fn table<S: Serialize, Ser: serde::Serializer>(
            st: &crate::group::State<S>,
            extra: Option<i64>,
            sigma: Option<rsigma_eval::CorrelationSnapshot>,
            ser: Ser,
        ) -> Result<Ser::Ok, Ser::Error> {
            Table {
                clock: &st.clock,
                counters: &st.counters,
                extra,
                groups: st.groups.entries().collect(),
                sigma,
            }
            .serialize(ser)
        }
        match self.0 {
            Kind::FirstSeen(r) => table(&r.st, r.started_ns, None, ser),
            Kind::Sigma(r) => table(&r.st, None, r.snapshot(), ser),
            k => each!(k, r => table(&r.st, None, None, ser)),
        }
    }
}
