//! Counters for every record by outcome, and for what was written.

use std::sync::atomic::{AtomicU64, Ordering};

/// Ingest counters (monotonic). Every record received ends in exactly one of
/// `records_decoded`, `records_rejected`, `records_already_stored`, `records_not_assigned`
/// or `records_refetched`.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub records_received: AtomicU64,
    pub records_decoded: AtomicU64,
    /// Failed to decode: stored as rejected rows and copied to the dead-letter topic.
    pub records_rejected: AtomicU64,
    /// Re-delivered records the store already holds (after a crash or rebalance): skipped.
    pub records_already_stored: AtomicU64,
    /// Records for a partition no longer assigned here: left to its new owner.
    pub records_not_assigned: AtomicU64,
    /// Dropped to be read again after seeking back to the resume point.
    pub records_refetched: AtomicU64,
    /// Seeks back because the broker resumed a partition past the store's next offset.
    pub resume_seeks: AtomicU64,
    pub events_decoded: AtomicU64,
    pub rows_stored: AtomicU64,
    pub files_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub offset_gaps: AtomicU64,
    pub pauses: AtomicU64,
    /// File writes tried again because the data volume was full (not in the snapshot).
    pub volume_full_retries: AtomicU64,
    /// File writes tried again because the store's bucket did not answer (not in the snapshot).
    pub bucket_retries: AtomicU64,
    /// Logs given up because the bucket fenced this instance off them: another instance
    /// writes them now (not in the snapshot).
    pub logs_fenced: AtomicU64,
    pub dlq_sent: AtomicU64,
    pub dlq_delivered: AtomicU64,
    pub dlq_failed: AtomicU64,
    /// Rejected records read from a dead-letter topic itself: stored, not copied again.
    pub dlq_skipped: AtomicU64,
    /// Signed checkpoints written to the store (after each file, on assignment, on refresh).
    pub checkpoints_signed: AtomicU64,
    pub anchors_sent: AtomicU64,
    pub anchors_delivered: AtomicU64,
    pub anchors_failed: AtomicU64,
    /// Partitions this process holds now (a gauge; not in the snapshot).
    pub partitions_assigned: AtomicU64,
    /// Per partition log this process has held: the last offset in a durable file (the
    /// store's head when assigned). Rows after it are not in a file yet.
    pub durable_offsets: std::sync::Mutex<std::collections::HashMap<vigil_store::LogId, i64>>,
    /// Per partition log: the last offset consumed and handed to its pipeline. Past
    /// `durable_offsets`, records are on their way to a file (detection holds its watermark
    /// for such a log: it is not idle).
    pub received_offsets: std::sync::Mutex<std::collections::HashMap<vigil_store::LogId, i64>>,
    /// Per partition log: when its received or durable offset last moved.
    pub progress_at:
        std::sync::Mutex<std::collections::HashMap<vigil_store::LogId, std::time::Instant>>,
    /// Per partition consumed now: the broker's high watermark (the offset its next record
    /// will get), from the consumer's statistics (`statistics.interval.ms`, 1 s by default).
    pub high_watermarks: std::sync::Mutex<std::collections::HashMap<vigil_store::LogId, i64>>,
    /// Time to write one sealed batch: its Parquet file made durable and its checkpoint
    /// signed.
    pub flush_seconds: Histogram,
    /// Time from a batch's first record to its file being durable: how long a record waits
    /// before it is stored and provable.
    pub batch_age_seconds: Histogram,
}

/// Per partition consumed now: its high watermark and lag — records the broker holds that are
/// not in a durable file yet (never negative).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub high_watermark: i64,
    pub lag_records: i64,
}

/// A histogram of durations with fixed buckets (bounded: one counter per bucket), encoded by
/// the collector (`prometheus.rs`).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at most `BUCKETS_S[i]` (not cumulative; rendering sums them).
    counts: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// Upper bounds of the buckets, seconds (and +Inf).
pub(crate) const BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS_S.iter().position(|&b| s <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations per bucket (not cumulative), in the order of `BUCKETS_S`.
    pub(crate) fn counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The observations' sum, seconds.
    pub(crate) fn sum_s(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }
}

impl IngestMetrics {
    /// A copy of [`IngestMetrics::durable_offsets`].
    pub fn durable(&self) -> std::collections::HashMap<vigil_store::LogId, i64> {
        self.durable_offsets
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Per partition consumed now, by topic and partition.
    pub fn lag(&self) -> Vec<PartitionLag> {
        let durable = self.durable();
        let mut out: Vec<PartitionLag> = self
            .high_watermarks
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(log, hw)| {
                let next = durable.get(&log).map_or(0, |&o| o.saturating_add(1));
                let vigil_store::LogId { topic, partition } = log;
                PartitionLag {
                    topic,
                    partition,
                    high_watermark: hw,
                    lag_records: hw.saturating_sub(next).max(0),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// Replace the high watermarks with those of the partitions consumed now.
    pub(crate) fn set_high_watermarks(
        &self,
        now: std::collections::HashMap<vigil_store::LogId, i64>,
    ) {
        if let Ok(mut m) = self.high_watermarks.lock() {
            *m = now;
        }
    }

    /// Every partition log this process has held, with whether records are on their way
    /// (a log that has them is not idle): consumed but not durable yet, or still on the
    /// broker — its high watermark at least two past what was consumed (one is a transaction
    /// marker's), while consuming it made progress within `HELD_PROGRESS` (a gap the
    /// consumer never reads, aborted transactions' records, must not hold detection for good).
    /// "Until durable" keeps a quiet log holding detection's watermark for up to
    /// `max_batch_wait_ms` after its last record; "until handed to detection" was measured and
    /// turned a broker's uneven fetches (seconds on a busy SQLite-backed Tansu) into idle logs,
    /// and absence rules into false alerts.
    pub fn held(&self) -> Vec<(vigil_store::LogId, bool)> {
        let copy = |m: &std::sync::Mutex<std::collections::HashMap<vigil_store::LogId, i64>>| {
            m.lock().map(|m| m.clone()).unwrap_or_default()
        };
        let received = copy(&self.received_offsets);
        let high = copy(&self.high_watermarks);
        let progress = self
            .progress_at
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        self.durable()
            .into_iter()
            .map(|(k, d)| {
                let got = received.get(&k).map_or(d, |r| (*r).max(d));
                let in_flight = got > d;
                let on_broker = high.get(&k).is_some_and(|h| *h >= got.saturating_add(3))
                    && progress
                        .get(&k)
                        .is_some_and(|t| t.elapsed() < HELD_PROGRESS);
                (k, in_flight || on_broker)
            })
            .collect()
    }

    /// Record that `key`'s records up to `offset` were handed to its pipeline.
    pub(crate) fn received_at(&self, key: &vigil_store::LogId, offset: i64) {
        if let Ok(mut m) = self.received_offsets.lock() {
            let e = m.entry(key.clone()).or_insert(i64::MIN);
            if offset > *e {
                *e = offset;
                self.progressed(key);
            }
        }
    }

    /// Record that `key` is durable up to `offset` (its store head, when assigned).
    pub(crate) fn durable_at(&self, key: &vigil_store::LogId, offset: i64) {
        if let Ok(mut m) = self.durable_offsets.lock() {
            let e = m.entry(key.clone()).or_insert(i64::MIN);
            if offset > *e {
                *e = offset;
                self.progressed(key);
            }
        }
    }

    fn progressed(&self, key: &vigil_store::LogId) {
        if let Ok(mut m) = self.progress_at.lock() {
            m.insert(key.clone(), std::time::Instant::now());
        }
    }
}

/// A point-in-time copy of [`IngestMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub records_received: u64,
    pub records_decoded: u64,
    pub records_rejected: u64,
    pub records_already_stored: u64,
    pub records_not_assigned: u64,
    pub records_refetched: u64,
    pub resume_seeks: u64,
    pub events_decoded: u64,
    pub rows_stored: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    pub offset_gaps: u64,
    pub pauses: u64,
    pub dlq_sent: u64,
    pub dlq_delivered: u64,
    pub dlq_failed: u64,
    pub dlq_skipped: u64,
    pub checkpoints_signed: u64,
    pub anchors_sent: u64,
    pub anchors_delivered: u64,
    pub anchors_failed: u64,
}

impl IngestMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            records_received: g(&self.records_received),
            records_decoded: g(&self.records_decoded),
            records_rejected: g(&self.records_rejected),
            records_already_stored: g(&self.records_already_stored),
            records_not_assigned: g(&self.records_not_assigned),
            records_refetched: g(&self.records_refetched),
            resume_seeks: g(&self.resume_seeks),
            events_decoded: g(&self.events_decoded),
            rows_stored: g(&self.rows_stored),
            files_written: g(&self.files_written),
            bytes_written: g(&self.bytes_written),
            offset_gaps: g(&self.offset_gaps),
            pauses: g(&self.pauses),
            dlq_sent: g(&self.dlq_sent),
            dlq_delivered: g(&self.dlq_delivered),
            dlq_failed: g(&self.dlq_failed),
            dlq_skipped: g(&self.dlq_skipped),
            checkpoints_signed: g(&self.checkpoints_signed),
            anchors_sent: g(&self.anchors_sent),
            anchors_delivered: g(&self.anchors_delivered),
            anchors_failed: g(&self.anchors_failed),
        }
    }
}

/// How long a partition log the broker says has more records holds detection's watermark
/// without its consumption moving on (see [`IngestMetrics::held`]).
pub(crate) const HELD_PROGRESS: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_busy_while_records_are_on_their_way_to_a_file_or_still_on_the_broker() {
        let m = IngestMetrics::default();
        let key = vigil_store::LogId::new("t", 0);
        m.durable_at(&key, 4);
        m.received_at(&key, 10);
        assert_eq!(m.held(), vec![(key.clone(), true)]);
        m.durable_at(&key, 12);
        m.received_at(&key, 12);
        assert_eq!(m.held(), vec![(key.clone(), false)]);
        // The broker has records past it (a stalled fetch, a lagging consumer): busy; one past
        // the next offset is a transaction marker's, not a record on its way.
        m.set_high_watermarks([(key.clone(), 15)].into_iter().collect());
        assert_eq!(m.held(), vec![(key.clone(), true)]);
        m.set_high_watermarks([(key.clone(), 14)].into_iter().collect());
        assert_eq!(m.held(), vec![(key.clone(), false)]);
        // A gap the consumer never reads holds only while consuming makes progress.
        m.set_high_watermarks([(key.clone(), 40)].into_iter().collect());
        if let Ok(mut p) = m.progress_at.lock() {
            p.insert(key.clone(), std::time::Instant::now() - HELD_PROGRESS);
        }
        assert_eq!(m.held(), vec![(key, false)]);
    }

    #[test]
    fn lag_counts_records_past_the_durable_offset_never_negative() {
        let m = IngestMetrics::default();
        let key = |p: i32| vigil_store::LogId::new("t", p);
        m.durable_at(&key(0), 99); // offsets 0..=99 durable
        m.durable_at(&key(2), 10);
        m.set_high_watermarks(
            [(key(0), 150), (key(1), 7), (key(2), 5)]
                .into_iter()
                .collect(),
        );
        let lag: Vec<(i32, i64, i64)> = m
            .lag()
            .iter()
            .map(|l| (l.partition, l.high_watermark, l.lag_records))
            .collect();
        // Partition 1: nothing durable yet, all 7 behind; partition 2: a trailing watermark.
        assert_eq!(lag, vec![(0, 150, 50), (1, 7, 7), (2, 5, 0)]);
    }
}
