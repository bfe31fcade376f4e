//! The one canonical Arrow schema every event is stored and queried in.
//!
//! The column list below is the single source of truth: the Arrow schema, each field's `doc`
//! metadata (which travels into Parquet footers), and the reference table in
//! `docs/event-schema.md` (checked by a test) are all generated from it.
//!
//! Column names starting with `kafka_`, `leaf_`, `chain_` or `store_` are reserved for the
//! columns the store appends (Kafka position, hash chain); decoders never produce them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Prefixes of the column names reserved for the store stage.
pub const RESERVED_PREFIXES: &[&str] = &["kafka_", "leaf_", "chain_", "store_"];

/// Schema-level metadata key holding the schema version.
pub(crate) const SCHEMA_VERSION_KEY: &str = "vigil.schema_version";
/// Bumped on any incompatible change to the canonical columns.
pub(crate) const SCHEMA_VERSION: &str = "1";

/// One canonical column: name, Arrow type, nullability and what it means.
pub struct Column {
    pub name: &'static str,
    pub data_type: fn() -> DataType,
    pub nullable: bool,
    pub doc: &'static str,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}
fn utf8() -> DataType {
    DataType::Utf8
}
fn boolean() -> DataType {
    DataType::Boolean
}
fn u16_() -> DataType {
    DataType::UInt16
}
fn i32_() -> DataType {
    DataType::Int32
}
fn u32_() -> DataType {
    DataType::UInt32
}
fn binary() -> DataType {
    DataType::Binary
}

macro_rules! col {
    ($name:literal, $ty:ident, $nullable:literal, $doc:literal) => {
        Column {
            name: $name,
            data_type: $ty,
            nullable: $nullable,
            doc: $doc,
        }
    };
}

/// The canonical columns, in order.
pub const COLUMNS: &[Column] = &[
    col!(
        "event_time",
        ts,
        false,
        "When the event happened, UTC, ns. From the record (OPA `timestamp`, Envoy `start_time`, Hubble `time`, k8s `requestReceivedTimestamp`, …); if the record has none, the time it was received (see `event_time_inferred`)."
    ),
    col!(
        "event_time_inferred",
        boolean,
        false,
        "True when the record carried no event time and `event_time` is the receive time (Kafka timestamp or arrival)."
    ),
    col!(
        "kind",
        utf8,
        true,
        "`authn`, `authz`, `flow` or `admin_audit`. Null only on a rejected record (one that failed to decode; the store's `store_error` says why)."
    ),
    col!(
        "source_format",
        utf8,
        true,
        "The decoder that read it: `opa`, `envoy`, `hubble`, `k8s_audit`, `gke_audit`, `native`. Null only on a rejected record."
    ),
    col!(
        "decision",
        utf8,
        true,
        "`allow`, `deny`, `error` (the decision itself failed) or `unknown` (the record carries none). Null only on a rejected record."
    ),
    col!(
        "reason",
        utf8,
        true,
        "Why: OPA result `reason` or error, Envoy `response_code_details`, Hubble `drop_reason_desc`, k8s authorizer reason or status message."
    ),
    col!(
        "policy",
        utf8,
        true,
        "What decided: OPA query path, Istio RBAC policy, Hubble policy names, k8s authorizer permission."
    ),
    col!(
        "policy_revision",
        utf8,
        true,
        "Policy/bundle revision: OPA `bundles` as `name=revision` pairs (comma-separated, sorted) or legacy `revision`."
    ),
    col!(
        "caller_principal",
        utf8,
        true,
        "Caller identity: SPIFFE ID (mTLS peer), k8s user or service account, or for Hubble the workload (or pod) name."
    ),
    col!(
        "caller_namespace",
        utf8,
        true,
        "Caller's Kubernetes namespace (from the source, or derived from its SPIFFE ID / service account)."
    ),
    col!(
        "caller_service",
        utf8,
        true,
        "Caller's service name where the source names one (Hubble `source_service`)."
    ),
    col!(
        "caller_ip",
        utf8,
        true,
        "Caller IP address as text (IPv6 without brackets)."
    ),
    col!("caller_port", u16_, true, "Caller port."),
    col!(
        "callee_principal",
        utf8,
        true,
        "Callee identity: SPIFFE ID of the upstream/destination, or Hubble destination workload (or pod)."
    ),
    col!(
        "callee_namespace",
        utf8,
        true,
        "Callee's namespace (for k8s audit: the namespace of the object acted on)."
    ),
    col!(
        "callee_service",
        utf8,
        true,
        "Service addressed: HTTP authority/host, Hubble destination service or DNS name, `kube-apiserver` for k8s audit."
    ),
    col!("callee_ip", utf8, true, "Callee IP address as text."),
    col!("callee_port", u16_, true, "Callee port."),
    col!(
        "action",
        utf8,
        true,
        "What was attempted: HTTP method, k8s verb, or L4 protocol (TCP, UDP, ICMPv4, …) for network flows."
    ),
    col!(
        "resource",
        utf8,
        true,
        "What it was attempted on: HTTP path, k8s request URI, DNS query or HTTP URL for L7 flows."
    ),
    col!(
        "status_code",
        i32_,
        true,
        "Protocol status: HTTP response code, k8s `responseStatus.code`, OPA result `http_status`."
    ),
    col!(
        "trace_id",
        utf8,
        true,
        "Distributed trace id (OPA `trace_id`, W3C `traceparent`, B3, Hubble `trace_context`)."
    ),
    col!(
        "request_id",
        utf8,
        true,
        "Request id (`x-request-id`, Envoy `request_id`)."
    ),
    col!(
        "event_id",
        utf8,
        true,
        "The source's own id for this event: OPA `decision_id`, k8s `auditID`, Hubble flow `uuid`, GCP `insertId`, native `id`."
    ),
    col!(
        "is_reply",
        boolean,
        true,
        "Hubble: true for the reply direction of a flow. Null where the format has no notion of it."
    ),
    col!(
        "record_index",
        u32_,
        false,
        "Position of this event inside its record: 0, or the array index for OPA's batched uploads."
    ),
    col!(
        "raw",
        binary,
        false,
        "The event's exact bytes as received (the whole record, or its element of an uploaded array after gunzip)."
    ),
];

/// Index of each column in [`canonical_schema`], for builders and readers.
pub mod idx {
    pub const EVENT_TIME: usize = 0;
    pub const RAW: usize = 26;
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<Field> = COLUMNS
        .iter()
        .map(|c| {
            Field::new(c.name, (c.data_type)(), c.nullable)
                .with_metadata(HashMap::from([("doc".to_owned(), c.doc.to_owned())]))
        })
        .collect();
    let meta = HashMap::from([(SCHEMA_VERSION_KEY.to_owned(), SCHEMA_VERSION.to_owned())]);
    Arc::new(Schema::new_with_metadata(fields, meta))
});

/// The canonical Arrow schema (shared; cheap to clone).
pub fn canonical_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// The column reference as a Markdown table (`vigil schema` prints it; docs are generated
/// from it).
pub fn markdown_reference() -> String {
    let mut out = String::from("| column | Arrow type | nullable | meaning |\n|---|---|---|---|\n");
    for c in COLUMNS {
        let ty = match (c.data_type)() {
            DataType::Timestamp(TimeUnit::Nanosecond, Some(tz)) => format!("Timestamp(ns, {tz})"),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            c.name,
            ty,
            if c.nullable { "yes" } else { "no" },
            c.doc
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_names() {
        let s = canonical_schema();
        assert_eq!(s.field(idx::EVENT_TIME).name(), "event_time");
        assert_eq!(s.field(idx::RAW).name(), "raw");
        assert_eq!(s.fields().len(), COLUMNS.len());
    }

    #[test]
    fn no_canonical_column_uses_a_reserved_prefix() {
        for c in COLUMNS {
            assert!(
                !RESERVED_PREFIXES.iter().any(|p| c.name.starts_with(p)),
                "{} uses a reserved prefix",
                c.name
            );
        }
    }

    #[test]
    fn every_column_is_documented_in_the_field_metadata() {
        for f in canonical_schema().fields() {
            assert!(
                f.metadata().get("doc").is_some_and(|d| d.len() > 10),
                "{}",
                f.name()
            );
        }
    }
}
