use super::thread::backoff_ms;
use super::*;

fn alert(sev: &str, rule: &str, rev: i64) -> Alert {
    Alert {
        alert_id: "a1".into(),
        revision: rev,
        rule_id: rule.into(),
        rule_version: 1,
        rule_kind: "threshold".into(),
        title: "Repeated denials".into(),
        severity: sev.parse().unwrap(),
        status: Status::Open,
        status_by: None,
        status_at_ns: None,
        status_note: None,
        group_key: [("caller_ip".to_string(), Some("1.2.3.4".to_string()))].into(),
        first_event_ns: 1_795_000_000_000_000_000,
        last_event_ns: 1_795_000_001_000_000_000,
        detected_ns: 1_795_000_002_000_000_000,
        event_count: 20,
        detail: vec![],
        evidence: vec![],
        incident_id: None,
        incident_subject: None,
    }
}

fn target(kind: TargetKind) -> Target {
    let mut c = TargetConfig::webhook("t", "http://127.0.0.1:9/x", "k3y".into());
    c.kind = kind;
    Target::new(c, |_: &str| None).unwrap()
}

/// Values an attacker controls (a user name, a path) cannot mention, link or format
/// outside their place in a Slack message.
#[test]
fn slack_messages_escape_event_values() {
    let mut a = alert("high", "vigil.bruteforce.source_ip", 1);
    a.group_key = [(
        "user".to_string(),
        Some("<!channel> & <https://evil.example|log in>".to_string()),
    )]
    .into();
    let (body, _) = request(&target(TargetKind::Slack), &a, 0);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("user=&lt;!channel&gt; &amp; &lt;https://evil.example|log in&gt;"),
        "{text}"
    );
    assert!(!text.contains('<') && !text.contains('>'), "{text}");
}

/// The Detection Rule License: an alert from a Sigma rule carries its author wherever it is
/// delivered, the targets that send a summary included; a native rule's detail is not taken
/// for an attribution, whatever it says.
#[test]
fn every_target_carries_a_sigma_rules_author() {
    let mut a = alert("medium", "sigma:a1b0ca4e", 1);
    a.rule_kind = "sigma".into();
    a.detail = vec![
        "sigma rule: Potential Remote Command Execution In Pod Container (id a1b0ca4e), level medium; author: Leo Tsaousis (@laripping)".into(),
        "licence: as its source states; from kubernetes_audit_exec_into_container.yml".into(),
        "tags: attack.t1609".into(),
    ];
    for kind in [
        TargetKind::Webhook,
        TargetKind::File,
        TargetKind::Slack,
        TargetKind::Splunk,
        TargetKind::Alertmanager,
    ] {
        let (body, _) = request(&target(kind), &a, 0);
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("author: Leo Tsaousis (@laripping)"),
            "{kind:?}: {text}"
        );
    }
    let mut native = alert("medium", "vigil.x", 1);
    native.detail = vec!["sigma rule: forged; author: nobody".into()];
    for kind in [TargetKind::Slack, TargetKind::Alertmanager] {
        let (body, _) = request(&target(kind), &native, 0);
        assert!(
            !String::from_utf8(body).unwrap().contains("nobody"),
            "{kind:?}"
        );
    }
}

/// `format = "ocsf"`: webhook, file and Splunk send the OCSF Detection Finding where they sent
/// the alert; Slack and Alertmanager, which have shapes of their own, refuse the setting.
#[test]
fn an_ocsf_target_sends_detection_findings_and_a_summary_target_refuses_the_format() {
    let a = alert("high", "vigil.x", 1);
    for kind in [TargetKind::Webhook, TargetKind::File, TargetKind::Splunk] {
        let mut c = TargetConfig::webhook("t", "http://127.0.0.1:9/x", "k3y".into());
        c.kind = kind;
        c.format = crate::alerts::AlertFormat::Ocsf;
        let t = Target::new(c, |_: &str| None).unwrap();
        let (body, _) = request(&t, &a, 0);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let f = if kind == TargetKind::Splunk {
            &v["event"]
        } else {
            &v["alert"]
        };
        assert_eq!(
            (f["class_uid"].as_i64(), f["severity_id"].as_i64()),
            (Some(2004), Some(4)),
            "{kind:?}"
        );
    }
    for kind in [TargetKind::Slack, TargetKind::Alertmanager] {
        let mut c = TargetConfig::webhook("t", "http://127.0.0.1:9/x", "k3y".into());
        c.kind = kind;
        c.format = crate::alerts::AlertFormat::Ocsf;
        let Err(e) = Target::new(c, |_: &str| None) else {
            panic!("{kind:?} with format ocsf was accepted");
        };
        assert!(e.to_string().contains("format applies to"), "{e}");
    }
}

#[test]
fn urls_are_shown_without_path_query_or_user() {
    assert_eq!(
        redacted_url("https://hooks.slack.com/services/T0/B0/secret"),
        "https://hooks.slack.com/…"
    );
    assert_eq!(
        redacted_url("http://u:p@127.0.0.1:8088/?token=x"),
        "http://127.0.0.1:8088/…"
    );
    assert_eq!(
        redacted_url("https://siem.example:8088/"),
        "https://siem.example:8088"
    );
    assert_eq!(
        redacted_url("/var/log/vigil-alerts.jsonl"),
        "/var/log/vigil-alerts.jsonl"
    );
    assert_eq!(
        redacted_url("ftp:://x/secret"),
        "<a URL that does not parse>"
    );
}

#[test]
fn routing_by_severity_rule_and_revision() {
    let mut c = TargetConfig::webhook("t", "http://127.0.0.1:9/", "k".into());
    c.min_severity = Severity::High;
    c.rules = vec!["vigil.k8s.*".into()];
    let t = Target::new(c, |_: &str| None).unwrap();
    assert!(t.routes(&alert("high", "vigil.k8s.forbidden_burst.user", 1)));
    assert!(t.routes(&alert("critical", "vigil.k8s.x", 2)));
    assert!(!t.routes(&alert("medium", "vigil.k8s.x", 1)));
    assert!(!t.routes(&alert("high", "vigil.denial_burst.caller", 1)));
    // Slack gets new alerts only, unless told otherwise.
    let s = target(TargetKind::Slack);
    assert!(s.routes(&alert("low", "r", 1)) && !s.routes(&alert("low", "r", 2)));
}

#[test]
fn alertmanager_gets_the_lifecycle_and_ends_at_when_resolved() {
    let t = target(TargetKind::Alertmanager);
    let mut a = alert("high", "r", 2);
    let body = |a: &Alert| -> serde_json::Value {
        serde_json::from_slice(&request(&t, a, 1_795_000_000).0).unwrap()
    };
    let open = body(&a);
    assert_eq!(open[0]["annotations"]["status"], "open");
    assert!(open[0].get("endsAt").is_none());
    a.status = Status::Resolved;
    a.status_by = Some("local:ana".into());
    a.status_at_ns = Some(1_795_000_060_000_000_000);
    let res = body(&a);
    assert_eq!(res[0]["endsAt"], "2026-11-18T11:07:40.000Z");
    assert_eq!(res[0]["annotations"]["status_by"], "local:ana");
}

#[test]
fn webhook_signatures_verify_and_forgeries_and_replays_do_not() {
    let t = target(TargetKind::Webhook);
    let a = alert("high", "r", 3);
    let (body, headers) = request(&t, &a, 1_795_000_000);
    let h = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(h("idempotency-key"), "a1:3");
    let (ts, sig) = (h("x-vigil-timestamp"), h("x-vigil-signature"));
    assert!(verify_webhook(b"k3y", &ts, &sig, &body, 1_795_000_010, 300));
    // Another key, a changed body, an old timestamp: refused.
    assert!(!verify_webhook(
        b"other",
        &ts,
        &sig,
        &body,
        1_795_000_010,
        300
    ));
    let mut forged = body.clone();
    forged[10] ^= 1;
    assert!(!verify_webhook(
        b"k3y",
        &ts,
        &sig,
        &forged,
        1_795_000_010,
        300
    ));
    assert!(!verify_webhook(
        b"k3y",
        &ts,
        &sig,
        &body,
        1_795_001_000,
        300
    ));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["alert"]["alert_id"], "a1");
}

#[test]
fn backoff_doubles_to_its_cap_with_jitter() {
    let c = TargetConfig::webhook("t", "http://x/", "k".into());
    assert_eq!(backoff_ms(&c, 0, 0.5), 500);
    assert_eq!(backoff_ms(&c, 3, 0.5), 4000);
    assert_eq!(backoff_ms(&c, 30, 0.5), 60_000);
    assert_eq!(backoff_ms(&c, 0, 0.0), 250);
    assert_eq!(backoff_ms(&c, 0, 1.0), 750);
}

#[test]
fn bad_targets_are_refused_and_secrets_never_printed() {
    let mut c = TargetConfig::webhook("t", "ftp://x", "k".into());
    let unset = |_: &str| None;
    assert!(Target::new(c.clone(), unset).is_err());
    c.url = "http://x/".into();
    c.secret = String::new();
    assert!(
        Target::new(c.clone(), unset)
            .unwrap_err()
            .to_string()
            .contains("HMAC key")
    );
    c.secret = "hunter2".into();
    assert!(!format!("{c:?}").contains("hunter2"));
    c.secret_env = "HOOK_KEY".into();
    assert!(
        Target::new(c.clone(), unset)
            .unwrap_err()
            .to_string()
            .contains("environment variable HOOK_KEY is not set")
    );
    // Resolved through what the caller passes, the environment's value wins.
    let t = Target::new(c, |k: &str| {
        (k == "HOOK_KEY").then(|| "from-env".to_owned())
    })
    .unwrap();
    assert_eq!(t.secret, "from-env");
}
