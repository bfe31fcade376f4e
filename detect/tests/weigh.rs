//! Detection's memory budget weighs what the allocator really holds for the rules' groups:
//! the default rules fed a mesh of distinct callers, connections and denials, with every
//! allocation counted by this test binary's own allocator.

use vigil_detect::engine::Engine;
use vigil_detect::evidence::EvRef;
use vigil_detect::row::OwnedRow;
use vigil_detect::rules::{Defaults, load, sources};

/// Every allocation of this test binary, counted.
#[path = "../../benches/support/counting.rs"]
mod counting;

const S: i64 = 1_000_000_000;

fn row(fields: serde_json::Value) -> OwnedRow {
    let m = fields.as_object().expect("an object");
    OwnedRow::from_fields(m.iter().map(|(k, v)| (k.as_str(), v))).expect("canonical fields")
}

#[test]
fn the_weighed_state_is_within_a_fifth_of_what_the_groups_hold() {
    let l = load(
        &sources(None, true).expect("the default rules"),
        &Defaults {
            max_groups: 10_000_000,
            ..Defaults::default()
        },
    );
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let mut e = Engine::new(l.rules.into_iter().map(|(r, _)| r).collect())
        .with_state_budget(usize::MAX / 2);
    // The rows are built before counting starts; what is counted is the groups they make.
    let n = 40_000u32;
    let rows: Vec<OwnedRow> = (0..n)
        .flat_map(|i| {
            let caller = format!("spiffe://cluster.local/ns/outside/sa/caller-{i}");
            let ip = format!("192.168.{}.{}", i >> 8, i & 255);
            let port = 30_000 + i64::from(i % 30_000);
            [
                row(serde_json::json!({
                    "kind": "authz", "source_format": "envoy", "decision": "allow",
                    "caller_principal": caller, "caller_ip": ip, "caller_port": port,
                    "callee_service": "payments", "callee_ip": "10.0.2.10", "callee_port": 8443,
                    "action": "GET", "resource": format!("/orders/{i}"),
                })),
                row(serde_json::json!({
                    "kind": "authz", "source_format": "opa", "decision": "deny",
                    "caller_principal": caller, "caller_ip": ip,
                    "callee_service": "ledger", "action": "POST", "resource": "/admin",
                })),
                row(serde_json::json!({
                    "kind": "flow", "source_format": "hubble", "decision": "allow",
                    "is_reply": false, "caller_principal": caller, "caller_ip": ip,
                    "caller_port": port + 1, "callee_ip": "10.0.3.10", "callee_port": 5432,
                })),
            ]
        })
        .collect();
    let before = counting::heap_bytes();
    for (i, r) in rows.iter().enumerate() {
        let ev = EvRef {
            log: 0,
            index: i as u64,
            time_ns: 1_800_000_000 * S + i as i64 * 1_000_000,
            leaf: [0; 32],
        };
        e.observe_row(r, ev, 1_800_000_000 * S);
    }
    let alerts = e.take_pending().len();
    e.weigh_state();
    let held = (counting::heap_bytes() - before) as f64;
    let weighed = e.state_budget().bytes as f64;
    let groups: usize = e.stats().iter().map(|s| s.groups).sum();
    println!(
        "{groups} groups, {alerts} alerts: weighed {weighed:.0} B, allocated {held:.0} B ({:.0} B per group)",
        held / groups as f64
    );
    for s in e.stats().iter().filter(|s| s.groups > 0) {
        println!(
            "  {:<40} {:>7} groups {:>6} B each",
            s.id,
            s.groups,
            s.bytes / s.groups.max(1)
        );
    }
    assert!(groups > 3 * n as usize, "{groups} groups");
    assert!(
        weighed >= 0.8 * held && weighed <= 1.2 * held,
        "weighed {weighed:.0} B, allocated {held:.0} B"
    );
}
