//! Ingest's counters as Prometheus/OpenMetrics metrics: a [`Collector`] the binary registers.
//! Label values are topic names (validated by `LogId`: `[A-Za-z0-9._-]`), partition numbers
//! and fixed words, so none needs escaping (prometheus-client escapes none: client_rust#151).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::IngestMetrics;
use crate::metrics::{BUCKETS_S, Histogram};

type Fmt = Result<(), std::fmt::Error>;

/// One unlabelled counter.
fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Fmt {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One unlabelled gauge.
fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> Fmt {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Histogram {
    fn encode(&self, mut e: MetricEncoder<'_>) -> Fmt {
        let mut buckets: Vec<(f64, u64)> = BUCKETS_S
            .iter()
            .zip(self.counts())
            .map(|(b, c)| (*b, c))
            .collect();
        let (count, sum_s) = (self.count(), self.sum_s());
        let below: u64 = buckets.iter().map(|(_, c)| c).sum();
        // The +Inf bucket: observations past the largest bound.
        buckets.push((f64::MAX, count.saturating_sub(below)));
        e.encode_histogram(
            sum_s,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<Vec<(String, String)>, f64>>>,
        )
    }
}

impl Collector for IngestMetrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Fmt {
        let m = self.snapshot();
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let gi = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        {
            let mut f = e.encode_descriptor(
                "vigil_records",
                "Kafka records by outcome.",
                None,
                MetricType::Counter,
            )?;
            for (outcome, v) in [
                ("decoded", m.records_decoded),
                ("rejected", m.records_rejected),
                ("already_stored", m.records_already_stored),
                ("not_assigned", m.records_not_assigned),
                ("refetched", m.records_refetched),
            ] {
                ConstCounter::new(v).encode(f.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        for (name, help, v) in [
            (
                "vigil_rows_stored",
                "Rows written to the store.",
                m.rows_stored,
            ),
            (
                "vigil_files_written",
                "Store files written.",
                m.files_written,
            ),
            (
                "vigil_bytes_written",
                "Store bytes written.",
                m.bytes_written,
            ),
            (
                "vigil_partition_pauses",
                "Partitions paused because the store did not keep up (a slow or full volume).",
                m.pauses,
            ),
            (
                "vigil_volume_full_retries",
                "File writes tried again because the data volume was full.",
                l(&self.volume_full_retries),
            ),
            (
                "vigil_bucket_retries",
                "File writes tried again because the store's bucket did not answer.",
                l(&self.bucket_retries),
            ),
            (
                "vigil_logs_fenced",
                "Partition logs given up because another instance writes them now (fenced by the bucket).",
                l(&self.logs_fenced),
            ),
            (
                "vigil_checkpoints_signed",
                "Signed checkpoints.",
                m.checkpoints_signed,
            ),
            (
                "vigil_anchors_failed",
                "Checkpoint anchors not delivered.",
                m.anchors_failed,
            ),
        ] {
            counter(&mut e, name, help, v)?;
        }
        gauge(
            &mut e,
            "vigil_partitions_assigned",
            "Partitions this process consumes.",
            gi(l(&self.partitions_assigned)),
        )?;
        let lag = self.lag();
        for (name, help, value) in [
            (
                "vigil_partition_high_watermark",
                "The broker's high watermark per partition consumed here.",
                (|p: &crate::PartitionLag| p.high_watermark) as fn(&crate::PartitionLag) -> i64,
            ),
            (
                "vigil_partition_lag_records",
                "Records the broker holds that are not in a durable file yet, per partition consumed here.",
                |p| p.lag_records,
            ),
        ] {
            let mut f = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in &lag {
                let partition = p.partition.to_string();
                let labels = [
                    ("topic", p.topic.as_str()),
                    ("partition", partition.as_str()),
                ];
                ConstGauge::new(value(p).max(0)).encode(f.encode_family(&labels)?)?;
            }
        }
        for (name, help, h) in [
            (
                "vigil_flush_seconds",
                "Time to write a sealed batch: its file durable and its checkpoint signed.",
                &self.flush_seconds,
            ),
            (
                "vigil_batch_age_seconds",
                "Time from a batch's first record to its file being durable.",
                &self.batch_age_seconds,
            ),
        ] {
            h.encode(e.encode_descriptor(name, help, None, MetricType::Histogram)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::Arc;
    use std::time::Duration;

    fn text(m: Arc<IngestMetrics>) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(m));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn counters_gauges_lag_and_histograms_in_openmetrics_text() {
        let m = Arc::new(IngestMetrics::default());
        m.records_decoded.fetch_add(60, Ordering::Relaxed);
        m.partitions_assigned.store(2, Ordering::Relaxed);
        let key = vigil_store::LogId::new("mesh", 0);
        m.durable_at(&key, 59);
        m.set_high_watermarks([(key, 70)].into_iter().collect());
        m.flush_seconds.observe(Duration::from_micros(500));
        m.flush_seconds.observe(Duration::from_millis(20));
        m.flush_seconds.observe(Duration::from_secs(60));
        let t = text(m);
        for line in [
            "# TYPE vigil_records counter\n",
            "vigil_records_total{outcome=\"decoded\"} 60\n",
            "vigil_records_total{outcome=\"refetched\"} 0\n",
            "vigil_rows_stored_total 0\n",
            "# TYPE vigil_partitions_assigned gauge\nvigil_partitions_assigned 2\n",
            "vigil_partition_high_watermark{topic=\"mesh\",partition=\"0\"} 70\n",
            "vigil_partition_lag_records{topic=\"mesh\",partition=\"0\"} 10\n",
            "# TYPE vigil_flush_seconds histogram\n",
            "vigil_flush_seconds_bucket{le=\"0.001\"} 1\n",
            "vigil_flush_seconds_bucket{le=\"0.01\"} 1\n",
            "vigil_flush_seconds_bucket{le=\"0.025\"} 2\n",
            "vigil_flush_seconds_bucket{le=\"30.0\"} 2\n",
            "vigil_flush_seconds_bucket{le=\"+Inf\"} 3\n",
            "vigil_flush_seconds_sum 60.0205\n",
            "vigil_flush_seconds_count 3\n",
            "vigil_batch_age_seconds_count 0\n",
        ] {
            assert!(t.contains(line), "{line:?} missing from:\n{t}");
        }
        assert!(t.ends_with("# EOF\n"), "{t}");
    }
}
