//! Streaming detection end to end against the real Tansu broker: a small zero-trust mesh's
//! normal traffic (with its one-off denials) plus injected attacks, through `vigil serve` with
//! the default rule pack and a declared call graph. Every attack alerts exactly once, normal
//! traffic raises nothing, alerts are stored (and queryable) with evidence that proves from
//! the store, and a restart — with or without the engine's state — raises nothing new.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use vigil_detect::alerts::{Alert, latest, read_revisions};

fn ts(t_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(t_ns)
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

use vigil_store::clock::now_ns;

const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
const INVENTORY: &str = "spiffe://cluster.local/ns/shop/sa/inventory";
const LEDGER: &str = "spiffe://cluster.local/ns/billing/sa/ledger";
const LOGIN: &str = "spiffe://cluster.local/ns/auth/sa/login";

/// The mesh's call graph: (caller, caller pod IP, callee).
const EDGES: &[(&str, &str, &str)] = &[
    (FRONTEND, "10.0.1.10", ORDERS),
    (FRONTEND, "10.0.1.10", LOGIN),
    (ORDERS, "10.0.2.10", PAYMENTS),
    (ORDERS, "10.0.2.10", INVENTORY),
    (PAYMENTS, "10.0.3.10", LEDGER),
];

/// Records of the test, in production order, keyed by source IP (a group's events stay in
/// one partition, in order).
struct Traffic {
    recs: Vec<(String, String)>,
    n: u64,
}

impl Traffic {
    fn push(&mut self, key: &str, v: String) {
        self.recs.push((key.to_owned(), v));
    }

    /// The records to produce: keyed by source IP, over 3 partitions by key.
    fn records(&self) -> Vec<Rec> {
        self.recs
            .iter()
            .map(|(k, v)| Rec {
                partition: (k.bytes().map(u32::from).sum::<u32>() % 3) as i32,
                key: Some(k.as_bytes().to_vec()),
                value: Some(v.as_bytes().to_vec()),
                headers: Vec::new(),
            })
            .collect()
    }

    fn id(&mut self) -> String {
        self.n += 1;
        format!("ev-{:06}", self.n)
    }

    /// An OPA (Envoy ext_authz) decision. `caller` None: an unauthenticated client.
    #[allow(clippy::too_many_arguments)]
    fn opa(
        &mut self,
        caller: Option<&str>,
        ip: &str,
        callee: &str,
        method: &str,
        path: &str,
        allow: bool,
    ) {
        let id = self.id();
        let principal = caller
            .map(|c| format!(r#","principal":"{c}""#))
            .unwrap_or_default();
        let v = format!(
            r#"{{"decision_id":"{id}","path":"envoy/authz/allow","result":{allow},"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{ip}","portValue":41000}}}}{principal}}},"destination":{{"address":{{"socketAddress":{{"address":"10.0.9.1","portValue":8080}}}},"principal":"{callee}"}},"request":{{"http":{{"method":"{method}","path":"{path}","host":"svc"}}}}}}}}}}"#,
            ts(now_ns())
        );
        self.push(ip, v);
    }

    fn k8s(&mut self, user: &str, ip: &str, verb: &str, uri: &str, code: u16) {
        let id = self.id();
        let decision = if code == 403 { "forbid" } else { "allow" };
        let v = format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"{uri}","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["{ip}"],"responseStatus":{{"code":{code}}},"requestReceivedTimestamp":"{}","annotations":{{"authorization.k8s.io/decision":"{decision}"}}}}"#,
            ts(now_ns())
        );
        self.push(ip, v);
    }

    fn flow(&mut self, ns: &str, workload: &str, ip: &str, dropped: bool) {
        let id = self.id();
        let t = ts(now_ns());
        let (verdict, reason) = if dropped {
            ("DROPPED", r#","drop_reason_desc":"POLICY_DENIED""#)
        } else {
            ("FORWARDED", "")
        };
        let v = format!(
            r#"{{"flow":{{"time":"{t}","uuid":"{id}","verdict":"{verdict}"{reason},"IP":{{"source":"{ip}","destination":"10.0.2.10","ipVersion":"IPv4"}},"l4":{{"TCP":{{"source_port":40000,"destination_port":8080}}}},"source":{{"namespace":"{ns}","pod_name":"{workload}-7d9f","workloads":[{{"name":"{workload}","kind":"Deployment"}}]}},"destination":{{"namespace":"shop","pod_name":"orders-5c6b"}},"is_reply":false}},"time":"{t}"}}"#
        );
        self.push(ip, v);
    }

    /// `n` events of normal mesh traffic: allowed calls on the graph, forwarded flows, routine
    /// Kubernetes API use, and the occasional one-off denial.
    fn normal(&mut self, n: usize) {
        for _ in 0..n {
            let i = self.n as usize;
            let (caller, ip, callee) = EDGES[i % EDGES.len()];
            match i % 10 {
                0..=6 => {
                    // Now and then a call is denied: a client hitting a route it lacks, once
                    // (rarely: the test's hour of traffic takes seconds of event time).
                    let allow = !i.is_multiple_of(1213);
                    self.opa(
                        Some(caller),
                        ip,
                        callee,
                        "GET",
                        &format!("/api/items/{}", i % 40),
                        allow,
                    )
                }
                7 | 8 => self.flow("shop", "orders", "10.0.2.10", i % 400 == 8),
                _ => {
                    // Now and then someone's kubectl lacks a permission.
                    if i % 200 == 9 {
                        let user = format!("dev-{i}");
                        self.k8s(
                            &user,
                            "10.0.7.8",
                            "get",
                            "/api/v1/namespaces/shop/secrets",
                            403,
                        )
                    } else {
                        self.k8s(
                            "ci-bot",
                            "10.0.7.7",
                            "get",
                            "/api/v1/namespaces/shop/pods",
                            200,
                        )
                    }
                }
            }
        }
    }
}

/// Alerts stored in `dir`, newest revision each.
fn alerts(dir: &Path) -> Vec<Alert> {
    latest(read_revisions(dir).unwrap())
}

fn summary(a: &[Alert]) -> BTreeSet<(String, String)> {
    alert_summary(a)
}

#[test]
fn attacks_alert_once_normal_traffic_never_and_restarts_raise_nothing_new() {
    let broker = Broker::start();
    broker.create_topic("mesh", 3);
    broker.create_topic("vigil.checkpoints", 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // The declared graph: the mesh's edges (the new edge orders → ledger is not in it).
    let graph: String = EDGES
        .iter()
        .map(|(c, _, e)| format!("[[edge]]\ncaller = \"{c}\"\ncallee = \"{e}\"\n"))
        .collect();
    let graph_file = tmp.path().join("graph.toml");
    std::fs::write(&graph_file, graph).unwrap();
    let config = tmp.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[detect]\nallowlist_file = {:?}\nalert_flush_ms = 200\nstate_interval_ms = 500\n",
            graph_file.display().to_string()
        ),
    )
    .unwrap();

    let mut t = Traffic {
        recs: Vec::new(),
        n: 0,
    };
    t.normal(1500);
    // 1. Credential stuffing: 60 denied logins from one address, no identity.
    for i in 0..60 {
        t.opa(None, "203.0.113.50", LOGIN, "POST", "/login", false);
        if i % 20 == 0 {
            t.normal(30);
        }
    }
    // 2. A compromised frontend pod probing routes of a service it may call.
    for i in 0..25 {
        t.opa(
            Some(FRONTEND),
            "10.0.9.99",
            ORDERS,
            "GET",
            &format!("/admin/{i}"),
            false,
        );
    }
    t.normal(200);
    // 3. Lateral movement: orders calls the ledger (allowed by policy, not in the graph).
    for _ in 0..3 {
        t.opa(
            Some(ORDERS),
            "10.0.2.10",
            LEDGER,
            "POST",
            "/ledger/entries",
            true,
        );
    }
    // 4. A Kubernetes 403 burst for one user.
    for _ in 0..12 {
        t.k8s(
            "mallory",
            "10.1.2.3",
            "get",
            "/api/v1/namespaces/prod/secrets/db",
            403,
        );
    }
    t.normal(200);
    // 5. A workload's connections dropped by policy, 150 times.
    for _ in 0..150 {
        t.flow("empire", "xwing", "10.0.5.66", true);
    }
    // 6. Guessing that worked: 6 denials, then an allow, from one address.
    for _ in 0..6 {
        t.opa(None, "198.51.100.23", LOGIN, "POST", "/login", false);
    }
    t.opa(None, "198.51.100.23", LOGIN, "POST", "/login", true);
    t.normal(500);
    let expected: BTreeSet<(String, String)> = [
        ("vigil.denial_burst.source_ip", "203.0.113.50"),
        ("vigil.permission_probing", FRONTEND),
        ("vigil.denial_burst.caller", FRONTEND),
        (
            "vigil.unexpected_caller.declared",
            // Key parts in field-name order: callee_principal, caller_principal.
            &*format!("{LEDGER} {ORDERS}"),
        ),
        ("vigil.k8s.forbidden_burst.user", "mallory"),
        ("vigil.flow.drop_burst.source", "empire xwing"),
        // Key parts in field-name order: callee_service (the HTTP host), caller_ip.
        ("vigil.deny_then_allow", "svc 198.51.100.23"),
    ]
    .iter()
    .map(|(r, k)| (r.to_string(), k.to_string()))
    .collect();

    let recs = t.records();
    let total = recs.len() as u64;

    let s = serve(&broker, "mesh", &dir, "g-detect", &[], Some(&config));
    produce(&broker.producer(), "mesh", &recs);
    wait_stored(&[&s], &dir, total, Duration::from_secs(60));
    // Every record reached detection once it is stored; alerts follow within the flush interval.
    let start = Instant::now();
    while summary(&alerts(&dir)).len() < expected.len() && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing extra can hide after a clean stop: detection has evaluated every piece it was
    // sent (its buffer drained) and stored every alert before serve exits.
    let (ok, log) = s.stop();
    assert!(ok, "serve failed: {log}");
    let first = alerts(&dir);
    assert_eq!(summary(&first), expected, "alerts: {first:#?}");
    assert_eq!(
        first.len(),
        expected.len(),
        "one alert per attack and rule: {first:#?}"
    );
    assert!(log.contains("alert fired"), "{log}");
    // Events produced in real time are never late.
    assert!(
        log.lines()
            .filter_map(|l| l.split(" late=").nth(1))
            .all(|v| v.starts_with('0')),
        "late events: {log}"
    );

    // Counts and evidence: the stuffing burst counts all 60 denials (50 fired it, 10 updated
    // it); its evidence is the newest 16, each provable from the store.
    let stuffing = first
        .iter()
        .find(|a| a.rule_id == "vigil.denial_burst.source_ip")
        .unwrap();
    assert_eq!(stuffing.event_count, 60, "{stuffing:#?}");
    assert_eq!(stuffing.evidence.len(), 16);
    let ev = &stuffing.evidence[0];
    assert!(ev.log.starts_with("mesh/"));
    let bundle = tmp.path().join("proof.json");
    let Ran { code, out, .. } = vigil(&[
        "proof",
        "--data-dir",
        dir.to_str().unwrap(),
        "--log",
        &ev.log,
        "--index",
        &ev.index.to_string(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let Ran { code, out, .. } = vigil(&[
        "verify-proof",
        bundle.to_str().unwrap(),
        "--keys",
        dir.join("keys/registry").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    // The proven record is the evidence's: its stored leaf hash is the one the alert names.
    let proof: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    let offset = proof["record"]["offset"].as_i64().unwrap();
    let ev_partition = &ev.log["mesh/".len()..];
    let b = sql(
        &dir,
        &format!(
            "SELECT encode(leaf_hash, 'hex') FROM stored WHERE kafka_partition = {ev_partition} \
             AND kafka_offset = {offset} LIMIT 1"
        ),
    );
    assert_eq!(b[0].column(0).as_string::<i32>().value(0), ev.leaf_hash);
    let drops = first
        .iter()
        .find(|a| a.rule_id == "vigil.flow.drop_burst.source")
        .unwrap();
    assert_eq!(drops.event_count, 150);
    assert!(drops.evidence.iter().all(|e| e.event_id.is_some()));

    // The alerts table.
    let b = sql(&dir, "SELECT count(*) FROM alerts");
    assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), 7);
    let b = sql(
        &dir,
        "SELECT event_count FROM alerts WHERE rule_id = 'vigil.deny_then_allow'",
    );
    // The sequence counts the denials it needs (the newest 5 of 6) and the allow.
    assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), 6);
    let Ran { code, out, .. } = vigil(&["alerts", "--data-dir", dir.to_str().unwrap()]);
    assert!(code == 0 && out.contains("7 alert(s)"), "{out}");
    // One incident per attacker: the compromised frontend's probing and its denial burst are
    // one (two rules, the higher severity), every other attack its own.
    let b = sql(&dir, "SELECT count(*) FROM incidents");
    assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), 6);
    let b = sql(
        &dir,
        &format!(
            "SELECT alerts, rules, severity FROM incidents WHERE subject = 'principal:{FRONTEND}'"
        ),
    );
    assert_eq!(b[0].num_rows(), 1);
    assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), 2);
    assert_eq!(b[0].column(1).as_primitive::<Int64Type>().value(0), 2);
    assert_eq!(b[0].column(2).as_string::<i32>().value(0), "high");

    // Restart with the state: one more stuffing attempt updates the open alert.
    let ids: BTreeMap<String, i64> = first
        .iter()
        .map(|a| (a.alert_id.clone(), a.revision))
        .collect();
    let mut more = Traffic {
        recs: Vec::new(),
        n: 100_000,
    };
    more.opa(None, "203.0.113.50", LOGIN, "POST", "/login", false);
    more.normal(100);
    let recs2 = more.records();
    let s = serve(&broker, "mesh", &dir, "g-detect", &[], Some(&config));
    produce(&broker.producer(), "mesh", &recs2);
    wait_stored(
        &[&s],
        &dir,
        total + recs2.len() as u64,
        Duration::from_secs(60),
    );
    let start = Instant::now();
    while alerts(&dir)
        .iter()
        .find(|a| a.alert_id == stuffing.alert_id)
        .is_none_or(|a| a.event_count < 61)
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.terminate());
    let second = alerts(&dir);
    let same: BTreeSet<&String> = second.iter().map(|a| &a.alert_id).collect();
    assert_eq!(
        same,
        ids.keys().collect(),
        "no new alert after a restart: {second:#?}"
    );
    let updated = second
        .iter()
        .find(|a| a.alert_id == stuffing.alert_id)
        .unwrap();
    assert_eq!(updated.event_count, 61);

    // Without the state: rebuilt from the stored history, nothing new either.
    std::fs::remove_file(vigil_store::layout::detect_state(&dir)).unwrap();
    let s = serve(&broker, "mesh", &dir, "g-detect", &[], Some(&config));
    wait_for("detection to catch up", Duration::from_secs(60), || {
        s.log_text().contains("detection caught up").then_some(())
    });
    assert!(s.log_text().contains("restored=false"), "{}", s.log_text());
    assert!(s.terminate());
    let third = alerts(&dir);
    assert_eq!(summary(&third), expected);
    assert_eq!(third.len(), expected.len(), "{third:#?}");
}
