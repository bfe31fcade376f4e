//! Canonical events in the SOC's formats: OCSF 1.8.0 ([`ocsf_event`]) and Elastic Common Schema
//! ([`ecs_event`]), from any view of one canonical row ([`EventView`]).
//!
//! OCSF classes, one per kind of event:
//! - `authn` → **Authentication** (3002): `user` the caller, `status_id` Success/Failure;
//! - `authz` and `admin_audit` → **API Activity** (6003): `actor.user` the caller, `api.operation`
//!   the action, `activity_id` from the HTTP method or Kubernetes verb (Create, Read, Update,
//!   Delete, else Other), `resources` what it was done on, `http_response.code`;
//! - `flow` → **Network Activity** (4001): `activity_id` Traffic (Refuse when dropped),
//!   endpoints with address, port, workload and namespace.
//!
//! Every event carries the Security Control profile (`metadata.profiles`): `disposition_id`
//! Allowed/Blocked and `action_id` Allowed/Denied from the decision, `policy` (what decided,
//! with its revision), `authorizations` ({decision, policy}); `raw_data` the record's exact
//! bytes; `metadata.uid` the event's own id, `metadata.correlation_uid` its trace;
//! `metadata.product` the source that produced it; `unmapped` where it is in Vigil's store.

use serde_json::{Map, Value, json};

/// One canonical event, by column name (see [`crate::schema::COLUMNS`]).
pub trait EventView {
    fn text(&self, column: &str) -> Option<&str>;
    fn number(&self, column: &str) -> Option<i64>;
    fn flag(&self, column: &str) -> Option<bool>;
    /// `event_time`, ns since the epoch.
    fn time_ns(&self) -> i64;
    /// The record's exact bytes (`raw`).
    fn raw(&self) -> &[u8];
}

/// The OCSF class an event is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OcsfClass {
    Authentication,
    ApiActivity,
    NetworkActivity,
}

impl OcsfClass {
    pub fn uid(self) -> i64 {
        match self {
            OcsfClass::Authentication => 3002,
            OcsfClass::ApiActivity => 6003,
            OcsfClass::NetworkActivity => 4001,
        }
    }

    /// The class's name in the schema (`api_activity`).
    pub fn name(self) -> &'static str {
        match self {
            OcsfClass::Authentication => "authentication",
            OcsfClass::ApiActivity => "api_activity",
            OcsfClass::NetworkActivity => "network_activity",
        }
    }

    fn caption(self) -> &'static str {
        match self {
            OcsfClass::Authentication => "Authentication",
            OcsfClass::ApiActivity => "API Activity",
            OcsfClass::NetworkActivity => "Network Activity",
        }
    }

    fn category(self) -> (i64, &'static str) {
        match self {
            OcsfClass::Authentication => (3, "Identity & Access Management"),
            OcsfClass::ApiActivity => (6, "Application Activity"),
            OcsfClass::NetworkActivity => (4, "Network Activity"),
        }
    }

    /// The class an event of this canonical `kind` is written as (`None`: a rejected row).
    pub fn of_kind(kind: &str) -> Option<OcsfClass> {
        match kind {
            "authn" => Some(OcsfClass::Authentication),
            "authz" | "admin_audit" => Some(OcsfClass::ApiActivity),
            "flow" => Some(OcsfClass::NetworkActivity),
            _ => None,
        }
    }
}

/// The OCSF schema version events are written to.
pub const OCSF_VERSION: &str = "1.8.0";

fn product(format: Option<&str>) -> (&'static str, &'static str) {
    match format {
        Some("opa") => ("Open Policy Agent", "OPA"),
        Some("envoy") => ("Envoy", "Envoy Proxy"),
        Some("hubble") => ("Hubble", "Cilium"),
        Some("k8s_audit") => ("Kubernetes API server", "Kubernetes"),
        Some("gke_audit") => ("GKE audit logs", "Google Cloud"),
        _ => ("Vigil", "Vigil"),
    }
}

/// An endpoint: address, port, workload (`svc_name`), namespace (`namespace_pid`'s place is
/// taken by `domain`, the closest the schema has), or a name when only an identity is known.
fn endpoint(e: &impl EventView, side: &str) -> Option<Value> {
    let mut m = Map::new();
    if let Some(ip) = e
        .text(&format!("{side}_ip"))
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
    {
        m.insert("ip".into(), ip.into());
    }
    if let Some(p) = e.number(&format!("{side}_port")) {
        m.insert("port".into(), p.into());
    }
    if let Some(s) = e.text(&format!("{side}_service")) {
        m.insert("svc_name".into(), s.into());
    }
    if let Some(ns) = e.text(&format!("{side}_namespace")) {
        m.insert("domain".into(), ns.into());
    }
    if let Some(p) = e.text(&format!("{side}_principal")) {
        m.insert("name".into(), p.into());
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// What an HTTP method or Kubernetes verb does, as OCSF API Activity's `activity_id`.
fn api_activity(action: Option<&str>) -> (i64, &'static str) {
    match action.map(str::to_ascii_lowercase).as_deref() {
        Some("post" | "create") => (1, "Create"),
        Some("get" | "head" | "list" | "watch" | "options") => (2, "Read"),
        Some("put" | "patch" | "update") => (3, "Update"),
        Some("delete" | "deletecollection") => (4, "Delete"),
        _ => (99, "Other"),
    }
}

/// The event as OCSF, and its class (`None`: a rejected row, no event to write).
pub fn ocsf_event(e: &impl EventView) -> Option<(OcsfClass, Value)> {
    let class = OcsfClass::of_kind(e.text("kind")?)?;
    let decision = e.text("decision");
    let allowed = decision == Some("allow");
    let denied = decision == Some("deny");
    let (activity_id, activity) = match class {
        OcsfClass::Authentication => (1, "Logon"),
        OcsfClass::ApiActivity => api_activity(e.text("action")),
        OcsfClass::NetworkActivity if denied => (5, "Refuse"),
        OcsfClass::NetworkActivity => (6, "Traffic"),
    };
    let (cat_uid, cat) = class.category();
    let (pname, vendor) = product(e.text("source_format"));
    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": {"name": pname, "vendor_name": vendor},
        "profiles": ["security_control"],
        "log_name": e.text("kafka_topic").unwrap_or("events"),
    });
    if let Some(id) = e.text("event_id") {
        metadata["uid"] = id.into();
    }
    if let Some(t) = e.text("trace_id") {
        metadata["correlation_uid"] = t.into();
    }
    let raw = String::from_utf8_lossy(e.raw()).into_owned();
    let mut v = json!({
        "activity_id": activity_id,
        "activity_name": activity,
        "category_uid": cat_uid,
        "category_name": cat,
        "class_uid": class.uid(),
        "class_name": class.caption(),
        "type_uid": class.uid() * 100 + activity_id,
        "type_name": format!("{}: {activity}", class.caption()),
        "severity_id": 1,
        "severity": "Informational",
        "time": e.time_ns().div_euclid(1_000_000),
        "metadata": metadata,
        "raw_data": raw,
        "raw_data_size": e.raw().len(),
    });
    // The Security Control profile: what the control decided.
    let (disposition_id, disposition, action_id, action) = match decision {
        Some("allow") => (1, "Allowed", 1, "Allowed"),
        Some("deny") => (2, "Blocked", 2, "Denied"),
        _ => (0, "Unknown", 0, "Unknown"),
    };
    v["disposition_id"] = disposition_id.into();
    v["disposition"] = disposition.into();
    v["action_id"] = action_id.into();
    v["action"] = action.into();
    v["status_id"] = if allowed {
        1
    } else if denied {
        2
    } else {
        0
    }
    .into();
    v["status"] = if allowed {
        "Success"
    } else if denied {
        "Failure"
    } else {
        "Unknown"
    }
    .into();
    if let Some(r) = e.text("reason") {
        v["status_detail"] = r.into();
    }
    if let Some(c) = e.number("status_code") {
        v["status_code"] = c.to_string().into();
    }
    if let Some(p) = e.text("policy") {
        let mut policy = json!({"name": p});
        if let Some(rev) = e.text("policy_revision") {
            policy["version"] = rev.into();
        }
        v["policy"] = policy.clone();
        v["authorizations"] =
            json!([{"decision": decision.unwrap_or("unknown"), "policy": policy}]);
    } else if let Some(d) = decision {
        v["authorizations"] = json!([{"decision": d}]);
    }
    let src = endpoint(e, "caller");
    let dst = endpoint(e, "callee");
    let user = e.text("caller_principal").map(|p| json!({"name": p}));
    match class {
        OcsfClass::Authentication => {
            v["user"] = user.unwrap_or_else(|| json!({"name": "unknown"}));
            if let Some(s) = src {
                v["src_endpoint"] = s;
            }
            if let Some(d) = dst {
                v["dst_endpoint"] = d;
            }
            if let Some(s) = e.text("callee_service") {
                v["service"] = json!({"name": s});
            }
        }
        OcsfClass::ApiActivity => {
            v["actor"] = json!({"user": user.unwrap_or_else(|| json!({"name": "unknown"}))});
            v["api"] = json!({"operation": e.text("action").unwrap_or("unknown")});
            if let Some(s) = e.text("callee_service") {
                v["api"]["service"] = json!({"name": s});
            }
            if let Some(id) = e.text("request_id") {
                v["api"]["request"] = json!({"uid": id});
            }
            v["src_endpoint"] = src.unwrap_or_else(|| json!({"name": "unknown"}));
            if let Some(d) = dst {
                v["dst_endpoint"] = d;
            }
            if let Some(r) = e.text("resource") {
                v["resources"] = json!([{"name": r}]);
            }
            if let Some(c) = e.number("status_code") {
                v["http_response"] = json!({"code": c});
            }
        }
        OcsfClass::NetworkActivity => {
            if let Some(s) = src {
                v["src_endpoint"] = s;
            }
            if let Some(d) = dst {
                v["dst_endpoint"] = d;
            }
            if let Some(p) = e.text("action") {
                v["connection_info"] = json!({"protocol_name": p.to_ascii_lowercase(), "direction_id": 0, "direction": "Unknown"});
            }
            if let Some(r) = e.flag("is_reply") {
                v["is_src_dst_assignment_known"] = (!r).into();
            }
        }
    }
    let mut unmapped = Map::new();
    for k in ["kafka_topic", "source_format", "decision"] {
        if let Some(t) = e.text(k) {
            unmapped.insert(k.into(), t.into());
        }
    }
    for k in ["kafka_partition", "kafka_offset", "record_index"] {
        if let Some(n) = e.number(k) {
            unmapped.insert(k.into(), n.into());
        }
    }
    v["unmapped"] = Value::Object(unmapped);
    Some((class, v))
}

/// The event as Elastic Common Schema (8.x) JSON: `@timestamp`, `event.*` (`kind` event,
/// `category`, `type` allowed/denied, `outcome`, `action`, `dataset` the source, `id`,
/// `original` the record), `source.*` / `destination.*`, `user.name`, `url.path`,
/// `http.request.method`, `http.response.status_code`, `rule.name` (the policy), `trace.id`,
/// and `vigil.*` where it is in the store. `None` for a rejected row.
pub fn ecs_event(e: &impl EventView) -> Option<Value> {
    let kind = e.text("kind")?;
    let category = match kind {
        "authn" => "authentication",
        "flow" => "network",
        _ => "web",
    };
    let decision = e.text("decision");
    let (etype, outcome) = match decision {
        Some("allow") => ("allowed", "success"),
        Some("deny") => ("denied", "failure"),
        _ => ("info", "unknown"),
    };
    let t = chrono::DateTime::from_timestamp_nanos(e.time_ns())
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut v = json!({
        "@timestamp": t,
        "ecs": {"version": "8.11.0"},
        "event": {
            "kind": "event",
            "category": [category],
            "type": [etype],
            "outcome": outcome,
            "dataset": format!("vigil.{}", e.text("source_format").unwrap_or("unknown")),
            "module": "vigil",
            "original": String::from_utf8_lossy(e.raw()),
        },
    });
    let mut set = |path: &[&str], val: Value| {
        let mut at = &mut v;
        for (i, k) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[*k] = val;
                return;
            }
            if at.get(*k).is_none() {
                at[*k] = json!({});
            }
            at = &mut at[*k];
        }
    };
    let texts: [(&str, &[&str]); 14] = [
        ("action", &["event", "action"]),
        ("event_id", &["event", "id"]),
        ("reason", &["event", "reason"]),
        ("caller_ip", &["source", "ip"]),
        ("callee_ip", &["destination", "ip"]),
        ("caller_principal", &["user", "name"]),
        ("caller_service", &["source", "service", "name"]),
        ("callee_service", &["destination", "service", "name"]),
        ("caller_namespace", &["source", "namespace"]),
        ("callee_namespace", &["destination", "namespace"]),
        ("callee_principal", &["destination", "user", "name"]),
        ("resource", &["url", "path"]),
        ("policy", &["rule", "name"]),
        ("trace_id", &["trace", "id"]),
    ];
    for (col, path) in texts {
        if let Some(s) = e.text(col) {
            set(path, s.into());
        }
    }
    if let Some(p) = e.number("caller_port") {
        set(&["source", "port"], p.into());
    }
    if let Some(p) = e.number("callee_port") {
        set(&["destination", "port"], p.into());
    }
    if let Some(c) = e.number("status_code") {
        set(&["http", "response", "status_code"], c.into());
    }
    if kind != "flow"
        && let Some(m) = e.text("action")
    {
        set(&["http", "request", "method"], m.into());
    }
    if let Some(r) = e.text("policy_revision") {
        set(&["rule", "version"], r.into());
    }
    for (col, key) in [("kafka_topic", "log"), ("source_format", "source_format")] {
        if let Some(s) = e.text(col) {
            set(&["vigil", key], s.into());
        }
    }
    for col in ["kafka_partition", "kafka_offset"] {
        if let Some(n) = e.number(col) {
            set(&["vigil", col], n.into());
        }
    }
    Some(v)
}

/// One row of a record batch in the canonical (or the store's) schema, as an [`EventView`].
pub struct BatchEvent<'a> {
    pub batch: &'a arrow::record_batch::RecordBatch,
    pub row: usize,
}

impl EventView for BatchEvent<'_> {
    fn text(&self, column: &str) -> Option<&str> {
        use arrow::array::{Array, AsArray};
        let c = self.batch.column_by_name(column)?;
        if !c.is_valid(self.row) {
            return None;
        }
        // The store's files hold `Utf8`; a query engine may hand them over as views.
        if let Some(a) = c.as_string_opt::<i32>() {
            return Some(a.value(self.row));
        }
        c.as_string_view_opt().map(|a| a.value(self.row))
    }

    fn number(&self, column: &str) -> Option<i64> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{DataType, Int32Type, Int64Type, UInt16Type, UInt32Type};
        let c = self.batch.column_by_name(column)?;
        if !c.is_valid(self.row) {
            return None;
        }
        match c.data_type() {
            DataType::Int32 => Some(c.as_primitive::<Int32Type>().value(self.row).into()),
            DataType::Int64 => Some(c.as_primitive::<Int64Type>().value(self.row)),
            DataType::UInt16 => Some(c.as_primitive::<UInt16Type>().value(self.row).into()),
            DataType::UInt32 => Some(c.as_primitive::<UInt32Type>().value(self.row).into()),
            _ => None,
        }
    }

    fn flag(&self, column: &str) -> Option<bool> {
        use arrow::array::{Array, AsArray};
        let a = self.batch.column_by_name(column)?.as_boolean_opt()?;
        a.is_valid(self.row).then(|| a.value(self.row))
    }

    fn time_ns(&self) -> i64 {
        use arrow::array::AsArray;
        use arrow::datatypes::TimestampNanosecondType;
        self.batch
            .column_by_name("event_time")
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
            .map_or(0, |a| a.value(self.row))
    }

    fn raw(&self) -> &[u8] {
        use arrow::array::{Array, AsArray};
        let Some(c) = self
            .batch
            .column_by_name("raw")
            .filter(|c| c.is_valid(self.row))
        else {
            return &[];
        };
        if let Some(a) = c.as_binary_opt::<i32>() {
            return a.value(self.row);
        }
        c.as_binary_view_opt().map_or(&[], |a| a.value(self.row))
    }
}
