//! A compromised service that can write to Kafka tries to forge Vigil's own signals: records
//! on its topic claiming to be refusals by Vigil's API (to raise "credential guessing against
//! Vigil" naming an address of its choosing) and alert lifecycle records. Against the real
//! broker and `vigil serve` with the default rules: no alert names the forged address; the
//! forgery itself is an alert, per topic and claim; and the real thing still alerts — 20
//! refused API calls over real HTTP raise `vigil.api.denied_burst` for the real caller.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

fn forged(i: usize, service: &str) -> Rec {
    let t = chrono::Utc::now().to_rfc3339();
    let ev = serde_json::json!({
        "schema": vigil_schemas::NATIVE_SCHEMA_V1,
        "id": format!("forged-{service}-{i}"),
        "time": t,
        "kind": "admin_audit",
        "decision": "deny",
        "caller": {"ip": "198.51.100.23", "port": 40000 + i},
        "callee": {"service": service},
        "action": "GET /v1/alerts",
        "resource": "/v1/alerts",
        "status_code": 401,
    });
    Rec {
        partition: 0,
        key: None,
        value: Some(serde_json::to_vec(&ev).unwrap()),
        headers: Vec::new(),
    }
}

#[test]
fn forged_own_records_raise_no_alert_of_vigils_but_one_about_the_forgery() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let s = serve(&broker, "mesh", &dir, "g-forge", &[], None);
    let base = format!("http://{}", s.api);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let status = |key: Option<&str>, path: &str| -> Option<u16> {
        rt.block_on(async {
            let mut r = http.get(format!("{base}{path}"));
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            r.send().await.ok().map(|r| r.status().as_u16())
        })
    };
    wait_for("ready", Duration::from_secs(60), || {
        (status(None, "/readyz") == Some(200)).then_some(())
    });

    // 40 forged API refusals and 3 forged lifecycle records, on the producer's topic.
    let mut recs: Vec<Rec> = (0..40).map(|i| forged(i, "vigil-api")).collect();
    recs.extend((0..3).map(|i| forged(i, "vigil")));
    produce(&broker.producer(), "mesh", &recs);
    // And 25 real refusals: calls with an unknown key.
    for _ in 0..25 {
        let got = status(Some("vk_stolen_but_wrong_0123456789"), "/v1/alerts");
        assert_eq!(got, Some(401));
    }

    let expected: BTreeSet<(String, String)> = [
        ("vigil.provenance.own_record_claimed", "vigil-api mesh"),
        ("vigil.provenance.own_record_claimed", "vigil mesh"),
        ("vigil.api.denied_burst", "127.0.0.1"),
    ]
    .into_iter()
    .map(|(r, k)| (r.to_owned(), k.to_owned()))
    .collect();
    let got = wait_alerts(&dir, &expected, Duration::from_secs(60));
    assert!(expected.is_subset(&got), "{got:?}\n{}", s.log_text());
    // Give the forged records every chance to have fired something else.
    wait_for("the forged records stored", Duration::from_secs(30), || {
        (stored_per_partition(&dir, "mesh").values().sum::<i64>() >= 43).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let got = alert_summary(&stored_alerts(&dir));
    let about_forged: Vec<_> = got
        .iter()
        .filter(|(_, k)| k.contains("198.51.100.23"))
        .collect();
    assert!(
        about_forged.is_empty(),
        "alerts name the forged address: {about_forged:?}"
    );
    let claimed = stored_alerts(&dir)
        .into_iter()
        .find(|a| a.rule_id == "vigil.provenance.own_record_claimed")
        .unwrap();
    assert_eq!(claimed.severity, "high");
    assert!(s.terminate(), "vigil serve did not exit cleanly");

    // What serve made of the data directory is its user's alone: directories 0700, files
    // 0600 (the signing key among them).
    fn walk(p: &std::path::Path, bad: &mut Vec<String>, n: &mut usize) {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::symlink_metadata(p).unwrap();
        let mode = m.permissions().mode() & 0o777;
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        *n += 1;
        if mode != want {
            bad.push(format!("{} {mode:o}", p.display()));
        }
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), bad, n);
            }
        }
    }
    let (mut bad, mut n) = (Vec::new(), 0);
    walk(&dir, &mut bad, &mut n);
    assert!(n > 20, "{n} entries");
    assert!(bad.is_empty(), "open to others: {bad:#?}");
}

/// A producer floods a rule with new group keys (a denial from each of 400 addresses, more
/// than the rule keeps) to push out the counter that would catch its own brute force: the
/// eviction is itself an alert, naming the rule.
#[test]
fn flooding_a_rules_groups_to_evict_a_counter_is_itself_an_alert() {
    let DetectSetup {
        broker,
        dir,
        config,
        tmp: _tmp,
    } = detect_setup("mesh", 1, "max_groups_per_rule = 100\n");
    let s = serve(&broker, "mesh", &dir, "g-flood", &[], Some(&config));
    let now = chrono::Utc::now();
    let recs: Vec<Rec> = (0..400)
        .map(|i| Rec {
            partition: 0,
            key: None,
            value: Some(format!(
                r#"{{"decision_id":"f{i}","result":false,"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"10.9.{}.{}","portValue":1}}}}}},"destination":{{"principal":"spiffe://c/ns/auth/sa/login"}},"request":{{"http":{{"method":"POST","path":"/login"}}}}}}}}}}"#,
                (now + chrono::Duration::milliseconds(i)).to_rfc3339(),
                i / 250,
                i % 250
            ).into_bytes()),
            headers: Vec::new(),
        })
        .collect();
    produce(&broker.producer(), "mesh", &recs);
    let evicted = wait_for("the eviction alert", Duration::from_secs(60), || {
        stored_alerts(&dir)
            .into_iter()
            .find(|a| a.rule_id == "vigil.detect.state_evicted")
    });
    assert_eq!(evicted.severity, "high");
    let rule = evicted.group_key["rule_id"].clone().unwrap();
    assert!(rule.starts_with("vigil."), "{rule}");
    assert!(
        evicted.detail[0].contains("groups evicted by rule"),
        "{:?}",
        evicted.detail
    );
    assert!(s.terminate(), "vigil serve did not exit cleanly");
}
