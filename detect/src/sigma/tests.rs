use std::collections::{BTreeMap, BTreeSet};

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

#[test]
fn every_sigmahq_kubernetes_audit_rule_loads_and_the_ones_that_cannot_match_say_why() {
    let l = load(&sigmahq(), &Defaults::default());
    assert!(l.errors.is_empty(), "{:#?}", l.errors);
    assert_eq!(l.sigma.len(), 16, "{:?}", ids(&l));
    assert!(l.all().all(|r| r.meta.id.starts_with("sigma:")));
    // Rules that name what an audit event does not have at its top level: they load, and
    // say that as written they cannot match.
    let warned: BTreeSet<String> = l
        .warnings
        .iter()
        .map(|w| {
            let f = std::path::Path::new(&w.file).file_name().unwrap();
            format!(
                "{} {}",
                f.to_string_lossy(),
                w.message.split('`').nth(3).unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        warned,
        BTreeSet::from([
            "kubernetes_audit_hostpath_mount.yml hostPath".to_owned(),
            "kubernetes_audit_privileged_pod_creation.yml capabilities".to_owned(),
            "kubernetes_audit_rbac_permisions_listing.yml apiGroup".to_owned(),
            "kubernetes_audit_sidecar_injection.yml apiGroup".to_owned(),
            "kubernetes_audit_potential_enumeration_activity.yml responseStatus.code".to_owned(),
        ]),
        "{:#?}",
        l.warnings
    );
}

/// Every trace file through the 16 rules: rule → the files whose events it alerted on.
fn falco_matches() -> BTreeMap<String, BTreeSet<String>> {
    let l = load(&sigmahq(), &Defaults::default());
    let titles: BTreeMap<String, String> = l
        .all()
        .map(|r| (r.meta.id.clone(), r.meta.title.clone()))
        .collect();
    let mut e = engine(l);
    let dir = data("k8s-audit-falco/trace_files");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&[u8]> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::as_bytes)
            .collect();
        let mut log = Log::new(&format!("k8s{i}"));
        e.observe(&log.piece(&lines), 7).unwrap();
        e.drain(7);
        for a in e.take_pending() {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            out.entry(titles[&a.rule_id].clone())
                .or_default()
                .insert(name);
        }
    }
    out
}

/// Checked by hand against the rules (and the table of each trace's verb, resource,
/// subresource, namespace and status): the 47 traces hold no 401/403, no admission webhook,
/// job, event or `list` of secrets, and the four rules that name fields an audit event lacks
/// (and Potential Enumeration, which compares the numeric `responseStatus.code` with 'ALLOW')
/// can match nothing. `attach_pod.json` is `pods/attach`, not `pods/exec`.
#[test]
fn the_falco_kubernetes_audit_traces_raise_what_a_reader_of_the_sigma_rules_expects() {
    let got = falco_matches();
    let want: BTreeMap<String, BTreeSet<String>> = [
        (
            "Creation Of Pod In System Namespace",
            &["create_pod_kube_system_namespace.json"][..],
        ),
        (
            "Deployment Deleted From Kubernetes Cluster",
            &["delete_deployment.json"],
        ),
        (
            "Kubernetes Rolebinding Modification",
            &[
                "attach_cluster_admin_role.json",
                "create_clusterrolebinding.json",
                "delete_clusterrolebinding.json",
            ],
        ),
        (
            "Kubernetes Secrets Modified or Deleted",
            &[
                "create_kube_system_secret.json",
                "create_secret.json",
                "create_service_account_token_secret.json",
                "delete_secret.json",
            ],
        ),
        (
            "New Kubernetes Service Account Created",
            &[
                "create_serviceaccount.json",
                "create_serviceaccount_kube_public_namespace.json",
                "create_serviceaccount_kube_system_namespace.json",
            ],
        ),
        (
            "Potential Remote Command Execution In Pod Container",
            &["exec_pod.json"],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
    .collect();
    assert_eq!(got, want, "{got:#?}");
}

/// Panther's Kubernetes audit test events (one a line, in `log`) through the 16 rules: rule →
/// the Panther tests whose events it alerted on.
fn panther_matches() -> BTreeMap<String, BTreeSet<String>> {
    let l = load(&sigmahq(), &Defaults::default());
    let titles: BTreeMap<String, String> = l
        .all()
        .map(|r| (r.meta.id.clone(), r.meta.title.clone()))
        .collect();
    let mut e = engine(l);
    let text = std::fs::read_to_string(data("panther/by_event_shape/k8s_audit.jsonl")).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let t: serde_json::Value = serde_json::from_str(line).unwrap();
        let raw = serde_json::to_vec(&t["log"]).unwrap();
        let mut log = Log::new(&format!("p{i}"));
        e.observe(&log.piece(&[&raw]), 7).unwrap();
        e.drain(7);
        for a in e.take_pending() {
            let name = format!("{i}:{}", t["test_name"].as_str().unwrap());
            out.entry(titles[&a.rule_id].clone())
                .or_default()
                .insert(name);
        }
    }
    out
}

/// The lines of `panther/by_event_shape/k8s_audit.jsonl` each rule alerts on, checked by hand
/// with each rule's selection read off its YAML and applied to every event's fields on its
/// own: Panther's "(excluded)" cases are exclusions of *Panther's* rules (system principals,
/// failed requests) that the Sigma rules do not make, so they match here as a reader of the
/// Sigma rules expects — 403s to the 401/403 rule, `pods/exec` to the exec rule, `list
/// secrets` to the enumeration rule, and every `serviceaccounts` create to the service-account
/// rule (token requests, `serviceaccounts/token` creates, included: the rule does not name the
/// subresource).
#[test]
fn the_panther_kubernetes_audit_samples_raise_what_a_reader_of_the_sigma_rules_expects() {
    let got: BTreeMap<String, Vec<usize>> = panther_matches()
        .into_iter()
        .map(|(rule, tests)| {
            let mut lines: Vec<usize> = tests
                .iter()
                .map(|t| t.split(':').next().unwrap().parse().unwrap())
                .collect();
            lines.sort_unstable();
            (rule, lines)
        })
        .collect();
    let want: BTreeMap<String, Vec<usize>> = [
        (
            "Creation Of Pod In System Namespace",
            &[66, 72, 75, 76, 78, 85, 97, 103, 166, 168][..],
        ),
        ("Kubernetes Admission Controller Modification", &[20][..]),
        ("Kubernetes Rolebinding Modification", &[35, 36, 37, 38][..]),
        (
            "Kubernetes Secrets Enumeration",
            &[136, 138, 141, 144, 145, 146, 148, 149, 150][..],
        ),
        ("Kubernetes Secrets Modified or Deleted", &[143][..]),
        (
            "Kubernetes Unauthorized or Unauthenticated Access",
            &[
                7, 9, 10, 15, 23, 32, 40, 43, 48, 58, 67, 68, 69, 71, 76, 82, 86, 89, 93, 96, 109,
                115, 122, 128, 130, 132, 134, 135, 136, 140, 150, 160, 169, 176, 179, 180, 186,
            ][..],
        ),
        (
            "New Kubernetes Service Account Created",
            &[17, 18, 19, 155, 156, 157, 158, 159, 160, 161, 172][..],
        ),
        (
            "Potential Remote Command Execution In Pod Container",
            &[
                52, 62, 63, 64, 65, 66, 67, 163, 164, 165, 166, 167, 168, 169, 170,
            ][..],
        ),
    ]
    .into_iter()
    .map(|(k, v): (&str, &[usize])| (k.to_owned(), v.to_vec()))
    .collect();
    assert_eq!(got, want);
}

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
