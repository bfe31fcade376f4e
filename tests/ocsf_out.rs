//! Vigil's OCSF output checked against the OCSF 1.8.0 schema files (`support::Ocsf`): alerts as
//! Detection Findings (every status and activity, with evidence), and the validator itself
//! refusing what the schema does not allow — so a pass means something.

use crate::support::*;
use serde_json::json;
use vigil_detect::alerts::{Alert, Evidence, Status, detection_finding};

fn alert(status: Status, revision: i64) -> Alert {
    Alert {
        alert_id: "5c2d0f4e9a1b7c3d5e6f708192a3b4c5".into(),
        revision,
        rule_id: "sigma:a1b0ca4e-7835-413e-8471-3ff2b8a66be6".into(),
        rule_version: 20240326,
        rule_kind: "sigma".into(),
        title: "Potential Remote Command Execution In Pod Container".into(),
        severity: "medium".parse().unwrap(),
        status,
        status_by: (status != Status::Open).then(|| "analyst:ana".into()),
        status_at_ns: (status != Status::Open).then_some(1_795_000_100_000_000_000),
        status_note: (status != Status::Open).then(|| "looked at it".into()),
        group_key: [(
            "caller_principal".to_string(),
            Some("minikube-user".to_string()),
        )]
        .into(),
        first_event_ns: 1_795_000_000_000_000_000,
        last_event_ns: 1_795_000_001_000_000_000,
        detected_ns: 1_795_000_002_000_000_000,
        event_count: 2,
        detail: vec!["sigma rule: … ; author: Leo Tsaousis (@laripping)".into()],
        evidence: vec![Evidence {
            log: "k8s.audit/0".into(),
            index: 7,
            leaf_hash: "ab".repeat(32),
            event_time_ns: 1_795_000_000_000_000_000,
            event_id: Some("55a81824-ab56-46c5-8b02-96336f5e78d7".into()),
        }],
        incident_id: Some("5c2d0f4e9a1b7c3d5e6f708192a3b4c5".into()),
        incident_subject: Some("principal:minikube-user".into()),
    }
}

#[test]
fn every_alert_revision_is_a_valid_detection_finding() {
    let schema = Ocsf::load();
    for (status, revision, activity) in [
        (Status::Open, 1, 1),
        (Status::Open, 3, 2),
        (Status::Acknowledged, 2, 2),
        (Status::Suppressed, 2, 2),
        (Status::Resolved, 4, 3),
    ] {
        let f = detection_finding(&alert(status, revision));
        let errs = schema.validate("detection_finding", &f);
        assert!(errs.is_empty(), "{status:?} r{revision}: {errs:#?}\n{f:#}");
        assert_eq!(f["activity_id"], activity);
        assert_eq!(f["class_uid"], 2004);
        // What a verifier needs to prove the evidence.
        assert_eq!(f["evidences"][0]["data"]["leaf_index"], 7);
        assert_eq!(f["evidences"][0]["data"]["leaf_hash"], "ab".repeat(32));
        assert!(
            f["finding_info"]["desc"]
                .as_str()
                .unwrap()
                .contains("author: Leo Tsaousis")
        );
    }
}

#[test]
fn the_validator_refuses_what_the_schema_does_not_allow() {
    let schema = Ocsf::load();
    let good = detection_finding(&alert(Status::Open, 1));
    assert!(schema.validate("detection_finding", &good).is_empty());
    let broken = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        schema.validate("detection_finding", &v)
    };
    type Break<'a> = &'a dyn Fn(&mut serde_json::Value);
    let cases: [(&str, Break); 8] = [
        ("finding_info: required", &|v| {
            v.as_object_mut().unwrap().remove("finding_info");
        }),
        ("finding_info.uid: required", &|v| {
            v["finding_info"].as_object_mut().unwrap().remove("uid");
        }),
        ("severity_id: 9 is not one of", &|v| {
            v["severity_id"] = json!(9)
        }),
        ("time: \"yesterday\" is not a timestamp_t", &|v| {
            v["time"] = json!("yesterday")
        }),
        ("not an attribute", &|v| v["made_up"] = json!(1)),
        ("evidences: not an array", &|v| v["evidences"] = json!({})),
        ("type_uid", &|v| v["type_uid"] = json!(200499)),
        ("metadata.product: at_least_one", &|v| {
            v["metadata"]["product"] = json!({})
        }),
    ];
    for (want, f) in cases {
        let errs = broken(f);
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:#?}");
    }
}
