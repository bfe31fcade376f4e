//! Sigma evaluation throughput beside the native rules, on the same events:
//! `cargo bench --bench sigma`.
//!
//! Events: Kubernetes audit events (the Falco traces and Panther's Kubernetes audit test
//! events of `../shared/data`, their users varied over `VIGIL_BENCH_SIGMA_USERS` (1 000) and
//! their times spread over 100 s), `VIGIL_BENCH_SIGMA_EVENTS` (200 000) of them, as pieces of
//! the store's rows (4 logs), through the engine as `vigil serve` feeds it. Rule sets, each
//! timed on the same pieces in the same run (best of 5 passes):
//! - the default pack (Vigil's own rules): the reference;
//! - the 16 SigmaHQ Kubernetes audit rules (each event's record parsed once, for all of them);
//! - those 16 and two correlations (a `value_count` of distinct secrets per user, a
//!   `temporal_ordered` denial-then-allow per user), each with the detection rules it
//!   references;
//! - the default pack and the 16 together (what a user adding SigmaHQ's rules runs).
//!
//! No target of its own: the figures say what a Sigma rule costs next to a native one.

#[path = "support/report.rs"]
mod report;
use std::time::Instant;

use vigil_detect::engine::Engine;
use vigil_detect::rules::{self, Defaults, Source};
use vigil_schemas::Decoder;
use vigil_store::{PartitionBatch, Piece, RecordRef};

const START_S: i64 = 1_795_000_000;
const NOW_NS: i64 = (START_S + 3_600) * 1_000_000_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel)
}

/// The sample audit events, as JSON values.
fn samples() -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let dir = data("k8s-audit-falco/trace_files");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        for l in std::fs::read_to_string(f).unwrap().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l)
                && v.get("verb").is_some()
            {
                out.push(v);
            }
        }
    }
    let panther = std::fs::read_to_string(data("panther/by_event_shape/k8s_audit.jsonl")).unwrap();
    for l in panther.lines() {
        let t: serde_json::Value = serde_json::from_str(l).unwrap();
        out.push(t["log"].clone());
    }
    out
}

fn pieces(events: usize, users: usize) -> Vec<Piece> {
    let samples = samples();
    let decoder = Decoder::default();
    let mut out = Vec::new();
    let mut batches: Vec<PartitionBatch> = (0..4)
        .map(|p| PartitionBatch::new("k8s.audit", p, Default::default(), 1024))
        .collect();
    for i in 0..events {
        let mut v = samples[i % samples.len()].clone();
        let t = chrono::DateTime::from_timestamp(START_S + (i * 100 / events) as i64, 0)
            .unwrap()
            .to_rfc3339();
        v["requestReceivedTimestamp"] = t.clone().into();
        v["stageTimestamp"] = t.into();
        v["user"] = serde_json::json!({"username": format!("user-{}", i % users)});
        v["auditID"] = format!("bench-{i}").into();
        let bytes = serde_json::to_vec(&v).unwrap();
        let p = i % 4;
        let rec = RecordRef {
            topic: "k8s.audit",
            partition: p as i32,
            offset: (i / 4) as i64,
            timestamp_ms: None,
            key: None,
            value: Some(&bytes),
            headers: &[],
        };
        batches[p].append(&rec, &decoder, 0).unwrap();
        if batches[p].rows().is_multiple_of(1024) {
            out.extend(batches[p].cut().unwrap());
        }
    }
    for b in &mut batches {
        out.extend(b.cut().unwrap());
    }
    out
}

const CORRELATIONS: &str = r#"
title: Secret read
name: bench_secret_read
logsource: {product: kubernetes, service: audit}
detection:
    selection: {verb: get, objectRef.resource: secrets}
    condition: selection
---
title: Secret access denied
name: bench_secret_denied
logsource: {product: kubernetes, service: audit}
detection:
    selection: {objectRef.resource: secrets, responseStatus.code: 403}
    condition: selection
---
title: Secret access allowed
name: bench_secret_allowed
logsource: {product: kubernetes, service: audit}
detection:
    selection: {objectRef.resource: secrets, responseStatus.code: 200}
    condition: selection
---
title: Many distinct secrets read by one user
correlation:
    type: value_count
    rules: [bench_secret_read]
    group-by: [user.username]
    timespan: 5m
    condition: {field: objectRef.name, gte: 3}
---
title: Denied then allowed
correlation:
    type: temporal_ordered
    rules: [bench_secret_denied, bench_secret_allowed]
    group-by: [user.username]
    timespan: 1m
"#;

fn sources(defaults: bool, sigma: bool, correlations: bool) -> Vec<Source> {
    let dir = data("sigma/kubernetes_audit");
    let mut v = rules::sources(sigma.then_some(dir.as_path()), defaults).unwrap();
    if correlations {
        v.push(Source {
            name: "bench_correlations.yml".into(),
            text: CORRELATIONS.into(),
            dir: None,
        });
    }
    v
}

/// Events per second through an engine of these rules (best of 5 passes, each a new stretch
/// of the logs), and the rules and alerts of the last.
fn measure(src: &[Source], pieces: &[Piece], events: usize) -> (f64, usize, usize) {
    let loaded = rules::load(src, &Defaults::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut e = Engine::new(loaded.into_rules());
    let n = e.rules().len();
    let mut best = f64::MAX;
    let mut alerts = 0;
    for round in 0..5u64 {
        let t = Instant::now();
        for p in pieces {
            let mut p = p.clone();
            p.first_leaf_index += round * events as u64;
            e.observe(&p, NOW_NS).unwrap();
        }
        e.drain(NOW_NS);
        alerts = e.take_pending().len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (events as f64 / best, n, alerts)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let events = env("VIGIL_BENCH_SIGMA_EVENTS", 200_000);
    let users = env("VIGIL_BENCH_SIGMA_USERS", 1_000);
    let pieces = pieces(events, users);
    let sets = [
        ("default pack (reference)", sources(true, false, false)),
        (
            "16 SigmaHQ Kubernetes audit rules",
            sources(false, true, false),
        ),
        (
            "16 SigmaHQ rules + 2 correlations",
            sources(false, true, true),
        ),
        (
            "default pack + 16 SigmaHQ rules",
            sources(true, true, false),
        ),
    ];
    let mut reference = None;
    for (name, src) in &sets {
        let (rate, rules, alerts) = measure(src, &pieces, events);
        let r = *reference.get_or_insert(rate);
        println!(
            "sigma: {name:<38} {rules:>3} rules  {rate:>12.0} events/s  ({:.2}× the default pack; {alerts} alert revisions in the last pass)",
            rate / r
        );
        report::figure(
            "sigma",
            &format!("{name}: {rules} rules over Kubernetes audit events, one core"),
            rate,
            "events/s",
            report::Target::None,
            (*name != sets[0].0).then_some(("default pack", r)),
        );
    }
}
