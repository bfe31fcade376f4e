//! Correlations beyond one source: aliases joining two sources on one identity, and a
//! correlation counting the firings of another.

use super::*;

/// `temporal` (any order) with aliases: a denial by OPA (its caller at
/// `input.attributes.source.principal`) and one by the Kubernetes API server (at
/// `user.username`) for the same identity within a minute — one group across two sources.
#[test]
fn a_temporal_correlation_with_aliases_joins_two_sources_on_one_identity() {
    let rules = r#"
title: OPA denial
name: opa_denied
logsource:
    product: opa
detection:
    selection:
        result: false
    condition: selection
---
title: Kubernetes denial
name: k8s_denied
logsource:
    product: kubernetes
    service: audit
detection:
    selection:
        responseStatus.code: 403
    condition: selection
---
title: Denied by the mesh and by the API server
id: 0b7e4a51-0000-4000-8000-000000000004
correlation:
    type: temporal
    rules:
        - opa_denied
        - k8s_denied
    aliases:
        who:
            opa_denied: input.attributes.source.principal
            k8s_denied: user.username
    group-by:
        - who
    timespan: 1m
level: critical
"#;
    let opa = |who: &str, at_s: i64| {
        let t = chrono::DateTime::from_timestamp(1_790_000_000 + at_s, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        format!(
            r#"{{"decision_id":"{who}-{at_s}","result":false,"timestamp":"{t}","input":{{"attributes":{{"source":{{"principal":"{who}"}},"request":{{"http":{{"method":"GET","path":"/"}}}}}}}}}}"#
        )
        .into_bytes()
    };
    // The Kubernetes denial first, then OPA's: any order will do.
    let (_, fired) = run(
        rules,
        &[audit("mallory", "get", "s1", 403, 0), opa("mallory", 30)],
    );
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert_eq!(fired[0].group_key["who"].as_deref(), Some("mallory"));
    assert_eq!(fired[0].severity, crate::alerts::Severity::Critical);
    assert_eq!(fired[0].evidence.len(), 2);
    // Two identities, or one a minute and more apart: nothing.
    let (_, fired) = run(
        rules,
        &[
            audit("mallory", "get", "s1", 403, 0),
            opa("alice", 10),
            opa("mallory", 61),
        ],
    );
    assert!(fired.is_empty(), "{fired:#?}");
}

/// A chained correlation: sweeps of distinct secrets (`value_count`, itself only feeding the
/// chain) counted by an `event_count` over its firings — the outer one alerts, the inner one
/// does not on its own.
#[test]
fn a_chained_correlation_counts_the_firings_of_the_one_it_references() {
    let rules = r#"
title: Secret read
name: chain_secret_read
logsource:
    product: kubernetes
    service: audit
detection:
    selection:
        verb: get
        objectRef.resource: secrets
    condition: selection
---
title: Two distinct secrets
name: chain_two_secrets
correlation:
    type: value_count
    rules: [chain_secret_read]
    group-by: [user.username]
    timespan: 5m
    condition:
        field: objectRef.name
        gte: 2
---
title: Repeated secret sweeps
id: 0b7e4a51-0000-4000-8000-000000000005
correlation:
    type: event_count
    rules: [chain_two_secrets]
    group-by: [user.username]
    timespan: 10m
    condition:
        gte: 2
level: high
"#;
    let l = load(&[source("chain.yml", rules)], &Defaults::default());
    assert!(l.errors.is_empty(), "{:#?}", l.errors);
    let inactive: Vec<&str> = l.inactive.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        inactive,
        ["sigma:chain_secret_read", "sigma:chain_two_secrets"]
    );
    // Two reads: the inner one fires once, the chain not yet.
    let (_, fired) = run(
        rules,
        &[
            audit("alice", "get", "s1", 200, 0),
            audit("alice", "get", "s2", 200, 10),
        ],
    );
    assert!(fired.is_empty(), "{fired:#?}");
    // A third: the inner one fires again, and the chain does.
    let (_, fired) = run(
        rules,
        &[
            audit("alice", "get", "s1", 200, 0),
            audit("alice", "get", "s2", 200, 10),
            audit("alice", "get", "s3", 200, 20),
        ],
    );
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert_eq!(
        fired[0].rule_id,
        "sigma:0b7e4a51-0000-4000-8000-000000000005"
    );
    assert_eq!(
        fired[0].group_key["user.username"].as_deref(),
        Some("alice")
    );
}
