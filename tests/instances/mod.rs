//! Several `vigil serve` instances on one bucket, against real parts (the Tansu broker, moto,
//! child processes): each with its own data directory, sharing only the consumer group and
//! the bucket. Partitions move between them with every record stored once; a writer that has
//! lost a log is fenced by the log's head in the bucket and gives it up, so a chain never
//! forks.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::store_bucket::{
    BUCKET, URL, assert_exactly_once_in_bucket, records, serve_on_bucket, verify_bucket,
};
use crate::support::*;

/// Records of topic `bkt` stored, per partition, by whichever of `dirs` holds most of it (an
/// instance given a partition copies its files from the bucket first), summed.
fn stored_across(dirs: &[&Path]) -> i64 {
    let mut most: BTreeMap<i32, i64> = BTreeMap::new();
    for d in dirs {
        for (p, n) in stored_per_partition(d, "bkt") {
            let e = most.entry(p).or_default();
            *e = (*e).max(n);
        }
    }
    most.values().sum()
}

fn wait_across(srvs: &[&Serve], dirs: &[&Path], n: i64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let stored = stored_across(dirs);
        if stored == n {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{stored} of {n} records stored after {timeout:?}; logs:\n{}",
            srvs.iter()
                .map(|s| s.log_text())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many times `what` is in `srv`'s log, once it is there at least `n` times.
fn wait_log(srv: &Serve, what: &str, n: usize, timeout: Duration) {
    let start = Instant::now();
    while srv.log_text().matches(what).count() < n {
        assert!(
            start.elapsed() < timeout,
            "{what:?} not {n} times in the log after {timeout:?}:\n{}",
            srv.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The broker with topic `bkt` of `partitions` (and the anchor topic), and moto with the
/// store's bucket.
fn broker_and_bucket(partitions: i32) -> (Broker, S3Server) {
    let broker = Broker::start();
    broker.create_topic("bkt", partitions);
    broker.create_topic("vigil.checkpoints", 1);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, false);
    (broker, s3)
}

/// An auditor's check of the bucket: `verify` against the keys `keys_from` published and
/// Kafka's anchors passes, and a query over a new copy finds every record of `bkt` once.
fn assert_bucket_verifies_with_each_record_once(
    s3: &S3Server,
    broker: &Broker,
    tmp: &Path,
    keys_from: &Path,
    n: usize,
) {
    let registry = tmp.join("registry");
    std::fs::copy(keys_from.join("keys/registry"), &registry).unwrap();
    let ran = verify_bucket(s3, &tmp.join("audit"), &registry, broker);
    assert_eq!(ran.code, 0, "{}{}", ran.stdout_text(), ran.stderr);
    assert_exactly_once_in_bucket(s3, &tmp.join("q"), n);
}

/// A second machine's data directory: nothing but the signing keys.
fn second_dir(a: &Path, b: &Path) {
    std::fs::create_dir_all(b).unwrap();
    copy_dir(&a.join("keys"), &b.join("keys"));
}

mod detection;
mod storing;

/// A webhook receiver that answers 503 until it is told to accept, then records each body.
#[derive(Clone, Default)]
struct Hook {
    accepting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    got: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    fn router(&self) -> axum::Router {
        let h = self.clone();
        axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let h = h.clone();
            async move {
                if !h.accepting.load(std::sync::atomic::Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                if let Ok(v) = serde_json::from_slice(&body) {
                    h.got.lock().unwrap().push(v);
                }
                axum::http::StatusCode::OK
            }
        })
    }

    fn accept(&self) {
        self.accepting
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn got(&self) -> Vec<serde_json::Value> {
        self.got.lock().unwrap().clone()
    }
}

/// Denials from `ip` (the OPA sample's decision, its caller address replaced), to the
/// partitions in `to`, in turn.
fn denials_from(ip: &str, from: usize, n: usize, to: &[i32]) -> Vec<Rec> {
    records(from, n, 1)
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.partition = to[i % to.len()];
            let v = String::from_utf8(r.value.take().unwrap()).unwrap();
            r.value = Some(v.replace("10.244.2.10", ip).into_bytes());
            r
        })
        .collect()
}

/// The partitions of `bkt` a serve's log says it was last assigned.
fn assigned(log: &str) -> Vec<i32> {
    let mut out = std::collections::BTreeSet::new();
    for l in log.lines() {
        if l.contains("partitions revoked") {
            out.clear();
        }
        if let Some(p) = l
            .split("partition assigned topic=bkt partition=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
        {
            out.insert(p);
        }
    }
    out.into_iter().collect()
}

/// The stored alerts of the denial-burst rule, read from a new copy of the bucket: each
/// alert's id and caller address.
fn burst_alerts(s3: &S3Server, copy: &Path) -> Vec<(String, String)> {
    let ran = crate::store_bucket::vigil_s3(
        s3,
        &[
            "--store",
            URL,
            "alerts",
            "--data-dir",
            copy.to_str().unwrap(),
            "--rule",
            "vigil.denial_burst.source_ip",
            "--json",
        ],
    );
    assert!(ran.ok(), "{ran}");
    ran.stdout_text()
        .lines()
        .map(|l| {
            let a: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                a["alert_id"].as_str().unwrap().to_owned(),
                a["group_key"]["caller_ip"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

fn signal(srv: &Serve, sig: i32) {
    // SAFETY: kill(2) on a child process this test started.
    let r = unsafe { libc::kill(srv.child.id() as i32, sig) };
    assert_eq!(r, 0, "kill({}, {sig})", srv.child.id());
}

/// The partitions of `bkt` stored under `dir`: records per partition, summed.
fn stored_bkt(dir: &Path) -> i64 {
    stored_per_partition(dir, "bkt").values().sum()
}
