//! Detection's and delivery's counters as Prometheus/OpenMetrics metrics: [`Collector`]s the
//! binary registers ([`DetectMetrics`], [`DeliverMetrics`], [`OutboxDepth`]). Label values are
//! rule ids (`[A-Za-z0-9._-]`, checked when a rule compiles), target names (`[A-Za-z0-9_-]`,
//! checked when a target is configured) and log ids (validated topics), so none needs
//! escaping (prometheus-client escapes none: client_rust#151).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::deliver::{DeliverMetrics, outbox_depth};
use crate::engine::RuleStats;
use crate::run::DetectMetrics;
use crate::time::SourceTime;

type Fmt = Result<(), std::fmt::Error>;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One unlabelled metric.
fn one(e: &mut DescriptorEncoder<'_>, kind: MetricType, name: &str, help: &str, v: u64) -> Fmt {
    let m = e.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(v).encode(m),
        _ => ConstGauge::new(i64_of(v)).encode(m),
    }
}

/// One metric with a series per `(label value, value)`.
fn per(
    e: &mut DescriptorEncoder<'_>,
    kind: MetricType,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (String, u64)>,
) -> Fmt {
    let mut f = e.encode_descriptor(name, help, None, kind)?;
    for (value, v) in series {
        let labels = [(label, value.as_str())];
        let m = f.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(m)?,
            _ => ConstGauge::new(i64_of(v)).encode(m)?,
        }
    }
    Ok(())
}

impl Collector for DetectMetrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Fmt {
        use MetricType::{Counter, Gauge};
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (kind, name, help, v) in [
            (
                Counter,
                "vigil_detect_events",
                "Events evaluated by detection.",
                l(&self.rows),
            ),
            (
                Counter,
                "vigil_detect_late",
                "Events behind the detection watermark by more than the allowed lateness (evaluated all the same).",
                l(&self.late),
            ),
            (
                Counter,
                "vigil_detect_skewed",
                "Events dated further ahead of their receive time than detect.max_future_skew_ms (evaluated at receive time).",
                l(&self.skewed),
            ),
            (
                Gauge,
                "vigil_detect_buffered_events",
                "Events waiting for the detection watermark.",
                l(&self.buffered),
            ),
            (
                Counter,
                "vigil_detect_forced",
                "Events evaluated before the watermark reached them because the buffer was full.",
                l(&self.forced),
            ),
            (
                Counter,
                "vigil_detect_state_saves",
                "Detection state checkpoints written (detect/state.json).",
                l(&self.state_saves),
            ),
            (
                Gauge,
                "vigil_detect_state_bytes",
                "Bytes the rules' groups hold, as last weighed (as of the last state checkpoint).",
                l(&self.state_bytes),
            ),
            (
                Gauge,
                "vigil_detect_state_max_bytes",
                "Detection's memory budget (detect.max_state_bytes).",
                l(&self.state_max_bytes),
            ),
            (
                Counter,
                "vigil_detect_state_shed",
                "Groups evicted to keep the rules' state within detect.max_state_bytes (also counted per rule in vigil_rule_evicted_total).",
                l(&self.state_shed),
            ),
            (
                Counter,
                "vigil_alerts_fired",
                "Alerts raised.",
                l(&self.alerts_fired),
            ),
            (
                Counter,
                "vigil_alert_revisions",
                "Alert revisions stored.",
                l(&self.alert_revisions),
            ),
        ] {
            one(&mut e, kind, name, help, v)?;
        }
        let stats = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        type PerRule = fn(&RuleStats) -> u64;
        let rules: [(MetricType, &str, &str, PerRule); 5] = [
            (
                Counter,
                "vigil_rule_alerts",
                "Alerts raised per rule (as of the last state checkpoint).",
                |r| r.fired,
            ),
            (
                Gauge,
                "vigil_rule_learning",
                "1 while a rule that learns before it alerts (first_seen) is in its learning period: it raises nothing yet (as of the last state checkpoint).",
                |r| u64::from(r.learning),
            ),
            (
                Gauge,
                "vigil_rule_groups",
                "Groups a rule holds in memory (as of the last state checkpoint; at most detect.max_groups_per_rule).",
                |r| r.groups as u64,
            ),
            (
                Counter,
                "vigil_rule_evicted",
                "Groups a rule evicted, its table full or detection's memory budget reached (as of the last state checkpoint).",
                |r| r.evicted,
            ),
            (
                Gauge,
                "vigil_rule_state_bytes",
                "Bytes a rule's groups hold, as last weighed (as of the last state checkpoint).",
                |r| r.bytes as u64,
            ),
        ];
        for (kind, name, help, f) in rules {
            let series = stats.iter().map(|r| (r.id.clone(), f(r)));
            per(&mut e, kind, name, help, "rule", series)?;
        }
        let time = self.time.lock().map(|t| t.clone()).unwrap_or_default();
        type PerLog = fn(&SourceTime) -> u64;
        let logs: [(MetricType, &str, &str, PerLog); 3] = [
            (
                Counter,
                "vigil_detect_log_late",
                "Late events per partition log (behind the watermark by more than the allowed lateness).",
                |s| s.late,
            ),
            (
                Counter,
                "vigil_detect_log_skewed",
                "Skewed events per partition log (dated too far ahead of their receive time).",
                |s| s.skewed,
            ),
            (
                Gauge,
                "vigil_detect_log_event_time_seconds",
                "Newest effective event time detection accepted per partition log (Unix seconds).",
                |s| u64::try_from(s.newest_ns / 1_000_000_000).unwrap_or(0),
            ),
        ];
        for (kind, name, help, f) in logs {
            let series = time.sources.iter().map(|(log, s)| (log.clone(), f(s)));
            per(&mut e, kind, name, help, "log", series)?;
        }
        one(
            &mut e,
            Gauge,
            "vigil_detect_watermark_seconds",
            "Detection's watermark: events at or before it are evaluated (Unix seconds).",
            u64::try_from(time.watermark_ns / 1_000_000_000).unwrap_or(0),
        )
    }
}

impl Collector for DeliverMetrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Fmt {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, v) in [
            (
                "vigil_deliveries",
                "Alert deliveries acknowledged by their targets.",
                l(&self.delivered),
            ),
            (
                "vigil_delivery_failures",
                "Failed delivery attempts.",
                l(&self.failed_attempts),
            ),
            (
                "vigil_undeliverable",
                "Alerts given up on.",
                l(&self.undeliverable),
            ),
        ] {
            one(&mut e, MetricType::Counter, name, help, v)?;
        }
        Ok(())
    }
}

/// Deliveries waiting per target, read from the outbox under a data directory at each scrape
/// (the outbox may be another process's).
#[derive(Debug)]
pub struct OutboxDepth {
    pub data_dir: PathBuf,
}

impl Collector for OutboxDepth {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Fmt {
        per(
            &mut e,
            MetricType::Gauge,
            "vigil_outbox_depth",
            "Deliveries waiting per target.",
            "target",
            outbox_depth(&self.data_dir),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::Arc;

    #[test]
    fn detection_per_rule_and_per_log_series_in_openmetrics_text() {
        let m = Arc::new(DetectMetrics::default());
        m.rows.fetch_add(7, Ordering::Relaxed);
        m.state_max_bytes.store(1 << 20, Ordering::Relaxed);
        if let Ok(mut s) = m.stats.lock() {
            s.push(RuleStats {
                id: "vigil.repeated_denial".into(),
                fired: 2,
                groups: 3,
                ..Default::default()
            });
        }
        if let Ok(mut t) = m.time.lock() {
            t.watermark_ns = 1_700_000_000_000_000_000;
            t.sources.push((
                "mesh/0".into(),
                SourceTime {
                    late: 4,
                    ..Default::default()
                },
            ));
        }
        let d = Arc::new(DeliverMetrics::default());
        d.delivered.fetch_add(5, Ordering::Relaxed);
        let mut r = Registry::default();
        r.register_collector(Box::new(m));
        r.register_collector(Box::new(d));
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, &r).unwrap();
        for line in [
            "vigil_detect_events_total 7\n",
            "# TYPE vigil_detect_state_max_bytes gauge\nvigil_detect_state_max_bytes 1048576\n",
            "vigil_rule_alerts_total{rule=\"vigil.repeated_denial\"} 2\n",
            "# TYPE vigil_rule_groups gauge\n",
            "vigil_rule_groups{rule=\"vigil.repeated_denial\"} 3\n",
            "vigil_detect_log_late_total{log=\"mesh/0\"} 4\n",
            "vigil_detect_watermark_seconds 1700000000\n",
            "vigil_deliveries_total 5\n",
        ] {
            assert!(t.contains(line), "{line:?} missing from:\n{t}");
        }
    }
}
