//! The Sigma rule kind: a Sigma detection or correlation rule as one of the engine's state
//! machines, so that its alerts get the same evidence, deduplication, suppression, lifecycle,
//! storage and delivery as every other rule's.
//!
//! Matching is rsigma's (`rsigma_eval`): a detection rule compiled once and evaluated per event
//! ([`SigmaEvent`]: the record's own fields, parsed once per event for all rules); a
//! correlation rule in its own `CorrelationEngine`, fed the events the engine hands over in
//! event-time order (the watermark's order) with their event time, and the matches of the
//! rules it references, each judged against its own log source first. What Vigil adds:
//! - the group: a detection rule's alerts are grouped by `vigil.group_by` (a custom attribute;
//!   default the caller, `caller_principal`), a correlation's by its `group-by`; a match in the
//!   group's suppression window updates its open alert instead of raising another;
//! - the evidence: a correlation keeps references to the events it counted (rsigma's `refs`
//!   mode, at most [`MAX_EVIDENCE`] per group), each naming its log, leaf index and leaf hash;
//! - bounds: at most `max_groups` groups (rsigma's `max_state_entries`) and
//!   [`MAX_GROUP_ENTRIES`] entries in a group's window; shed by the memory budget like any
//!   rule's groups;
//! - state saved with the engine's checkpoint (rsigma's snapshot, beside the open alerts).

use std::collections::HashMap;

use rsigma_eval::{
    CompiledRule, CorrelationConfig, CorrelationEngine, CorrelationEventMode, CorrelationSnapshot,
    EvaluationResult, TimestampFallback, evaluate_rule,
};
use rsigma_parser::SigmaCollection;
use serde::{Deserialize, Serialize};

use super::event::{SigmaEvent, evidence_of, logsource_of};
use crate::evidence::{EvRef, Hit, MAX_EVIDENCE, Outcome, newest};
use crate::filter::Row;
use crate::group::{GroupBy, Open, State};

/// The most entries (event times, values) one group's window keeps: past it the oldest go,
/// which can only under-count.
pub(crate) const MAX_GROUP_ENTRIES: usize = 10_000;

/// A rule's log source (`logsource:` after the pipelines), as Vigil admits events to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Logsource {
    pub product: Option<String>,
    pub service: Option<String>,
    pub category: Option<String>,
}

impl Logsource {
    /// Whether an event of this row's source is one the rule is about. A product names the
    /// decoder (and the service must then be that decoder's); a category alone names the kind
    /// of event; a rule naming neither is about every event.
    pub(crate) fn admits(&self, row: &impl Row) -> bool {
        let (product, service, category) = logsource_of(row);
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref()
                .is_none_or(|w| have.is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        match &self.product {
            Some(_) => same(&self.product, product) && same(&self.service, service),
            None => same(&self.category, category) && same(&self.service, service),
        }
    }
}

/// What a Sigma rule matches with.
pub(crate) enum Matcher {
    Detection {
        rule: Box<CompiledRule>,
        logsource: Logsource,
    },
    Correlation {
        engine: Box<CorrelationEngine>,
        /// The detection rules it references (directly or through chained correlations),
        /// each with its log source.
        refs: Vec<(CompiledRule, Logsource)>,
        /// What its results are named by (rsigma's stable id: id, name or title).
        names: Vec<String>,
        /// The rules and correlations it was built from (a shed rebuilds it).
        collection: Box<SigmaCollection>,
        config: CorrelationConfig,
    },
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Detection { logsource, .. } => f
                .debug_struct("Detection")
                .field("logsource", logsource)
                .finish_non_exhaustive(),
            Matcher::Correlation { names, refs, .. } => f
                .debug_struct("Correlation")
                .field("names", names)
                .field("refs", &refs.len())
                .finish_non_exhaustive(),
        }
    }
}

/// The correlation engine for a collection, with Vigil's bounds.
pub(crate) fn correlation_engine(
    collection: &SigmaCollection,
    config: &CorrelationConfig,
) -> Result<CorrelationEngine, String> {
    let mut e = CorrelationEngine::new(config.clone());
    e.add_collection(collection).map_err(|e| e.to_string())?;
    Ok(e)
}

/// rsigma's settings for a correlation of a rule keeping at most `max_groups` groups.
pub(crate) fn correlation_config(max_groups: usize) -> CorrelationConfig {
    CorrelationConfig {
        // Vigil gives every event its time; one without is not correlated.
        timestamp_fields: Vec::new(),
        timestamp_fallback: TimestampFallback::Skip,
        max_state_entries: max_groups,
        max_group_entries: Some(MAX_GROUP_ENTRIES),
        // Every event meeting the condition is reported; Vigil's open alert absorbs them.
        suppress: None,
        correlation_event_mode: CorrelationEventMode::Refs,
        max_correlation_events: MAX_EVIDENCE,
        ..CorrelationConfig::default()
    }
}

/// A Sigma rule's settings.
#[derive(Debug)]
pub(crate) struct SigmaSpec {
    pub matcher: Matcher,
    /// The group's fields as alerts name them; each is column `i` of the key row.
    pub group_by: GroupBy,
    /// Detection rules: the event fields the group key is read from (Sigma names).
    pub key_paths: Vec<String>,
    pub suppress_ns: i64,
    /// A correlation's timespan (0 for a detection rule).
    pub window_ns: i64,
    /// What every alert of the rule says about it: the Sigma rule's title, id, level, author,
    /// licence, ATT&CK tags and references (the Detection Rule License asks for the author).
    pub attribution: Vec<String>,
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
}

/// A group: its open alert.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Group {
    pub open: Open,
}
crate::has_open!(Group);

impl crate::group::Weigh for Group {
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// A group key as a row: value `i` is column `i` (what the alert ledger finds a group by).
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyRow(pub Vec<Option<String>>);

impl Row for KeyRow {
    fn str(&self, column: usize) -> Option<&str> {
        self.0.get(column).and_then(|v| v.as_deref())
    }
    fn int(&self, _: usize) -> Option<i64> {
        None
    }
    fn bool(&self, _: usize) -> Option<bool> {
        None
    }
}

#[derive(Debug)]
pub struct Sigma {
    pub(crate) spec: SigmaSpec,
    pub(crate) st: State<Group>,
    /// The key of the last event that matched (the row the ledger takes its outcome with).
    pub(crate) key: KeyRow,
}

const NS: i64 = 1_000_000_000;

impl Sigma {
    pub(crate) fn new(spec: SigmaSpec) -> Sigma {
        assert!(spec.max_groups >= 1);
        Sigma {
            st: State::new(spec.max_groups, spec.allowed_lateness_ns),
            key: KeyRow(vec![None; spec.group_by.len()]),
            spec,
        }
    }

    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        // The log source first: an event no rule here is about is never parsed for it.
        let hit = match &mut self.spec.matcher {
            Matcher::Detection { rule, logsource } => {
                if !logsource.admits(row) {
                    return Outcome::Nothing;
                }
                let event = SigmaEvent::new(row, ev);
                if evaluate_rule(rule, &event).is_none() {
                    return Outcome::Nothing;
                }
                let key = self
                    .spec
                    .key_paths
                    .iter()
                    .map(|p| {
                        rsigma_eval::Event::get_field(&event, p)
                            .and_then(|v| v.as_str().map(|s| s.into_owned()))
                    })
                    .collect();
                (key, 1, vec![ev], Vec::new())
            }
            Matcher::Correlation {
                engine,
                refs,
                names,
                ..
            } => {
                if !refs.iter().any(|(_, ls)| ls.admits(row)) {
                    return Outcome::Nothing;
                }
                let event = SigmaEvent::new(row, ev);
                let detections: Vec<EvaluationResult> = refs
                    .iter()
                    .filter(|(_, ls)| ls.admits(row))
                    .filter_map(|(r, _)| evaluate_rule(r, &event))
                    .collect();
                if detections.is_empty() {
                    return Outcome::Nothing;
                }
                let secs = ev.time_ns.div_euclid(NS);
                let out = engine.process_with_detections(&event, detections, secs);
                let fired = out.iter().find_map(|r| {
                    let c = r.as_correlation()?;
                    let h = &r.header;
                    let ours = names
                        .iter()
                        .any(|n| h.rule_id.as_deref() == Some(n.as_str()) || h.rule_title == *n);
                    ours.then_some(c)
                });
                let Some(c) = fired else {
                    // A match that did not meet the condition is still a match.
                    self.st.matched(ev.time_ns);
                    return Outcome::Nothing;
                };
                let values: HashMap<&str, &str> = c
                    .group_key
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let key = self
                    .spec
                    .group_by
                    .iter()
                    .map(|(name, _)| values.get(name.as_str()).map(|v| (*v).to_owned()))
                    .collect();
                let mut evidence: Vec<EvRef> = c
                    .event_refs
                    .iter()
                    .flatten()
                    .filter_map(|r| r.id.as_deref().and_then(evidence_of))
                    .collect();
                if !evidence.contains(&ev) {
                    evidence.push(ev);
                }
                let detail = vec![format!(
                    "{} {} within {}s",
                    correlation_type_name(c.correlation_type),
                    c.aggregated_value,
                    c.timespan_secs
                )];
                let count = if c.aggregated_value.is_finite() && c.aggregated_value >= 1.0 {
                    c.aggregated_value as u64
                } else {
                    1
                };
                (key, count, newest(evidence), detail)
            }
        };
        let (key, count, evidence, mut detail) = hit;
        let time_ns = ev.time_ns;
        self.st.matched(time_ns);
        self.key = KeyRow(key);
        let (window, suppress) = (self.spec.window_ns, self.spec.suppress_ns);
        let (_, g) = self
            .st
            .groups
            .entry(&self.spec.group_by, &self.key, Group::default);
        let outcome = if let Some(n) = g.open.absorb(time_ns, window, suppress) {
            Outcome::Updated { count: n, ev }
        } else {
            g.open.fire(time_ns, count);
            detail.extend(self.spec.attribution.iter().cloned());
            Outcome::Fired(Hit {
                key: self.key.0.clone(),
                first_ns: evidence.first().map_or(time_ns, |e| e.time_ns.min(time_ns)),
                last_ns: time_ns,
                count,
                detail,
                evidence,
            })
        };
        self.st.outcome(outcome)
    }

    pub(crate) fn expire(&mut self) {
        let horizon = self.st.clock.watermark();
        let suppress = self.spec.suppress_ns;
        self.st.groups.retain(|g| g.open.is_open(horizon, suppress));
        if let Matcher::Correlation { engine, .. } = &mut self.spec.matcher
            && horizon > i64::MIN
        {
            engine.evict_expired(horizon.div_euclid(NS));
        }
    }

    /// Groups: the open alerts' and (for a correlation) the windows'.
    pub(crate) fn groups(&self) -> usize {
        self.st.groups.len() + self.correlation().map_or(0, CorrelationEngine::state_count)
    }

    fn correlation(&self) -> Option<&CorrelationEngine> {
        match &self.spec.matcher {
            Matcher::Correlation { engine, .. } => Some(engine),
            Matcher::Detection { .. } => None,
        }
    }

    /// The bytes the state holds: the open alerts' table, and each window's entries and key.
    pub(crate) fn weigh(&self) -> usize {
        let windows = self.correlation().map_or(0, |e| {
            let s = e.export_state();
            let keys = |k: &rsigma_eval::GroupKey| {
                k.0.iter()
                    .map(|v| 24 + v.as_ref().map_or(0, |s| crate::group::alloc_bytes(s.len())))
                    .sum::<usize>()
            };
            let w: usize = s
                .windows
                .values()
                .flatten()
                .map(|(k, w)| 96 + keys(k) + 24 * w.entry_count())
                .sum();
            let r: usize = s
                .event_ref_buffers
                .values()
                .flatten()
                .map(|(k, b)| 64 + keys(k) + 112 * b.len())
                .sum();
            w + r
        });
        self.st.groups.weigh() + windows
    }

    /// Drop the least recently seen sixteenth of the groups (detection's memory budget): the
    /// open alerts' table's, and a correlation's windows by their newest entry.
    pub(crate) fn shed(&mut self) -> u64 {
        let mut n = self.st.groups.shed();
        if let Matcher::Correlation {
            engine,
            collection,
            config,
            ..
        } = &mut self.spec.matcher
        {
            let mut s = engine.export_state();
            let mut newest: Vec<i64> = s
                .windows
                .values()
                .flatten()
                .map(|(_, w)| w.latest_timestamp().unwrap_or(i64::MIN))
                .collect();
            if !newest.is_empty() {
                let cut_n = (newest.len() / 16).max(1);
                let (_, cut, _) = newest.select_nth_unstable(cut_n - 1);
                let cut = *cut;
                let mut dropped = 0usize;
                let mut gone = Vec::new();
                for (corr, groups) in &mut s.windows {
                    groups.retain(|(k, w)| {
                        let keep =
                            w.latest_timestamp().unwrap_or(i64::MIN) > cut || dropped >= cut_n;
                        if !keep {
                            dropped += 1;
                            gone.push((corr.clone(), k.clone()));
                        }
                        keep
                    });
                }
                for (corr, k) in &gone {
                    if let Some(v) = s.event_ref_buffers.get_mut(corr) {
                        v.retain(|(g, _)| g != k);
                    }
                }
                if let Ok(mut fresh) = correlation_engine(collection, config) {
                    fresh.import_state(s);
                    **engine = fresh;
                    n += dropped as u64;
                    self.st.groups.evicted += dropped as u64;
                }
            }
        }
        n
    }

    /// A correlation's windows, for the state checkpoint.
    pub(crate) fn snapshot(&self) -> Option<CorrelationSnapshot> {
        self.correlation().map(CorrelationEngine::export_state)
    }

    /// Restore a correlation's windows saved by [`Sigma::snapshot`].
    pub(crate) fn restore_snapshot(&mut self, s: CorrelationSnapshot) {
        if let Matcher::Correlation { engine, .. } = &mut self.spec.matcher {
            engine.import_state(s);
        }
    }
}

fn correlation_type_name(t: rsigma_parser::CorrelationType) -> &'static str {
    use rsigma_parser::CorrelationType as T;
    match t {
        T::EventCount => "event_count",
        T::ValueCount => "value_count",
        T::Temporal => "temporal",
        T::TemporalOrdered => "temporal_ordered",
        _ => "correlation",
    }
}
