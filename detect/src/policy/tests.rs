//! The policy import's unit tests: each kind, selectors, the Star Wars demo, the audit stream.

use std::collections::BTreeSet;

use super::*;
use crate::allowlist::{Allowlist, AllowlistSpec, EdgeFields};
use crate::evidence::at;
use crate::filter::{Filter, field};
use crate::row::OwnedRow;

fn shared(name: &str) -> (String, String) {
    let path = format!(
        "{}/../../shared/data/policies/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (name.to_owned(), text)
}

fn flows(graph: &PolicyGraph) -> Allowlist {
    Allowlist::new(AllowlistSpec {
        filter: Filter::parse(r#"kind == "flow""#).unwrap(),
        fields: EdgeFields {
            caller: field("caller_principal").unwrap(),
            callee: field("callee_principal").unwrap(),
            method: field("action"),
            path: field("resource"),
            caller_namespace: field("caller_namespace"),
            callee_namespace: field("callee_namespace"),
            port: field("callee_port"),
        },
        edges: graph.edges.clone(),
        suppress_ns: 1,
        allowed_lateness_ns: 1,
        max_groups: 100,
        quiet: false,
        declared: None,
        ratio: None,
    })
    .unwrap()
}

fn flow(caller: &str, callee: &str, port: i64, l7: Option<(&str, &str)>) -> OwnedRow {
    let mut v = vec![
        ("kind", serde_json::json!("flow")),
        ("caller_principal", serde_json::json!(caller)),
        ("caller_namespace", serde_json::json!("default")),
        ("callee_principal", serde_json::json!(callee)),
        ("callee_namespace", serde_json::json!("default")),
        ("callee_port", serde_json::json!(port)),
    ];
    if let Some((m, p)) = l7 {
        v.push(("action", serde_json::json!(m)));
        v.push(("resource", serde_json::json!(p)));
    }
    OwnedRow::from_fields(v.iter().map(|(k, v)| (*k, v))).unwrap()
}

#[test]
fn the_star_wars_demo_policies_become_the_declared_graph() {
    // The demo applies the L3/L4 policy, then the L7 one of the same name in its place.
    let files = [
        shared("cilium_http_sw_app.yaml"),
        shared("cilium_sw_l3_l4_policy.yaml"),
        shared("cilium_sw_l3_l4_l7_policy.yaml"),
    ];
    let got = import(&files, "cluster.local").unwrap();
    assert_eq!(got.policies, ["CiliumNetworkPolicy default/rule1"]);
    assert!(
        got.notes.iter().any(|n| n.contains("replaces")),
        "{:?}",
        got.notes
    );
    assert!(got.workloads >= 3, "{}", got.workloads);
    let mut r = flows(&got.graph);
    let allowed = |r: &mut Allowlist, row: &OwnedRow| {
        !r.observe(row, at(0)).fired()
            && !matches!(
                r.observe(row, at(0)),
                crate::evidence::Outcome::Updated { .. }
            )
    };
    // tiefighter (org: empire) → deathstar (a Deployment's pod, as Hubble names it) on
    // 80, POST /v1/request-landing: inside.
    assert!(allowed(
        &mut r,
        &flow(
            "tiefighter",
            "deathstar-7848d6c4d5-th9v2",
            80,
            Some(("POST", "/v1/request-landing"))
        )
    ));
    // The L4 view of the same connection (no HTTP in the flow): inside.
    assert!(allowed(&mut r, &flow("tiefighter", "deathstar", 80, None)));
    // Another path under the L7 policy: outside.
    assert!(!allowed(
        &mut r,
        &flow(
            "tiefighter",
            "deathstar",
            80,
            Some(("PUT", "/v1/exhaust-port"))
        )
    ));
    // xwing (org: alliance) → deathstar: outside; another port: outside.
    assert!(!allowed(
        &mut r,
        &flow("xwing", "deathstar-7848d6c4d5-th9v2", 80, None)
    ));
    assert!(!allowed(
        &mut r,
        &flow("tiefighter", "deathstar", 443, None)
    ));
}

/// An audit event of the API server's (level RequestResponse) for `object`.
fn audit_event(verb: &str, code: i64, resource: &str, object: serde_json::Value) -> String {
    let ns = object["metadata"]["namespace"].clone();
    let name = object["metadata"]["name"].clone();
    serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
        "stage": "ResponseComplete", "verb": verb,
        "user": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "objectRef": {"resource": resource, "namespace": ns, "name": name, "apiVersion": "v1"},
        "responseStatus": {"code": code},
        "responseObject": object,
    })
    .to_string()
}

fn pod(ns: &str, name: &str, owner: Option<&str>, labels: serde_json::Value) -> serde_json::Value {
    let refs = owner.map(|o| {
            serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": o, "controller": true}])
        });
    serde_json::json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": refs},
        "spec": {"serviceAccountName": "default"},
    })
}

/// The caller → callee edges on 6379 of the NetworkPolicy example.
fn db_callers(got: &Imported) -> BTreeSet<(String, Option<String>)> {
    got.graph
        .edges
        .iter()
        .filter(|e| e.callee == "redis" && e.ports == vec![6379] && !e.caller.ends_with('*'))
        .map(|e| (e.caller.clone(), e.caller_namespace.clone()))
        .collect()
}

#[test]
fn selectors_resolve_against_the_workloads_of_the_kubernetes_audit_stream() {
    // No manifests: the cluster as its audit log tells it.
    let ns = serde_json::json!({"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": "myproject", "labels": {"project": "myproject"}}});
    let mut lines = vec![
        audit_event("create", 201, "namespaces", ns),
        audit_event(
            "create",
            201,
            "pods",
            pod(
                "default",
                "redis-7f9c4-x2x9z",
                Some("redis-7f9c4"),
                serde_json::json!({"role": "db"}),
            ),
        ),
        audit_event(
            "create",
            201,
            "pods",
            pod(
                "default",
                "web-5d4b6-abcde",
                Some("web-5d4b6"),
                serde_json::json!({"role": "frontend"}),
            ),
        ),
        // A second replica changes nothing; a forbidden create is no workload.
        audit_event(
            "create",
            201,
            "pods",
            pod(
                "default",
                "web-5d4b6-fghij",
                Some("web-5d4b6"),
                serde_json::json!({"role": "frontend"}),
            ),
        ),
        audit_event(
            "create",
            403,
            "pods",
            pod(
                "default",
                "intruder",
                None,
                serde_json::json!({"role": "frontend"}),
            ),
        ),
        audit_event(
            "create",
            201,
            "pods",
            pod(
                "myproject",
                "worker",
                None,
                serde_json::json!({"app": "worker"}),
            ),
        ),
    ];
    let log = |lines: &[String]| ("audit.log".to_owned(), lines.join("\n"));
    let got = import(
        &[shared("k8s_networkpolicy_example.yaml"), log(&lines)],
        "cluster.local",
    )
    .unwrap();
    assert_eq!(got.audit_changes, 5);
    assert_eq!(
        db_callers(&got),
        BTreeSet::from([
            ("web".into(), Some("default".into())),
            ("worker".into(), Some("myproject".into())),
        ])
    );
    // The Deployment's pods are named as Hubble names them.
    assert!(
        got.graph
            .edges
            .iter()
            .any(|e| e.caller == "web-*" && e.callee == "redis-*")
    );
    // The standalone pod is deleted: its edge goes; a replica deleted leaves its workload.
    lines.push(audit_event(
        "delete",
        200,
        "pods",
        pod(
            "myproject",
            "worker",
            None,
            serde_json::json!({"app": "worker"}),
        ),
    ));
    lines.push(audit_event(
        "delete",
        200,
        "pods",
        pod(
            "default",
            "web-5d4b6-abcde",
            Some("web-5d4b6"),
            serde_json::json!({"role": "frontend"}),
        ),
    ));
    let got = import(
        &[shared("k8s_networkpolicy_example.yaml"), log(&lines)],
        "cluster.local",
    )
    .unwrap();
    assert_eq!(
        db_callers(&got),
        BTreeSet::from([("web".into(), Some("default".into()))])
    );
    // A file of something else is refused, named.
    let err = import(
        &[("x.json".into(), "{\"kind\":\"Pod\"}".into())],
        "cluster.local",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no Kubernetes audit event"),
        "{err}"
    );
}

#[test]
fn a_network_policy_resolves_its_selectors_and_says_what_it_left_out() {
    let manifests = (
        "pods.yaml".to_owned(),
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: myproject, labels: {project: myproject}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: redis, namespace: default}
spec: {template: {metadata: {labels: {role: db}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec: {template: {metadata: {labels: {role: frontend}}}}
---
apiVersion: v1
kind: Pod
metadata: {name: worker, namespace: myproject, labels: {app: worker}}
"#
        .to_owned(),
    );
    let got = import(
        &[manifests, shared("k8s_networkpolicy_example.yaml")],
        "cluster.local",
    )
    .unwrap();
    let edges: BTreeSet<(String, Option<String>, String, Vec<u16>)> = got
        .graph
        .edges
        .iter()
        .filter(|e| !e.caller.ends_with('*') && !e.callee.ends_with('*'))
        .map(|e| {
            (
                e.caller.clone(),
                e.caller_namespace.clone(),
                e.callee.clone(),
                e.ports.clone(),
            )
        })
        .collect();
    // From the frontend pods and from every pod of a namespace labelled project=myproject,
    // to the db on 6379.
    assert!(
        edges.contains(&(
            "web".into(),
            Some("default".into()),
            "redis".into(),
            vec![6379]
        )),
        "{edges:?}"
    );
    assert!(
        edges.contains(&(
            "worker".into(),
            Some("myproject".into()),
            "redis".into(),
            vec![6379]
        )),
        "{edges:?}"
    );
    assert!(
        got.notes.iter().any(|n| n.contains("ipBlock")),
        "{:?}",
        got.notes
    );
}

#[test]
fn an_istio_authorization_policy_declares_principal_edges() {
    let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders-service, namespace: shop}
spec: {template: {metadata: {labels: {app: orders-service}}, spec: {serviceAccountName: orders}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders-service}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/payment/sa/payment-service"]}
    to:
    - operation: {methods: ["POST"], paths: ["/api/orders/*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {paths: ["/debug/*"]}}]}]}
"#;
    let got = import(&[("istio.yaml".into(), text.into())], "cluster.local").unwrap();
    assert_eq!(got.graph.edges.len(), 1, "{:#?}", got.graph.edges);
    let e = &got.graph.edges[0];
    assert_eq!(
        e.caller,
        "spiffe://cluster.local/ns/payment/sa/payment-service"
    );
    assert_eq!(e.callee, "spiffe://cluster.local/ns/shop/sa/orders");
    assert_eq!(
        (e.methods.as_slice(), e.paths.as_slice()),
        (&["POST".to_owned()][..], &["/api/orders/*".to_owned()][..])
    );
    assert_eq!(e.kind.as_deref(), Some("authz"));
    assert!(
        got.notes.iter().any(|n| n.contains("DENY")),
        "{:?}",
        got.notes
    );
}
