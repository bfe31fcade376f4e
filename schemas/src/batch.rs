//! Appending canonical events into Arrow record batches, column by column.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int32Builder, StringBuilder,
    TimestampNanosecondBuilder, UInt16Builder, UInt32Builder,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::model::{Event, Identity};
use crate::schema::{COLUMNS, canonical_schema};

/// Builds [`RecordBatch`]es in the canonical schema from decoded [`Event`]s.
///
/// Strings and raw bytes are copied straight into the Arrow buffers; there is no per-event or
/// per-field heap object. A builder is reusable: [`EventBatchBuilder::finish`] resets it.
pub struct EventBatchBuilder {
    event_time: TimestampNanosecondBuilder,
    event_time_inferred: BooleanBuilder,
    kind: StringBuilder,
    source_format: StringBuilder,
    decision: StringBuilder,
    reason: StringBuilder,
    policy: StringBuilder,
    policy_revision: StringBuilder,
    caller: IdentityBuilders,
    callee: IdentityBuilders,
    action: StringBuilder,
    resource: StringBuilder,
    status_code: Int32Builder,
    trace_id: StringBuilder,
    request_id: StringBuilder,
    event_id: StringBuilder,
    is_reply: BooleanBuilder,
    record_index: UInt32Builder,
    raw: BinaryBuilder,
    len: usize,
    raw_bytes: usize,
    /// Sizes to allocate for the next batch: arrow's `finish` leaves empty buffers, and growing
    /// them again by doubling would copy every batch's bytes several times.
    capacity_events: usize,
    capacity_raw_bytes: usize,
}

struct IdentityBuilders {
    principal: StringBuilder,
    namespace: StringBuilder,
    service: StringBuilder,
    ip: StringBuilder,
    port: UInt16Builder,
}

impl IdentityBuilders {
    fn new(capacity: usize) -> Self {
        IdentityBuilders {
            principal: StringBuilder::with_capacity(capacity, capacity * 32),
            namespace: StringBuilder::with_capacity(capacity, capacity * 8),
            service: StringBuilder::with_capacity(capacity, capacity * 16),
            ip: StringBuilder::with_capacity(capacity, capacity * 12),
            port: UInt16Builder::with_capacity(capacity),
        }
    }

    fn append(&mut self, id: &Identity<'_>) {
        self.principal.append_option(id.principal.as_deref());
        self.namespace.append_option(id.namespace.as_deref());
        self.service.append_option(id.service.as_deref());
        self.ip.append_option(id.ip.as_deref());
        self.port.append_option(id.port);
    }

    fn finish_into(&mut self, out: &mut Vec<ArrayRef>) {
        out.push(Arc::new(self.principal.finish()));
        out.push(Arc::new(self.namespace.finish()));
        out.push(Arc::new(self.service.finish()));
        out.push(Arc::new(self.ip.finish()));
        out.push(Arc::new(self.port.finish()));
    }
}

fn strings(capacity: usize, bytes_each: usize) -> StringBuilder {
    StringBuilder::with_capacity(capacity, capacity * bytes_each)
}

impl EventBatchBuilder {
    /// A builder sized for about `capacity` events (it grows past that if needed).
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_capacities(capacity, capacity * 512)
    }

    fn with_capacities(capacity: usize, raw_bytes: usize) -> Self {
        EventBatchBuilder {
            event_time: TimestampNanosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            event_time_inferred: BooleanBuilder::with_capacity(capacity),
            kind: strings(capacity, 5),
            source_format: strings(capacity, 6),
            decision: strings(capacity, 5),
            reason: strings(capacity, 8),
            policy: strings(capacity, 16),
            policy_revision: strings(capacity, 8),
            caller: IdentityBuilders::new(capacity),
            callee: IdentityBuilders::new(capacity),
            action: strings(capacity, 4),
            resource: strings(capacity, 24),
            status_code: Int32Builder::with_capacity(capacity),
            trace_id: strings(capacity, 16),
            request_id: strings(capacity, 16),
            event_id: strings(capacity, 36),
            is_reply: BooleanBuilder::with_capacity(capacity),
            record_index: UInt32Builder::with_capacity(capacity),
            raw: BinaryBuilder::with_capacity(capacity, raw_bytes),
            len: 0,
            raw_bytes: 0,
            capacity_events: capacity,
            capacity_raw_bytes: raw_bytes,
        }
    }

    /// Events appended since the last finish.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Raw bytes appended since the last finish (for byte-bounded batching).
    pub fn raw_bytes(&self) -> usize {
        self.raw_bytes
    }

    /// Append one event. `received_time_ns` stands in for the event time when the record
    /// carried none (and the row is then marked `event_time_inferred`).
    pub fn append(&mut self, e: &Event<'_>, received_time_ns: i64) {
        self.event_time
            .append_value(e.time_ns.unwrap_or(received_time_ns));
        self.event_time_inferred.append_value(e.time_ns.is_none());
        self.kind.append_value(e.kind.as_str());
        self.source_format.append_value(e.format.as_str());
        self.decision.append_value(e.decision.as_str());
        self.reason.append_option(e.reason.as_deref());
        self.policy.append_option(e.policy.as_deref());
        self.policy_revision
            .append_option(e.policy_revision.as_deref());
        self.caller.append(&e.caller);
        self.callee.append(&e.callee);
        self.action.append_option(e.action.as_deref());
        self.resource.append_option(e.resource.as_deref());
        self.status_code.append_option(e.status_code);
        self.trace_id.append_option(e.trace_id.as_deref());
        self.request_id.append_option(e.request_id.as_deref());
        self.event_id.append_option(e.event_id.as_deref());
        self.is_reply.append_option(e.is_reply);
        self.record_index.append_value(e.record_index);
        self.raw.append_value(&e.raw);
        self.len += 1;
        self.raw_bytes += e.raw.len();
    }

    /// Append a row for a record that failed to decode: its bytes, the receive time, and
    /// nulls for everything a decoder would have filled (`kind`, `source_format`, `decision`
    /// included). The caller records why (the store's `store_error` column).
    pub fn append_rejected(&mut self, raw: &[u8], received_time_ns: i64) {
        self.event_time.append_value(received_time_ns);
        self.event_time_inferred.append_value(true);
        self.kind.append_null();
        self.source_format.append_null();
        self.decision.append_null();
        self.reason.append_null();
        self.policy.append_null();
        self.policy_revision.append_null();
        self.caller.append(&Identity::default());
        self.callee.append(&Identity::default());
        self.action.append_null();
        self.resource.append_null();
        self.status_code.append_null();
        self.trace_id.append_null();
        self.request_id.append_null();
        self.event_id.append_null();
        self.is_reply.append_null();
        self.record_index.append_value(0);
        self.raw.append_value(raw);
        self.len += 1;
        self.raw_bytes += raw.len();
    }

    /// Take the events appended so far as a batch in the canonical schema; the builder is
    /// empty afterwards and can be reused.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        // Size the next batch like the largest seen so far, then finish this one.
        let next = Self::with_capacities(
            self.capacity_events.max(self.len),
            self.capacity_raw_bytes.max(self.raw_bytes),
        );
        std::mem::replace(self, next).finish_columns()
    }

    fn finish_columns(mut self) -> Result<RecordBatch, ArrowError> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len());
        cols.push(Arc::new(self.event_time.finish()));
        cols.push(Arc::new(self.event_time_inferred.finish()));
        cols.push(Arc::new(self.kind.finish()));
        cols.push(Arc::new(self.source_format.finish()));
        cols.push(Arc::new(self.decision.finish()));
        cols.push(Arc::new(self.reason.finish()));
        cols.push(Arc::new(self.policy.finish()));
        cols.push(Arc::new(self.policy_revision.finish()));
        self.caller.finish_into(&mut cols);
        self.callee.finish_into(&mut cols);
        cols.push(Arc::new(self.action.finish()));
        cols.push(Arc::new(self.resource.finish()));
        cols.push(Arc::new(self.status_code.finish()));
        cols.push(Arc::new(self.trace_id.finish()));
        cols.push(Arc::new(self.request_id.finish()));
        cols.push(Arc::new(self.event_id.finish()));
        cols.push(Arc::new(self.is_reply.finish()));
        cols.push(Arc::new(self.record_index.finish()));
        cols.push(Arc::new(self.raw.finish()));
        // `try_new` checks every column's type, nullability and length against the schema: a
        // builder that drifted from `COLUMNS` fails here, not later in a Parquet writer.
        RecordBatch::try_new(canonical_schema(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Decision, Kind, SourceFormat};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampNanosecondType;

    #[test]
    fn builds_a_batch_in_the_canonical_schema() {
        let mut b = EventBatchBuilder::with_capacity(2);
        let mut e = Event::new(SourceFormat::Native, Kind::Authz, Decision::Deny, b"{}");
        e.time_ns = Some(5);
        e.caller.port = Some(443);
        b.append(&e, 99);
        e.time_ns = None;
        b.append(&e, 99);
        assert_eq!(b.raw_bytes(), 4);
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert!(b.is_empty());
        let t = batch.column(0).as_primitive::<TimestampNanosecondType>();
        assert_eq!((t.value(0), t.value(1)), (5, 99));
        let inferred = batch.column(1).as_boolean();
        assert!(!inferred.value(0) && inferred.value(1));
        assert_eq!(
            batch
                .column_by_name("decision")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "deny"
        );
        assert!(batch.column_by_name("callee_port").unwrap().is_null(0));
    }
}
