//! The labelled detection benchmark: `cargo bench --bench detection`.
//!
//! A real Tansu broker (topic `mesh`, 4 partitions; its SQLite engine unless
//! `VIGIL_TANSU_STORAGE` says otherwise — the in-memory one stalls past ~500 000 records), `vigil serve` with the default rules and
//! the mesh's declared policy graph, and `vigil simulate --labelled`: `VIGIL_BENCH_EVENTS`
//! (1 000 000) benign events at `VIGIL_BENCH_RATE` (6 000) a second, event time running
//! `VIGIL_BENCH_SPEED` (15) times the wall clock, and `VIGIL_BENCH_ATTACKS_EACH` (3)
//! instances of each of the fourteen attack shapes (see `src/simulate_cmd/labelled/`), each with
//! its own rates, spread, names, ports and partitions; `VIGIL_BENCH_SEED` (11) picks them.
//! One run per value of `VIGIL_BENCH_LAGS_MS` (`1000,0`): partition 3 is sent that far behind
//! the others (1 000 ms is 15 s of event time at ×15); then one more, lag 0, of the same
//! workload sent at `VIGIL_BENCH_SLOW_RATE` (3 000) a second with the speed scaled to match
//! (the same event time; the broker's own latency grows with its load; 0 skips it).
//!
//! Scoring, from the labels the simulator wrote and the alert log serve wrote:
//! - an expected alert is *detected* when an alert of its rule carries its group key values
//!   and starts within the attack (±1 min); recall = detected / expected, per rule and overall;
//! - an alert is *about an attack* when it is an expected one, or names one of the attack's
//!   subjects (its address, principal, workload) and was raised by an event while it ran
//!   (+5 min); every other alert is
//!   a *false alert*, counted per 1 000 000 benign events;
//! - alerts that start in the run's first five minutes of event time (the warm-up, before any
//!   attack: traffic going from the sparse history to its full rate is a real rate spike) are
//!   listed and left out of the count;
//! - latency = from when the decisive record (the one the alert's first revision ends with)
//!   was handed to the producer to when the alert was raised (`detected_ns`); median and p99,
//!   against a reference measured in the same run: a bare consumer of the same topic, from
//!   each record's Kafka timestamp to its arrival (the broker's share of the latency); and
//!   Vigil's share alone: from the decisive record's arrival at that consumer to the alert
//!   (Tansu's SQLite engine, at this rate on two cores, takes seconds from producer to
//!   consumer by itself; the reference says how many). Leaf index = Kafka offset here: every
//!   partition starts at 0 and has no gaps. `VIGIL_BENCH_REFERENCE=0` runs without the
//!   reference consumer (it doubles the broker's read load).
//!
//! Prints a table per rule, every missed expectation and every false alert, and the figures
//! for BENCHMARKS.md (targets: recall 100 %, ≤ 1 false alert per 1 000 000 benign events,
//! median latency < 1 s).

#[path = "detection/reference.rs"]
mod reference;
#[path = "support/report.rs"]
mod report;
#[path = "detection/score.rs"]
mod score;
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)] // each bench uses part of the tests' support
mod test_support;
use reference::{Arrivals, BareConsumer, bare_consumer_latency};
use report::{Target, figure};
use score::{Attack, Scores, score};

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::*;
use vigil_detect::alerts::{Alert, read_revisions};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let events = env_or("VIGIL_BENCH_EVENTS", 1_000_000u64);
    let rate = env_or("VIGIL_BENCH_RATE", 6_000.0f64);
    let speed = env_or("VIGIL_BENCH_SPEED", 15.0f64);
    let each = env_or("VIGIL_BENCH_ATTACKS_EACH", 3u64);
    let seed = env_or("VIGIL_BENCH_SEED", 11u64);
    let lags: Vec<u64> = std::env::var("VIGIL_BENCH_LAGS_MS")
        .unwrap_or_else(|_| "1000,0".to_owned())
        .split(',')
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // Tansu's in-memory engine slows down as its log grows: past ~500 000 records it takes a
    // whole core and stalls fetches for seconds, which is the broker's latency and makes
    // partitions late, not Vigil's. Its SQLite engine does not stall (each fetch is slower).
    if std::env::var_os("VIGIL_TANSU_STORAGE").is_none() {
        // SAFETY: set before any thread of this process reads the environment.
        unsafe { std::env::set_var("VIGIL_TANSU_STORAGE", "sqlite") };
    }
    for lag_ms in lags {
        run(events, rate, speed, lag_ms, each, seed);
    }
    // The same workload at a lower rate (event time as dense: the speed scaled with it), lag 0:
    // the broker's own latency grows with its load, and this says what the end-to-end latency
    // is where the broker is not most of it. `VIGIL_BENCH_SLOW_RATE=0` skips it.
    let slow_rate = env_or("VIGIL_BENCH_SLOW_RATE", 3_000.0f64);
    if slow_rate > 0.0 && slow_rate < rate {
        run(events, slow_rate, speed * slow_rate / rate, 0, each, seed);
    }
}

/// One labelled run, scored and reported.
fn run(events: u64, rate: f64, speed: f64, lag_ms: u64, each: u64, seed: u64) {
    println!("\n== labelled run: partition 3 {lag_ms} ms behind, {rate:.0} events/s");
    let o = send_and_detect(events, rate, speed, lag_ms, each, seed);
    let s = score(&o);
    report(&o, s, lag_ms, rate);
    if std::env::var_os("VIGIL_BENCH_KEEP").is_some() {
        let _ = o.tmp.keep();
    }
}

/// What a labelled run produced: the simulator's labels, every alert's first and latest
/// revision, and when each record reached the reference consumer.
struct Outcome {
    attacks: Vec<Attack>,
    benign: u64,
    attack_records: u64,
    history: u64,
    warm_up_end_ns: i64,
    run_start_ns: i64,
    sim_secs: f64,
    first: BTreeMap<String, Alert>,
    latest: BTreeMap<String, Alert>,
    arrivals: Arrivals,
    /// The reference consumer's produce → consume latencies, ms, sorted.
    bare: Vec<f64>,
    /// `vigil serve`'s log.
    log: String,
    /// The run's directory (kept with `VIGIL_BENCH_KEEP`).
    tmp: tempfile::TempDir,
}

/// The broker, `vigil simulate --labelled` and `vigil serve` with the default rules: every
/// record sent and stored, detection stopped cleanly.
fn send_and_detect(
    events: u64,
    rate: f64,
    speed: f64,
    lag_ms: u64,
    each: u64,
    seed: u64,
) -> Outcome {
    let broker = Broker::start();
    broker.create_topic("mesh", 4);
    broker.create_topic("vigil.checkpoints", 1);
    let tmp = tempfile::tempdir().unwrap();
    if std::env::var_os("VIGIL_BENCH_KEEP").is_some() {
        eprintln!("keeping {}", tmp.path().display());
    }
    let dir = tmp.path().join("data");
    let graph = tmp.path().join("graph.toml");
    let labels = tmp.path().join("labels.jsonl");
    let config = tmp.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[detect]\nallowlist_file = {:?}\nalert_flush_ms = 500\n",
            graph.display().to_string()
        ),
    )
    .unwrap();

    // The reference: a bare consumer of the same topic on the same broker, in the same run —
    // how long a record takes from the producer to any consumer (Kafka's CreateTime to now).
    // `VIGIL_BENCH_REFERENCE=0`: without it (it doubles the broker's read load).
    let reference = (std::env::var("VIGIL_BENCH_REFERENCE").as_deref() != Ok("0"))
        .then(|| bare_consumer_latency(&broker.addr, "mesh"));

    let started = Instant::now();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["simulate", "--brokers", &broker.addr, "--topic", "mesh"])
        .args(["--rate", &rate.to_string(), "--seed", &seed.to_string()])
        .arg("--labelled")
        .arg(&labels)
        .arg("--graph-out")
        .arg(&graph)
        .args([
            "--events",
            &events.to_string(),
            "--speed",
            &speed.to_string(),
        ])
        .args(["--partitions", "4", "--lag-ms", &lag_ms.to_string()])
        .args(["--attacks-each", &each.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .expect("start vigil simulate");
    wait_for("the declared graph", Duration::from_secs(30), || {
        graph.exists().then_some(())
    });
    let s = serve(&broker, "mesh", &dir, "g-bench", &[], Some(&config));
    let status = sim.wait().expect("vigil simulate");
    assert!(status.success(), "vigil simulate failed");
    let sim_secs = started.elapsed().as_secs_f64();

    let mut attacks = Vec::new();
    let (mut benign, mut attack_records, mut history) = (0u64, 0u64, 0u64);
    let mut warm_up_end_ns = i64::MIN;
    let mut run_start_ns = 0i64;
    for line in std::fs::read_to_string(&labels).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(l) = v.get("labelled") {
            warm_up_end_ns = l["warm_up_end_ns"].as_i64().unwrap_or(i64::MIN);
            run_start_ns = l["start_ns"].as_i64().unwrap_or(0);
        } else if v.get("attack").is_some() {
            attacks.push(Attack::from(&v["attack"]));
        } else if let Some(d) = v.get("done") {
            benign = d["benign"].as_u64().unwrap_or(0);
            attack_records = d["attack"].as_u64().unwrap_or(0);
            history = d["history"].as_u64().unwrap_or(0);
        }
    }
    let total = benign + attack_records + history;
    wait_stored(&[&s], &dir, total, Duration::from_secs(600));
    // Idle partitions release the watermark after 1 s; absence rules decide 5 s of event
    // time after their trigger. Then a clean stop flushes every alert.
    std::thread::sleep(Duration::from_secs(5));
    let log = s.log_text();
    assert!(s.terminate(), "vigil serve did not stop cleanly");
    let arrivals = reference.map(BareConsumer::stop).unwrap_or_default();
    let mut bare: Vec<f64> = arrivals.values().map(|a| a.1).collect();
    bare.sort_by(|a, b| a.total_cmp(b));
    println!(
        "bare consumer on the same broker: produce → consume p50 {:.0} ms, p99 {:.0} ms ({} records)",
        percentile(&bare, 0.5),
        percentile(&bare, 0.99),
        bare.len()
    );

    // Every alert's first and latest revision.
    let mut first: BTreeMap<String, Alert> = BTreeMap::new();
    let mut latest: BTreeMap<String, Alert> = BTreeMap::new();
    for a in read_revisions(&dir).unwrap_or_default() {
        let f = first.entry(a.alert_id.clone()).or_insert_with(|| a.clone());
        if a.revision < f.revision {
            *f = a.clone();
        }
        let l = latest
            .entry(a.alert_id.clone())
            .or_insert_with(|| a.clone());
        if a.revision > l.revision {
            *l = a;
        }
    }

    Outcome {
        attacks,
        benign,
        attack_records,
        history,
        warm_up_end_ns,
        run_start_ns,
        sim_secs,
        first,
        latest,
        arrivals,
        bare,
        log,
        tmp,
    }
}

/// The tables, the missed and false alerts, and the figures for BENCHMARKS.md.
fn report(o: &Outcome, s: Scores, lag_ms: u64, rate: f64) {
    let run_name = format!("lag {lag_ms} ms, {rate:.0} events/s");
    let Outcome {
        attacks,
        benign,
        attack_records,
        history,
        sim_secs,
        latest,
        bare,
        log,
        ..
    } = o;
    let (benign, attack_records, history, sim_secs) =
        (*benign, *attack_records, *history, *sim_secs);
    let Scores {
        mut rules,
        missed,
        attacks_caught,
        false_alerts,
        warm_up,
    } = s;
    let expected: u64 = rules.values().map(|r| r.expected).sum();
    let detected: u64 = rules.values().map(|r| r.detected).sum();
    let n_false: u64 = rules.values().map(|r| r.false_alerts).sum();
    let mut lat: Vec<f64> = rules.values().flat_map(|r| r.latency_ms.clone()).collect();
    lat.sort_by(f64::total_cmp);
    let mut own: Vec<f64> = rules.values().flat_map(|r| r.own_ms.clone()).collect();
    own.sort_by(f64::total_cmp);
    println!(
        "decisive record's arrival at a bare consumer → alert (Vigil's share): p50 {:.0} ms, p99 {:.0} ms ({} alerts)",
        percentile(&own, 0.5),
        percentile(&own, 0.99),
        own.len()
    );
    let per_m = n_false as f64 * 1e6 / benign.max(1) as f64;

    println!(
        "\nlabelled run: {benign} benign + {attack_records} attack records ({} attacks) + {history} history, sent in {sim_secs:.0} s; {} alerts",
        attacks.len(),
        latest.len()
    );
    println!(
        "{:<40} {:>8} {:>8} {:>7} {:>7} {:>9} {:>9}",
        "rule", "expected", "detected", "false", "alerts", "p50 ms", "p99 ms"
    );
    for (id, r) in &mut rules {
        r.latency_ms.sort_by(f64::total_cmp);
        println!(
            "{id:<40} {:>8} {:>8} {:>7} {:>7} {:>9.0} {:>9.0}",
            r.expected,
            r.detected,
            r.false_alerts,
            r.all_alerts,
            percentile(&r.latency_ms, 0.5),
            percentile(&r.latency_ms, 0.99)
        );
    }
    for m in &missed {
        println!("MISSED {m}");
    }
    for f in &false_alerts {
        println!("FALSE  {f}");
    }
    for w in &warm_up {
        println!("WARM-UP (not scored) {w}");
    }
    if let Some(p) = log.lines().rfind(|l| l.contains(" progress ")) {
        println!("serve's last progress line: {p}");
    }
    let recall = 100.0 * detected as f64 / expected.max(1) as f64;
    println!(
        "recall {recall:.1} % ({detected}/{expected} expected alerts; {attacks_caught}/{} attacks fully), {n_false} false alerts = {per_m:.2} per 1 000 000 benign events, latency p50 {:.0} ms p99 {:.0} ms",
        attacks.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    let what = format!(
        "{} attacks of 14 shapes in {benign} benign events, 4 partitions, one {lag_ms} ms behind, {rate:.0} events/s",
        attacks.len()
    );
    figure(
        "detection",
        &format!("recall: expected alerts raised ({detected}/{expected}; {what})"),
        recall,
        "%",
        Target::AtLeast(100.0),
        None,
    );
    figure(
        "detection",
        &format!("false alerts per 1 000 000 benign events ({n_false} in {benign}; {run_name})"),
        per_m,
        "/M",
        Target::AtMost(1.0),
        None,
    );
    figure(
        "detection",
        &format!("decisive event → alert, median (wall clock, from the producer; {run_name})"),
        percentile(&lat, 0.5),
        "ms",
        Target::AtMost(1000.0),
        Some((
            "bare consumer, produce → consume, median",
            percentile(bare, 0.5),
        )),
    );
    figure(
        "detection",
        &format!(
            "decisive record's arrival at a bare consumer of the same broker → alert, median (Vigil's share; {run_name}; {} alerts)",
            own.len()
        ),
        percentile(&own, 0.5),
        "ms",
        Target::AtMost(1000.0),
        None,
    );
    figure(
        "detection",
        &format!("decisive event → alert, p99 ({run_name})"),
        percentile(&lat, 0.99),
        "ms",
        Target::None,
        None,
    );
    for (id, r) in &rules {
        if r.expected == 0 && r.false_alerts == 0 {
            continue;
        }
        figure(
            "detection",
            &format!(
                "{id}: recall {}/{}, false {}, p50 {:.0} ms ({run_name})",
                r.detected,
                r.expected,
                r.false_alerts,
                percentile(&r.latency_ms, 0.5)
            ),
            if r.expected > 0 {
                100.0 * r.detected as f64 / r.expected as f64
            } else {
                f64::NAN
            },
            "%",
            Target::None,
            None,
        );
    }
}
