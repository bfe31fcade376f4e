//! Peak memory of `vigil serve` ingesting at full speed with a million detection groups:
//! `cargo bench --bench memory`.
//!
//! `vigil simulate --callers N` (`VIGIL_BENCH_CALLERS`, default 500 000) fills a topic of the
//! real broker with calls from N distinct workloads outside the mesh (each its own SPIFFE id
//! and address, in turn, each calling a random service), so the per-caller rate rule holds N
//! groups and the learned-edge rule one per caller → callee edge: about 1 200 000 groups in
//! all at the default (`detect.max_groups_per_rule` raised above N, so none is evicted). Then `vigil serve` starts on the full topic and
//! consumes it as fast as it can — decode, chain, durable Parquet, every rule — while its
//! resident set is sampled from /proc; the figure is the kernel's peak (VmHWM) once every
//! event is stored and evaluated. Target: ≤ 1 GB with 1 000 000 detection groups. Also printed: the groups held per rule (from
//! `/metrics`) and the ingest rate. `VIGIL_BENCH_SERVE_TOML`: more configuration for `vigil
//! serve` (TOML appended to the bench's own, e.g. to try smaller batches).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/report.rs"]
mod report;

use std::time::{Duration, Instant};

use common::*;
use report::{Target, figure};

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

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let config = tmp.path().join("vigil.toml");
    {
        use sha2::Digest;
        std::fs::write(
            &config,
            format!(
                "[detect]\nmax_groups_per_rule = {}\n[[api.keys]]\nname = \"bench\"\nsha256 = \"{}\"\nroles = [\"reader\"]\n",
                callers + callers / 10,
                hex::encode(sha2::Sha256::digest(KEY.as_bytes()))
            ) + &std::env::var("VIGIL_BENCH_SERVE_TOML").unwrap_or_default(),
        )
        .unwrap();
    }
    let s = serve(&broker, "mesh", &dir, "bench-mem", &[], Some(&config));
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
        if stored_records(&dir) >= events && detected(&s.log_text()) >= events {
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
    let groups_now = || -> Vec<(String, u64)> {
        let metrics = rt.block_on(async {
            http.get(format!("http://{}/metrics", s.api))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix("vigil_rule_groups{rule=\""))
            .filter_map(|l| {
                let (rule, n) = l.split_once("\"} ")?;
                Some((rule.to_owned(), n.parse().ok()?))
            })
            .collect()
    };
    let waited = Instant::now();
    let groups = loop {
        peak_sampled = peak_sampled.max(status_kb(pid, "VmRSS:").unwrap_or(0));
        let g = groups_now();
        if g.iter().any(|(_, n)| *n >= callers as u64) || waited.elapsed() > Duration::from_secs(60)
        {
            break g;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let hwm_kb = status_kb(pid, "VmHWM:").unwrap();
    let log_path = s.log.clone();
    assert!(s.terminate());
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let total: u64 = groups.iter().map(|(_, n)| n).sum();
    let widest = groups.iter().map(|(_, n)| *n).max().unwrap_or(0);
    for (rule, n) in &groups {
        println!("  {rule:<40} groups {n:>8}");
    }
    assert!(
        widest >= callers as u64 && total >= 1_000_000.min(2 * callers as u64),
        "no rule holds {callers} groups: {groups:?}\n{log}"
    );
    // Evictions: the learned-edge rule caps itself at 1 000 000 edges (its own max_groups),
    // so with a million callers plus the mesh it evicts its least recently seen sixteenths.
    let evicted = log
        .lines()
        .find_map(|l| l.split_once("detection stopped events_evaluated="))
        .and_then(|(_, rest)| rest.split(" evicted=").nth(1))
        .and_then(|v| v.split(' ').next())
        .unwrap_or("?")
        .to_owned();
    let rate = events as f64 / ingest_secs;
    println!(
        "vigil serve: {events} events stored and evaluated in {ingest_secs:.1} s ({rate:.0}/s); \
         {total} groups held ({widest} in the widest rule; {evicted} evicted); peak RSS {:.0} MB (VmHWM; sampled {:.0} MB)",
        hwm_kb as f64 / 1024.0,
        peak_sampled as f64 / 1024.0
    );
    figure(
        "memory",
        &format!(
            "peak RSS of vigil serve ingesting {events} events at full speed ({rate:.0} events/s) with {total} detection groups ({callers} distinct callers)"
        ),
        hwm_kb as f64 / 1024.0,
        "MiB",
        Target::AtMost(1024.0),
        None,
    );
}
