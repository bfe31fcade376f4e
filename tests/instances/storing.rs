//! Storing across instances: partitions split between two, a writer fenced by its log's head,
//! and the bucket's compare-and-swap under both the head and the lease.

use super::*;

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
    let local_b: std::collections::BTreeSet<String> = files_under(&b.join("events/topic=bkt"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| format!("prod/{}", p.strip_prefix(&b).unwrap().display()))
        .collect();
    assert!(
        local_b.is_subset(&events),
        "B's files are all in the bucket: {local_b:?} {events:?}"
    );
    assert_bucket_verifies_with_each_record_once(&s3, &broker, tmp.path(), &a, 500);
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
