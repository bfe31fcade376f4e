//! Kafka to hash-chained Parquet against the real Tansu broker: every record stored exactly
//! once with correct chains and mapped columns; hostile records in both the store and the
//! dead-letter topic with their reason; a restart stores nothing twice.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;

/// (text, count) rows of a `SELECT x, count(*) … GROUP BY` query (one result batch).
fn counts_by(dir: &std::path::Path, q: &str) -> Vec<(String, i64)> {
    let b = sql(dir, q);
    (0..b[0].num_rows())
        .map(|i| {
            (
                b[0].column(0).as_string::<i32>().value(i).to_owned(),
                b[0].column(1).as_primitive::<Int64Type>().value(i),
            )
        })
        .collect()
}

fn count(dir: &std::path::Path, q: &str) -> i64 {
    let b = sql(dir, q);
    b[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[test]
fn every_record_stored_exactly_once_with_chains_columns_and_dead_letters() {
    let broker = Broker::start();
    broker.create_topic("audit", 3);
    broker.create_topic("audit.dlq", 1);
    broker.create_topic("vigil.checkpoints", 1);
    let opa: Vec<String> = data_text("opa/opa_decision_logs.jsonl")
        .lines()
        .map(str::to_owned)
        .collect();
    let hubble: Vec<String> = data_text("hubble/hubble_flows.jsonl")
        .lines()
        .map(str::to_owned)
        .collect();
    let k8s = data_text("k8s-audit-falco/trace_files/some-user_creates_namespace_foo.json")
        .trim()
        .to_owned();

    // 1 500 good records over 3 partitions, each OPA decision with its own id, and 5 hostile ones.
    let mut recs = Vec::new();
    for i in 0..1500usize {
        let value = match i % 3 {
            0 => opa[1].replace(
                "1df154b5-658a-47bf-ac18-be52998605da",
                &format!("opa-{i:05}"),
            ),
            1 => hubble[i % 2].clone(),
            _ => k8s.clone(),
        };
        recs.push(Rec {
            partition: (i % 3) as i32,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(value.into_bytes()),
            headers: vec![("seq".into(), i.to_string().into_bytes())],
        });
    }
    let hostile: Vec<(i32, Option<Vec<u8>>, &str)> = vec![
        (0, Some(b"{not json".to_vec()), "syntax"),
        (1, Some(vec![b'{', 0xff, b'}']), "invalid_utf8"),
        (2, Some(Vec::new()), "empty"),
        (0, None, "empty"),
        (1, Some(br#"{"kind":"Event","verb":7}"#.to_vec()), "shape"),
    ];
    for (p, v, _) in &hostile {
        recs.push(Rec {
            partition: *p,
            key: Some(b"bad".to_vec()),
            value: v.clone(),
            headers: vec![("why".into(), b"hostile".to_vec())],
        });
    }
    let total = recs.len() as u64;
    produce(&broker.producer(), "audit", &recs);

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("store");
    // Ingest alone: the sample's denials would raise alerts, whose records in Vigil's own log
    // (and its anchors) are checked in `alert_lifecycle.rs`, not counted here.
    let s = serve(
        &broker,
        "audit",
        &data_dir,
        "vigil-e2e",
        &[("VIGIL_DETECT__ENABLED", "false")],
        None,
    );
    wait_stored(&[&s], &data_dir, total, Duration::from_secs(90));
    let log_path = s.log.clone();
    assert!(s.terminate(), "vigil serve exits 0 on SIGTERM");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let signed: usize = log
        .split("checkpoints_signed=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the final log line counts signed checkpoints");

    // Exactly once, chains intact.
    let positions = stored_positions(&data_dir);
    let records: BTreeSet<(i32, i64)> = positions.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(records.len() as u64, total);
    assert_eq!(
        positions.len() as u64,
        total,
        "one row per record (no arrays here), none twice"
    );
    let store = vigil_store::Store::open(&data_dir, Default::default()).unwrap();
    let report = vigil_store::check_chain(&store).unwrap();
    assert!(report.ok(), "{:?}", report.problems());
    assert_eq!(
        report.partitions.iter().map(|p| p.records).sum::<u64>(),
        total
    );
    assert!(report.partitions.iter().all(|p| p.gaps.is_empty()));

    // Every partition log ends in a signed checkpoint of its whole tree, in the store and in
    // the anchor topic.
    use vigil_store::checkpoint::{Checkpointer, NoteVerdict, Registry, list_notes, verify_note};
    let keys = Registry::parse(
        &std::fs::read_to_string(vigil_store::layout::registry(&data_dir)).unwrap(),
    )
    .unwrap();
    for p in &report.partitions {
        let dir = Checkpointer::log_dir(
            &vigil_store::layout::checkpoints(&data_dir),
            &p.topic,
            p.partition,
        )
        .unwrap();
        let notes = list_notes(&dir).unwrap();
        let newest = std::fs::read(&notes.last().expect("a checkpoint").1).unwrap();
        let NoteVerdict::Valid(cp) = verify_note(&newest, &keys) else {
            panic!("newest checkpoint of {} does not verify", p.partition)
        };
        assert_eq!((cp.size, cp.root), (p.tree_size, p.merkle_root));
        assert_eq!(cp.size, p.records);
    }
    let anchors = broker.consume("vigil.checkpoints", signed, Duration::from_secs(30));
    assert_eq!(anchors.len(), signed, "every checkpoint is anchored");
    let mut origins = BTreeSet::new();
    for m in &anchors {
        let NoteVerdict::Valid(cp) = verify_note(m.value.as_deref().unwrap(), &keys) else {
            panic!("an anchored checkpoint does not verify")
        };
        assert_eq!(m.key.as_deref(), Some(cp.origin.as_bytes()));
        origins.insert(cp.origin);
    }
    assert_eq!(origins.len(), 3, "one log per partition");
    // `vigil verify` reads the same anchors from Kafka: with pinned keys, valid — and every
    // stored event column is what its record's bytes decode to (hostile records included).
    let keys_file = dir.path().join("pinned.keys");
    std::fs::write(&keys_file, keys.format()).unwrap();
    let out = vigil_command()
        .args(["verify", "--data-dir"])
        .arg(&data_dir)
        .arg("--keys")
        .arg(&keys_file)
        .args(["--anchor-kafka", &broker.addr, "--decoded"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Mapped columns, through SQL.
    assert_eq!(count(&data_dir, "SELECT count(*) FROM events"), 1500);
    assert_eq!(
        count(&data_dir, "SELECT count(*) FROM rejected"),
        hostile.len() as i64
    );
    assert_eq!(
        count(
            &data_dir,
            "SELECT count(*) FROM events WHERE source_format = 'opa' AND decision = 'deny' AND caller_ip = '10.244.2.10' AND callee_port = 14001 AND resource = '/books-bought'"
        ),
        500
    );
    assert_eq!(
        count(
            &data_dir,
            "SELECT count(DISTINCT event_id) FROM events WHERE source_format = 'opa'"
        ),
        500
    );
    assert_eq!(
        count(
            &data_dir,
            "SELECT count(*) FROM events WHERE source_format = 'hubble' AND decision = 'deny'"
        ),
        500
    );
    assert_eq!(
        count(
            &data_dir,
            "SELECT count(*) FROM events WHERE source_format = 'k8s_audit' AND caller_principal = 'some-user' AND action = 'create'"
        ),
        500
    );
    let kinds = counts_by(
        &data_dir,
        "SELECT store_error_kind, count(*) FROM rejected GROUP BY store_error_kind ORDER BY 1",
    );
    assert_eq!(
        kinds,
        vec![
            ("empty".into(), 2),
            ("invalid_utf8".into(), 1),
            ("shape".into(), 1),
            ("syntax".into(), 1)
        ]
    );
    let b = sql(
        &data_dir,
        "SELECT kafka_tombstone FROM rejected WHERE kafka_tombstone",
    );
    assert_eq!(
        b.iter().map(|b| b.num_rows()).sum::<usize>(),
        1,
        "the null value is kept as a tombstone"
    );
    let b = sql(
        &data_dir,
        "SELECT raw, kafka_key FROM rejected WHERE store_error_kind = 'invalid_utf8'",
    );
    assert_eq!(
        b[0].column(0).as_binary::<i32>().value(0),
        &[b'{', 0xff, b'}'],
        "raw bytes kept exactly"
    );

    // Dead letters: every hostile record, with its reason and origin in headers.
    let dlq = broker.consume("audit.dlq", hostile.len(), Duration::from_secs(30));
    assert_eq!(dlq.len(), hostile.len());
    let mut dlq_kinds: Vec<String> = dlq
        .iter()
        .map(|m| m.header("vigil.error_kind").unwrap())
        .collect();
    dlq_kinds.sort();
    assert_eq!(
        dlq_kinds,
        ["empty", "empty", "invalid_utf8", "shape", "syntax"]
    );
    for m in &dlq {
        assert_eq!(m.header("vigil.source_topic").as_deref(), Some("audit"));
        assert!(
            m.header("vigil.source_offset")
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
        assert_eq!(
            m.header("why").as_deref(),
            Some("hostile"),
            "original headers kept"
        );
        assert!(!m.header("vigil.error").unwrap().is_empty());
        assert_eq!(m.key.as_deref(), Some(&b"bad"[..]));
    }
    assert!(
        dlq.iter().any(|m| m.value.is_none()),
        "the tombstone stays a tombstone"
    );

    // A restart with the same group and store stores nothing twice, and new records continue
    // the chain.
    let more: Vec<Rec> = (0..30)
        .map(|i| Rec {
            partition: i % 3,
            key: None,
            value: Some(opa[2].clone().into_bytes()),
            headers: vec![],
        })
        .collect();
    produce(&broker.producer(), "audit", &more);
    let s = serve(&broker, "audit", &data_dir, "vigil-e2e", &[], None);
    wait_stored(&[&s], &data_dir, total + 30, Duration::from_secs(60));
    assert!(s.terminate());
    assert_eq!(stored_records(&data_dir), total + 30);
    let report = vigil_store::check_chain(&store).unwrap();
    assert!(report.ok(), "{:?}", report.problems());
    assert_eq!(stored_positions(&data_dir).len() as u64, total + 30);
}

#[test]
fn a_fresh_group_on_an_existing_store_resumes_from_the_store_not_from_kafka() {
    // The group's committed offsets are gone (a new group id): the store's own record of
    // where each partition stands is what prevents storing anything twice.
    let broker = Broker::start();
    broker.create_topic("flows", 2);
    let line = data_text("hubble/hubble_flows.jsonl")
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let recs: Vec<Rec> = (0..400)
        .map(|i| Rec {
            partition: i % 2,
            key: None,
            value: Some(line.clone().into_bytes()),
            headers: vec![],
        })
        .collect();
    produce(&broker.producer(), "flows", &recs);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("store");
    let s = serve(&broker, "flows", &data_dir, "group-a", &[], None);
    wait_stored(&[&s], &data_dir, 400, Duration::from_secs(60));
    assert!(s.terminate());
    let s = serve(&broker, "flows", &data_dir, "group-b", &[], None);
    // One more record on each partition, produced after the 400: once both are stored, group-b
    // has read each partition past everything before them, so anything it (wrongly) stored
    // again is stored too.
    let markers: Vec<Rec> = (0..2)
        .map(|p| Rec {
            partition: p,
            key: Some(b"marker".to_vec()),
            value: Some(line.clone().into_bytes()),
            headers: vec![],
        })
        .collect();
    produce(&broker.producer(), "flows", &markers);
    wait_stored(&[&s], &data_dir, 402, Duration::from_secs(60));
    assert!(s.terminate());
    assert_eq!(stored_records(&data_dir), 402);
    let positions = stored_positions(&data_dir);
    assert_eq!(positions.len(), 402, "every offset once");
    for p in 0..2 {
        let offsets: Vec<i64> = positions
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, o, _)| *o)
            .collect();
        assert_eq!(offsets, (0..201).collect::<Vec<i64>>(), "partition {p}");
    }
}

#[test]
fn a_regex_subscription_takes_every_matching_topic_and_dead_letters_do_not_loop() {
    let broker = Broker::start();
    for (t, p) in [
        ("audit-a", 2),
        ("audit-b", 1),
        ("other", 1),
        ("audit-a.dlq", 1),
        ("audit-b.dlq", 1),
    ] {
        broker.create_topic(t, p);
    }
    let line = data_text("opa/opa_decision_logs.jsonl")
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let good = |n: usize, partitions: i32| -> Vec<Rec> {
        (0..n)
            .map(|i| Rec {
                partition: i as i32 % partitions,
                key: None,
                value: Some(line.clone().into_bytes()),
                headers: vec![],
            })
            .collect()
    };
    let mut a = good(20, 2);
    a.push(Rec {
        partition: 1,
        key: None,
        value: Some(b"{broken".to_vec()),
        headers: vec![],
    });
    produce(&broker.producer(), "audit-a", &a);
    produce(&broker.producer(), "audit-b", &good(10, 1));
    produce(&broker.producer(), "other", &good(5, 1));

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("store");
    let s = serve(&broker, "^audit-.*", &data_dir, "vigil-regex", &[], None);
    // 21 + 10 from the two topics, and the dead letter of the broken record, which the regex
    // also matches: stored (rejected again), but not copied to `audit-a.dlq.dlq`.
    wait_stored(&[&s], &data_dir, 32, Duration::from_secs(60));
    let log_path = s.log.clone();
    assert!(s.terminate());
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("dlq_skipped=1"), "{log}");
    let per_topic = counts_by(
        &data_dir,
        "SELECT kafka_topic, count(*) FROM stored GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        per_topic,
        vec![
            ("audit-a".into(), 21),
            ("audit-a.dlq".into(), 1),
            ("audit-b".into(), 10)
        ]
    );
    let store = vigil_store::Store::open(&data_dir, Default::default()).unwrap();
    let report = vigil_store::check_chain(&store).unwrap();
    assert!(report.ok(), "{:?}", report.problems());
}

#[test]
fn kafka_security_properties_reach_librdkafka() {
    // TLS against the real broker cannot be tested here: Tansu 0.6 refuses `--cert` together
    // with `--key` and its listener stays plaintext. What Vigil owns is the pass-through: a
    // TLS setting it hands to librdkafka is acted on (a missing CA file is refused up front,
    // naming the property), not dropped.
    let broker = Broker::start();
    broker.create_topic("audit", 1);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        "[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"/nonexistent/vigil-ca.pem\"\n",
    )
    .unwrap();
    let data_dir = dir.path().join("store");
    let mut s = serve(&broker, "audit", &data_dir, "vigil-tls", &[], Some(&config));
    let status = wait_for("vigil serve to refuse", Duration::from_secs(30), || {
        s.child.try_wait().unwrap()
    });
    let log = s.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("ssl.ca.location"), "{log}");
}
