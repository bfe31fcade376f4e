//! The declared graph from the mesh's own policies, end to end: the Cilium Star Wars demo's
//! manifests and policies (`../shared/data/policies`) as `detect.policy_dir`, Hubble flows
//! through the real Tansu broker into `vigil serve`: a connection the network let through but
//! the policies do not declare (xwing → deathstar) alerts; the declared one (tiefighter →
//! deathstar:80, `POST /v1/request-landing`) does not; and once the policy engine's decisions
//! (OPA, on another partition) show the deathstar is guarded, xwing's connections that have
//! no decision are a sidecar bypass. And `vigil policy import` writes the graph and says what
//! it left out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

fn policies() -> PathBuf {
    data_path("policies")
}

/// A Hubble flow (the exporter's shape) from `src` to `dst` pod on `port`; `l7`: an HTTP
/// request seen by Cilium's proxy.
fn flow(n: usize, src: &str, dst: &str, port: u16, verdict: &str, l7: Option<(&str, &str)>) -> Rec {
    let t = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.9fZ");
    let l7 = l7
        .map(|(m, p)| {
            format!(
                r#","Type":"L7","l7":{{"type":"REQUEST","http":{{"method":"{m}","url":"http://deathstar.default.svc.cluster.local{p}"}}}}"#
            )
        })
        .unwrap_or_default();
    let v = format!(
        r#"{{"flow":{{"time":"{t}","uuid":"f-{n}","verdict":"{verdict}","IP":{{"source":"10.244.1.{}","destination":"10.244.1.5","ipVersion":"IPv4"}},"l4":{{"TCP":{{"source_port":{},"destination_port":{port}}}}},"source":{{"namespace":"default","pod_name":"{src}"}},"destination":{{"namespace":"default","pod_name":"{dst}"}},"is_reply":false{l7}}},"node_name":"kind-worker","time":"{t}"}}"#,
        if src == "xwing" { 99 } else { 60 + n % 3 },
        40000 + n
    );
    Rec {
        partition: 0,
        key: Some(src.as_bytes().to_vec()),
        value: Some(v.into_bytes()),
        headers: Vec::new(),
    }
}

/// An OPA (Envoy ext_authz) decision allowing `src`:`port` → `dst`:80 (the connection of the
/// flow with that source port), now, on partition 1.
fn decision(n: usize, src: &str, dst: &str, port: u16) -> Rec {
    let t = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.9fZ");
    let v = format!(
        r#"{{"decision_id":"d-{n}","result":true,"timestamp":"{t}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{src}","portValue":{port}}}}}}},"destination":{{"address":{{"socketAddress":{{"address":"{dst}","portValue":80}}}}}},"request":{{"http":{{"method":"POST","path":"/v1/request-landing","host":"deathstar"}}}}}}}}}}"#
    );
    Rec {
        partition: 1,
        key: Some(src.as_bytes().to_vec()),
        value: Some(v.into_bytes()),
        headers: Vec::new(),
    }
}

#[test]
fn policy_import_writes_the_graph_and_says_what_it_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("graph.toml");
    // In the demo's order: the manifests, the L3/L4 policy, then the L7 one of the same name
    // in its place (a directory is read in name order).
    let p = policies();
    let run = vigil_command()
        .args(["--log-format", "json", "policy", "import"])
        .arg(p.join("cilium_http_sw_app.yaml"))
        .arg(p.join("cilium_sw_l3_l4_policy.yaml"))
        .arg(p.join("cilium_sw_l3_l4_l7_policy.yaml"))
        .arg(p.join("k8s_networkpolicy_example.yaml"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let graph = std::fs::read_to_string(&out).unwrap();
    assert!(
        graph.contains("CiliumNetworkPolicy default/rule1"),
        "{graph}"
    );
    assert!(
        graph.contains(r#"paths = ["/v1/request-landing"]"#),
        "{graph}"
    );
    assert!(graph.contains(r#"callee = "deathstar-*""#), "{graph}");
    assert!(
        !graph.contains("xwing"),
        "xwing is outside the graph: {graph}"
    );
    assert!(stderr.contains("ipBlock"), "{stderr}");
    assert!(stderr.contains("replaces"), "{stderr}");
}

#[test]
fn an_undeclared_connection_and_one_that_bypassed_the_policy_engine_alert_and_declared_ones_do_not()
{
    let DetectSetup {
        broker,
        dir,
        config,
        tmp: _tmp,
    } = detect_setup(
        "flows",
        2,
        &format!("policy_dir = {:?}\n", policies().display().to_string()),
    );
    let deathstar = "deathstar-7848d6c4d5-th9v2";
    let mut recs = Vec::new();
    for n in 0..20 {
        // The declared edge, at L4 and at L7.
        recs.push(flow(n, "tiefighter", deathstar, 80, "FORWARDED", None));
        recs.push(flow(
            100 + n,
            "tiefighter",
            deathstar,
            80,
            "FORWARDED",
            Some(("POST", "/v1/request-landing")),
        ));
    }
    // A lax policy let xwing through: allowed, not declared.
    for n in 0..3 {
        recs.push(flow(200 + n, "xwing", deathstar, 80, "FORWARDED", None));
    }
    // Dropped by the policy: enforced, not "allowed but undeclared".
    recs.push(flow(300, "xwing", deathstar, 80, "DROPPED", None));
    // The policy engine (OPA behind Envoy) decides on calls to the deathstar: each of
    // tiefighter's connections has its decision; xwing's allowed ones have none — they went
    // around the sidecar.
    for n in (0..20).chain(100..120) {
        let ip = format!("10.244.1.{}", 60 + n % 3);
        recs.push(decision(400 + n, &ip, "10.244.1.5", 40000 + n as u16));
    }

    let total = recs.len() as u64;
    let s = serve(&broker, "flows", &dir, "g-policy", &[], Some(&config));
    produce(&broker.producer(), "flows", &recs);
    wait_stored(&[&s], &dir, total, Duration::from_secs(60));
    // Time moves on in both partitions: the watermark passes xwing's connections by more than
    // the 5 s a decision may come within.
    std::thread::sleep(Duration::from_secs(6));
    let later = [
        flow(700, "tiefighter", deathstar, 80, "FORWARDED", None),
        decision(701, "10.244.1.61", "10.244.1.5", 40700),
    ];
    produce(&broker.producer(), "flows", &later);
    wait_stored(&[&s], &dir, total + 2, Duration::from_secs(60));
    let expected: BTreeSet<(String, String)> = [
        (
            "vigil.unexpected_flow.declared".to_owned(),
            format!("{deathstar} xwing"),
        ),
        (
            "vigil.enforcement_gap.sidecar_bypass".to_owned(),
            // Three connections around the sidecar: one alert about the source and port.
            "10.244.1.5 80 10.244.1.99".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    wait_alerts(&dir, &expected, Duration::from_secs(30));
    // Nothing extra can hide after a clean stop: detection has evaluated every piece it was
    // sent (its buffer drained) and stored every alert before serve exits.
    let (ok, log) = s.stop();
    assert!(ok, "serve failed: {log}");
    assert!(log.contains("policy graph imported"), "{log}");
    assert_eq!(alert_summary(&stored_alerts(&dir)), expected, "{log}");
}

/// Wait for `expected`, stop serve, check nothing else was raised and that a rule reload is
/// on Vigil's own record as done `by`.
fn stop_with_one_alert(s: Serve, dir: &Path, expected: &BTreeSet<(String, String)>, by: &str) {
    wait_alerts(dir, expected, Duration::from_secs(30));
    let (ok, log) = s.stop();
    assert!(ok, "serve failed: {log}");
    assert_eq!(&alert_summary(&stored_alerts(dir)), expected, "{log}");
    let n = sql(
        dir,
        &format!(
            "SELECT count(*) FROM events WHERE kind = 'admin_audit' AND caller_principal = '{by}'"
        ),
    );
    use arrow::array::AsArray;
    let n = n[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert!(n >= 1, "no reload recorded as by {by}: {log}");
}

#[test]
fn a_policy_changed_on_disk_is_imported_again_without_a_restart() {
    let policies_dir = tempfile::tempdir().unwrap();
    for f in ["cilium_http_sw_app.yaml", "cilium_sw_l3_l4_policy.yaml"] {
        std::fs::copy(policies().join(f), policies_dir.path().join(f)).unwrap();
    }
    let DetectSetup {
        broker,
        dir,
        config,
        tmp: _tmp,
    } = detect_setup(
        "flows",
        1,
        &format!(
            "policy_dir = {:?}\nwatch_debounce_ms = 300\n",
            policies_dir.path().display().to_string()
        ),
    );
    let deathstar = "deathstar-7848d6c4d5-th9v2";
    let s = serve(&broker, "flows", &dir, "g-watch", &[], Some(&config));
    // Declared (only the empire reaches the deathstar on TCP 80): quiet.
    let first: Vec<Rec> = (0..5)
        .map(|n| flow(n, "tiefighter", deathstar, 80, "FORWARDED", None))
        .collect();
    produce(&broker.producer(), "flows", &first);
    wait_stored(&[&s], &dir, 5, Duration::from_secs(60));
    // The policy is narrowed on disk to TCP 443: serve imports it again by itself.
    let policy = policies_dir.path().join("cilium_sw_l3_l4_policy.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains(r#"port: "80""#), "{text}");
    std::fs::write(&policy, text.replace(r#"port: "80""#, r#"port: "443""#)).unwrap();
    wait_for("the watch to reload", Duration::from_secs(30), || {
        s.log_text()
            .contains("rules and policies changed on disk: reloaded")
            .then_some(())
    });
    // The same connection is now outside the declared graph.
    let later: Vec<Rec> = (10..13)
        .map(|n| flow(n, "tiefighter", deathstar, 80, "FORWARDED", None))
        .collect();
    produce(&broker.producer(), "flows", &later);
    wait_stored(&[&s], &dir, 8, Duration::from_secs(60));
    let expected: BTreeSet<(String, String)> = [(
        "vigil.unexpected_flow.declared".to_owned(),
        format!("{deathstar} tiefighter"),
    )]
    .into_iter()
    .collect();
    // The reload is on Vigil's own record, by the watch.
    stop_with_one_alert(s, &dir, &expected, "file-watch");
}

/// A Kubernetes audit event (level RequestResponse): the API server created `pod`.
fn pod_created(n: usize, name: &str, owner: Option<&str>, class: &str) -> Rec {
    let t = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let refs = owner.map(|o| {
        serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": o, "controller": true}])
    });
    let pod = serde_json::json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "default", "ownerReferences": refs,
            "labels": {"org": "empire", "class": class}},
        "spec": {"serviceAccountName": "default"},
    });
    let v = serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
        "auditID": format!("a-{n}"), "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/default/pods", "verb": "create",
        "user": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": "pods", "namespace": "default", "name": name, "apiVersion": "v1"},
        "responseStatus": {"code": 201},
        "requestReceivedTimestamp": t, "stageTimestamp": t,
        "responseObject": pod,
    });
    Rec {
        partition: 0,
        key: Some(name.as_bytes().to_vec()),
        value: Some(v.to_string().into_bytes()),
        headers: Vec::new(),
    }
}

#[test]
fn workloads_from_the_kubernetes_audit_stream_resolve_the_policy_selectors() {
    // The policy alone, no manifests: the cluster's workloads come from its audit stream.
    let policies_dir = tempfile::tempdir().unwrap();
    let f = "cilium_sw_l3_l4_policy.yaml";
    std::fs::copy(policies().join(f), policies_dir.path().join(f)).unwrap();
    let DetectSetup {
        broker,
        dir,
        config,
        tmp: _tmp,
    } = detect_setup(
        "flows",
        1,
        &format!(
            "policy_dir = {:?}\npolicy_audit_topics = [\"k8s-audit\"]\npolicy_audit_poll_ms = 200\n",
            policies_dir.path().display().to_string()
        ),
    );
    broker.create_topic("k8s-audit", 1);
    let s = serve(
        &broker,
        "flows,k8s-audit",
        &dir,
        "g-audit",
        &[],
        Some(&config),
    );
    // The ReplicaSet's deathstar pod and the tiefighter, created through the API server.
    let deathstar = "deathstar-7848d6c4d5-th9v2";
    produce(
        &broker.producer(),
        "k8s-audit",
        &[
            pod_created(0, deathstar, Some("deathstar-7848d6c4d5"), "deathstar"),
            pod_created(1, "tiefighter", None, "tiefighter"),
        ],
    );
    wait_for(
        "the audit stream's workloads to reload the graph",
        Duration::from_secs(60),
        || {
            s.log_text()
            .contains("workloads changed in the Kubernetes audit stream: rules and policy graph reloaded")
            .then_some(())
        },
    );
    // Declared now (the empire reaches the deathstar on TCP 80): quiet; xwing is not.
    let mut flows: Vec<Rec> = (0..5)
        .map(|n| flow(n, "tiefighter", deathstar, 80, "FORWARDED", None))
        .collect();
    flows.extend((5..8).map(|n| flow(n, "xwing", deathstar, 80, "FORWARDED", None)));
    produce(&broker.producer(), "flows", &flows);
    wait_stored(&[&s], &dir, 10, Duration::from_secs(60));
    let expected: BTreeSet<(String, String)> = [(
        "vigil.unexpected_flow.declared".to_owned(),
        format!("{deathstar} xwing"),
    )]
    .into_iter()
    .collect();
    // The reload is on Vigil's own record, by the audit watch.
    stop_with_one_alert(s, &dir, &expected, "audit-watch");
}
