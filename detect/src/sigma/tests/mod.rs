//! Sigma rules in the engine: the real SigmaHQ rules over real audit samples (`samples.rs`),
//! correlations over built events (here and `chains.rs`), suppression, pipelines, and what
//! cannot be evaluated.

use std::collections::BTreeSet;

use vigil_schemas::Decoder;
use vigil_store::{PartitionBatch, Piece, RecordRef};

use crate::alerts::Alert;
use crate::engine::Engine;
use crate::rules::{Defaults, Loaded, Source, load};
use crate::time::TimeConfig;

fn data(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel)
}

/// The 16 SigmaHQ Kubernetes audit rules as sources.
fn sigmahq() -> Vec<Source> {
    let dir = data("sigma/kubernetes_audit");
    let mut v: Vec<Source> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| Source {
            name: p.display().to_string(),
            text: std::fs::read_to_string(&p).unwrap(),
            dir: Some(dir.clone()),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn source(name: &str, text: &str) -> Source {
    Source {
        name: name.into(),
        text: text.into(),
        dir: None,
    }
}

fn engine(l: Loaded) -> Engine {
    Engine::new(l.into_rules()).with_time(TimeConfig {
        max_future_skew_ns: i64::MAX / 4,
        idle_source_ns: -1,
        ..TimeConfig::default()
    })
}

/// A partition log fed one piece per call.
struct Log {
    batch: PartitionBatch,
    topic: String,
    next: i64,
}

impl Log {
    fn new(topic: &str) -> Log {
        Log {
            batch: PartitionBatch::new(topic, 0, Default::default(), 16),
            topic: topic.to_owned(),
            next: 0,
        }
    }

    fn piece(&mut self, values: &[&[u8]]) -> Piece {
        for v in values {
            let rec = RecordRef {
                topic: &self.topic,
                partition: 0,
                offset: self.next,
                timestamp_ms: None,
                key: None,
                value: Some(v),
                headers: &[],
            };
            self.batch.append(&rec, &Decoder::default(), 0).unwrap();
            self.next += 1;
        }
        self.batch.cut().unwrap().unwrap()
    }
}

fn ids(l: &Loaded) -> BTreeSet<String> {
    l.all().map(|r| r.meta.id.clone()).collect()
}

mod chains;
mod samples;

/// A Kubernetes audit event: `user` did `verb` on secret `name`, answered `code`, `at_s`
/// seconds into the test.
fn audit(user: &str, verb: &str, name: &str, code: u16, at_s: i64) -> Vec<u8> {
    let t = chrono::DateTime::from_timestamp(1_790_000_000 + at_s, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let decision = if code == 403 { "forbid" } else { "allow" };
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{user}-{verb}-{name}-{at_s}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/default/secrets/{name}","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["10.0.0.7"],"objectRef":{{"resource":"secrets","namespace":"default","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"code":{code}}},"requestReceivedTimestamp":"{t}","stageTimestamp":"{t}","annotations":{{"authorization.k8s.io/decision":"{decision}"}}}}"#
    )
    .into_bytes()
}

/// Distinct secrets read by one user within five minutes: a `value_count` correlation over a
/// detection rule that feeds it only.
const DISTINCT: &str = r#"
title: Secret read
id: 0b7e4a51-0000-4000-8000-000000000001
name: secret_read
status: test
author: Vigil tests
logsource:
    product: kubernetes
    service: audit
detection:
    selection:
        verb: get
        objectRef.resource: secrets
    condition: selection
level: low
---
title: Many distinct secrets read by one user
id: 0b7e4a51-0000-4000-8000-000000000002
author: Vigil tests
correlation:
    type: value_count
    rules:
        - secret_read
    group-by:
        - user.username
    timespan: 5m
    condition:
        field: objectRef.name
        gte: 3
level: high
tags:
    - attack.credential-access
    - attack.t1552.007
"#;

/// A denial then an allow for the same user within a minute, in that order.
const DENY_THEN_ALLOW: &str = r#"
title: Secret access denied
name: secret_denied
author: Vigil tests
logsource:
    product: kubernetes
    service: audit
detection:
    selection:
        objectRef.resource: secrets
        responseStatus.code: 403
    condition: selection
---
title: Secret access allowed
name: secret_allowed
author: Vigil tests
logsource:
    product: kubernetes
    service: audit
detection:
    selection:
        objectRef.resource: secrets
        responseStatus.code: 200
    condition: selection
---
title: Denied then allowed
id: 0b7e4a51-0000-4000-8000-000000000003
author: Vigil tests
correlation:
    type: temporal_ordered
    rules:
        - secret_denied
        - secret_allowed
    group-by:
        - user.username
    timespan: 1m
level: high
"#;

fn run(rules: &str, events: &[Vec<u8>]) -> (Engine, Vec<Alert>) {
    let l = load(&[source("c.yml", rules)], &Defaults::default());
    assert!(l.errors.is_empty(), "{:#?}", l.errors);
    let mut e = engine(l);
    let mut log = Log::new("k8s");
    let mut fired = Vec::new();
    for ev in events {
        e.observe(&log.piece(&[ev]), 7).unwrap();
        e.drain(7);
        fired.extend(e.take_pending());
    }
    (e, fired)
}

#[test]
fn a_value_count_fires_at_its_window_edge_and_not_one_second_past_it() {
    let l = load(&[source("c.yml", DISTINCT)], &Defaults::default());
    // The detection rule only feeds the correlation (`generate` is false by default).
    assert_eq!(
        l.inactive,
        [(
            "sigma:0b7e4a51-0000-4000-8000-000000000001".to_owned(),
            "feeds the correlation `Many distinct secrets read by one user` only (generate: false)"
                .to_owned()
        )]
    );
    // Three distinct secrets at 0 s, 150 s and 300 s: the window is [t - 5m, t], inclusive.
    let (_, fired) = run(
        DISTINCT,
        &[
            audit("alice", "get", "s1", 200, 0),
            audit("alice", "get", "s1", 200, 100),
            audit("alice", "get", "s2", 200, 150),
            audit("alice", "get", "s3", 200, 300),
        ],
    );
    assert_eq!(fired.len(), 1, "{fired:#?}");
    let a = &fired[0];
    assert_eq!(a.rule_id, "sigma:0b7e4a51-0000-4000-8000-000000000002");
    assert_eq!(a.rule_kind, "sigma_correlation");
    assert_eq!(a.group_key["user.username"].as_deref(), Some("alice"));
    assert_eq!(a.event_count, 3);
    assert_eq!(a.severity, crate::alerts::Severity::High);
    // The evidence: every event the window counted, each with its log, leaf index and hash.
    let idx: Vec<u64> = a.evidence.iter().map(|e| e.index).collect();
    assert_eq!(idx, [0, 1, 2, 3]);
    assert!(
        a.evidence
            .iter()
            .all(|e| e.log == "k8s/0" && e.leaf_hash.len() == 64)
    );
    // The licence's attribution, and the ATT&CK tags.
    assert!(
        a.detail.iter().any(|d| d.contains("author: Vigil tests")),
        "{:?}",
        a.detail
    );
    assert!(
        a.detail
            .iter()
            .any(|d| d == "tags: attack.credential-access, attack.t1552.007")
    );
    assert!(
        a.detail[0].starts_with("value_count 3 within 300s"),
        "{:?}",
        a.detail
    );
    // One second later and the first secret has left the window.
    let (_, fired) = run(
        DISTINCT,
        &[
            audit("bob", "get", "s1", 200, 0),
            audit("bob", "get", "s2", 200, 150),
            audit("bob", "get", "s3", 200, 301),
            // Another user's reads are another group.
            audit("carol", "get", "s4", 200, 302),
        ],
    );
    assert!(fired.is_empty(), "{fired:#?}");
}

#[test]
fn a_temporal_ordered_correlation_needs_the_denial_first_and_both_within_its_timespan() {
    let (_, fired) = run(
        DENY_THEN_ALLOW,
        &[
            audit("alice", "get", "s1", 403, 0),
            audit("alice", "get", "s1", 200, 60),
        ],
    );
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert_eq!(fired[0].evidence.len(), 2);
    assert_eq!(fired[0].detail[0], "temporal_ordered 2 within 60s");
    // Allowed first, then denied: not the order asked for.
    let (_, fired) = run(
        DENY_THEN_ALLOW,
        &[
            audit("bob", "get", "s1", 200, 0),
            audit("bob", "get", "s1", 403, 30),
        ],
    );
    assert!(fired.is_empty(), "{fired:#?}");
    // In order, but 61 s apart.
    let (_, fired) = run(
        DENY_THEN_ALLOW,
        &[
            audit("carol", "get", "s1", 403, 0),
            audit("carol", "get", "s1", 200, 61),
        ],
    );
    assert!(fired.is_empty(), "{fired:#?}");
}

#[test]
fn a_correlations_window_survives_a_state_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let (e, fired) = run(
        DISTINCT,
        &[
            audit("alice", "get", "s1", 200, 0),
            audit("alice", "get", "s2", 200, 10),
        ],
    );
    assert!(fired.is_empty());
    e.save(&state).unwrap();
    let l = load(&[source("c.yml", DISTINCT)], &Defaults::default());
    let mut e = engine(l);
    e.restore(&state).unwrap();
    // The log goes on where it was (leaf 2): the two reads before the restart still count.
    let mut log = Log::new("k8s");
    log.piece(&[
        &audit("x", "get", "x", 200, 0),
        &audit("x", "get", "x", 200, 0),
    ]);
    e.observe(&log.piece(&[&audit("alice", "get", "s3", 200, 20)]), 7)
        .unwrap();
    e.drain(7);
    let fired = e.take_pending();
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert_eq!(fired[0].event_count, 3);
    assert_eq!(fired[0].evidence.len(), 3);
}

#[test]
fn a_match_in_the_suppression_window_updates_the_open_alert() {
    let rule = r#"
title: Exec into a pod
id: 11111111-2222-4333-8444-555555555555
author: Vigil tests
logsource:
    product: kubernetes
    service: audit
detection:
    selection:
        verb: get
        objectRef.resource: secrets
    condition: selection
level: medium
"#;
    let (_, fired) = run(
        rule,
        &[
            audit("alice", "get", "s1", 200, 0),
            audit("alice", "get", "s2", 200, 10),
            audit("bob", "get", "s2", 200, 20),
        ],
    );
    let latest = crate::alerts::latest(fired);
    assert_eq!(latest.len(), 2, "{latest:#?}");
    let alice = latest
        .iter()
        .find(|a| a.group_key["caller_principal"].as_deref() == Some("alice"))
        .unwrap();
    assert_eq!((alice.event_count, alice.revision), (2, 2));
    assert_eq!(alice.rule_kind, "sigma");
}

#[test]
fn a_rule_vigil_cannot_evaluate_is_reported_with_its_file_and_why_and_the_others_load() {
    let windows = r#"
title: Whoami
logsource:
    product: windows
    category: process_creation
detection:
    selection:
        CommandLine|contains: whoami
    condition: selection
"#;
    let bad_modifier = r#"
title: Bad modifier
logsource:
    product: kubernetes
detection:
    selection:
        verb|nosuchmodifier: get
    condition: selection
"#;
    let dangling = r#"
title: Dangling
correlation:
    type: event_count
    rules:
        - nothing_by_this_name
    group-by:
        - user.username
    timespan: 1m
    condition:
        gte: 2
"#;
    let l = load(
        &[
            source("a.yml", windows),
            source("b.yml", bad_modifier),
            source("c.yml", dangling),
            source("d.yml", "title: [unclosed"),
            source("e.yml", DISTINCT),
        ],
        &Defaults::default(),
    );
    let errors: Vec<String> = l.errors.iter().map(ToString::to_string).collect();
    let has = |file: &str, what: &str| {
        errors
            .iter()
            .any(|e| e.starts_with(file) && e.contains(what))
    };
    assert!(
        has(
            "a.yml",
            "rule `Whoami`: logsource product `windows` is no source Vigil reads"
        ),
        "{errors:#?}"
    );
    assert!(has("b.yml", "nosuchmodifier"), "{errors:#?}");
    assert!(
        has(
            "c.yml",
            "correlation `Dangling`: references `nothing_by_this_name`"
        ),
        "{errors:#?}"
    );
    assert!(errors.iter().any(|e| e.starts_with("d.yml")), "{errors:#?}");
    assert_eq!(l.sigma.len(), 1, "the good file still loads");
}

#[test]
fn a_pipeline_maps_a_rule_written_for_ecs_onto_kubernetes_audit_fields() {
    let ecs = r#"
title: Secret read (ECS names)
id: 22222222-2222-4333-8444-555555555555
logsource:
    product: kubernetes
    service: audit
detection:
    selection:
        event.action: get
        orchestrator.resource.type: secrets
    condition: selection
"#;
    let pipeline = r#"
name: ecs to k8s audit
priority: 10
transformations:
    - id: ecs_k8s
      type: field_name_mapping
      mapping:
          event.action: verb
          orchestrator.resource.type: objectRef.resource
"#;
    let d = Defaults {
        sigma_pipelines: vec![rsigma_eval::parse_pipeline(pipeline).unwrap()],
        ..Defaults::default()
    };
    let l = load(&[source("ecs.yml", ecs)], &d);
    assert!(
        l.errors.is_empty() && l.warnings.is_empty(),
        "{:#?} {:#?}",
        l.errors,
        l.warnings
    );
    let mut e = engine(l);
    let mut log = Log::new("k8s");
    e.observe(&log.piece(&[&audit("alice", "get", "s1", 200, 0)]), 7)
        .unwrap();
    e.drain(7);
    assert_eq!(e.take_pending().len(), 1);
    // Without the pipeline the same rule names fields an audit event does not have.
    let l = load(&[source("ecs.yml", ecs)], &Defaults::default());
    assert_eq!(l.warnings.len(), 2, "{:#?}", l.warnings);
}
