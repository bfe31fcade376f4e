//! A compromised service that can write to Kafka tries to forge Vigil's own signals: records
//! on its topic claiming to be refusals by Vigil's API (to raise "credential guessing against
//! Vigil" naming an address of its choosing) and alert lifecycle records. Against the real
//! broker and `vigil serve` with the default rules: no alert names the forged address; the
//! forgery itself is an alert, per topic and claim; and the real thing still alerts — 20
//! refused API calls over real HTTP raise `vigil.api.denied_burst` for the real caller.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;

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
    wait_for("the forged records stored", Duration::from_secs(30), || {
        (stored_per_partition(&dir, "mesh").values().sum::<i64>() >= 43).then_some(())
    });
    // Whatever the forged records could have fired is stored once serve has stopped cleanly
    // (detection evaluates every piece it was sent and stores its alerts before it exits).
    assert!(s.terminate(), "vigil serve did not exit cleanly");
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
    assert_eq!(claimed.severity, vigil_detect::alerts::Severity::High);

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

/// An OPA denial of a login from `ip`, at `at`.
fn login_denied(id: &str, ip: &str, at: chrono::DateTime<chrono::Utc>) -> Rec {
    Rec {
        partition: 0,
        key: None,
        value: Some(format!(
            r#"{{"decision_id":"{id}","result":false,"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{ip}","portValue":1}}}}}},"destination":{{"principal":"spiffe://c/ns/auth/sa/login"}},"request":{{"http":{{"method":"POST","path":"/login"}}}}}}}}}}"#,
            at.to_rfc3339()
        ).into_bytes()),
        headers: Vec::new(),
    }
}

/// A producer floods every rule with new keys — a denial from each of 30 000 addresses, with
/// the per-rule caps far above it — to grow detection's state without end: the state stays
/// within `detect.max_state_bytes` (1 MiB here), what is shed is counted and raises
/// `vigil.detect.state_evicted`, and a brute force right after the flood is still caught.
#[test]
fn a_flood_of_new_keys_is_held_within_the_memory_budget_and_detection_goes_on() {
    const KEY: &str = "vk_hostile_budget_0123456789abcdef";
    let DetectSetup {
        broker,
        dir,
        config,
        tmp: _tmp,
    } = detect_setup(
        "mesh",
        1,
        "max_groups_per_rule = 1000000\nmax_state_bytes = 1048576\n",
    );
    let toml = std::fs::read_to_string(&config).unwrap() + &api_key_entry("r", KEY, &["reader"]);
    std::fs::write(&config, toml).unwrap();
    let s = serve(&broker, "mesh", &dir, "g-budget", &[], Some(&config));
    let now = chrono::Utc::now();
    let recs: Vec<Rec> = (0..30_000i64)
        .map(|i| {
            let ip = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
            login_denied(
                &format!("b{i}"),
                &ip,
                now + chrono::Duration::microseconds(i),
            )
        })
        .collect();
    produce(&broker.producer(), "mesh", &recs);
    let evicted = wait_for("the eviction alert", Duration::from_secs(120), || {
        stored_alerts(&dir)
            .into_iter()
            .find(|a| a.rule_id == "vigil.detect.state_evicted")
    });
    assert_eq!(evicted.severity, vigil_detect::alerts::Severity::High);

    // Detection goes on: 60 denials from a fresh address after the flood (the rule: 50 in
    // 5 minutes).
    let later = now + chrono::Duration::seconds(1);
    let burst: Vec<Rec> = (0..60i64)
        .map(|i| {
            login_denied(
                &format!("x{i}"),
                "10.77.7.7",
                later + chrono::Duration::milliseconds(i),
            )
        })
        .collect();
    produce(&broker.producer(), "mesh", &burst);
    wait_for("the burst's alert", Duration::from_secs(60), || {
        stored_alerts(&dir).into_iter().find(|a| {
            a.rule_id == "vigil.denial_burst.source_ip"
                && a.group_key
                    .values()
                    .any(|v| v.as_deref() == Some("10.77.7.7"))
        })
    });

    // Within the budget as weighed at a checkpoint after it all, the shedding counted.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let gauge = |m: &str, name: &str| -> Option<u64> {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let (bytes, shed) = wait_for("a checkpoint's figures", Duration::from_secs(30), || {
        let m = rt.block_on(async {
            http.get(format!("http://{}/metrics", s.api))
                .bearer_auth(KEY)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        })?;
        let (bytes, shed) = (
            gauge(&m, "vigil_detect_state_bytes")?,
            gauge(&m, "vigil_detect_state_shed_total")?,
        );
        assert_eq!(gauge(&m, "vigil_detect_state_max_bytes"), Some(1 << 20));
        // A checkpoint taken after the flood was evaluated (they come every 500 ms).
        (shed >= 10_000 && bytes > 0).then_some((bytes, shed))
    });
    assert!(
        bytes <= 1 << 20,
        "{bytes} bytes of state ({shed} groups shed)"
    );
    // Every record stored (detection sees pieces before their file is durable: wait for it).
    wait_for("every record stored", Duration::from_secs(60), || {
        (stored_records(&dir) == 30_060).then_some(())
    });
    assert!(s.terminate(), "vigil serve did not exit cleanly");
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
    let recs: Vec<Rec> = (0..400i64)
        .map(|i| {
            let ip = format!("10.9.{}.{}", i / 250, i % 250);
            login_denied(
                &format!("f{i}"),
                &ip,
                now + chrono::Duration::milliseconds(i),
            )
        })
        .collect();
    produce(&broker.producer(), "mesh", &recs);
    let evicted = wait_for("the eviction alert", Duration::from_secs(60), || {
        stored_alerts(&dir)
            .into_iter()
            .find(|a| a.rule_id == "vigil.detect.state_evicted")
    });
    assert_eq!(evicted.severity, vigil_detect::alerts::Severity::High);
    let rule = evicted.group_key["rule_id"].clone().unwrap();
    assert!(rule.starts_with("vigil."), "{rule}");
    assert!(
        evicted.detail[0].contains("groups evicted by rule"),
        "{:?}",
        evicted.detail
    );
    assert!(s.terminate(), "vigil serve did not exit cleanly");
}
