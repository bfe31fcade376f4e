//! Scoring a labelled run: the simulator's labelled attacks, and each alert found expected,
//! about an attack, in the warm-up, or false.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use vigil_detect::alerts::Alert;

use super::Outcome;

pub(crate) struct Attack {
    pub(crate) id: u64,
    pub(crate) scenario: String,
    pub(crate) start_ns: i64,
    pub(crate) end_ns: i64,
    pub(crate) subjects: BTreeSet<String>,
    pub(crate) expect: Vec<(String, BTreeMap<String, String>)>,
    pub(crate) what: String,
    /// [stated time, send time, partition]
    pub(crate) records: Vec<[i64; 3]>,
}

impl Attack {
    pub(crate) fn from(v: &Value) -> Attack {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let i = |k: &str| v[k].as_i64().unwrap_or_default();
        Attack {
            id: v["id"].as_u64().unwrap_or_default(),
            scenario: s("scenario"),
            start_ns: i("start_ns"),
            end_ns: i("end_ns"),
            subjects: v["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            expect: v["expect"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let key = e["key"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    (e["rule"].as_str().unwrap_or_default().to_owned(), key)
                })
                .collect(),
            what: s("what"),
            records: v["records"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    let r = r.as_array()?;
                    Some([
                        r.first()?.as_i64()?,
                        r.get(1)?.as_i64()?,
                        r.get(2)?.as_i64()?,
                    ])
                })
                .collect(),
        }
    }

    /// The attack's time span, by stated and sent times alike (a backdated burst states
    /// times before it ran).
    pub(crate) fn span(&self) -> (i64, i64) {
        let stated = self.records.iter().map(|r| r[0]);
        let lo = stated
            .clone()
            .min()
            .unwrap_or(self.start_ns)
            .min(self.start_ns);
        let hi = stated
            .filter(|t| *t < 4_000_000_000 * 1_000_000_000)
            .max()
            .unwrap_or(self.end_ns)
            .max(self.end_ns);
        (lo, hi)
    }

    /// When the record the alert's first revision ends with was sent.
    pub(crate) fn decisive_sent_ns(&self, last_event_ns: i64) -> Option<i64> {
        if let Some(r) = self.records.iter().find(|r| r[0] == last_event_ns) {
            return Some(r[1]);
        }
        // Skewed: evaluated at its receive time, close to when it was sent.
        self.records
            .iter()
            .min_by_key(|r| (r[1] - last_event_ns).abs())
            .map(|r| r[1])
    }
}

pub(crate) fn key_matches(a: &Alert, key: &BTreeMap<String, String>) -> bool {
    key.iter()
        .all(|(k, v)| a.group_key.get(k).and_then(|x| x.as_deref()) == Some(v.as_str()))
}

/// Per rule: expected, detected, latencies (ms), false alerts.
#[derive(Default)]
pub(crate) struct PerRule {
    pub(crate) expected: u64,
    pub(crate) detected: u64,
    pub(crate) latency_ms: Vec<f64>,
    /// From the decisive record's arrival at the bare consumer to the alert: Vigil's share.
    pub(crate) own_ms: Vec<f64>,
    pub(crate) false_alerts: u64,
    pub(crate) all_alerts: u64,
}

/// A run scored: per rule, what was missed, the false alerts, those in the warm-up.
pub(crate) struct Scores {
    pub(crate) rules: BTreeMap<String, PerRule>,
    pub(crate) missed: Vec<String>,
    pub(crate) attacks_caught: usize,
    pub(crate) false_alerts: Vec<String>,
    pub(crate) warm_up: Vec<String>,
}

/// Each attack's expected alerts found (or missed) among the alerts, and every other alert
/// judged about an attack, in the warm-up, or false.
pub(crate) fn score(o: &Outcome) -> Scores {
    let Outcome {
        attacks,
        warm_up_end_ns,
        run_start_ns,
        first,
        latest,
        arrivals,
        ..
    } = o;
    let (warm_up_end_ns, run_start_ns) = (*warm_up_end_ns, *run_start_ns);
    let mut rules: BTreeMap<String, PerRule> = BTreeMap::new();
    let mut missed = Vec::new();
    let mut attacks_caught = 0;
    let mut explained: BTreeSet<String> = BTreeSet::new();
    for at in attacks {
        let (lo, hi) = at.span();
        let mut all = true;
        for (rule, key) in &at.expect {
            let r = rules.entry(rule.clone()).or_default();
            r.expected += 1;
            // An alert raised by it, or one raised before (same group, still within its
            // suppression) that its events updated: the alert's events span the attack.
            let hit = latest
                .values()
                .filter(|a| {
                    &a.rule_id == rule
                        && key_matches(a, key)
                        && a.first_event_ns <= hi + 60_000_000_000
                        && a.last_event_ns >= lo - 60_000_000_000
                })
                .min_by_key(|a| a.detected_ns);
            match hit {
                Some(a) => {
                    r.detected += 1;
                    explained.insert(a.alert_id.clone());
                    // Latency only for an alert this attack raised.
                    if let Some(f) = first.get(&a.alert_id)
                        && f.last_event_ns >= lo - 60_000_000_000
                        && let Some(sent) = at.decisive_sent_ns(f.last_event_ns)
                    {
                        r.latency_ms.push((f.detected_ns - sent) as f64 / 1e6);
                        // The decisive record: the evidence event the revision ends with.
                        if let Some(e) = f
                            .evidence
                            .iter()
                            .rev()
                            .find(|e| e.event_time_ns == f.last_event_ns)
                            && let Some(p) =
                                e.log.strip_prefix("mesh/").and_then(|p| p.parse().ok())
                            && let Some((arrived, _)) = arrivals.get(&(p, e.index as i64))
                        {
                            r.own_ms.push(f.detected_ns as f64 / 1e6 - *arrived as f64);
                        }
                    }
                }
                None => {
                    all = false;
                    missed.push(format!(
                        "attack {} {} ({}): no {rule} {key:?}",
                        at.id, at.scenario, at.what
                    ));
                }
            }
        }
        if all {
            attacks_caught += 1;
        }
    }
    let mut false_alerts = Vec::new();
    let mut warm_up = Vec::new();
    for a in latest.values() {
        let r = rules.entry(a.rule_id.clone()).or_default();
        r.all_alerts += 1;
        if explained.contains(&a.alert_id) {
            continue;
        }
        let about = attacks.iter().any(|at| {
            let (lo, hi) = at.span();
            // The event that raised it (a window's first event may be older than the attack).
            let f = first
                .get(&a.alert_id)
                .map_or(a.last_event_ns, |f| f.last_event_ns);
            f >= lo - 60_000_000_000
                && f <= hi + 300_000_000_000
                && (a
                    .group_key
                    .values()
                    .flatten()
                    .any(|v| at.subjects.contains(v))
                    || at
                        .expect
                        .iter()
                        .any(|(rule, key)| rule == &a.rule_id && key_matches(a, key)))
        });
        if !about && a.first_event_ns < warm_up_end_ns {
            warm_up.push(format!(
                "{} {} {:?} {} events",
                a.rule_id, a.severity, a.group_key, a.event_count
            ));
        } else if !about {
            r.false_alerts += 1;
            false_alerts.push(format!(
                "{} {} {:?} {} events, {:.0} s into the run; evidence {}",
                a.rule_id,
                a.severity,
                a.group_key,
                a.event_count,
                (a.first_event_ns - run_start_ns) as f64 / 1e9,
                a.evidence
                    .iter()
                    .take(3)
                    .map(|e| format!(
                        "{}@{} {}",
                        e.log,
                        e.index,
                        e.event_id.as_deref().unwrap_or("")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    Scores {
        rules,
        missed,
        attacks_caught,
        false_alerts,
        warm_up,
    }
}
