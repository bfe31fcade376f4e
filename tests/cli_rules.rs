//! `vigil rules test|list|backtest` and `vigil alerts` as a user runs them.

use std::path::Path;

use crate::support::*;
use vigil_schemas::Decoder;
use vigil_store::{PartitionBatch, RecordRef, Store, WriteOptions};

const GOOD: &str = r#"
id = "team.admin_denials"
version = 1
title = "Denied admin calls"
severity = "high"
kind = "threshold"
filter = 'decision == "deny" and resource startswith "/admin"'
group_by = ["caller_principal"]
count = 3
window = "1m"

[[test]]
name = "three admin denials"
alerts = 1
[[test.event]]
fields = { decision = "deny", resource = "/admin/x", caller_principal = "a" }
repeat = 3

[[test]]
name = "a wrong expectation"
alerts = 2
[[test.event]]
fields = { decision = "deny", resource = "/admin/x", caller_principal = "a" }
repeat = 3
"#;

#[test]
fn rules_test_reports_each_test_and_fails_on_any_failure() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.toml"), GOOD).unwrap();
    let d = dir.path().to_str().unwrap();
    let Ran { code, out, .. } = vigil(&["rules", "test", d, "--no-defaults"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ok    team.admin_denials :: three admin denials"),
        "{out}"
    );
    assert!(
        out.contains("FAIL  team.admin_denials :: a wrong expectation"),
        "{out}"
    );
    assert!(out.contains("expected 2 alert(s), got 1"), "{out}");
    assert!(out.contains("2 test(s), 1 passed, 1 failed"), "{out}");

    // The default pack passes its own tests.
    let Ran { code, out, .. } = vigil(&["rules", "test"]);
    assert_eq!(code, 0, "{out}");

    // A broken file: named with its line; the other rules still list.
    std::fs::write(
        dir.path().join("broken.toml"),
        "id = \"x\"\nversion = 1\ntitle = \"t\"\nseverity = \"urgent\"\nkind = \"threshold\"\n",
    )
    .unwrap();
    let Ran { code, out, .. } = vigil(&["rules", "list", d]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("broken.toml:4: unknown variant `urgent`"),
        "{out}"
    );
    assert!(out.contains("team.admin_denials"), "{out}");
    assert!(out.contains("vigil.denial_burst.caller"), "{out}");
}

fn store_with_denials(dir: &Path, n: i64) {
    let store = Store::open(dir, WriteOptions::default()).unwrap();
    let mut b = PartitionBatch::new("audit", 0, Default::default(), 64);
    for i in 0..n {
        let v = format!(
            r#"{{"decision_id":"d{i}","result":false,"timestamp":"2026-11-22T10:00:{:02}Z","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"10.0.0.1","portValue":1}}}},"principal":"spiffe://c/ns/a/sa/b"}},"destination":{{"principal":"spiffe://c/ns/x/sa/y"}},"request":{{"http":{{"method":"GET","path":"/p{i}"}}}}}}}}}}"#,
            i % 60
        );
        let rec = RecordRef {
            topic: "audit",
            partition: 0,
            offset: i,
            timestamp_ms: None,
            key: None,
            value: Some(v.as_bytes()),
            headers: &[],
        };
        b.append(&rec, &Decoder::default(), 0).unwrap();
    }
    store.write(&b.seal().unwrap().unwrap()).unwrap();
}

#[test]
fn backtest_prints_what_would_have_fired_within_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    store_with_denials(dir.path(), 25);
    let d = dir.path().to_str().unwrap();
    let Ran { code, out, .. } = vigil(&["rules", "backtest", "--data-dir", d]);
    assert_eq!(code, 0, "{out}");
    // 25 denials of one caller on 25 paths within 25 s: the per-caller burst and probing.
    assert!(out.contains("vigil.denial_burst.caller"), "{out}");
    assert!(out.contains("vigil.permission_probing"), "{out}");
    assert!(
        out.contains("25 events evaluated, 2 alert(s) would have fired"),
        "{out}"
    );
    let Ran { code, out, .. } = vigil(&[
        "rules",
        "backtest",
        "--data-dir",
        d,
        "--json",
        "--to",
        "2026-11-22T10:00:15Z",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("15 events evaluated"), "{out}");
    // 15 denials, 15 paths: probing (10 distinct), not the burst (20).
    assert!(
        out.contains("\"rule_id\":\"vigil.permission_probing\""),
        "{out}"
    );
    assert!(
        !out.contains("\"rule_id\":\"vigil.denial_burst.caller\""),
        "{out}"
    );
    let Ran { code, out, .. } =
        vigil(&["rules", "backtest", "--data-dir", d, "--from", "yesterday"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not an RFC 3339 time"), "{out}");
    // Backtests store nothing.
    let Ran { code, out, .. } = vigil(&["alerts", "--data-dir", d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 alert(s)"), "{out}");
}

/// A Sigma correlation over the stored OPA denials, backtested: 25 denials of one caller
/// within a minute is an `event_count` of 25 ≥ 20; and `rules list` / `rules test` say what
/// each Sigma file holds and why one cannot load, by file and rule.
#[test]
fn sigma_rules_list_test_and_backtest_like_vigils_own() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("denials.yml"),
        r#"
title: OPA denial
name: opa_denial
author: Vigil tests
logsource:
    product: opa
detection:
    selection:
        result: false
    condition: selection
---
title: Many OPA denials of one caller
id: 3f0b9d77-2b0e-4f0a-9d55-7a1f5a0c0001
author: Vigil tests
correlation:
    type: event_count
    rules: [opa_denial]
    group-by: [input.attributes.source.principal]
    timespan: 1m
    condition:
        gte: 20
level: high
"#,
    )
    .unwrap();
    std::fs::write(
        rules.path().join("windows.yml"),
        "title: Whoami\nlogsource:\n    product: windows\ndetection:\n    selection:\n        CommandLine|contains: whoami\n    condition: selection\n",
    )
    .unwrap();
    let r = rules.path().to_str().unwrap();
    let Ran { code, out, .. } = vigil(&["rules", "list", r]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("sigma:3f0b9d77-2b0e-4f0a-9d55-7a1f5a0c0001")
            && out.contains("sigma_correlation"),
        "{out}"
    );
    assert!(
        out.contains("sigma:opa_denial") && out.contains("feeds the correlation"),
        "{out}"
    );
    assert!(
        out.contains("windows.yml:0: rule `Whoami`: logsource product `windows`"),
        "{out}"
    );
    let Ran { code, out, .. } = vigil(&["rules", "test", r, "--no-defaults"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok    sigma:3f0b9d77"), "{out}");
    assert!(
        out.contains("FAIL  ? :: (load)") && out.contains("Whoami"),
        "{out}"
    );
    std::fs::remove_file(rules.path().join("windows.yml")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    store_with_denials(dir.path(), 25);
    let d = dir.path().to_str().unwrap();
    let Ran { code, out, .. } =
        vigil(&["rules", "backtest", "--data-dir", d, "--rules", r, "--json"]);
    assert_eq!(code, 0, "{out}");
    let fired: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|a: &serde_json::Value| a["rule_kind"] == "sigma_correlation")
        .collect();
    assert_eq!(fired.len(), 1, "{out}");
    assert_eq!(fired[0]["event_count"], 25, "{out}");
    assert_eq!(
        fired[0]["group_key"]["input.attributes.source.principal"],
        "spiffe://c/ns/a/sa/b"
    );
    assert!(
        fired[0]["detail"]
            .to_string()
            .contains("author: Vigil tests"),
        "{out}"
    );
}
