//! The rate-spike rule kind: a group's event rate far above its own learned baseline.
//!
//! Per group, matching events are counted in fixed event-time buckets (`bucket`). When a
//! bucket closes its count updates an exponentially weighted mean and variance (weight
//! `alpha = 2 / (baseline_buckets + 1)`; empty buckets count as zeros). The open bucket fires
//! once its count reaches `min_count` and exceeds `mean + z · max(stddev, 1)`, provided the
//! group has a baseline of at least `min_history_buckets` buckets, and — with `peak_factor`
//! — exceeds `peak_factor` times the group's peak: the largest bucket it had, decaying by half
//! every `peak_half_life_ns`. The mean forgets a batch job that runs every hour between runs;
//! the peak remembers it, so only a rate well beyond anything the group did lately fires.
//! Events for an already closed bucket (late but within the lateness) count toward nothing
//! but the metrics.

use serde::{Deserialize, Serialize};

use crate::evidence::{EvRef, Hit, MAX_EVIDENCE, Outcome};
use crate::filter::{Filter, Row};
use crate::group::{GroupBy, Open, State};

#[derive(Debug)]
pub struct RateSpikeSpec {
    pub filter: Filter,
    pub group_by: GroupBy,
    pub bucket_ns: i64,
    pub baseline_buckets: u32,
    pub min_history_buckets: u32,
    pub z: f64,
    pub min_count: u64,
    /// Fire only above this many times the group's decaying peak (0: no peak test).
    pub peak_factor: f64,
    pub peak_half_life_ns: i64,
    pub suppress_ns: i64,
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Group {
    bucket: i64,
    count: u64,
    mean: f64,
    var: f64,
    history: u32,
    /// The largest closed bucket, decayed per bucket since.
    #[serde(default)]
    peak: f64,
    /// The newest events of the open bucket (evidence), at most `MAX_EVIDENCE`.
    recent: std::collections::VecDeque<EvRef>,
    open: Open,
}

crate::has_open!(Group);

impl crate::group::Weigh for Group {
    fn heap_bytes(&self) -> usize {
        crate::group::deque_bytes(&self.recent)
    }
}

impl Group {
    /// Close buckets up to (not including) `bucket`.
    fn roll(&mut self, bucket: i64, alpha: f64, peak_decay: f64) {
        if bucket <= self.bucket {
            return;
        }
        let mut x = self.count as f64;
        // The closed bucket, then the empty ones after it (at most enough to decay fully).
        let empties = (bucket - self.bucket - 1).min(10_000);
        for _ in 0..=empties {
            let diff = x - self.mean;
            let incr = alpha * diff;
            self.mean += incr;
            self.var = (1.0 - alpha) * (self.var + diff * incr);
            self.history = self.history.saturating_add(1);
            self.peak = (self.peak * peak_decay).max(x);
            x = 0.0;
        }
        self.bucket = bucket;
        self.count = 0;
        self.recent.clear();
    }
}

#[derive(Debug)]
pub struct RateSpike {
    pub(crate) spec: RateSpikeSpec,
    pub(crate) st: State<Group>,
}

impl RateSpike {
    pub fn new(spec: RateSpikeSpec) -> RateSpike {
        assert!(spec.bucket_ns > 0 && spec.baseline_buckets >= 1 && spec.max_groups >= 1);
        RateSpike {
            st: State::new(spec.max_groups, spec.allowed_lateness_ns),
            spec,
        }
    }

    pub fn groups(&self) -> usize {
        self.st.groups.len()
    }

    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        let t = ev.time_ns;
        if !self.spec.filter.matches(row) {
            return Outcome::Nothing;
        }
        self.st.matched(t);
        let s = &self.spec;
        let alpha = 2.0 / (f64::from(s.baseline_buckets) + 1.0);
        let peak_decay = if s.peak_half_life_ns > 0 {
            0.5f64.powf(s.bucket_ns as f64 / s.peak_half_life_ns as f64)
        } else {
            0.0
        };
        let bucket = t.div_euclid(s.bucket_ns);
        let (key, g) = self.st.groups.entry(&s.group_by, row, || Group {
            bucket,
            count: 0,
            mean: 0.0,
            var: 0.0,
            history: 0,
            peak: 0.0,
            recent: Default::default(),
            open: Open::default(),
        });
        if bucket < g.bucket {
            return Outcome::Nothing;
        }
        g.roll(bucket, alpha, peak_decay);
        g.count += 1;
        if g.recent.len() == MAX_EVIDENCE {
            g.recent.pop_front();
        }
        // Grown one event at a time: most groups hold one or two, none more than 16.
        if g.recent.len() == g.recent.capacity() {
            g.recent.reserve_exact(1);
        }
        g.recent.push_back(ev);
        let outcome = if let Some(n) = g.open.absorb(t, s.bucket_ns, s.suppress_ns) {
            Outcome::Updated { count: n, ev }
        } else {
            let limit = g.mean + s.z * g.var.sqrt().max(1.0);
            if g.history >= s.min_history_buckets
                && g.count >= s.min_count
                && g.count as f64 > limit
                && g.count as f64 > s.peak_factor * g.peak
            {
                g.open.fire(t, g.count);
                Outcome::Fired(Hit {
                    key: key.to_key(),
                    first_ns: bucket * s.bucket_ns,
                    last_ns: t,
                    count: g.count,
                    detail: vec![
                        format!("baseline_mean={:.1}", g.mean),
                        format!("baseline_stddev={:.1}", g.var.sqrt()),
                        format!("threshold={limit:.1}"),
                        format!("peak={:.1}", g.peak),
                    ],
                    evidence: g.recent.iter().copied().collect(),
                })
            } else {
                Outcome::Nothing
            }
        };
        self.st.outcome(outcome)
    }

    /// Groups keep their baseline; only the bound on groups limits them.
    pub(crate) fn expire(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::at;
    use crate::filter::field;
    use crate::row::OwnedRow;

    const S: i64 = 1_000_000_000;

    fn rule() -> RateSpike {
        RateSpike::new(RateSpikeSpec {
            filter: Filter::parse("caller_principal exists").unwrap(),
            group_by: vec![("caller".into(), field("caller_principal").unwrap())],
            bucket_ns: 60 * S,
            baseline_buckets: 30,
            min_history_buckets: 10,
            z: 4.0,
            min_count: 50,
            peak_factor: 0.0,
            peak_half_life_ns: 0,
            suppress_ns: 600 * S,
            allowed_lateness_ns: 30 * S,
            max_groups: 100,
        })
    }

    /// `n` events spread over minute `m`.
    fn minute(r: &mut RateSpike, who: &str, m: i64, n: i64) -> Vec<Outcome> {
        let e = OwnedRow::of(&[("caller_principal", who)]);
        (0..n)
            .map(|i| r.observe(&e, at(m * 60 * S + i * (60 * S / n.max(1)))))
            .collect()
    }

    #[test]
    fn a_burst_far_above_the_baseline_fires_once_steady_traffic_never() {
        let mut r = rule();
        // An hour of a steady 20/min with some noise: nothing.
        for m in 0..60 {
            let out = minute(&mut r, "svc", m, 20 + (m % 5));
            assert!(out.iter().all(|o| !o.fired()), "minute {m}");
        }
        // 200 in one minute: fires once, the rest update it.
        let out = minute(&mut r, "svc", 60, 200);
        assert_eq!(out.iter().filter(|o| o.fired()).count(), 1);
        let Some(Outcome::Fired(h)) = out.iter().find(|o| o.fired()) else {
            unreachable!()
        };
        assert!(h.count >= 50 && h.count < 60, "{}", h.count);
        assert_eq!(h.evidence.len(), MAX_EVIDENCE);
        assert!(matches!(out.last(), Some(Outcome::Updated { .. })));
    }

    #[test]
    fn no_alert_without_history_or_below_the_minimum_volume() {
        let mut r = rule();
        // A new group's first burst has no baseline.
        let out = minute(&mut r, "new", 0, 500);
        assert!(out.iter().all(|o| !o.fired()));
        // A quiet group going from 1 to 40 per minute stays under min_count.
        let mut r = rule();
        for m in 0..20 {
            minute(&mut r, "quiet", m, 1);
        }
        assert!(minute(&mut r, "quiet", 20, 40).iter().all(|o| !o.fired()));
        // An idle gap decays the baseline: after two quiet hours a busy group's normal rate
        // is a spike again — rates are judged against the recent past.
        let mut r = rule();
        for m in 0..30 {
            minute(&mut r, "busy", m, 100);
        }
        assert!(minute(&mut r, "busy", 30, 100).iter().all(|o| !o.fired()));
        assert!(minute(&mut r, "busy", 150, 100).iter().any(|o| o.fired()));
        assert_eq!(r.st.counters.late, 0);
    }

    #[test]
    fn with_a_peak_a_batch_job_that_runs_every_hour_fires_once_and_a_real_spike_still_fires() {
        let mut r = rule();
        r.spec.peak_factor = 2.0;
        r.spec.peak_half_life_ns = 24 * 3600 * S;
        r.spec.suppress_ns = 60 * S;
        let mut fired = Vec::new();
        for m in 0..6 * 60 {
            // 20 a minute, and 1 000 in the 30th minute of every hour.
            let n = if m % 60 == 30 { 1000 } else { 20 };
            if minute(&mut r, "reports", m, n).iter().any(|o| o.fired()) {
                fired.push(m);
            }
        }
        // The first run had no peak to compare with; every later one is within it.
        assert_eq!(fired, vec![30], "{fired:?}");
        // Ten times its batch in one minute: beyond anything it did today.
        assert!(
            minute(&mut r, "reports", 6 * 60 + 30, 10_000)
                .iter()
                .any(|o| o.fired())
        );
    }
}
