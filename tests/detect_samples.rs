//! The default rules against other projects' detection tests: Panther's Kubernetes-audit
//! test events replayed through the matching default rules (with Panther's threshold
//! semantics: `expected_result: true` means "counts toward the threshold"), and Falco's
//! allowlist cases (`some-user` is an unexpected caller of the API server, `minikube` is not).

use crate::support::*;
use arrow::array::RecordBatch;
use serde_json::Value;
use vigil_detect::engine::Engine;
use vigil_detect::evidence::EvRef;
use vigil_detect::filter::BatchRows;
use vigil_detect::rules::{self, Defaults, Source};
use vigil_schemas::{Decoder, EventBatchBuilder};

fn decode(record: &str) -> RecordBatch {
    let mut b = EventBatchBuilder::with_capacity(1);
    Decoder::default()
        .decode_into(record.as_bytes(), 0, &mut b)
        .unwrap_or_else(|e| panic!("{e}: {record}"));
    b.finish().unwrap()
}

/// A fresh engine with one rule of the default pack.
fn default_rule(id: &str) -> Engine {
    let loaded = rules::load(&rules::sources(None, true).unwrap(), &Defaults::default());
    let rule = loaded
        .rules
        .into_iter()
        .map(|(r, _)| r)
        .find(|r| r.meta.id == id)
        .unwrap_or_else(|| panic!("no default rule {id}"));
    Engine::new(vec![rule])
}

/// Feed the record's events `times` times, one second apart; the number of alerts raised.
fn alerts_after(engine: &mut Engine, batch: &RecordBatch, times: usize) -> usize {
    let rows = BatchRows::new(batch);
    for n in 0..times {
        for i in 0..rows.len() {
            let ev = EvRef {
                index: n as u64,
                time_ns: 1_767_225_600_000_000_000 + n as i64 * 1_000_000_000,
                ..EvRef::default()
            };
            engine.observe_row(&rows.row(i), ev, 0);
        }
    }
    engine
        .take_pending()
        .iter()
        .filter(|a| a.revision == 1)
        .count()
}

/// Panther rule → the default rule that covers it.
const MATCHING: &[(&str, &str)] = &[
    (
        "Kubernetes.API.Multiple403.PublicIP",
        "vigil.k8s.forbidden_burst.public_ip",
    ),
    (
        "Amazon.EKS.Audit.Multiple403",
        "vigil.k8s.forbidden_burst.public_ip",
    ),
    (
        "Kubernetes.Secret.AccessDenied",
        "vigil.k8s.secret_access_denied",
    ),
];

#[test]
fn panther_kubernetes_tests_through_the_matching_default_rules() {
    let mut checked = 0;
    for shape in ["k8s_audit", "gcp_k8s_audit", "azure_k8s_audit"] {
        for line in data_text(&format!("panther/by_event_shape/{shape}.jsonl")).lines() {
            let t: Value = serde_json::from_str(line).unwrap();
            let Some((_, ours)) = MATCHING.iter().find(|(p, _)| t["rule_id"] == *p) else {
                continue;
            };
            let threshold = t["threshold"].as_u64().unwrap() as usize;
            let expected = t["expected_result"].as_bool().unwrap();
            let name = format!("{} / {}", t["rule_id"], t["test_name"]);
            let batch = decode(&t["log"].to_string());
            // Panther's threshold and ours agree.
            let n = if expected { threshold } else { threshold * 3 };
            let got = alerts_after(&mut default_rule(ours), &batch, n);
            assert_eq!(got, usize::from(expected), "{name} ({ours}), {n} events");
            if expected {
                // One short of the threshold: nothing.
                let got = alerts_after(&mut default_rule(ours), &batch, threshold - 1);
                assert_eq!(got, 0, "{name}: {} events", threshold - 1);
            }
            checked += 1;
        }
    }
    // Every Panther test of the three rules: 14 EKS-shaped, 2 GKE, 2 AKS.
    assert_eq!(checked, 18);
}

/// Falco's allowlist rule ("Disallowed K8s User") as a Vigil rule file: Kubernetes users
/// (not `system:` ones) calling the API server, against a declared list of users.
const FALCO_ALLOWLIST: &str = r#"
id = "test.k8s.disallowed_user"
version = 1
title = "Kubernetes operation by a user outside the allowed set"
severity = "medium"
kind = "allowlist"
filter = 'source_format == "k8s_audit" and not caller_principal startswith "system:"'
caller_field = "caller_principal"
callee_field = "callee_service"
allow = [
  { caller = "minikube", callee = "kube-apiserver" },
  { caller = "minikube-user", callee = "kube-apiserver" },
  { caller = "kubelet", callee = "kube-apiserver" },
  { caller = "kops", callee = "kube-apiserver" },
]
"#;

#[test]
fn falco_allowlist_cases() {
    let some_user = data_text("k8s-audit-falco/trace_files/some-user_creates_namespace_foo.json");
    let minikube = data_text("k8s-audit-falco/trace_files/minikube_creates_namespace_foo.json");
    let test = |name: &str, file: &str, alerts: usize, extra: &str| {
        format!(
            "\n[[test]]\nname = \"{name}\"\nalerts = {alerts}\n{extra}[[test.event]]\nraw = '''{}'''\n",
            file.trim()
        )
    };
    let mut text = FALCO_ALLOWLIST.to_owned();
    // Falco's disallowed_k8s_user: detect.
    text += &test(
        "some-user is not allowed",
        &some_user,
        1,
        "keys = [[\"some-user\", \"kube-apiserver\"]]\n",
    );
    // Falco's user_in_allowed_set, with the default list: minikube passes.
    text += &test("minikube is allowed", &minikube, 0, "");
    // Falco's user_in_allowed_set with allow_user_some-user.yaml appended.
    text += &test(
        "some-user allowed once appended",
        &some_user,
        0,
        "allow = [{ caller = \"minikube\", callee = \"kube-apiserver\" }, { caller = \"some-user\", callee = \"kube-apiserver\" }]\n",
    );
    let sources = [Source {
        name: "falco.toml".into(),
        text,
        dir: None,
    }];
    let results = vigil_detect::ruletest::run(&sources, &Defaults::default());
    assert_eq!(results.len(), 3);
    for r in &results {
        assert!(r.failure.is_none(), "{}: {:?}", r.test, r.failure);
    }
    // And Falco's expected detections agree: some-user's file trips "Disallowed K8s User".
    let expected: Value =
        serde_json::from_str(&data_text("k8s-audit-falco/expected_detections.json")).unwrap();
    let text = expected.to_string();
    assert!(text.contains("Disallowed K8s User"), "{text}");
}
