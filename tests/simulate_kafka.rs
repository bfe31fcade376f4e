//! `vigil simulate` against the real broker and `vigil serve` with the default rule pack:
//! every attack it injects fires the rules it names, about the subject it names, and the
//! normal traffic (with its one-off denials, drops and 403s) fires nothing else.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use vigil_detect::alerts::{latest, read_revisions};

#[test]
fn every_simulated_attack_fires_its_rules_and_normal_traffic_fires_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 3);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let s = serve(&broker, "mesh", &dir, "g-sim", &[], None);

    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["simulate", "--brokers", &broker.addr, "--topic", "mesh"])
        .args(["--rate", "60", "--duration", "21", "--attack-every", "3"])
        .args(["--scenario", "all", "--json"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let injected: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["scenario"].is_string()).collect();
    assert_eq!(injected.len(), 6, "{stdout}");
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true, "{stdout}");
    let total = done["events"].as_u64().unwrap();
    assert!(total > 1500, "{stdout}");

    // (rule, subject) each attack should produce.
    let expected: BTreeSet<(String, String)> = injected
        .iter()
        .flat_map(|i| {
            let subject = i["subject"].as_str().unwrap().to_owned();
            i["expect"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |r| (r.as_str().unwrap().to_owned(), subject.clone()))
        })
        .collect();
    let rules: BTreeSet<&str> = expected.iter().map(|(r, _)| r.as_str()).collect();
    // An alert is about a subject when its caller (principal, else address) is part of it
    // (the probe's new-edge alerts name each service it probed as well).
    let field = |a: &vigil_detect::alerts::Alert, f: &str| -> Option<String> {
        a.group_key.get(f).cloned().flatten()
    };
    let about = |a: &vigil_detect::alerts::Alert, subject: &str| {
        field(a, "caller_principal")
            .or_else(|| field(a, "caller_ip"))
            .is_some_and(|v| subject.contains(&v))
    };
    // The mesh's own edges: never an unexpected caller.
    let edges: BTreeSet<(String, String)> = lines[0]["mesh"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("no mesh first: {stdout}"))
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_owned(),
                e[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(edges.len() >= 24, "{stdout}");
    let started = std::time::Instant::now();
    let alerts = loop {
        let alerts = latest(read_revisions(&dir).unwrap_or_default());
        let missing: Vec<&(String, String)> = expected
            .iter()
            .filter(|(rule, subject)| {
                !alerts
                    .iter()
                    .any(|a| &a.rule_id == rule && about(a, subject))
            })
            .collect();
        if missing.is_empty() {
            break alerts;
        }
        let found: Vec<(&str, &std::collections::BTreeMap<String, Option<String>>)> = alerts
            .iter()
            .map(|a| (a.rule_id.as_str(), &a.group_key))
            .collect();
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "missing after 90 s: {missing:?}\nfound: {found:?}\n{stdout}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // Nothing but the attacks: every alert is an expected rule about an injected subject, and
    // none is about an edge of the mesh.
    for a in &alerts {
        if a.rule_id == "vigil.unexpected_caller.learned" {
            let edge = (
                field(a, "caller_principal").unwrap_or_default(),
                field(a, "callee_principal").unwrap_or_default(),
            );
            assert!(
                !edges.contains(&edge),
                "a mesh edge taken for a new one: {edge:?}"
            );
        }
        assert!(
            rules.contains(a.rule_id.as_str())
                && injected
                    .iter()
                    .any(|i| about(a, i["subject"].as_str().unwrap())),
            "an alert no attack explains: {} {:?}\n{stdout}",
            a.rule_id,
            a.group_key
        );
    }

    // Everything sent is stored (decoded, none rejected), then the store verifies.
    wait_stored(&[&s], &dir, total, Duration::from_secs(60));
    let rejected = sql(
        &dir,
        "SELECT count(*) FROM rejected WHERE kafka_topic = 'mesh'",
    );
    use arrow::array::AsArray;
    assert_eq!(
        rejected[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        0
    );
    assert!(s.terminate());
    // Chained, signed and anchored: valid, with the keys pinned as a verifier would.
    use vigil_store::checkpoint::{KEYS_DIR, REGISTRY_FILE};
    let pinned = tmp.path().join("pinned.keys");
    std::fs::copy(dir.join(KEYS_DIR).join(REGISTRY_FILE), &pinned).unwrap();
    let v = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["verify", "--data-dir"])
        .arg(&dir)
        .arg("--keys")
        .arg(&pinned)
        .args(["--anchor-kafka", &broker.addr])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}
