//! Analyst queries through Vigil's API against DuckDB on the same Parquet files, in one run.
//!
//! 1. Generates `VIGIL_BENCH_EVENTS` (default 10 000 000) native events straight into a store
//!    (decoded, chained, written as `vigil serve` writes them: 4 partitions, 100 000 events a
//!    file), spread in time order over `VIGIL_BENCH_DAYS` (30) days, 1 000 callers, 50
//!    callees, one call in twenty denied.
//! 2. Starts `vigil serve` on it (a real broker, an idle topic) and asks its API, with a reader
//!    key, a fixed set of analyst queries: denials per caller in the last hour, the top caller
//!    → callee pairs, one event by id, a one-day range scan.
//! 3. Runs the same SQL in DuckDB (`pip install duckdb`; the script installs it if missing)
//!    over the same files, in one Python process.
//!
//! Each query runs once cold in each, then `VIGIL_BENCH_RUNS` (7) times in each, alternately
//! (DuckDB stays up, taking queries on stdin), so that both see the same machine; the medians
//! are reported, with the ratio Vigil / DuckDB (target ≤ 1.5). Their row counts are compared.
//! `cargo bench --bench query` (release build). `VIGIL_BENCH_DIR=DIR` keeps the generated store in
//! DIR and reuses it in later runs.

#[path = "../tests/support/mod.rs"]
#[allow(dead_code)] // each bench uses part of the tests' support
mod test_support;

#[path = "support/report.rs"]
mod report;
use report::{Target, figure};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::*;
use vigil_schemas::Decoder;
use vigil_store::{PartitionBatch, RecordRef, Store, WriteOptions};

const PARTITIONS: i32 = 4;
const PER_FILE: usize = 100_000;
const CALLERS: usize = 1000;
const CALLEES: usize = 50;
const KEY: &str = "vk_bench_reader_0123456789";

/// Fixed end of the generated time range (UTC).
const END_S: i64 = 1_795_392_000; // 2026-11-23T00:00:00Z

fn event(i: usize, t_ns: i64) -> String {
    let caller = (i * 7919) % CALLERS;
    let callee = (i * 104_729 + caller) % CALLEES;
    let deny = i.is_multiple_of(20);
    let t = chrono::DateTime::from_timestamp_nanos(t_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    format!(
        r#"{{"schema":"vigil.event/v1","id":"e{i:011}","time":"{t}","kind":"authz","decision":"{}","caller":{{"principal":"spiffe://cluster.local/ns/ns{}/sa/svc{caller}","ip":"10.{}.{}.{}"}},"callee":{{"principal":"spiffe://cluster.local/ns/core/sa/api{callee}","port":8443}},"action":"GET","resource":"/v1/items/{}","status_code":{}}}"#,
        if deny { "deny" } else { "allow" },
        caller % 20,
        caller / 256,
        caller % 256,
        i % 200,
        i % 5000,
        if deny { 403 } else { 200 }
    )
}

/// Write `n` events into the store: partition `p` gets every event `i` with `i % P == p`,
/// in time order.
fn generate(dir: &Path, n: usize, days: i64) {
    let store = Store::open(dir, WriteOptions::default()).unwrap();
    let span_ns = days * 86_400 * 1_000_000_000;
    let start_ns = END_S * 1_000_000_000 - span_ns;
    std::thread::scope(|s| {
        for p in 0..PARTITIONS {
            let store = store.clone();
            s.spawn(move || {
                let decoder = Decoder::default();
                let mut b = PartitionBatch::new("bench", p, Default::default(), PER_FILE);
                for (offset, i) in (p as usize..n).step_by(PARTITIONS as usize).enumerate() {
                    let offset = offset as i64;
                    let t = start_ns + (span_ns as i128 * i as i128 / n as i128) as i64;
                    let v = event(i, t);
                    let rec = RecordRef {
                        topic: "bench",
                        partition: p,
                        offset,
                        timestamp_ms: Some(t / 1_000_000),
                        key: None,
                        value: Some(v.as_bytes()),
                        headers: &[],
                    };
                    b.append(&rec, &decoder, t).unwrap();
                    if b.rows() >= PER_FILE {
                        store.write(&b.seal().unwrap().unwrap()).unwrap();
                    }
                }
                if let Some(sealed) = b.seal().unwrap() {
                    store.write(&sealed).unwrap();
                }
            });
        }
    });
}

fn ts(s: i64) -> String {
    chrono::DateTime::from_timestamp(s, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn queries() -> Vec<(&'static str, String)> {
    vec![
        // The fixed cost of a call: HTTP, authentication, planning, the audit record.
        ("SELECT 1 (fixed cost)", "SELECT 1 AS one".to_owned()),
        (
            "denials per caller, last hour",
            format!(
                "SELECT caller_principal, count(*) AS denials FROM events WHERE decision = 'deny' \
                 AND event_time >= '{}' GROUP BY caller_principal ORDER BY denials DESC, caller_principal LIMIT 20",
                ts(END_S - 3600)
            ),
        ),
        (
            "top caller → callee pairs",
            "SELECT caller_principal, callee_principal, count(*) AS calls FROM events \
             GROUP BY caller_principal, callee_principal ORDER BY calls DESC, caller_principal, callee_principal LIMIT 10"
                .to_owned(),
        ),
        (
            "one event by id",
            "SELECT event_id, caller_principal, decision FROM events WHERE event_id = 'e00004242424'"
                .to_owned(),
        ),
        (
            "one day, range scan",
            format!(
                "SELECT count(*) AS n, count(DISTINCT caller_principal) AS callers FROM events \
                 WHERE event_time >= '{}' AND event_time < '{}'",
                ts(END_S - 10 * 86_400),
                ts(END_S - 9 * 86_400)
            ),
        ),
    ]
}

/// DuckDB as a server on stdin/stdout: one JSON line per query in, its time and result out.
const DUCKDB: &str = r#"
import json, sys, time
import duckdb
con = duckdb.connect()
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{sys.argv[1]}') WHERE store_error IS NULL")
print("ready", flush=True)
for line in sys.stdin:
    q = json.loads(line)
    t = time.perf_counter(); rows = con.execute(q).fetchall(); s = time.perf_counter() - t
    print(json.dumps({"s": s, "rows": len(rows)}), flush=True)
"#;

/// A DuckDB process over the store's files.
struct Duck {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Duck {
    fn start(glob: &str) -> Duck {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args(["-c", DUCKDB, glob])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "DuckDB did not start");
        Duck { child, out }
    }

    /// Seconds and rows.
    fn ask(&mut self, sql: &str) -> (f64, u64) {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", serde_json::to_string(sql).unwrap()).unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{sql}: {e}: {line}"));
        (v["s"].as_f64().unwrap(), v["rows"].as_u64().unwrap())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_or("VIGIL_BENCH_EVENTS", 10_000_000usize);
    let days = env_or("VIGIL_BENCH_DAYS", 30i64);
    let runs = env_or("VIGIL_BENCH_RUNS", 7usize);
    let tmp = tempfile::tempdir().unwrap();
    // `VIGIL_BENCH_DIR`: generate there once and reuse it in later runs (for profiling).
    let dir = match std::env::var_os("VIGIL_BENCH_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => tmp.path().join("data"),
    };

    if vigil_store::layout::events(&dir).is_dir() {
        println!("reusing the events in {}", dir.display());
    } else {
        let t = Instant::now();
        generate(&dir, n, days);
        let bytes: u64 = walk(&vigil_store::layout::events(&dir));
        println!(
            "generated {n} events over {days} days into {} in {:.1} s ({:.0} B/event stored)",
            dir.display(),
            t.elapsed().as_secs_f64(),
            bytes as f64 / n as f64
        );
    }

    // DuckDB installed if missing (not part of the test suite: this bench's own need).
    let have = Command::new("python3")
        .args(["-c", "import duckdb"])
        .status();
    if !have.is_ok_and(|s| s.success()) {
        let ok = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "duckdb"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install duckdb failed");
    }

    let broker = Broker::start();
    broker.create_topic("idle", 1);
    let config = tmp.path().join("vigil.toml");
    {
        use sha2::Digest;
        std::fs::write(
            &config,
            format!(
                "[detect]\nenabled = false\n[api]\nquery_timeout_ms = 600000\nquery_memory_bytes = 4294967296\n[[api.keys]]\nname = \"bench\"\nsha256 = \"{}\"\nroles = [\"reader\"]\n",
                hex::encode(sha2::Sha256::digest(KEY.as_bytes()))
            ),
        )
        .unwrap();
    }
    let s = serve_with(&broker, "idle", &dir, "bench-q", &[], Some(&config), &[]);
    let http = reqwest::Client::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{}/v1/query", s.api);
    wait_for("the API", Duration::from_secs(120), || {
        rt.block_on(http.get(format!("http://{}/healthz", s.api)).send())
            .ok()
            .map(|_| ())
    });
    let ask = |sql: &str| -> (f64, serde_json::Value) {
        let t = Instant::now();
        let v: serde_json::Value = rt.block_on(async {
            let r = http
                .post(&url)
                .bearer_auth(KEY)
                .json(&serde_json::json!({ "sql": sql }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{sql}: {}", r.status());
            r.json().await.unwrap()
        });
        (t.elapsed().as_secs_f64(), v)
    };

    let qs = queries();
    // Every stored file, not the temp files of one being written (`.tmp-…`).
    let glob = format!("{}/events/**/[0-9]*.parquet", dir.display());
    let mut duck = Duck::start(&glob);

    println!();
    println!(
        "| query | Vigil API cold ms | Vigil API ms | DuckDB cold ms | DuckDB ms | ratio (target ≤ 1.5) | rows |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, sql) in &qs {
        // Cold, then the two alternately, so that both see the same machine.
        let (cold, first) = ask(sql);
        let (duck_cold, duck_rows) = duck.ask(sql);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ours.push(ask(sql).0);
            theirs.push(duck.ask(sql).0);
        }
        let rows = first.as_array().map_or(0, Vec::len);
        assert_eq!(rows as u64, duck_rows, "{name}: Vigil and DuckDB disagree");
        let (warm, dm) = (median(ours), median(theirs));
        figure(
            "query",
            &format!("{name} (through the API; {n} events, median of {runs})"),
            warm * 1e3,
            "ms",
            // A call's fixed cost (HTTP, auth, the durable audit record) has no target.
            if sql.contains("FROM") {
                Target::RatioAtMost(1.5)
            } else {
                Target::None
            },
            Some(("DuckDB on the same files", dm * 1e3)),
        );
        println!(
            "| {name} | {:.0} | {:.1} | {:.0} | {:.1} | {:.2} | {rows} |",
            cold * 1e3,
            warm * 1e3,
            duck_cold * 1e3,
            dm * 1e3,
            warm / dm
        );
    }
    drop(duck.child.stdin.take());
    let _ = duck.child.wait();
    assert!(s.terminate());
}

fn walk(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let path = e.path();
        n += if path.is_dir() {
            walk(&path)
        } else {
            e.metadata().map_or(0, |m| m.len())
        };
    }
    n
}
