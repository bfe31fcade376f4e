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

#[test]
fn two_instances_in_one_group_split_the_partitions_and_store_every_record_once() {
    let (broker, s3) = broker_and_bucket(4);
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let producer = broker.producer();

    let srv_a = serve_on_bucket(&broker, &a, "g-inst", &env, URL);
    produce(&producer, "bkt", &records(0, 400, 4));
    wait_across(&[&srv_a], &[&a], 400, Duration::from_secs(60));

    // B joins the group: the partitions are dealt again, and B takes its share with the files
    // A wrote (from the bucket), while A flushes what it held.
    second_dir(&a, &b);
    let srv_b = serve_on_bucket(&broker, &b, "g-inst", &env, URL);
    wait_log(
        &srv_b,
        "log claimed in the bucket log=bkt/",
        1,
        Duration::from_secs(60),
    );
    produce(&producer, "bkt", &records(400, 400, 4));
    wait_across(&[&srv_a, &srv_b], &[&a, &b], 800, Duration::from_secs(90));
    let (clean_b, log_b) = srv_b.stop();
    let (clean_a, log_a) = srv_a.stop();
    assert!(
        clean_a && clean_b,
        "both stop cleanly:\n{log_a}\n----\n{log_b}"
    );
    assert!(log_a.contains("partitions revoked"), "{log_a}");
    let claimed_by_b = log_b
        .lines()
        .filter(|l| l.contains("log claimed in the bucket") && l.contains("bkt/"))
        .count();
    assert!(claimed_by_b >= 1, "B writes some of bkt: {log_b}");
    for log in [&log_a, &log_b] {
        assert!(
            !log.contains("given up by this one"),
            "nobody fenced: {log}"
        );
    }
    // Detection ran on A, the first to take its lease; B stood by.
    assert!(log_a.contains("lease taken"), "{log_a}");
    assert!(log_b.contains("detection stands by"), "{log_b}");

    // Each log has one head, and each instance its own partition of its own logs.
    let heads = s3.keys(BUCKET, "prod/heads/");
    for p in 0..4 {
        assert!(
            heads.contains(&format!("prod/heads/topic=bkt/partition={p}.json")),
            "{heads:?}"
        );
    }
    for p in 0..2 {
        assert!(
            heads.contains(&format!("prod/heads/topic=vigil.api/partition={p}.json")),
            "A and B each claimed a partition of vigil.api: {heads:?}"
        );
    }

    // The bucket verifies, and holds every record once.
    assert_bucket_verifies_with_each_record_once(&s3, &broker, tmp.path(), &a, 800);
}

#[test]
fn a_writer_that_lost_its_log_is_fenced_and_the_chain_stays_one_line() {
    // Two instances that each believe they hold every partition: two consumer groups on one
    // bucket. It is a misconfiguration, and it is also the shape of a stale owner (paused or
    // cut off while its group dealt its partitions to another), which this broker cannot show
    // as such: Tansu never evicts a group member.
    let (broker, s3) = broker_and_bucket(2);
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let producer = broker.producer();

    let srv_a = serve_on_bucket(&broker, &a, "g-a", &env, URL);
    produce(&producer, "bkt", &records(0, 200, 2));
    wait_across(&[&srv_a], &[&a], 200, Duration::from_secs(60));

    // B claims both logs (they were assigned to it), copying A's files first.
    second_dir(&a, &b);
    let srv_b = serve_on_bucket(&broker, &b, "g-b", &env, URL);
    wait_log(
        &srv_b,
        "log claimed in the bucket log=bkt/",
        2,
        Duration::from_secs(60),
    );

    // Both read what comes next. A's next file of each log is refused by the log's head:
    // A gives the log up; B stores everything.
    produce(&producer, "bkt", &records(200, 200, 2));
    wait_across(&[&srv_b], &[&b], 400, Duration::from_secs(60));
    wait_log(&srv_a, "given up by this one", 2, Duration::from_secs(60));
    produce(&producer, "bkt", &records(400, 100, 2));
    wait_across(&[&srv_b], &[&b], 500, Duration::from_secs(60));
    // A's copy follows the logs B writes now (its SQL sees them); B is their writer.
    wait_across(&[&srv_a], &[&a], 500, Duration::from_secs(60));
    let b_id = std::fs::read_to_string(b.join("instance-id")).unwrap();
    let bucket = s3.client(URL);
    for p in 0..2 {
        let head = bucket.get_head("bkt", p).unwrap().unwrap().head;
        assert_eq!(head.owner, b_id.trim(), "{head:?}");
    }
    let (clean_b, log_b) = srv_b.stop();
    let (clean_a, log_a) = srv_a.stop();
    assert!(
        clean_a && clean_b,
        "both stop cleanly:\n{log_a}\n----\n{log_b}"
    );
    assert!(!log_b.contains("given up by this one"), "{log_b}");

    // One line per log: every file B named is in the bucket (A's puts of the same records
    // were the same bytes, under the same names, or strays no head reaches, which no copy
    // fetches), the bucket verifies, every record once.
    let events: std::collections::BTreeSet<String> = s3
        .keys(BUCKET, "prod/events/topic=bkt/")
        .into_iter()
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    let local_b: std::collections::BTreeSet<String> = walk_parquet(&b.join("events/topic=bkt"))
        .into_iter()
        .map(|p| format!("prod/{}", p.strip_prefix(&b).unwrap().display()))
        .collect();
    assert!(
        local_b.is_subset(&events),
        "B's files are all in the bucket: {local_b:?} {events:?}"
    );
    assert_bucket_verifies_with_each_record_once(&s3, &broker, tmp.path(), &a, 500);
}

/// The Parquet files under `dir`, sorted.
fn walk_parquet(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "parquet") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

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

#[test]
fn detection_runs_on_the_lease_holder_and_another_instance_takes_over_when_it_dies() {
    let (broker, s3) = broker_and_bucket(2);
    let mut env = s3.env();
    // A short lease, frequent saves and follows: the takeover within seconds.
    for (k, v) in [
        ("VIGIL_DETECT__LEASE_TTL_MS", "3000"),
        ("VIGIL_DETECT__STATE_INTERVAL_MS", "500"),
        ("VIGIL_STORE__FOLLOW_INTERVAL_MS", "300"),
    ] {
        env.push((k.into(), v.into()));
    }
    env.push(("VIGIL_WEBHOOK_SECRET".into(), "k".into()));
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let producer = broker.producer();
    // A SIEM's webhook that refuses every delivery until A is gone.
    let hook = Hook::default();
    let url = format!("http://{}/hook", http_server(None, hook.router()));
    let serve = |dir: &Path| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        serve_with(
            &broker,
            "bkt",
            dir,
            "g-det",
            &env,
            None,
            &["--store", URL, "--webhook", &url],
        )
    };

    let srv_a = serve(&a);
    wait_log(&srv_a, "lease taken", 1, Duration::from_secs(60));
    wait_log(
        &srv_a,
        "log claimed in the bucket log=bkt/",
        2,
        Duration::from_secs(60),
    );
    second_dir(&a, &b);
    let srv_b = serve(&b);
    wait_log(&srv_b, "detection stands by", 1, Duration::from_secs(60));
    wait_log(
        &srv_b,
        "log claimed in the bucket log=bkt/",
        1,
        Duration::from_secs(60),
    );

    // A burst of denials over both partitions: A's detection sees B's partition through the
    // files it follows from the bucket, and raises one alert.
    produce(
        &producer,
        "bkt",
        &denials_from("10.244.2.10", 0, 60, &[0, 1]),
    );
    wait_across(&[&srv_a, &srv_b], &[&a, &b], 60, Duration::from_secs(60));
    wait_log(&srv_a, "alert fired", 1, Duration::from_secs(60));
    assert!(!srv_b.log_text().contains("alert fired"), "B stands by");
    // An analyst acknowledges it through B: B relays the change to A through the bucket.
    let log_a = srv_a.log_text();
    let id = log_a
        .split("alert fired alert_id=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let b_dir = b.to_str().unwrap().to_owned();
    let ran = crate::store_bucket::vigil_s3(
        &s3,
        &[
            "--store",
            URL,
            "alerts",
            "ack",
            &id,
            "--data-dir",
            &b_dir,
            "--note",
            "through B",
            "--json",
        ],
    );
    assert!(ran.ok(), "{ran}\n{}", srv_b.log_text());
    let acked: serde_json::Value = serde_json::from_str(ran.stdout_text().trim()).unwrap();
    assert_eq!(acked["status"], "acknowledged", "{acked}");
    assert_eq!(acked["status_note"], "through B", "{acked}");
    // B's own alert log (what its API shows) follows A's: the alert, acknowledged.
    wait_for("B's copy of the alert log", Duration::from_secs(30), || {
        let ran = run(vigil_command().args(["alerts", "--data-dir", &b_dir, "--json"]));
        ran.stdout_text()
            .lines()
            .any(|l| l.contains(&id) && l.contains("\"acknowledged\""))
            .then_some(())
    });
    // Its state saved (with the alert's group) in the bucket; its delivery refused, so
    // still in the outbox, which is in the bucket too.
    std::thread::sleep(Duration::from_millis(1500));
    let outbox = s3.keys(BUCKET, "prod/outbox/");
    assert!(
        !outbox.is_empty(),
        "the undelivered alert is in the bucket's outbox"
    );
    assert!(hook.got().is_empty());

    // A dies. B takes detection over once the lease has gone unrenewed for its 3 s, from
    // the state, the alert log and the outbox A left: the alert is not raised again, and
    // its delivery is carried on (the webhook takes deliveries from now on: only B can).
    srv_a.kill9();
    hook.accept();
    wait_log(
        &srv_b,
        "detection taken over from the state saved in the bucket",
        1,
        Duration::from_secs(60),
    );
    let log_b = srv_b.log_text();
    // (The broker never evicts the dead A, so A's partitions stay its own: what comes next
    // goes to B's.)
    let mine = assigned(&log_b);
    assert!(!mine.is_empty(), "{log_b}");
    produce(&producer, "bkt", &denials_from("10.7.7.7", 60, 60, &mine));
    wait_log(&srv_b, "alert fired", 1, Duration::from_secs(60));
    let (clean_b, log_b) = srv_b.stop();
    assert!(clean_b, "{log_b}");

    // B fired the new burst's alert, never the one A had fired (a first revision is "fired").
    let fired_by_b: Vec<&str> = log_b
        .lines()
        .filter(|l| l.contains("alert fired"))
        .collect();
    assert!(
        fired_by_b.iter().all(|l| !l.contains("10.244.2.10"))
            && fired_by_b.iter().any(|l| l.contains("10.7.7.7")),
        "{fired_by_b:?}"
    );
    wait_for("A's alert delivered by B", Duration::from_secs(60), || {
        hook.got()
            .iter()
            .any(|v| v["alert"]["group_key"]["caller_ip"] == "10.244.2.10")
            .then_some(())
    });
    let alerts = burst_alerts(&s3, &tmp.path().join("alerts"));
    let by_ip = |ip: &str| alerts.iter().filter(|(_, i)| i == ip).count();
    assert_eq!(
        by_ip("10.244.2.10"),
        1,
        "raised once, by A: {alerts:?}\n{log_b}"
    );
    assert_eq!(
        by_ip("10.7.7.7"),
        1,
        "raised by B after taking over: {alerts:?}\n{log_b}"
    );
}

#[test]
fn a_head_moves_only_from_the_version_read_and_a_lease_only_from_a_silent_holder() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, false);
    let bucket = std::sync::Arc::new(s3.client(URL));

    // A log's head: created once; replaced only over the version read.
    let head = vigil_store::HeadObject::empty("a");
    let e1 = bucket.put_head("t", 0, &head, None).unwrap();
    let err = bucket.put_head("t", 0, &head.advanced("x".into(), 0, 9), None);
    assert!(
        matches!(err, Err(vigil_store::StoreError::Fenced { .. })),
        "{err:?}"
    );
    let next = head.advanced("events/f0".into(), 0, 9);
    let e2 = bucket.put_head("t", 0, &next, Some(&e1)).unwrap();
    // A writer still holding the first version is fenced.
    let stale = bucket.put_head("t", 0, &head.advanced("events/g0".into(), 0, 4), Some(&e1));
    assert!(
        matches!(&stale, Err(e) if vigil_store::is_fenced(e)),
        "{stale:?}"
    );
    let read = bucket.get_head("t", 0).unwrap().unwrap();
    assert_eq!((read.head, read.etag), (next, e2));

    // The lease: A takes it; B waits while A renews, takes it once A has been silent for
    // A's whole lease time, and A learns at its next renewal that it lost it.
    let mut a = vigil_store::Lease::new(bucket.clone(), "test", "a", 1000).unwrap();
    let mut b = vigil_store::Lease::new(bucket.clone(), "test", "b", 1000).unwrap();
    assert!(a.tick().unwrap() && a.held());
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        assert!(!b.tick().unwrap(), "B takes nothing while A renews");
        assert!(a.tick().unwrap());
        std::thread::sleep(Duration::from_millis(300));
    }
    let silent = Instant::now();
    while !b.tick().unwrap() {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            silent.elapsed() < Duration::from_secs(10),
            "B never took the lease"
        );
    }
    assert!(
        silent.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        silent.elapsed()
    );
    assert!(!a.tick().unwrap() && !a.held(), "A lost it");
    assert!(!a.ensure().unwrap());
    // B releases it (a clean stop): A takes it at once.
    b.release().unwrap();
    assert!(a.tick().unwrap());
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

#[test]
fn three_instances_one_killed_one_stopped_past_its_partitions_and_lease_no_fork_every_record_once()
{
    // B, A and C in one group on one bucket; B holds the detection lease. C is killed with
    // kill -9 mid-stream; B is stopped (SIGSTOP) while it holds partitions and the lease. The
    // test broker never evicts a group member, so the group cannot hand C's and B's
    // partitions on by itself: A is started again (after a kill -9 of its own) in a second
    // group — the stand-in for the rebalance a real broker makes after `session.timeout.ms`
    // — which gives it every partition. It claims every log, takes the lease once B's has gone unrenewed, and
    // carries on. B, continued, still believes it holds its partitions and the lease: it is
    // fenced off both.
    let (broker, s3) = broker_and_bucket(6);
    let mut env = s3.env();
    for (k, v) in [
        ("VIGIL_DETECT__LEASE_TTL_MS", "3000"),
        ("VIGIL_DETECT__STATE_INTERVAL_MS", "500"),
        ("VIGIL_STORE__FOLLOW_INTERVAL_MS", "300"),
    ] {
        env.push((k.into(), v.into()));
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let producer = broker.producer();
    let all: Vec<i32> = (0..6).collect();

    let srv_b = serve_on_bucket(&broker, &b, "g-three", &env, URL);
    wait_log(&srv_b, "lease taken", 1, Duration::from_secs(60));
    second_dir(&b, &a);
    second_dir(&b, &c);
    let srv_a = serve_on_bucket(&broker, &a, "g-three", &env, URL);
    let srv_c = serve_on_bucket(&broker, &c, "g-three", &env, URL);
    wait_for(
        "the partitions dealt to all three",
        Duration::from_secs(90),
        || {
            let dealt: Vec<Vec<i32>> = [&srv_a, &srv_b, &srv_c]
                .iter()
                .map(|s| assigned(&s.log_text()))
                .collect();
            (dealt.iter().all(|d| !d.is_empty()) && dealt.iter().map(Vec::len).sum::<usize>() == 6)
                .then_some(())
        },
    );

    // A burst B alerts on, seen across all three instances' partitions.
    produce(&producer, "bkt", &denials_from("10.244.2.10", 0, 60, &all));
    wait_across(
        &[&srv_a, &srv_b, &srv_c],
        &[&a, &b, &c],
        60,
        Duration::from_secs(60),
    );
    wait_log(&srv_b, "alert fired", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1500)); // B's state, with the alert, saved

    // Mid-stream: C killed, B stopped.
    produce(&producer, "bkt", &records(60, 300, 6));
    std::thread::sleep(Duration::from_millis(300));
    srv_c.kill9();
    signal(&srv_b, libc::SIGSTOP);

    // A again, in a group of its own: every partition, every log claimed, the lease taken.
    // (Killed too rather than stopped: a clean stop leaves the group, whose rebalance would
    // deal B's partitions to B again the moment it continues — B would not be stale.)
    srv_a.kill9();
    let srv_a = serve_on_bucket(&broker, &a, "g-three-after", &env, URL);
    wait_log(
        &srv_a,
        "detection taken over from the state saved in the bucket",
        1,
        Duration::from_secs(60),
    );
    wait_for("A stores the 360", Duration::from_secs(60), || {
        (stored_bkt(&a) == 360).then_some(())
    });
    produce(&producer, "bkt", &denials_from("10.7.7.7", 360, 60, &all));
    produce(&producer, "bkt", &records(420, 200, 6));
    wait_log(&srv_a, "alert fired", 1, Duration::from_secs(60));

    // B continued: it writes what it had consumed and what it reads now — refused by the
    // logs' heads, it gives its partitions up — and its detection learns it lost the lease.
    signal(&srv_b, libc::SIGCONT);
    wait_log(&srv_b, "given up by this one", 1, Duration::from_secs(60));
    wait_log(&srv_b, "detection lease lost", 1, Duration::from_secs(60));
    produce(&producer, "bkt", &records(620, 100, 6));
    wait_for("A stores all 720", Duration::from_secs(60), || {
        (stored_bkt(&a) == 720).then_some(())
    });
    let (clean_a, log_a) = srv_a.stop();
    let (clean_b, log_b) = srv_b.stop();
    assert!(clean_a && clean_b, "{log_a}\n----\n{log_b}");

    // No fork, every record once, the bucket verifies.
    assert_bucket_verifies_with_each_record_once(&s3, &broker, tmp.path(), &a, 720);
    // Detection failed over without duplicates: each burst raised once, by its holder.
    let fired = |log: &str, ip: &str| {
        log.lines()
            .filter(|l| l.contains("alert fired") && l.contains(ip))
            .count()
    };
    assert_eq!(fired(&log_a, "10.244.2.10"), 0, "{log_a}");
    assert_eq!(fired(&log_b, "10.7.7.7"), 0, "{log_b}");
    let alerts = burst_alerts(&s3, &tmp.path().join("alerts"));
    let by_ip = |ip: &str| alerts.iter().filter(|(_, i)| i == ip).count();
    assert_eq!(
        (by_ip("10.244.2.10"), by_ip("10.7.7.7")),
        (1, 1),
        "{alerts:?}"
    );
}
