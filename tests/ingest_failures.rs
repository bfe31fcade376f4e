//! Failure tests against the real broker, bounded in count and time:
//! - kill -9 of `vigil serve` at random moments while it ingests 200 000 records, at least ten
//!   times, then a clean run: every record stored exactly once and the chain intact;
//! - two `vigil serve` processes in one consumer group sharing partitions, one killed
//!   mid-stream: still exactly once.
//!
//! Tansu 0.6.0 never evicts a dead group member (its heartbeat-less session never expires, a
//! rebalance does not drop it, and static membership is not supported), so a killed process's
//! partitions stay assigned to it for the life of the group. The tests therefore restart under
//! a new group id where a real Kafka cluster would reassign within the group. That takes the
//! group's committed offsets out of the picture entirely: exactly-once rests on the store's own
//! record of each partition's head, which is what these tests are about.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;

const OPA: &str = r#"{"decision_id":"ID","path":"envoy/authz/allow","result":false,"timestamp":"2026-11-22T10:00:00Z","input":{"attributes":{"source":{"address":{"socketAddress":{"address":"10.0.0.1","portValue":4000}},"principal":"spiffe://td/ns/a/sa/b"},"destination":{"principal":"spiffe://td/ns/c/sa/d"},"request":{"http":{"method":"GET","path":"/p"}}}}}"#;

fn records(n: usize, partitions: i32) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            partition: (i as i32) % partitions,
            key: Some(i.to_string().into_bytes()),
            value: Some(OPA.replace("ID", &format!("d{i}")).into_bytes()),
            headers: vec![],
        })
        .collect()
}

/// Exactly once: per partition, the stored offsets are exactly 0..produced, each once.
fn assert_exactly_once(data_dir: &std::path::Path, produced_per_partition: &BTreeMap<i32, i64>) {
    let positions = stored_positions(data_dir);
    let mut per: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o, _) in positions {
        per.entry(p).or_default().push(o);
    }
    for (p, n) in produced_per_partition {
        let offs = per.remove(p).unwrap_or_default();
        assert_eq!(offs.len() as i64, *n, "partition {p}: rows");
        assert!(
            offs.iter().copied().eq(0..*n),
            "partition {p}: offsets are not exactly 0..{n}"
        );
    }
    assert!(per.is_empty(), "rows for unexpected partitions");
    let store = vigil_store::Store::open(data_dir, Default::default()).unwrap();
    let report = vigil_store::check_chain(&store).unwrap();
    assert!(report.ok(), "{:?}", report.problems());
    // Signed checkpoints survive the kills too: every one verifies against the rebuilt trees
    // and links to the one before, and the newest covers the whole log (a kill between a
    // file and its checkpoint is caught up on the next assignment).
    use vigil_store::audit::{Trusted, Verdict, audit};
    use vigil_store::checkpoint::{KEYS_DIR, REGISTRY_FILE, Registry};
    let keys = Registry::parse(
        &std::fs::read_to_string(data_dir.join(KEYS_DIR).join(REGISTRY_FILE)).unwrap(),
    )
    .unwrap();
    let audit = audit(
        data_dir,
        &Trusted {
            keys: Some(keys),
            checkpoints: Vec::new(),
        },
        None,
    )
    .unwrap();
    let bad: Vec<_> = audit
        .findings
        .iter()
        .filter(|f| f.verdict == Verdict::Tampered || f.what.contains("not signed yet"))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
#[ignore = "soak: run with scripts/soak.sh (see README, Development)"]
fn kill_nine_at_random_moments_stores_every_record_exactly_once() {
    const N: usize = 200_000;
    const PARTITIONS: i32 = 4;
    const KILLS: usize = 10;
    let broker = Broker::start();
    broker.create_topic("audit", PARTITIONS);
    let all = records(N, PARTITIONS);
    let producer = broker.producer();
    let produced: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, (N as i64) / PARTITIONS as i64))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("store");
    let mut rng = rand::rng();
    let deadline = Instant::now() + Duration::from_secs(240);
    // Small batches so that files are sealed (and offsets committed) often between kills.
    let env = [("VIGIL_STORE__MAX_BATCH_EVENTS", "2000")];
    let mut kills = 0;
    let mut stored_at_kill = Vec::new();
    // Each round feeds a fresh slice of the records while the process runs, then kills it
    // at a random moment, so every kill lands while it is ingesting.
    let slice = N / KILLS;
    while kills < KILLS {
        assert!(Instant::now() < deadline, "crash loop took too long");
        let s = serve(
            &broker,
            "audit",
            &data_dir,
            &format!("vigil-crash-{kills}"),
            &env,
            None,
        );
        wait_for("assignment", Duration::from_secs(30), || {
            s.log_text().contains("partition assigned").then_some(())
        });
        produce(&producer, "audit", &all[kills * slice..(kills + 1) * slice]);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        s.kill9();
        kills += 1;
        stored_at_kill.push(stored_records(&data_dir));
    }
    // The kills landed while ingesting, not after it finished.
    let produced_before: Vec<u64> = (1..=KILLS).map(|k| (k * slice) as u64).collect();
    let mid_ingest = stored_at_kill
        .iter()
        .zip(&produced_before)
        .filter(|(s, p)| s < p)
        .count();
    assert!(
        mid_ingest >= KILLS / 2,
        "kills mid-ingest: {mid_ingest}; stored {stored_at_kill:?} of {produced_before:?}"
    );
    let s = serve(&broker, "audit", &data_dir, "vigil-crash-final", &env, None);
    wait_stored(&[&s], &data_dir, N as u64, Duration::from_secs(180));
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.terminate());
    eprintln!("records stored at each kill: {stored_at_kill:?}");
    assert_exactly_once(&data_dir, &produced);
}

#[test]
fn two_processes_in_one_group_one_killed_mid_stream() {
    const N: usize = 60_000;
    const PARTITIONS: i32 = 4;
    let broker = Broker::start();
    broker.create_topic("audit", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("store");
    // Checkpoints refreshed often: a process must stop refreshing the logs it gave up (a
    // refresh there would replace a note the new owner's checkpoints link to).
    let env = [
        ("VIGIL_STORE__MAX_BATCH_EVENTS", "2000"),
        ("VIGIL_CHECKPOINT__INTERVAL_MS", "200"),
    ];
    let producer = broker.producer();
    let recs = records(N, PARTITIONS);
    let third = N / 3;

    // A alone, mid-stream.
    let a = serve(&broker, "audit", &data_dir, "vigil-pair", &env, None);
    produce(&producer, "audit", &recs[..third]);
    wait_for("A stores some", Duration::from_secs(60), || {
        (stored_records(&data_dir) > 0).then_some(())
    });
    // B joins: A flushes and commits the partitions it gives up; B resumes them from the
    // store's heads. From here the two share the partitions.
    let b = serve(&broker, "audit", &data_dir, "vigil-pair", &env, None);
    wait_for("the rebalance", Duration::from_secs(60), || {
        (a.log_text().contains("partitions revoked") && b.log_text().contains("partition assigned"))
            .then_some(())
    });
    produce(&producer, "audit", &recs[third..2 * third]);
    std::thread::sleep(Duration::from_millis(1500));
    // A dies mid-stream, with batches open and perhaps a file half written.
    a.kill9();
    produce(&producer, "audit", &recs[2 * third..]);
    // B finishes its own partitions…
    let b_parts: Vec<i32> = (0..PARTITIONS)
        .filter(|p| {
            b.log_text()
                .contains(&format!("partition assigned topic=audit partition={p} "))
        })
        .collect();
    assert!(
        !b_parts.is_empty() && b_parts.len() < PARTITIONS as usize,
        "B shares the partitions: {b_parts:?}"
    );
    wait_for("B's partitions complete", Duration::from_secs(120), || {
        let per = stored_per_partition(&data_dir, "audit");
        b_parts
            .iter()
            .all(|p| per.get(p).copied().unwrap_or(0) == (N as i64) / PARTITIONS as i64)
            .then_some(())
    });
    assert!(b.terminate());
    // …and a replacement takes over everything from where the store says each partition is.
    let c = serve(
        &broker,
        "audit",
        &data_dir,
        "vigil-pair-replacement",
        &env,
        None,
    );
    wait_stored(&[&c], &data_dir, N as u64, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.terminate());
    let produced: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, (N as i64) / PARTITIONS as i64))
        .collect();
    assert_exactly_once(&data_dir, &produced);
}
