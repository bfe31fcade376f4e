//! Detection throughput: `cargo bench --bench detect`.
//!
//! Every default rule (the learned unexpected-caller rule, not the declared one, as with no
//! configuration) over pieces of the store's rows, as `vigil serve` feeds them, with
//! `VIGIL_BENCH_DETECT_GROUPS` (100 000) distinct callers, each calling one callee — 100 000
//! groups in every rule that sees every event (rate spike per caller, learned edges per
//! (caller, callee)), and a group per denied caller in the denial rules. Events: OPA
//! (Envoy ext_authz) decisions, 1 in 20 a denial, event times within 20 s (nothing late).
//! Target: ≥ 1 000 000 events/s on one core (the engine is one thread). Also printed: the
//! groups held and the heap they take, per group.

#[path = "support/report.rs"]
mod report;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigil_detect::engine::Engine;
use vigil_detect::rules::{self, Defaults};
use vigil_schemas::Decoder;
use vigil_store::{PartitionBatch, Piece, RecordRef};

#[path = "support/counting.rs"]
mod counting;

const EVENTS: usize = 200_000;
const START_NS: i64 = 1_795_000_000_000_000_000;
/// When detection receives the pieces (wall clock): an hour after the events, so none is
/// skewed. The first pass goes through the reorder buffer (one log, its newest events waiting
/// for the next piece); later passes bring the same event times again, behind the watermark,
/// and are evaluated at once (within the allowed lateness: not late).
const NOW_NS: i64 = START_NS + 3_600_000_000_000;

fn event(i: usize, groups: usize) -> String {
    let caller = i % groups;
    let t = START_NS + (i as i64 * 20_000_000_000 / EVENTS as i64);
    let ts = chrono::DateTime::from_timestamp_nanos(t).format("%Y-%m-%dT%H:%M:%S%.9fZ");
    format!(
        concat!(
            r#"{{"decision_id":"{:08x}-55e4","path":"envoy/authz/allow","result":{},"timestamp":"{}","#,
            r#""input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"10.{}.{}.{}","portValue":41000}}}},"#,
            r#""principal":"spiffe://cluster.local/ns/web/sa/svc-{}"}},"destination":{{"address":{{"socketAddress":"#,
            r#"{{"address":"10.8.0.{}","portValue":8080}}}},"principal":"spiffe://cluster.local/ns/shop/sa/orders-{}"}},"#,
            r#""request":{{"http":{{"method":"GET","path":"/api/orders/{}","host":"orders.shop:8080"}}}}}}}}}}"#
        ),
        i,
        !i.is_multiple_of(20),
        ts,
        (caller >> 16) & 255,
        (caller >> 8) & 255,
        caller & 255,
        caller,
        i % 200,
        // Each caller calls one callee: one (caller, callee) tuple per caller.
        caller % 3,
        i % 1000,
    )
}

/// The events as pieces of at most 1024 records, as the pipeline cuts them (4 logs).
fn pieces(groups: usize) -> Vec<Piece> {
    let decoder = Decoder::default();
    let mut out = Vec::new();
    let mut batches: Vec<PartitionBatch> = (0..4)
        .map(|p| PartitionBatch::new("bench", p, Default::default(), 1024))
        .collect();
    for i in 0..EVENTS {
        let p = i % 4;
        let v = event(i, groups);
        let rec = RecordRef {
            topic: "bench",
            partition: p as i32,
            offset: (i / 4) as i64,
            timestamp_ms: None,
            key: None,
            value: Some(v.as_bytes()),
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

fn engine() -> Engine {
    let loaded = rules::load(&rules::sources(None, true).unwrap(), &Defaults::default());
    assert!(loaded.errors.is_empty());
    Engine::new(loaded.into_rules())
}

/// Run the pieces through the engine as a new stretch of each log (leaf indexes moved on by
/// `round`, so positions never skip them).
fn run(e: &mut Engine, pieces: &[Piece], round: u64) {
    for p in pieces {
        let mut p = p.clone();
        p.first_leaf_index += round * EVENTS as u64;
        e.observe(&p, NOW_NS).unwrap();
    }
    e.drain(NOW_NS);
    e.take_pending();
}

fn bench(c: &mut Criterion) {
    let groups: usize = std::env::var("VIGIL_BENCH_DETECT_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let pieces = pieces(groups);
    let mut e = engine();
    let before = counting::heap_bytes();
    let t = Instant::now();
    run(&mut e, &pieces, 0);
    let warm = t.elapsed();
    let held = counting::heap_bytes() - before;
    let total_groups: usize = e.stats().iter().map(|s| s.groups).sum();
    eprintln!(
        "first pass (groups created): {:.0} events/s; {total_groups} groups over {} rules, \
         {:.1} MiB heap, {:.0} B per group",
        EVENTS as f64 / warm.as_secs_f64(),
        e.stats().len(),
        held as f64 / (1 << 20) as f64,
        held as f64 / total_groups.max(1) as f64
    );
    report::figure(
        "detect",
        &format!(
            "heap per group ({total_groups} groups over {} rules)",
            e.stats().len()
        ),
        held as f64 / total_groups.max(1) as f64,
        "B",
        report::Target::None,
        None,
    );
    for s in e.stats() {
        eprintln!(
            "  {:<40} groups {:>7}  fired {:>6}",
            s.id, s.groups, s.fired
        );
    }
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let mut round = 1;
    g.bench_function(format!("default_pack_{groups}_groups"), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                run(&mut e, &pieces, round);
                round += 1;
            }
            t.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
