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
    pub durable_offsets: std::sync::Mutex<std::collections::HashMap<(String, i32), i64>>,
}

impl IngestMetrics {
    /// A copy of [`IngestMetrics::durable_offsets`].
    pub fn durable(&self) -> std::collections::HashMap<(String, i32), i64> {
        self.durable_offsets
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Record that `key` is durable up to `offset`.
    pub(crate) fn durable_at(&self, key: &(String, i32), offset: i64) {
        if let Ok(mut m) = self.durable_offsets.lock() {
            let e = m.entry(key.clone()).or_insert(offset);
            *e = (*e).max(offset);
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
