//! Sigma rules in `vigil serve`: SigmaHQ's Kubernetes audit rules and a correlation of our
//! own, loaded from `detect.rules_dir`, over Kubernetes audit events produced to the real
//! broker — the alerts stored with their evidence and the rule's author, and delivered with it.

use std::collections::BTreeSet;

use crate::support::*;

fn data(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel)
}

/// Distinct secrets read by one user within five minutes.
const CORRELATION: &str = r#"
title: Secret read
name: it_secret_read
author: Vigil tests
logsource:
    product: kubernetes
    service: audit
detection:
    selection:
        verb: get
        objectRef.resource: secrets
    condition: selection
---
title: Many distinct secrets read by one user
id: 5e0c2f8a-3a57-4c1e-9d35-0c1f6f1d2a77
author: Vigil tests
correlation:
    type: value_count
    rules:
        - it_secret_read
    group-by:
        - user.username
    timespan: 5m
    condition:
        field: objectRef.name
        gte: 3
level: high
"#;

fn read_secret(user: &str, name: &str, at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let t = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{user}-{name}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/prod/secrets/{name}","verb":"get","user":{{"username":"{user}"}},"sourceIPs":["10.0.3.9"],"objectRef":{{"resource":"secrets","namespace":"prod","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{t}","stageTimestamp":"{t}","annotations":{{"authorization.k8s.io/decision":"allow"}}}}"#
    )
    .into_bytes()
}

fn trace(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(data("k8s-audit-falco/trace_files").join(name)).unwrap();
    text.lines().next().unwrap().as_bytes().to_vec()
}

#[test]
fn sigmahq_rules_and_a_correlation_alert_in_serve_with_their_author_and_evidence() {
    let rules = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(data("sigma/kubernetes_audit")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, rules.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(rules.path().join("secret_reads.yml"), CORRELATION).unwrap();
    let delivered = tempfile::tempdir().unwrap();
    let out = delivered.path().join("alerts.jsonl");
    let ocsf_out = delivered.path().join("findings.jsonl");
    let DetectSetup {
        broker,
        dir,
        config,
        tmp: _tmp,
    } = detect_setup(
        "k8s.audit",
        1,
        &format!(
            "rules_dir = {:?}\n\n[[deliver.targets]]\nname = \"file\"\nkind = \"file\"\nurl = {:?}\n\n\
             [[deliver.targets]]\nname = \"lake\"\nkind = \"file\"\nurl = {:?}\nformat = \"ocsf\"\n",
            rules.path().display().to_string(),
            out.display().to_string(),
            ocsf_out.display().to_string()
        ),
    );
    let now = chrono::Utc::now();
    let values = vec![
        trace("exec_pod.json"),
        trace("create_secret.json"),
        read_secret("mallory", "db-password", now),
        read_secret("mallory", "api-token", now + chrono::Duration::seconds(1)),
        read_secret("mallory", "tls-key", now + chrono::Duration::seconds(2)),
        // Another user's single read is another group: nothing.
        read_secret("alice", "db-password", now + chrono::Duration::seconds(3)),
    ];
    let recs = on_partition_0(values);
    let s = serve(&broker, "k8s.audit", &dir, "g-sigma", &[], Some(&config));
    produce(&broker.producer(), "k8s.audit", &recs);
    wait_stored(
        &[&s],
        &dir,
        recs.len() as u64,
        std::time::Duration::from_secs(60),
    );
    let expected: BTreeSet<(String, String)> = [
        (
            "sigma:a1b0ca4e-7835-413e-8471-3ff2b8a66be6".to_owned(),
            "minikube-user".to_owned(),
        ),
        (
            "sigma:58d31a75-a4f8-4c40-985b-373d58162ca2".to_owned(),
            "minikube-user".to_owned(),
        ),
        (
            "sigma:5e0c2f8a-3a57-4c1e-9d35-0c1f6f1d2a77".to_owned(),
            "mallory".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    let got = wait_alerts(&dir, &expected, std::time::Duration::from_secs(30));
    assert_eq!(got, expected);
    let (ok, log) = s.stop();
    assert!(ok, "serve failed: {log}");
    assert!(
        log.contains("rule loaded, but cannot do all it says"),
        "{log}"
    );
    let alerts = stored_alerts(&dir);
    let exec = alerts
        .iter()
        .find(|a| a.rule_id.starts_with("sigma:a1b0ca4e"))
        .unwrap();
    assert_eq!(exec.rule_kind, "sigma");
    assert!(
        exec.detail
            .iter()
            .any(|d| d.contains("author: Leo Tsaousis (@laripping)")),
        "{:?}",
        exec.detail
    );
    assert_eq!(exec.evidence.len(), 1);
    assert_eq!(
        (exec.evidence[0].log.as_str(), exec.evidence[0].index),
        ("k8s.audit/0", 0)
    );
    let corr = alerts
        .iter()
        .find(|a| a.rule_kind == "sigma_correlation")
        .unwrap();
    let idx: Vec<u64> = corr.evidence.iter().map(|e| e.index).collect();
    assert_eq!(idx, [2, 3, 4], "the three reads, as stored");
    assert_eq!(corr.event_count, 3);
    // Delivered with the author (the file target writes what a webhook is sent).
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(text.contains("author: Leo Tsaousis (@laripping)"), "{text}");
    assert!(text.contains("author: kelnage"), "{text}");
    // The same alerts as OCSF Detection Findings, valid against the 1.8.0 schema, author and
    // all; and each stored alert converts the same way.
    let schema = Ocsf::load();
    let findings = std::fs::read_to_string(&ocsf_out).unwrap_or_default();
    let mut n = 0;
    for line in findings.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let f = &v["alert"];
        let errs = schema.validate("detection_finding", f);
        assert!(errs.is_empty(), "{errs:#?}\n{f:#}");
        assert_eq!(f["metadata"]["product"]["name"], "Vigil");
        n += 1;
    }
    assert!(n >= 3, "{findings}");
    assert!(
        findings.contains("author: Leo Tsaousis (@laripping)"),
        "{findings}"
    );
    for a in &alerts {
        let f = vigil_detect::alerts::detection_finding(a);
        assert!(schema.validate("detection_finding", &f).is_empty());
    }
}
