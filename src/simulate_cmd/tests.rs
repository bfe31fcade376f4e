use super::*;
use vigil_schemas::Decoder;

/// Decode a record with Vigil's decoders: (kind, decision, caller, callee, source format).
fn decode(v: &str) -> Vec<(String, String, String, String, String)> {
    let mut rows = Vec::new();
    Decoder::default()
        .decode_with(v.as_bytes(), |e| {
            let s =
                |x: &Option<std::borrow::Cow<'_, str>>| x.as_deref().unwrap_or_default().to_owned();
            rows.push((
                e.kind.as_str().to_owned(),
                e.decision.as_str().to_owned(),
                s(&e.caller.principal),
                s(&e.callee.principal),
                e.format.as_str().to_owned(),
            ));
        })
        .unwrap_or_else(|e| panic!("{e}: {v}"));
    rows
}

#[test]
fn normal_traffic_decodes_as_the_mesh_reports_it() {
    let mut t = Traffic::new(12, 1);
    let now = now_ns();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..2000 {
        let (key, v) = t.normal(now);
        let rows = decode(&v);
        assert_eq!(rows.len(), 1, "{v}");
        *kinds.entry(rows[0].4.clone()).or_default() += 1;
        assert!(!key.is_empty());
    }
    // About 70/20/10.
    assert!(
        kinds["opa"] > 1200 && kinds["hubble"] > 250 && kinds["k8s_audit"] > 100,
        "{kinds:?}"
    );
    let h = t.history(25, now);
    assert_eq!(h.len(), 25 * t.mesh.edges.len());
    assert!(h.iter().all(|(_, v)| decode(v)[0].1 == "allow"));
}

#[test]
fn outside_callers_take_turns_each_with_its_own_identity_and_address() {
    let mut t = Traffic::new(12, 2).with_callers(300);
    let now = now_ns();
    let (mut principals, mut ips) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    for _ in 0..1000 {
        let (key, v) = t.normal(now);
        let row = decode(&v).remove(0);
        if row.4 == "opa" {
            assert!(
                row.2
                    .starts_with("spiffe://cluster.local/ns/clients/sa/client-"),
                "{v}"
            );
            principals.insert(row.2);
            ips.insert(key);
        }
    }
    // ~700 calls from outside over 300 callers in turn: every one of them, each its own
    // address (the record's key).
    assert_eq!(principals.len(), 300);
    assert_eq!(ips.len(), 300);
}

#[test]
fn every_attack_decodes_into_what_its_rules_count() {
    let mut t = Traffic::new(12, 3);
    for s in Scenario::EACH {
        let (records, injected) = t.attack(s, now_ns());
        assert_eq!(records.len(), injected.records);
        assert!(!injected.expect.is_empty());
        let rows: Vec<_> = records.iter().flat_map(|(_, v)| decode(v)).collect();
        let denied = rows.iter().filter(|r| r.1 == "deny").count();
        match s {
            Scenario::CredentialStuffing => assert_eq!(denied, 60),
            Scenario::CompromisedProbing => {
                assert_eq!(denied, 25);
                assert!(rows.iter().all(|r| r.2 == injected.subject));
            }
            Scenario::LateralMovement => {
                assert_eq!(denied, 0);
                let (c, e) = (&rows[0].2, &rows[0].3);
                let known = t.mesh.edges.iter().any(|&(a, b)| {
                    &t.mesh.services[a].spiffe() == c && &t.mesh.services[b].spiffe() == e
                });
                assert!(!known, "{c} → {e} is on the graph");
            }
            Scenario::K8s403Burst => {
                assert_eq!(denied, 15);
                assert!(
                    rows.iter()
                        .all(|r| r.4 == "k8s_audit" && r.2 == injected.subject)
                );
            }
            Scenario::DroppedFlows => {
                assert_eq!(denied, 120);
                assert!(
                    rows.iter()
                        .all(|r| r.0 == "flow" && injected.subject.ends_with(&format!("/{}", r.2)))
                );
            }
            Scenario::DenyThenAllow => {
                assert_eq!(denied, 6);
                assert_eq!(rows.last().unwrap().1, "allow");
            }
            Scenario::All => unreachable!(),
        }
    }
    assert_eq!(expand(&[Scenario::All]).len(), 6);
}
