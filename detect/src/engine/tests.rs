use super::*;
use crate::alerts::{Alert, Status};
use crate::lifecycle::{Command, Refusal};
use crate::rules::{Defaults, Source, load};
use vigil_schemas::Decoder;
use vigil_store::{PartitionBatch, RecordRef};

const RULE: &str = r#"
id = "t.denials"
version = 1
title = "denials"
severity = "high"
kind = "threshold"
filter = 'decision == "deny"'
group_by = ["caller_ip"]
count = 3
window = "1m"
suppress = "1h"
"#;

fn engine(text: &str) -> Engine {
    let l = load(
        &[Source {
            name: "t.toml".into(),
            text: text.into(),
            dir: None,
        }],
        &Defaults::default(),
    );
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    // These tests are about alerts, not time: tiny clocks (`now` 7) skew nothing, and every
    // log counts as idle at once, so each piece is evaluated whole as it comes (event
    // time across logs: `crate::time_tests`).
    Engine::new(l.into_rules()).with_time(TimeConfig {
        max_future_skew_ns: i64::MAX / 4,
        idle_source_ns: -1,
        ..TimeConfig::default()
    })
}

fn opa(i: usize, ip: &str, allow: bool) -> String {
    format!(
        r#"{{"decision_id":"d{i}","result":{allow},"timestamp":"2026-11-22T10:00:{:02}Z","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{ip}","portValue":1}}}}}},"request":{{"http":{{"method":"GET","path":"/"}}}}}}}}}}"#,
        i % 60
    )
}

/// One piece per call: records `from..from+n` of partition 0.
struct Log {
    batch: PartitionBatch,
    next: i64,
}

impl Log {
    fn new() -> Log {
        Log {
            batch: PartitionBatch::new("t", 0, Default::default(), 16),
            next: 0,
        }
    }

    fn piece(&mut self, values: &[String]) -> Piece {
        for v in values {
            let rec = RecordRef {
                topic: "t",
                partition: 0,
                offset: self.next,
                timestamp_ms: None,
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            };
            self.batch.append(&rec, &Decoder::default(), 0).unwrap();
            self.next += 1;
        }
        self.batch.cut().unwrap().unwrap()
    }
}

#[test]
fn a_piece_seen_twice_counts_once_and_updates_coalesce_into_one_revision() {
    let mut e = engine(RULE);
    let mut log = Log::new();
    let p1 = log.piece(&[opa(0, "1.1.1.1", false), opa(1, "1.1.1.1", false)]);
    e.observe(&p1, 7).unwrap();
    // Re-delivered (a crash before its file was durable): skipped.
    e.observe(&p1, 7).unwrap();
    assert_eq!(e.skipped_rows, 2);
    assert!(e.take_pending().is_empty());
    let p2 = log.piece(&[opa(2, "1.1.1.1", false), opa(3, "1.1.1.1", false)]);
    e.observe(&p2, 8).unwrap();
    let fired = e.take_pending();
    assert_eq!(fired.len(), 1);
    let a = &fired[0];
    // Fired by the third denial, the fourth already counted in the same piece.
    assert_eq!((a.revision, a.event_count, a.detected_ns), (1, 4, 8));
    assert_eq!(a.evidence.len(), 3);
    assert_eq!(a.evidence[2].log, "t/0");
    // The evidence is the three that fired it.
    assert_eq!(a.evidence[2].index, 2);
    assert_eq!(a.evidence[2].event_id.as_deref(), Some("d2"));
    assert_eq!(
        a.evidence[0].event_id, None,
        "not in the piece that fired it"
    );
    // Ten more denials: one new revision, not ten.
    let p3 = log.piece(
        &(4..14)
            .map(|i| opa(i, "1.1.1.1", false))
            .collect::<Vec<_>>(),
    );
    e.observe(&p3, 9).unwrap();
    let upd = e.take_pending();
    assert_eq!(upd.len(), 1);
    assert_eq!(
        (
            upd[0].alert_id.as_str(),
            upd[0].revision,
            upd[0].event_count
        ),
        (a.alert_id.as_str(), 2, 14)
    );
}

fn change(id: &str, action: crate::lifecycle::Action) -> Command {
    Command {
        alert_id: id.into(),
        action,
        by: "local:ana".into(),
        note: Some("on it".into()),
        at_ns: 99,
    }
}

#[test]
fn lifecycle_changes_are_revisions_and_a_resolved_alert_is_never_raised_again() {
    use crate::lifecycle::Action::*;
    let mut e = engine(RULE);
    let mut log = Log::new();
    let denials = |log: &mut Log, from: usize, n: usize| {
        log.piece(
            &(from..from + n)
                .map(|i| opa(i, "1.1.1.1", false))
                .collect::<Vec<_>>(),
        )
    };
    e.observe(&denials(&mut log, 0, 3), 1).unwrap();
    let fired = e.take_pending();
    let id = fired[0].alert_id.clone();
    assert_eq!(
        e.apply(&change("nope", Acknowledge), None).unwrap_err(),
        Refusal::NoSuchAlert {
            alert_id: "nope".into()
        }
    );

    let acked = e.apply(&change(&id, Acknowledge), None).unwrap();
    assert_eq!((acked.revision, acked.status.as_str()), (2, "acknowledged"));
    assert_eq!(acked.status_by.as_deref(), Some("local:ana"));
    assert_eq!(e.take_pending(), vec![acked.clone()]);
    let again = e.apply(&change(&id, Acknowledge), None).unwrap_err();
    assert!(
        matches!(again, Refusal::NotAllowed { not_allowed, .. }
            if not_allowed.from == Status::Acknowledged),
        "{again}"
    );
    assert!(
        again.to_string().contains("already acknowledged"),
        "{again}"
    );
    // Later events update it and it stays acknowledged, by whom it was.
    e.observe(&denials(&mut log, 3, 2), 2).unwrap();
    let upd = e.take_pending();
    assert_eq!((upd[0].revision, upd[0].event_count), (3, 5));
    assert_eq!(upd[0].status, Status::Acknowledged);
    assert_eq!(upd[0].status_at_ns, Some(99));

    // Suppressed: counted, no revisions.
    let sup = e.apply(&change(&id, Suppress), None).unwrap();
    assert_eq!((sup.revision, sup.status.as_str()), (4, "suppressed"));
    e.take_pending();
    e.observe(&denials(&mut log, 5, 5), 3).unwrap();
    assert!(e.take_pending().is_empty());

    // Resolved: closed, with the count it reached.
    let res = e.apply(&change(&id, Resolve), None).unwrap();
    assert_eq!(
        (res.revision, res.status.as_str(), res.event_count),
        (5, "resolved", 10)
    );
    assert_eq!(e.take_pending(), vec![res.clone()]);
    assert!(
        e.apply(&change(&id, Resolve), Some(&res))
            .unwrap_err()
            .to_string()
            .contains("already resolved")
    );
    // The group's next firing is a new alert.
    e.observe(&denials(&mut log, 10, 3), 4).unwrap();
    let next = e.take_pending();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].alert_id, id);
    assert_eq!((next[0].revision, next[0].status.as_str()), (1, "open"));

    // A rebuild replaying the same events knows the stored history: the resolved alert is
    // never raised or updated again; the firing lands in the newer alert (stored, in the
    // suppression window): an update of it, not a duplicate.
    let mut r = engine(RULE);
    let mut history = fired.clone();
    history.extend([acked, sup, res]);
    history.extend(next.clone());
    r.know_stored(&crate::alerts::latest(history));
    let mut again = Log::new();
    r.observe(&denials(&mut again, 0, 13), 5).unwrap();
    let replayed = r.take_pending();
    assert_eq!(replayed.len(), 1, "{replayed:#?}");
    assert_eq!(
        (replayed[0].alert_id.as_str(), replayed[0].revision),
        (next[0].alert_id.as_str(), 2)
    );
}

#[test]
fn a_change_to_an_alert_no_longer_open_builds_on_its_stored_revision() {
    let mut e = engine(RULE);
    let mut stored = e_alert();
    stored.revision = 7;
    let a = e
        .apply(
            &change(&stored.alert_id, crate::lifecycle::Action::Resolve),
            Some(&stored),
        )
        .unwrap();
    assert_eq!(
        (a.revision, a.status.as_str(), a.event_count),
        (8, "resolved", stored.event_count)
    );
    assert_eq!(e.take_pending(), vec![a]);
}

fn e_alert() -> Alert {
    let mut e = engine(RULE);
    let mut log = Log::new();
    e.observe(
        &log.piece(&(0..3).map(|i| opa(i, "4.4.4.4", false)).collect::<Vec<_>>()),
        1,
    )
    .unwrap();
    e.take_pending().remove(0)
}

#[test]
fn state_survives_a_restart_and_a_rule_change_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut log = Log::new();
    let mut e = engine(RULE);
    e.observe(
        &log.piece(&[opa(0, "2.2.2.2", false), opa(1, "2.2.2.2", false)]),
        1,
    )
    .unwrap();
    e.observe(
        &log.piece(&(2..5).map(|i| opa(i, "3.3.3.3", false)).collect::<Vec<_>>()),
        1,
    )
    .unwrap();
    let fired = e.take_pending();
    assert_eq!(fired.len(), 1);
    e.save(&path).unwrap();

    let mut r = engine(RULE);
    assert!(r.restore(&path).unwrap().is_empty());
    assert_eq!(r.position("t/0"), Some(5));
    r.know_stored(&fired);
    // 2.2.2.2 had two denials before the restart: one more fires.
    // 3.3.3.3's open alert is updated, not raised again.
    let p = log.piece(&[opa(5, "2.2.2.2", false), opa(6, "3.3.3.3", false)]);
    r.observe(&p, 2).unwrap();
    let got = r.take_pending();
    assert_eq!(got.len(), 2, "{got:#?}");
    let upd = got
        .iter()
        .find(|a| a.alert_id == fired[0].alert_id)
        .unwrap();
    assert_eq!((upd.revision, upd.event_count), (2, 4));
    assert!(
        got.iter()
            .any(|a| a.revision == 1 && a.group_key["caller_ip"].as_deref() == Some("2.2.2.2"))
    );

    // Version 2 of the rule: its old state does not apply.
    let mut v2 = engine(&RULE.replace("version = 1", "version = 2"));
    assert_eq!(v2.restore(&path).unwrap(), ["t.denials"]);
}

#[test]
fn a_replay_firing_at_another_event_is_the_same_alert() {
    use crate::row::OwnedRow;
    let row = OwnedRow::of(&[("decision", "deny"), ("caller_ip", "9.9.9.9")]);
    let at = |t: i64| EvRef {
        time_ns: t * 1_000_000_000,
        ..EvRef::default()
    };
    let mut live = engine(RULE);
    for t in [0, 1, 2] {
        live.observe_row(&row, at(t), 0);
    }
    let first = live.take_pending();
    assert_eq!(first.len(), 1);
    // Rebuilt from history, the group fires at another event (its events interleaved
    // differently across partitions): the same alert, a new revision.
    let mut rebuilt = engine(RULE);
    rebuilt.know_stored(&first);
    for t in [5, 6, 7] {
        rebuilt.observe_row(&row, at(t), 0);
    }
    let again = rebuilt.take_pending();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].alert_id, first[0].alert_id);
    assert_eq!(again[0].revision, 2);
    // Past the suppression window (1 h) it is a new alert.
    for t in [4000, 4001, 4002] {
        rebuilt.observe_row(&row, at(t), 0);
    }
    let later = rebuilt.take_pending();
    assert_eq!(later.len(), 1);
    assert_ne!(later[0].alert_id, first[0].alert_id);
    assert_eq!(later[0].revision, 1);
}
