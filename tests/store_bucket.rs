//! The store in an S3-compatible bucket, against real parts: the Tansu broker, moto in server
//! mode, `vigil serve` as a child process. Everything a verifier needs is in the bucket; a new
//! machine carries on from it; `verify` and `query` read it; a file deleted from the bucket is
//! caught; the bucket not answering pauses ingest and loses nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::support::*;

pub(crate) const BUCKET: &str = "vigil-store";
pub(crate) const URL: &str = "s3://vigil-store/prod";

pub(crate) fn records(from: usize, n: usize, partitions: i32) -> Vec<Rec> {
    opa_records("bkt", from, n, partitions)
}

/// `vigil --store URL verify` over a copy at `copy`, against pinned keys and Kafka's anchors.
pub(crate) fn verify_bucket(s3: &S3Server, copy: &Path, registry: &Path, broker: &Broker) -> Ran {
    vigil_s3(
        s3,
        &[
            "--store",
            URL,
            "verify",
            "--data-dir",
            copy.to_str().unwrap(),
            "--keys",
            registry.to_str().unwrap(),
            "--anchor-kafka",
            &broker.addr,
        ],
    )
}

/// `vigil serve` of topic `bkt` into `dir`, the store at `url` on the S3 server of `env`.
pub(crate) fn serve_on_bucket(
    broker: &Broker,
    dir: &Path,
    group: &str,
    env: &[(String, String)],
    url: &str,
) -> Serve {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    serve_with(broker, "bkt", dir, group, &env, None, &["--store", url])
}

/// `vigil` with the S3 server's environment.
pub(crate) fn vigil_s3(s3: &S3Server, args: &[&str]) -> Ran {
    let mut cmd = vigil_command();
    cmd.args(args);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Every (partition, offset) stored once, `n` in all, read from a copy of the bucket.
pub(crate) fn assert_exactly_once_in_bucket(s3: &S3Server, copy: &Path, n: usize) {
    let d = copy.to_str().unwrap();
    let ran = vigil_s3(
        s3,
        &[
            "--store",
            URL,
            "query",
            "--data-dir",
            d,
            "--format",
            "csv",
            "SELECT count(*) AS n, count(DISTINCT concat(CAST(kafka_partition AS VARCHAR), '/', CAST(kafka_offset AS VARCHAR))) AS d FROM events WHERE kafka_topic = 'bkt'",
        ],
    );
    assert!(ran.ok(), "query over the bucket: {}", ran.stderr);
    assert_eq!(
        ran.stdout_text().trim(),
        format!("n,d\n{n},{n}"),
        "every record once, read from the bucket"
    );
}

#[test]
fn the_store_lives_in_the_bucket_a_new_machine_carries_on_and_a_deleted_file_is_caught() {
    let broker = Broker::start();
    broker.create_topic("bkt", 2);
    broker.create_topic("vigil.checkpoints", 1);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, false);
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let producer = broker.producer();

    // Machine A stores 300 records into the bucket.
    let srv = serve_on_bucket(&broker, &a, "g-bkt", &env, URL);
    produce(&producer, "bkt", &records(0, 300, 2));
    wait_bkt_stored(&srv, &a, 300, Duration::from_secs(60));
    let (clean, log) = srv.stop();
    assert!(clean, "A stops cleanly: {log}");

    // Everything a verifier needs is in the bucket; the signing key never is.
    let keys = s3.keys(BUCKET, "prod/");
    let has = |p: &str| keys.iter().any(|k| k.starts_with(p));
    assert!(has("prod/events/topic=bkt/partition=0/"), "{keys:?}");
    assert!(has("prod/events/topic=bkt/partition=1/"), "{keys:?}");
    assert!(has("prod/checkpoints/topic=bkt/partition=0/"), "{keys:?}");
    assert!(keys.contains(&"prod/keys/registry".to_owned()), "{keys:?}");
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with(".key") || k.contains(".tmp-")),
        "no signing key, no temp file in the bucket: {keys:?}"
    );
    // The local copy holds the same event files as the bucket, no more.
    let local: BTreeSet<String> = files_under(&a.join("events"))
        .into_iter()
        .map(|p| format!("prod/{}", p.strip_prefix(&a).unwrap().display()))
        .collect();
    let remote: BTreeSet<String> = keys
        .iter()
        .filter(|k| k.starts_with("prod/events/"))
        .cloned()
        .collect();
    assert_eq!(local, remote);

    // Machine B: a new data directory with nothing but the signing keys (restored from where
    // the operator keeps them), the same consumer group. It carries on from the bucket.
    std::fs::create_dir_all(&b).unwrap();
    copy_dir(&a.join("keys"), &b.join("keys"));
    let srv = serve_on_bucket(&broker, &b, "g-bkt", &env, URL);
    produce(&producer, "bkt", &records(300, 200, 2));
    wait_bkt_stored(&srv, &b, 500, Duration::from_secs(60));
    let (clean, log) = srv.stop();
    assert!(clean, "B stops cleanly: {log}");
    assert!(
        log.contains("local copy of the bucket up to date"),
        "B copied the bucket first: {log}"
    );

    // An auditor's copy: the bucket verifies against the registry A published and the anchors
    // in Kafka, every record once.
    let audit = tmp.path().join("audit");
    let registry = tmp.path().join("registry");
    std::fs::copy(a.join("keys/registry"), &registry).unwrap();
    let verify = |copy: &Path| verify_bucket(&s3, copy, &registry, &broker);
    let ran = verify(&audit);
    assert_eq!(
        ran.code,
        0,
        "the bucket verifies: {}{}",
        ran.stdout_text(),
        ran.stderr
    );
    assert_exactly_once_in_bucket(&s3, &tmp.path().join("q"), 500);

    // Someone with the bucket's credentials deletes the oldest file of partition 0. The same
    // auditor's copy, brought up to date, says so (a copy never hides what the bucket lost).
    let oldest = keys
        .iter()
        .filter(|k| k.starts_with("prod/events/topic=bkt/partition=0/"))
        .min_by_key(|k| k.rsplit('/').next().unwrap().to_owned())
        .unwrap()
        .clone();
    let name = oldest.strip_prefix("prod/").unwrap();
    s3.client(URL).unpublish(&a, &a.join(name)).unwrap();
    assert!(!s3.keys(BUCKET, "prod/").contains(&oldest));
    let ran = verify(&audit);
    assert_eq!(
        ran.code,
        1,
        "a deleted file is tampering: {}{}",
        ran.stdout_text(),
        ran.stderr
    );

    // Machine A, which still has that file, refuses to write on top of such a bucket (and
    // keeps its copy: the evidence).
    let mut srv = serve_on_bucket(&broker, &a, "g-bkt", &env, URL);
    let status = wait_for("serve to refuse", Duration::from_secs(60), || {
        srv.child.try_wait().unwrap()
    });
    let log = srv.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("disagree on 1 file(s)"), "{log}");
    assert!(a.join(name).is_file(), "A keeps its copy of {name}");
}

#[test]
fn the_bucket_not_answering_pauses_ingest_and_loses_nothing_and_a_prune_reaches_the_bucket() {
    let broker = Broker::start();
    broker.create_topic("bkt", 2);
    broker.create_topic("vigil.checkpoints", 1);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, false);
    let mut env = s3.env();
    // Each request gives up after 1 s and is retried for 3 s; then the write is tried again.
    env.push(("VIGIL_STORE__S3_REQUEST_TIMEOUT_MS".into(), "1000".into()));
    env.push(("VIGIL_STORE__S3_RETRY_TIMEOUT_MS".into(), "3000".into()));
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let producer = broker.producer();
    let srv = serve_on_bucket(&broker, &a, "g-bkt", &env, URL);
    produce(&producer, "bkt", &records(0, 100, 2));
    wait_bkt_stored(&srv, &a, 100, Duration::from_secs(60));

    // The S3 server stops answering (SIGSTOP) for 30 s while records keep coming.
    let pid = s3.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    produce(&producer, "bkt", &records(100, 200, 2));
    std::thread::sleep(Duration::from_secs(30));
    // Nothing the bucket did not acknowledge has a file's final name here.
    let held = stored_per_partition(&a, "bkt").values().sum::<i64>();
    assert_eq!(held, 100, "no file stored while the bucket is away");
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );

    wait_bkt_stored(&srv, &a, 300, Duration::from_secs(90));
    let (clean, log) = srv.stop();
    assert!(clean, "stops cleanly: {log}");
    assert!(
        log.contains("the store's bucket does not answer"),
        "the outage was reported: {log}"
    );
    assert_exactly_once_in_bucket(&s3, &tmp.path().join("q"), 300);

    // Retention on a bucket: the prune is signed into it, the old files leave it, and a new
    // copy of the bucket verifies with the pruned prefix.
    let retention = tmp.path().join("retention.toml");
    std::fs::write(&retention, "[retention.max_age_days]\nbkt = 0\n").unwrap();
    let ran = vigil_s3(
        &s3,
        &[
            "--config",
            retention.to_str().unwrap(),
            "--store",
            URL,
            "prune",
            "--data-dir",
            a.to_str().unwrap(),
        ],
    );
    assert!(ran.ok(), "{ran}");
    let keys = s3.keys(BUCKET, "prod/");
    for p in 0..2 {
        let events = format!("prod/events/topic=bkt/partition={p}/");
        let pruned = format!("prod/checkpoints/topic=bkt/partition={p}/pruned-");
        assert_eq!(
            keys.iter().filter(|k| k.starts_with(&events)).count(),
            1,
            "{keys:?}"
        );
        assert_eq!(
            keys.iter().filter(|k| k.starts_with(&pruned)).count(),
            2,
            "{keys:?}"
        );
    }
    let registry = tmp.path().join("registry");
    std::fs::copy(a.join("keys/registry"), &registry).unwrap();
    let copy = tmp.path().join("audit");
    let ran = verify_bucket(&s3, &copy, &registry, &broker);
    assert_eq!(ran.code, 0, "a pruned bucket verifies: {ran}");
    assert!(ran.out.contains("pruned, signed"), "{ran}");
}

#[test]
fn under_object_lock_no_version_of_the_stores_objects_can_be_deleted() {
    let broker = Broker::start();
    broker.create_topic("bkt", 2);
    let s3 = S3Server::start();
    s3.create_bucket("vigil-locked", true);
    let mut env = s3.env();
    env.push(("VIGIL_STORE__OBJECT_LOCK_DAYS".into(), "2".into()));
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let srv = serve_on_bucket(&broker, &a, "g-lock", &env, "s3://vigil-locked/p");
    produce(&broker.producer(), "bkt", &records(0, 60, 2));
    wait_bkt_stored(&srv, &a, 60, Duration::from_secs(60));
    let (clean, log) = srv.stop();
    assert!(clean, "stops cleanly: {log}");

    // Every version of every object, as AWS's own client sees it: its lock, how many days it
    // has left, and what deleting that version (not merely hiding it) answers.
    let out = s3.boto3(
        r#"
import datetime, json, botocore
now = datetime.datetime.now(datetime.timezone.utc)
rows = []
for v in S3.list_object_versions(Bucket='vigil-locked', Prefix='p/').get('Versions', []):
    h = S3.head_object(Bucket='vigil-locked', Key=v['Key'], VersionId=v['VersionId'])
    left = (h['ObjectLockRetainUntilDate'] - now).total_seconds() / 86400
    try:
        S3.delete_object(Bucket='vigil-locked', Key=v['Key'], VersionId=v['VersionId'])
        deleted = 'deleted'
    except botocore.exceptions.ClientError as e:
        deleted = e.response['Error']['Code']
    rows.append([v['Key'], h.get('ObjectLockMode'), left, deleted])
print(json.dumps(rows))
"#,
    );
    let rows: Vec<(String, Option<String>, f64, String)> = serde_json::from_str(&out).unwrap();
    let has = |p: &str| rows.iter().any(|r| r.0.starts_with(p));
    assert!(has("p/events/topic=bkt/"), "{rows:?}");
    assert!(has("p/checkpoints/"), "{rows:?}");
    assert!(has("p/keys/registry"), "{rows:?}");
    for (key, mode, left, deleted) in &rows {
        assert_eq!(mode.as_deref(), Some("COMPLIANCE"), "{key}");
        assert!((2.0..2.2).contains(left), "{key}: {left} days left");
        assert_eq!(deleted, "AccessDenied", "{key}");
    }
}

#[test]
fn a_create_only_put_takes_the_same_bytes_again_and_refuses_other_bytes() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, false);
    let client = s3.client(URL);
    let dir = Path::new("/data");
    let file = dir.join("events/topic=t/partition=0/x.parquet");
    client.put(dir, &file, b"one".to_vec(), true).unwrap();
    // The same write again (retried after a crash before the local rename): fine.
    client.put(dir, &file, b"one".to_vec(), true).unwrap();
    // Other bytes under the name (another writer got there first): a conflict, nothing replaced.
    let err = client.put(dir, &file, b"two".to_vec(), true).unwrap_err();
    assert!(matches!(err, vigil_store::StoreError::Conflict(_)), "{err}");
    assert!(!vigil_store::is_retryable(&err));
    let err = client.put(dir, &file, b"one!".to_vec(), true).unwrap_err();
    assert!(matches!(err, vigil_store::StoreError::Conflict(_)), "{err}");
    let copy = tempfile::tempdir().unwrap();
    client.pull_for_reading(copy.path()).unwrap();
    assert_eq!(
        std::fs::read(copy.path().join("events/topic=t/partition=0/x.parquet")).unwrap(),
        b"one"
    );
}

/// Wait until exactly `n` records of `bkt` are stored under `dir` (the serve log in the
/// failure); the support's `wait_stored` counts every topic, at least.
fn wait_bkt_stored(srv: &Serve, dir: &Path, n: i64, timeout: Duration) {
    let start = std::time::Instant::now();
    loop {
        let stored = stored_per_partition(dir, "bkt").values().sum::<i64>();
        if stored == n {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{stored} of {n} records stored after {timeout:?}; serve's log:\n{}",
            srv.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_store_in_a_bucket_is_compacted_by_its_writer_and_another_copy_carries_on_from_it() {
    let broker = Broker::start();
    broker.create_topic("bkt", 2);
    broker.create_topic("vigil.checkpoints", 1);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, false);
    let mut env = s3.env();
    env.push(("VIGIL_STORE__MAX_BATCH_EVENTS".into(), "25".into()));
    let tmp = tempfile::tempdir().unwrap();
    let (a, c) = (tmp.path().join("a"), tmp.path().join("c"));
    let producer = broker.producer();
    let event_files = |s3: &S3Server| {
        s3.keys(BUCKET, "prod/events/topic=bkt/")
            .into_iter()
            .filter(|k| k.ends_with(".parquet"))
            .count()
    };

    // Small files: 25 records each.
    let srv = serve_on_bucket(&broker, &a, "g-cmp", &env, URL);
    produce(&producer, "bkt", &records(0, 300, 2));
    wait_bkt_stored(&srv, &a, 300, Duration::from_secs(60));
    let (clean, log) = srv.stop();
    assert!(clean, "{log}");
    let before = event_files(&s3);
    assert!(before >= 12, "{before} files");
    // Another machine's working copy, made before the compaction (its own instance).
    copy_dir(&a, &c);
    std::fs::remove_file(c.join("instance-id")).unwrap();

    // The writer compacts, in its directory and in the bucket.
    let ran = vigil_s3(
        &s3,
        &["--store", URL, "compact", "--data-dir", a.to_str().unwrap()],
    );
    assert!(ran.ok(), "{ran}");
    assert!(ran.stdout_text().contains("bkt/0: 150 records"), "{ran}");
    assert_eq!(event_files(&s3), 2, "one file per log in the bucket");
    let bucket = s3.client(URL);
    for p in 0..2 {
        let head = bucket.get_head("bkt", p).unwrap().unwrap().head;
        let file = head.file.clone().unwrap();
        assert!(
            s3.keys(BUCKET, "prod/").contains(&format!("prod/{file}")),
            "the head names the compacted file: {head:?}"
        );
    }
    let registry = tmp.path().join("registry");
    std::fs::copy(a.join("keys/registry"), &registry).unwrap();
    let ran = verify_bucket(&s3, &tmp.path().join("audit"), &registry, &broker);
    assert_eq!(ran.code, 0, "{}{}", ran.stdout_text(), ran.stderr);

    // The other copy still holds the small files: its writer takes them for compacted (a
    // file of the bucket spans each), drops them, and carries on.
    let srv = serve_on_bucket(&broker, &c, "g-cmp-c", &env, URL);
    produce(&producer, "bkt", &records(300, 100, 2));
    wait_bkt_stored(&srv, &c, 400, Duration::from_secs(60));
    let (clean, log) = srv.stop();
    assert!(clean && !log.contains("disagree"), "{log}");
    let ran = verify_bucket(&s3, &tmp.path().join("audit"), &registry, &broker);
    assert_eq!(ran.code, 0, "{}{}", ran.stdout_text(), ran.stderr);
    assert_exactly_once_in_bucket(&s3, &tmp.path().join("q"), 400);
}
