//! Peak memory of `vigil serve` ingesting at full speed while a flood of new group keys
//! fills detection's state: `cargo bench --bench memory`.
//!
//! `vigil simulate --callers N` (`VIGIL_BENCH_CALLERS`, default 500 000) fills a topic of the
//! real broker with calls from N distinct workloads outside the mesh (each its own SPIFFE id
//! and address, in turn, each calling a random service, with flows), so that the per-caller
//! rules, the learned-edge rule and the per-connection absence rule each want about N groups:
//! some 3 200 000 in all. `detect.max_groups_per_rule` is raised above N, so the per-rule caps
//! never bind: detection's memory budget (`detect.max_state_bytes`, its default unless
//! told otherwise) is what holds the state, shedding the least
//! recently seen groups of the heaviest rules. Then `vigil serve` starts on the full topic and
//! consumes it as fast as it can — decode, chain, durable Parquet, every rule — while its
//! resident set is sampled from /proc; the figure is the kernel's peak (VmHWM) once every
//! event is stored and evaluated and a state checkpoint has been taken. Target: ≤ 1 GiB with
//! at least 1 000 000 detection groups held. Also printed: the groups held per rule, the
//! state's weighed bytes, its budget and the groups shed (from `/metrics`), and the ingest
//! rate. `VIGIL_BENCH_SERVE_TOML`: more configuration for `vigil serve` (TOML tables appended
//! to the bench's own); `VIGIL_DETECT__MAX_STATE_BYTES=…` in the environment tries another
//! budget.

#[path = "support/report.rs"]
mod report;
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)] // each bench uses part of the tests' support
mod test_support;

use std::time::{Duration, Instant};

use report::{Target, figure};
use test_support::*;

const KEY: &str = "vk_bench_memory_0123456789abcdef";

/// A line of /proc/PID/status in kB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let callers = env_or("VIGIL_BENCH_CALLERS", 500_000usize);
    let rate = env_or("VIGIL_BENCH_RATE", 200_000usize);
    let broker = Broker::start();
    broker.create_topic("mesh", 4);
    broker.create_topic("vigil.checkpoints", 1);

    // The traffic first: 70% of it from outside callers, in turn, so at least callers / 0.7
    // events (and a margin) for every caller to appear.
    let secs = (callers as f64 / 0.7 * 1.25 / rate as f64).ceil().max(2.0);
    let t = Instant::now();
    let (sim, _) = simulate(
        &broker.addr,
        &[
            "--topic",
            "mesh",
            "--callers",
            &callers.to_string(),
            "--rate",
            &rate.to_string(),
            "--duration",
            &secs.to_string(),
            "--history-hours",
            "0",
        ],
    );
    let events = sim.done.as_ref().unwrap()["events"].as_u64().unwrap();
    println!(
        "simulated {events} events from {callers} outside callers in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The reference: the same ingest with detection off (its share is what the other run
    // adds). Then the run measured.
    let reference = run(&broker, events, callers, false);
    let r = run(&broker, events, callers, true);
    let total: u64 = r.groups.iter().map(|(_, n)| n).sum();
    let widest = r.groups.iter().map(|(_, n)| *n).max().unwrap_or(0);
    for (rule, n) in &r.groups {
        println!("  {rule:<40} groups {n:>8}");
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "vigil serve, detection off: {events} events stored in {:.1} s ({:.0}/s); peak RSS {:.0} MiB",
        reference.secs,
        events as f64 / reference.secs,
        reference.hwm_mib
    );
    println!(
        "vigil serve: {events} events stored and evaluated in {:.1} s ({:.0}/s); \
         {total} groups held ({widest} in the widest rule) in {:.0} MiB of state (budget {:.0} MiB; \
         {} groups shed to stay within it); peak RSS {:.0} MiB (VmHWM; sampled {:.0} MiB), \
         {:.0} MiB more than without detection",
        r.secs,
        events as f64 / r.secs,
        mib(r.state),
        mib(r.budget),
        r.shed,
        r.hwm_mib,
        r.sampled_mib,
        r.hwm_mib - reference.hwm_mib
    );
    assert!(
        total >= 1_000_000.min(2 * callers as u64) && r.state <= r.budget,
        "fewer groups than the target's million, or state past its budget: {:?}\n{}",
        r.groups,
        r.log
    );
    figure(
        "memory",
        &format!(
            "peak RSS of vigil serve ingesting {events} events at full speed ({:.0} events/s) with {total} detection groups ({callers} distinct callers; {:.0} MiB of state, budget {:.0} MiB, {} shed)",
            events as f64 / r.secs,
            mib(r.state),
            mib(r.budget),
            r.shed
        ),
        r.hwm_mib,
        "MiB",
        Target::AtMost(1024.0),
        Some(("vigil serve without detection", reference.hwm_mib)),
    );
}

/// What one `vigil serve` run over the topic measured.
struct Run {
    secs: f64,
    hwm_mib: f64,
    sampled_mib: f64,
    groups: Vec<(String, u64)>,
    state: u64,
    budget: u64,
    shed: u64,
    log: String,
}

/// `vigil serve` from the start of the topic (its own group and data directory) until every
/// event is stored — and, with detection, evaluated and in a state checkpoint.
fn run(broker: &Broker, events: u64, callers: usize, detect: bool) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let config = tmp.path().join("vigil.toml");
    {
        use sha2::Digest;
        std::fs::write(
            &config,
            format!(
                "[detect]\nenabled = {detect}\nmax_groups_per_rule = {}\n[[api.keys]]\nname = \"bench\"\nsha256 = \"{}\"\nroles = [\"reader\"]\n",
                callers + callers / 10,
                hex::encode(sha2::Sha256::digest(KEY.as_bytes()))
            ) + &std::env::var("VIGIL_BENCH_SERVE_TOML").unwrap_or_default(),
        )
        .unwrap();
    }
    let group = if detect { "bench-mem" } else { "bench-mem-ref" };
    let s = serve(broker, "mesh", &dir, group, &[], Some(&config));
    let pid = s.child.id();
    let start = Instant::now();
    let mut peak_sampled = 0u64;
    // Stored, then evaluated: the progress line's `detected` counts what detection took.
    let detected = |log: &str| -> u64 {
        log.lines()
            .rev()
            .find_map(|l| l.split(" detected=").nth(1))
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    loop {
        peak_sampled = peak_sampled.max(status_kb(pid, "VmRSS:").unwrap_or(0));
        if stored_records(&dir) >= events && (!detect || detected(&s.log_text()) >= events) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "not all stored and evaluated after 900 s\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ingest_secs = start.elapsed().as_secs_f64();
    // The groups as of a state checkpoint taken after the last event (every
    // detect.state_interval_ms, 10 s by default, as in production; a save of a million
    // groups itself takes seconds).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let metrics_now = || -> String {
        rt.block_on(async {
            http.get(format!("http://{}/metrics", s.api))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    let gauge = |m: &str, name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    let saves = gauge(&metrics_now(), "vigil_detect_state_saves_total");
    let waited = Instant::now();
    let metrics = loop {
        peak_sampled = peak_sampled.max(status_kb(pid, "VmRSS:").unwrap_or(0));
        let m = metrics_now();
        if !detect
            || gauge(&m, "vigil_detect_state_saves_total") > saves
            || waited.elapsed() > Duration::from_secs(60)
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let groups: Vec<(String, u64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("vigil_rule_groups{rule=\""))
        .filter_map(|l| {
            let (rule, n) = l.split_once("\"} ")?;
            Some((rule.to_owned(), n.parse().ok()?))
        })
        .collect();
    let (state, budget, shed) = (
        gauge(&metrics, "vigil_detect_state_bytes"),
        gauge(&metrics, "vigil_detect_state_max_bytes"),
        gauge(&metrics, "vigil_detect_state_shed_total"),
    );
    let hwm_kb = status_kb(pid, "VmHWM:").unwrap();
    let log_path = s.log.clone();
    assert!(s.terminate());
    Run {
        secs: ingest_secs,
        hwm_mib: hwm_kb as f64 / 1024.0,
        sampled_mib: peak_sampled as f64 / 1024.0,
        groups,
        state,
        budget,
        shed,
        log: std::fs::read_to_string(&log_path).unwrap_or_default(),
    }
}
