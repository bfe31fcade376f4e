use super::*;
use crate::alerts::AlertLog;
use vigil_schemas::Decoder;
use vigil_store::{AUDIT_PARTITION, AUDIT_TOPIC};
use vigil_store::{PartitionBatch, RecordRef, WriteOptions};

/// Record `i` of log p/0.
fn rec(i: i64, v: &str) -> RecordRef<'_> {
    RecordRef {
        topic: "p",
        partition: 0,
        offset: i,
        timestamp_ms: None,
        key: None,
        value: Some(v.as_bytes()),
        headers: &[],
    }
}

fn cfg(dir: &std::path::Path) -> RunConfig {
    RunConfig {
        bucket: None,
        data_dir: dir.to_owned(),
        alert_flush_ms: 1000,
        state_interval_ms: 1000,
        outbox: None,
        signer: None,
        // These tests are about the loop, not event time: every log counts as idle at
        // once, so a piece is evaluated whole as it comes.
        time: crate::time::TimeConfig {
            idle_source_ns: -1,
            ..Default::default()
        },
        incident_window_ns: 1_800_000_000_000,
        max_state_bytes: crate::engine::DEFAULT_MAX_STATE_BYTES,
        silent_source_ns: 0,
        assigned: None,
        lease: None,
    }
}

#[test]
fn a_taken_over_partition_is_read_from_the_store_up_to_the_first_live_piece() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
    let opa = |i: i64| {
        format!(
            r#"{{"decision_id":"d{i}","result":true,"timestamp":"2026-11-22T10:00:{:02}Z","input":{{"method":"GET","path":"/"}}}}"#,
            i % 60
        )
    };
    // Another process stored records 0..10 of p/0; this one evaluated 0..5 before the
    // partition moved, and resumes at 10.
    let mut b = PartitionBatch::new("p", 0, Default::default(), 16);
    let mut early = None;
    for i in 0..10 {
        let v = opa(i);
        b.append(&rec(i, &v), &Decoder::default(), 0).unwrap();
        if i == 4 {
            early = b.cut().unwrap();
        }
    }
    store.write(&b.seal().unwrap().unwrap()).unwrap();
    let v = opa(10);
    b.append(&rec(10, &v), &Decoder::default(), 0).unwrap();
    let live = b.cut().unwrap().unwrap();
    assert_eq!(live.first_leaf_index, 10);

    let mut engine = Engine::new(Vec::new()).with_time(cfg(dir.path()).time);
    engine.observe(&early.unwrap(), 0).unwrap();
    assert_eq!(engine.position("p/0"), Some(5));
    let mut l = ThreadState::new(cfg(dir.path()), Default::default()).unwrap();
    l.live(&mut engine, &live).unwrap();
    // 5 before, 5 from the store, 1 live: each once.
    assert_eq!(engine.rows, 11);
    assert_eq!(engine.position("p/0"), Some(11));
}

fn denial_rule() -> Vec<Rule> {
    rules(1, false)
}

/// OPA denial `i` from 9.9.9.9 (second `i` of a minute).
fn denial(i: i64) -> String {
    format!(
        r#"{{"decision_id":"d{i}","result":false,"timestamp":"2026-11-22T10:00:0{i}Z","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"9.9.9.9","portValue":1}}}}}}}}}}}}"#
    )
}

/// `t.denials` at `version` (3 denials from one address in a minute), and `t.other` if
/// `other`.
fn rules(version: u32, other: bool) -> Vec<Rule> {
    let mut sources = vec![crate::rules::Source {
        name: "t.toml".into(),
        text: format!(
            r#"
id = "t.denials"
version = {version}
title = "denials"
severity = "high"
kind = "threshold"
filter = 'decision == "deny" and kind == "authz"'
group_by = ["caller_ip"]
count = 3
window = "1m"
suppress = "1h"
"#
        ),
        dir: None,
    }];
    if other {
        sources.push(crate::rules::Source {
            name: "o.toml".into(),
            text: r#"
id = "t.other"
version = 1
title = "errors"
severity = "low"
kind = "threshold"
filter = 'decision == "error"'
group_by = ["caller_ip"]
count = 5
window = "1m"
"#
            .into(),
            dir: None,
        });
    }
    let l = crate::rules::load(&sources, &Default::default());
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    l.rules.into_iter().map(|(r, _)| r).collect()
}

#[test]
fn a_reload_keeps_unchanged_rules_state_starts_new_ones_empty_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PartitionBatch::new("p", 0, Default::default(), 16);
    let mut feed = |l: &mut ThreadState, engine: &mut Engine, range: std::ops::Range<i64>| {
        for i in range {
            let v = denial(i);
            b.append(&rec(i, &v), &Decoder::default(), 0).unwrap();
        }
        l.observe(engine, &b.cut().unwrap().unwrap(), true).unwrap();
        l.flush(engine).unwrap();
    };
    let (mut engine, _, _) = restore(&cfg(dir.path()), rules(1, false)).unwrap();
    let mut l = ThreadState::new(cfg(dir.path()), Default::default()).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    l.reloads = Some(rx);
    let reloader = Reloader(tx);
    feed(&mut l, &mut engine, 0..2);

    // Asked for from another thread (as the API does), taken by the loop.
    let ask = |rules: Vec<Rule>, l: &mut ThreadState, engine: &mut Engine| {
        let r = reloader.clone();
        let asked = std::thread::spawn(move || r.reload(rules, "jwt:ana", Duration::from_secs(10)));
        while !asked.is_finished() {
            l.reloads(engine).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        asked.join().unwrap().unwrap()
    };
    let done = ask(rules(1, true), &mut l, &mut engine);
    assert_eq!(
        done,
        Reloaded {
            rules: vec!["t.denials".into(), "t.other".into()],
            fresh: vec!["t.other".into()],
            removed: vec![],
        }
    );
    // t.denials kept its two denials: the third fires.
    feed(&mut l, &mut engine, 2..3);
    assert_eq!(read_revisions(dir.path()).unwrap().len(), 1);

    // A new version starts empty; a rule left out is removed.
    let done = ask(rules(2, false), &mut l, &mut engine);
    assert_eq!(
        done,
        Reloaded {
            rules: vec!["t.denials".into()],
            fresh: vec!["t.denials".into()],
            removed: vec!["t.other".into()],
        }
    );
    feed(&mut l, &mut engine, 3..5);
    assert_eq!(
        read_revisions(dir.path()).unwrap().len(),
        1,
        "two denials after v2"
    );
    // Each event evaluated once across both reloads.
    assert_eq!(engine.position("p/0"), Some(5));
    assert_eq!(engine.position("vigil.audit/0"), Some(3));

    let reloads: Vec<_> = own_log(dir.path())
        .into_iter()
        .filter(|(_, action, _)| action == "rules.reload")
        .collect();
    let r = (
        "jwt:ana".to_owned(),
        "rules.reload".to_owned(),
        "allow".to_owned(),
    );
    assert_eq!(reloads, vec![r.clone(), r]);
}

/// Vigil's own log, decoded: (caller principal, action, decision) per record.
fn own_log(dir: &std::path::Path) -> Vec<(String, String, String)> {
    let store = Store::open_existing(dir).unwrap();
    let mut out = Vec::new();
    for p in vigil_store::read::LogReader::new(&store, AUDIT_TOPIC, AUDIT_PARTITION, 0).unwrap() {
        let p = p.unwrap();
        let rows = crate::filter::BatchRows::new(&p.batch);
        let col = |n: &str| crate::filter::field(n).unwrap().column;
        use crate::filter::Row;
        for i in 0..rows.len() {
            let r = rows.row(i);
            let s = |n: &str| r.str(col(n)).unwrap_or_default().to_owned();
            out.push((s("caller_principal"), s("action"), s("decision")));
        }
    }
    let report = vigil_store::check_chain(&store).unwrap();
    assert!(report.ok(), "{:?}", report.problems());
    out
}

#[test]
fn lifecycle_commands_through_the_queue_and_directly_are_revisions_and_own_log_records() {
    use crate::lifecycle::Action;
    let dir = tempfile::tempdir().unwrap();
    let mut b = PartitionBatch::new("p", 0, Default::default(), 16);
    for i in 0..3 {
        let v = denial(i);
        b.append(&rec(i, &v), &Decoder::default(), 0).unwrap();
    }
    let piece = b.cut().unwrap().unwrap();
    let (mut engine, _, _) = restore(&cfg(dir.path()), denial_rule()).unwrap();
    let mut l = ThreadState::new(cfg(dir.path()), Default::default()).unwrap();
    l.observe(&mut engine, &piece, true).unwrap();
    let fired = crate::alerts::latest(read_revisions(dir.path()).unwrap());
    assert_eq!(fired.len(), 1);
    let id = fired[0].alert_id.clone();

    let cmd = |action| Command {
        alert_id: id.clone(),
        action,
        by: "local:ana".into(),
        note: Some("looking into it".into()),
        at_ns: now_ns(),
    };
    // Queued (as the CLI does while serve runs), drained by the loop.
    let t = l.queue.submit(&cmd(Action::Acknowledge)).unwrap();
    let again = l.queue.submit(&cmd(Action::Acknowledge)).unwrap();
    std::thread::sleep(Duration::from_millis(110));
    l.commands(&mut engine).unwrap();
    let Reply::Applied { alert } = l.queue.wait(&t, Duration::from_secs(1)).unwrap() else {
        panic!("not applied")
    };
    assert_eq!((alert.revision, alert.status.as_str()), (2, "acknowledged"));
    let Reply::Refused { refusal } = l.queue.wait(&again, Duration::from_secs(1)).unwrap() else {
        panic!("applied twice")
    };
    assert!(
        refusal.to_string().contains("already acknowledged"),
        "{refusal}"
    );
    engine.save(&state_path(dir.path())).unwrap();
    drop(l);

    // Nobody holds the lock: applied directly (the state is left as it is).
    let reply = apply_direct(cfg(dir.path()), &cmd(Action::Resolve)).unwrap();
    let Reply::Applied { alert } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((alert.revision, alert.status.as_str()), (3, "resolved"));
    assert_eq!(alert.status_note.as_deref(), Some("looking into it"));
    let stored = crate::alerts::find(dir.path(), &id).unwrap().unwrap();
    assert_eq!(stored, *alert);
    // Someone holds it: refused with Locked, nothing applied.
    assert!(!lock_held(dir.path()));
    let held = lock(&cfg(dir.path())).unwrap();
    assert!(lock_held(dir.path()));
    let err = apply_direct(cfg(dir.path()), &cmd(Action::Resolve)).unwrap_err();
    assert!(matches!(err, DetectError::Locked(_)), "{err}");
    drop(held);
    assert!(!lock_held(dir.path()));

    // The next start takes the resolution from the alert log: the open alert is closed,
    // and the group's next denials are a new alert.
    let (mut engine, _, _) = restore(&cfg(dir.path()), denial_rule()).unwrap();
    for i in 3..6 {
        let v = denial(i);
        b.append(&rec(i, &v), &Decoder::default(), 0).unwrap();
    }
    engine
        .observe(&b.cut().unwrap().unwrap(), now_ns())
        .unwrap();
    let next = engine.take_pending();
    assert_eq!(next.len(), 1, "{next:#?}");
    assert_ne!(next[0].alert_id, id);
    assert_eq!((next[0].revision, next[0].status.as_str()), (1, "open"));

    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        own_log(dir.path()),
        vec![
            s(crate::lifecycle::SYSTEM_PRINCIPAL, "alert.raise", "allow"),
            s("local:ana", "alert.acknowledge", "allow"),
            s("local:ana", "alert.acknowledge", "deny"),
            s("local:ana", "alert.resolve", "allow"),
        ]
    );
}

#[test]
fn the_alert_log_is_checked_against_vigils_own_log_and_a_missing_record_is_made_up() {
    let dir = tempfile::tempdir().unwrap();
    let a = crate::alerts::test_support::alert("a1", 1);
    // Stored, then a crash before Vigil's own log recorded it.
    AlertLog::open(dir.path(), None)
        .unwrap()
        .append(std::slice::from_ref(&a), 1)
        .unwrap();
    let _ = Store::open(dir.path(), WriteOptions::default()).unwrap();
    let found = crate::lifecycle::check_alert_log(dir.path()).unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        !found[0].0 && found[0].2.contains("not recorded"),
        "{found:?}"
    );

    let (mut engine, _, stored) = restore(&cfg(dir.path()), Vec::new()).unwrap();
    let mut l = ThreadState::new(cfg(dir.path()), Default::default()).unwrap();
    let store = Store::open_existing(dir.path()).unwrap();
    l.record_missing(&mut engine, &store, &stored).unwrap();
    l.record_missing(&mut engine, &store, &stored).unwrap();
    assert_eq!(own_log(dir.path()).len(), 1, "recorded once");
    assert!(
        crate::lifecycle::check_alert_log(dir.path())
            .unwrap()
            .is_empty()
    );

    // Edited in the alert log: seen.
    let files = crate::alerts::alert_files(&vigil_store::layout::alerts(dir.path())).unwrap();
    let mut edited = a.clone();
    edited.event_count += 1;
    std::fs::remove_file(&files[0]).unwrap();
    AlertLog::open(dir.path(), None)
        .unwrap()
        .append(&[edited], 2)
        .unwrap();
    let found = crate::lifecycle::check_alert_log(dir.path()).unwrap();
    assert!(found[0].0 && found[0].2.contains("differs"), "{found:?}");
    // Deleted from it: seen.
    for f in crate::alerts::alert_files(&vigil_store::layout::alerts(dir.path())).unwrap() {
        std::fs::remove_file(f).unwrap();
    }
    let found = crate::lifecycle::check_alert_log(dir.path()).unwrap();
    assert!(found[0].0 && found[0].2.contains("missing"), "{found:?}");
}
