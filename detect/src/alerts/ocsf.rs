//! Alerts as OCSF 1.8.0 **Detection Finding** (class 2004, category Findings): what SIEMs and
//! security lakes ingest natively ([`detection_finding`]), chosen per delivery target and per
//! API call by [`AlertFormat`].
//!
//! The mapping, one alert revision → one finding:
//! - `activity_id` Create for an alert's first revision, Close once resolved, Update between;
//! - `finding_info`: `uid` the alert id, `title`, the rule as `analytic` (`uid` the rule id,
//!   `version`, `category` its kind, `type_id` Rule), first and last event times; `desc` the
//!   alert's detail (for a Sigma rule its attribution: title, id, level, author, licence);
//! - `severity_id` / `status_id` from Vigil's typed severity and status;
//! - `evidences`: one per evidence event, its `data` what a verifier needs to prove it — the
//!   log, leaf index and leaf hash (`vigil proof --log … --index …`), its event time and id;
//! - `metadata`: product Vigil, schema version 1.8.0, `uid` the revision (`<alert id>:<n>`),
//!   `correlation_uid` the incident; `unmapped` the group key, revision and who changed it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Alert, Severity, Status};

/// How alerts are written out: Vigil's own JSON (the alert as `vigil alerts --json` prints
/// it), or OCSF Detection Findings.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertFormat {
    #[default]
    Vigil,
    Ocsf,
}

/// The OCSF schema version the findings are written to.
pub const OCSF_VERSION: &str = "1.8.0";

const CLASS_UID: i64 = 2004;

fn ms(ns: i64) -> i64 {
    ns.div_euclid(1_000_000)
}

/// The alert revision as an OCSF Detection Finding.
pub fn detection_finding(a: &Alert) -> Value {
    let (activity_id, activity) = match (a.status, a.revision) {
        (Status::Resolved, _) => (3, "Close"),
        (_, r) if r <= 1 => (1, "Create"),
        _ => (2, "Update"),
    };
    let (severity_id, severity) = match a.severity {
        Severity::Info => (1, "Informational"),
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    };
    let (status_id, status) = match a.status {
        Status::Open => (1, "New"),
        Status::Acknowledged => (2, "In Progress"),
        Status::Suppressed => (3, "Suppressed"),
        Status::Resolved => (4, "Resolved"),
    };
    let evidences: Vec<Value> = a
        .evidence
        .iter()
        .map(|e| {
            json!({
                "uid": e.event_id.clone().unwrap_or_else(|| format!("{}#{}", e.log, e.index)),
                "name": format!("{}#{}", e.log, e.index),
                "data": {
                    "log": e.log,
                    "leaf_index": e.index,
                    "leaf_hash": e.leaf_hash,
                    "event_time": chrono::DateTime::from_timestamp_nanos(e.event_time_ns)
                        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                    "event_id": e.event_id,
                },
            })
        })
        .collect();
    let mut finding_info = json!({
        "uid": a.alert_id,
        "title": a.title,
        "analytic": {
            "uid": a.rule_id,
            "name": a.rule_id,
            "type_id": 1,
            "type": "Rule",
            "category": a.rule_kind,
            "version": a.rule_version.to_string(),
        },
        "types": [a.rule_kind],
        "created_time": ms(a.detected_ns),
        "first_seen_time": ms(a.first_event_ns),
        "last_seen_time": ms(a.last_event_ns),
        "related_events_count": a.evidence.len(),
    });
    if !a.detail.is_empty() {
        finding_info["desc"] = a.detail.join("\n").into();
    }
    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": {
            "name": "Vigil",
            "vendor_name": "Vigil",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "uid": format!("{}:{}", a.alert_id, a.revision),
        "log_name": "alerts",
    });
    if let Some(i) = &a.incident_id {
        metadata["correlation_uid"] = i.clone().into();
    }
    if let Some(t) = a.status_at_ns {
        metadata["modified_time"] = ms(t).into();
    }
    let mut f = json!({
        "activity_id": activity_id,
        "activity_name": activity,
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("Detection Finding: {activity}"),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "time": ms(a.detected_ns),
        "start_time": ms(a.first_event_ns),
        "end_time": ms(a.last_event_ns),
        "count": a.event_count,
        "message": a.title,
        "is_alert": true,
        "finding_info": finding_info,
        "evidences": evidences,
        "metadata": metadata,
        "unmapped": {
            "group_key": a.group_key,
            "revision": a.revision,
            "status_by": a.status_by,
            "incident_subject": a.incident_subject,
        },
    });
    if let Some(n) = &a.status_note {
        f["comment"] = n.clone().into();
    }
    f
}

/// The alert as `format` writes it.
pub(crate) fn formatted(a: &Alert, format: AlertFormat) -> Value {
    match format {
        AlertFormat::Vigil => serde_json::to_value(a).unwrap_or(Value::Null),
        AlertFormat::Ocsf => detection_finding(a),
    }
}
