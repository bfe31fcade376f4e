//! End-to-end ingest throughput against the real Tansu broker, with a reference in the same run:
//!
//!   (a) a bare rdkafka consumer reading the topic (tuned: fetch.wait.max.ms = 10), and
//!   (b) `vigil serve` consuming, decoding, chaining and writing durable Parquet,
//!   (c) the same into a store kept in an S3-compatible bucket (moto in server mode on
//!       loopback: every file put and named by its log's head before its local name), then
//!       (b) once more as (c)'s reference, measured right after it,
//!
//! printing the rates and their ratios; then one SQL count over (b)'s directory against the
//! same over the bucket (`vigil --store s3://… query`: a new local copy, then the copy kept up
//! to date). `cargo bench --bench ingest` (release build).
//! Environment: VIGIL_BENCH_EVENTS (default 1 000 000), VIGIL_BENCH_PARTITIONS (default 4).
//! Both rates are measured from the moment the consumer is assigned its partitions to the
//! moment the last record was read (a) or is durable in the store (b).

#[path = "support/opa.rs"]
mod opa;
#[path = "support/report.rs"]
mod report;
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)] // each bench uses part of the tests' support
mod test_support;
use opa::opa_event;
use report::{Target, figure};

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use test_support::*;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks harness-less benches to list tests: there are none.
    }
    let n = env_or("VIGIL_BENCH_EVENTS", 1_000_000usize);
    let partitions = env_or("VIGIL_BENCH_PARTITIONS", 4usize) as i32;
    let broker = Broker::start();
    broker.create_topic("bench", partitions);

    let t = Instant::now();
    let producer = broker.producer();
    let mut bytes = 0usize;
    for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
        let recs: Vec<Rec> = chunk
            .iter()
            .map(|&i| {
                let v = opa_event(i).into_bytes();
                bytes += v.len();
                Rec {
                    partition: (i % partitions as usize) as i32,
                    key: None,
                    value: Some(v),
                    headers: vec![],
                }
            })
            .collect();
        produce(&producer, "bench", &recs);
    }
    println!(
        "produced {n} events ({:.0} B each) to {partitions} partitions in {:.1} s",
        bytes as f64 / n as f64,
        t.elapsed().as_secs_f64()
    );

    // (a) A bare consumer: read every record, touch its payload, nothing else.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("queued.max.messages.kbytes", "65536")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset("bench", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let start = Instant::now();
    let (mut got, mut payload_bytes) = (0usize, 0usize);
    while got < n && start.elapsed() < Duration::from_secs(600) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            payload_bytes += m.payload().map_or(0, <[u8]>::len);
            got += 1;
        }
    }
    let bare_secs = start.elapsed().as_secs_f64();
    assert_eq!(got, n, "the bare consumer did not read everything");
    drop(consumer);
    let bare = n as f64 / bare_secs;
    println!(
        "(a) bare rdkafka consumer: {n} records in {bare_secs:.2} s = {bare:.0} records/s ({:.0} MB/s)",
        payload_bytes as f64 / bare_secs / 1e6
    );

    // (b) vigil serve to durable Parquet.
    let dir = tempfile::tempdir().unwrap();
    let into_dir = |name: &str| {
        let data_dir = dir.path().join(name);
        let s = serve(
            &broker,
            "bench",
            &data_dir,
            &format!("bench-vigil-{name}"),
            &[("VIGIL_STORE__MAX_BATCH_WAIT_MS", "1000")],
            None,
        );
        wait_for("assignment", Duration::from_secs(60), || {
            s.log_text().contains("partition assigned").then_some(())
        });
        let start = Instant::now();
        wait_stored(&[&s], &data_dir, n as u64, Duration::from_secs(900));
        let secs = start.elapsed().as_secs_f64();
        assert!(s.terminate());
        (data_dir, secs)
    };
    let (data_dir, vigil_secs) = into_dir("store");
    let vigil = n as f64 / vigil_secs;
    let on_disk: u64 = walk_bytes(&data_dir);
    println!(
        "(b) vigil serve → durable Parquet: {n} records in {vigil_secs:.2} s = {vigil:.0} records/s"
    );
    println!("ratio (b)/(a): {:.0}%", 100.0 * vigil / bare);

    // (c) vigil serve into a bucket.
    let s3 = S3Server::start();
    s3.create_bucket("vigil-bench", false);
    let url = "s3://vigil-bench/ingest";
    let bdir = dir.path().join("bucket-store");
    let mut env: Vec<(String, String)> = s3.env();
    env.push(("VIGIL_STORE__MAX_BATCH_WAIT_MS".into(), "1000".into()));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = serve_with(
        &broker,
        "bench",
        &bdir,
        "bench-vigil-bucket",
        &env_refs,
        None,
        &["--store", url],
    );
    wait_for("assignment", Duration::from_secs(60), || {
        s.log_text().contains("partition assigned").then_some(())
    });
    let start = Instant::now();
    wait_stored(&[&s], &bdir, n as u64, Duration::from_secs(900));
    let bucket_secs = start.elapsed().as_secs_f64();
    assert!(s.terminate());
    let into_bucket = n as f64 / bucket_secs;
    println!(
        "(c) vigil serve → Parquet in the bucket: {n} records in {bucket_secs:.2} s = {into_bucket:.0} records/s"
    );
    // (b) again, right after (c): the bucket's reference from the same moment of the run
    // (the first runs of a bench differ by more than the two stores do).
    let (_, again_secs) = into_dir("store-again");
    let vigil_again = n as f64 / again_secs;
    println!(
        "(b') vigil serve → durable Parquet, again: {n} records in {again_secs:.2} s = {vigil_again:.0} records/s"
    );
    println!("ratio (c)/(b'): {:.0}%", 100.0 * into_bucket / vigil_again);

    // One count over the directory, then over the bucket (a new copy, then kept up to date).
    let sql = "SELECT count(*) AS n FROM events WHERE kafka_topic = 'bench'";
    let timed = |args: &[&str]| {
        let mut cmd = vigil_command();
        cmd.args(args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let t = Instant::now();
        let ran = run(&mut cmd);
        assert!(ran.ok(), "{ran}");
        assert_eq!(ran.stdout_text().trim(), format!("n\n{n}"));
        t.elapsed().as_secs_f64()
    };
    let local_dir = data_dir.to_str().unwrap().to_owned();
    let copy = dir.path().join("reader-copy");
    let copy_dir = copy.to_str().unwrap().to_owned();
    let over_dir = timed(&["query", "--data-dir", &local_dir, "--format", "csv", sql]);
    let over_new_copy = timed(&[
        "--store",
        url,
        "query",
        "--data-dir",
        &copy_dir,
        "--format",
        "csv",
        sql,
    ]);
    let over_kept_copy = timed(&[
        "--store",
        url,
        "query",
        "--data-dir",
        &copy_dir,
        "--format",
        "csv",
        sql,
    ]);
    println!(
        "query (count of {n}): over the directory {over_dir:.2} s; over the bucket {over_new_copy:.2} s with a new copy, {over_kept_copy:.2} s with the copy kept"
    );
    println!(
        "stored: {:.1} MB on disk for {:.1} MB of raw JSON ({:.0}%)",
        on_disk as f64 / 1e6,
        bytes as f64 / 1e6,
        100.0 * on_disk as f64 / bytes as f64
    );
    let what = format!("{n} OPA events, {partitions} partitions, real broker");
    figure(
        "ingest",
        &format!("vigil serve → durable Parquet ({what})"),
        vigil,
        "records/s",
        Target::AtLeast(300_000.0),
        Some(("bare rdkafka consumer", bare)),
    );
    figure(
        "ingest",
        "vigil serve / bare consumer",
        100.0 * vigil / bare,
        "%",
        Target::AtLeast(40.0),
        None,
    );
    figure(
        "ingest",
        &format!("vigil serve → Parquet in an S3 bucket, moto on loopback ({what})"),
        into_bucket,
        "records/s",
        Target::None,
        Some(("into a local directory, run right after", vigil_again)),
    );
    figure(
        "bucket",
        &format!(
            "vigil query, one count over {n} events in a bucket, the local copy kept (moto; the whole command)"
        ),
        over_kept_copy * 1e3,
        "ms",
        Target::None,
        Some(("over the directory", over_dir * 1e3)),
    );
    figure(
        "bucket",
        &format!(
            "vigil query, one count over {n} events in a bucket, a new local copy (moto; the whole command)"
        ),
        over_new_copy * 1e3,
        "ms",
        Target::None,
        Some(("over the directory", over_dir * 1e3)),
    );
    // Everything on disk (raw bytes kept, event columns, chain and Merkle columns, footers,
    // checkpoints, keys) per event, against the raw JSON it came from.
    figure(
        "storage",
        "bytes on disk per event (raw bytes + event columns + chain, zstd Parquet)",
        on_disk as f64 / n as f64,
        "B/event",
        Target::None,
        Some(("raw JSON", bytes as f64 / n as f64)),
    );
}

fn walk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                walk_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}
