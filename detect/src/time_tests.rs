//! Event time through the whole engine: the same events give the same alerts however they are
//! spread over partitions and interleaved; a forged future timestamp blinds nothing; backdated
//! and lagging events are still evaluated, and said to be late.
//!
//! One file past 600 lines: the property test and the scenarios share their event builders.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use vigil_schemas::Decoder;
use vigil_store::{PartitionBatch, Piece, RecordRef};

use crate::alerts::Alert;
use crate::engine::Engine;
use crate::rules::{Defaults, Source, load};
use crate::time::TimeConfig;

const S: i64 = 1_000_000_000;
/// 2026-11-18T…: the traffic's epoch.
const T0: i64 = 1_795_000_000 * S;

const RULES: &[(&str, &str)] = &[
    (
        "burst.toml",
        r#"
id = "p.burst"
version = 1
title = "burst"
severity = "high"
kind = "threshold"
filter = 'decision == "deny"'
group_by = ["caller_ip"]
count = 4
window = "1m"
suppress = "10m"
"#,
    ),
    (
        "seq.toml",
        r#"
id = "p.seq"
version = 1
title = "run of denials, then allowed"
severity = "critical"
kind = "sequence"
group_by = ["caller_ip"]
first = 'decision == "deny"'
first_count = 3
then = 'decision == "allow"'
consecutive = true
window = "2m"
suppress = "10m"
"#,
    ),
    (
        "paths.toml",
        r#"
id = "p.paths"
version = 1
title = "denied on many paths"
severity = "medium"
kind = "distinct_count"
filter = 'decision == "deny"'
group_by = ["caller_ip"]
field = "resource"
count = 3
window = "1m"
suppress = "10m"
"#,
    ),
];

fn engine_with(extra: &[(&str, &str)], time: TimeConfig) -> Engine {
    let mut sources: Vec<Source> = RULES
        .iter()
        .chain(extra)
        .map(|(name, text)| Source {
            name: (*name).into(),
            text: (*text).into(),
            dir: None,
        })
        .collect();
    sources.extend(
        crate::rules::DEFAULT_PACK
            .iter()
            .filter(|(name, _)| name.starts_with("time_"))
            .map(|(name, text)| Source {
                name: format!("default:{name}"),
                text: (*text).into(),
                dir: None,
            }),
    );
    let l = load(&sources, &Defaults::default());
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    Engine::new(l.rules.into_iter().map(|(r, _)| r).collect()).with_time(time)
}

fn engine() -> Engine {
    engine_with(&[], TimeConfig::default())
}

/// One decision: when, from where, allowed or not, on which path.
#[derive(Clone, Debug)]
struct Ev {
    t: i64,
    ip: String,
    allow: bool,
    path: String,
    id: usize,
}

fn opa(e: &Ev) -> String {
    let ts = chrono::DateTime::from_timestamp_nanos(e.t)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    format!(
        r#"{{"decision_id":"d{}","result":{},"timestamp":"{ts}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{}","portValue":1}}}}}},"request":{{"http":{{"method":"GET","path":"{}"}}}}}}}}}}"#,
        e.id, e.allow, e.ip, e.path
    )
}

/// A partition log being written: pieces of the records appended, in offset order.
struct Part {
    batch: PartitionBatch,
    topic: String,
    partition: i32,
    next: i64,
}

impl Part {
    fn new(topic: &str, partition: i32) -> Part {
        Part {
            batch: PartitionBatch::new(topic, partition, Default::default(), 16),
            topic: topic.to_owned(),
            partition,
            next: 0,
        }
    }

    /// The events as one piece; `kafka_ms`: the records' Kafka timestamps (None: the event
    /// time's).
    fn piece(&mut self, evs: &[Ev], kafka_ms: Option<i64>) -> Piece {
        let (topic, partition) = (self.topic.clone(), self.partition);
        for e in evs {
            let v = opa(e);
            let rec = RecordRef {
                topic: &topic,
                partition,
                offset: self.next,
                timestamp_ms: Some(kafka_ms.unwrap_or(e.t / 1_000_000)),
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            };
            self.batch.append(&rec, &Decoder::default(), e.t).unwrap();
            self.next += 1;
        }
        self.batch.cut().unwrap().unwrap()
    }

    /// Records given as JSON with their Kafka timestamps (ns), as one piece.
    fn raw_piece(&mut self, values: &[(String, i64)]) -> Piece {
        for (v, t) in values {
            let rec = RecordRef {
                topic: &self.topic,
                partition: self.partition,
                offset: self.next,
                timestamp_ms: Some(t / 1_000_000),
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            };
            self.batch.append(&rec, &Decoder::default(), *t).unwrap();
            self.next += 1;
        }
        self.batch.cut().unwrap().unwrap()
    }
}

/// What an alert says that does not depend on where its events were stored.
type Said = (String, String, String, i64, i64, i64, Vec<i64>);

fn said(alerts: Vec<Alert>) -> Vec<Said> {
    let mut v: Vec<Said> = crate::alerts::latest(alerts)
        .into_iter()
        .map(|a| {
            (
                a.alert_id,
                a.rule_id,
                format!("{:?}", a.group_key),
                a.first_event_ns,
                a.last_event_ns,
                a.event_count,
                a.evidence.iter().map(|e| e.event_time_ns).collect(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Random traffic: a few callers, denials and allows on a few paths, some at the same instant.
fn traffic(rng: &mut StdRng, n: usize) -> Vec<Ev> {
    let mut evs: Vec<Ev> = (0..n)
        .map(|id| Ev {
            t: T0 + rng.random_range(0..900) * S / 2 + rng.random_range(0..3) * 1000,
            ip: format!("10.0.0.{}", rng.random_range(1..6)),
            allow: rng.random_bool(0.45),
            path: format!("/p{}", rng.random_range(0..5)),
            id,
        })
        .collect();
    evs.sort_by_key(|e| e.t);
    evs
}

/// Feed `evs` (in time order) through a fresh engine spread over `parts` partitions, in
/// pieces of random size, the partitions' pieces interleaved at random.
fn run_spread(evs: &[Ev], parts: usize, rng: &mut StdRng) -> Vec<Said> {
    let mut e = engine();
    let now = T0 + 3600 * S;
    let mut logs: Vec<Part> = (0..parts).map(|p| Part::new("t", p as i32)).collect();
    let mut per: Vec<Vec<Ev>> = vec![Vec::new(); parts];
    for ev in evs {
        per[rng.random_range(0..parts)].push(ev.clone());
    }
    // Every partition is known (assigned) before anything arrives.
    for p in 0..parts {
        e.expect_log(&format!("t/{p}"), now);
    }
    let mut pieces: Vec<(usize, Piece)> = Vec::new();
    for (p, evs) in per.iter().enumerate() {
        let mut rest: &[Ev] = evs;
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(12));
            pieces.push((p, logs[p].piece(&rest[..n], None)));
            rest = &rest[n..];
        }
    }
    // Interleave: keep each partition's pieces in order, pick partitions at random.
    let mut queues: Vec<std::collections::VecDeque<Piece>> = vec![Default::default(); parts];
    for (p, piece) in pieces {
        queues[p].push_back(piece);
    }
    let mut fired = Vec::new();
    loop {
        let live: Vec<usize> = (0..parts).filter(|&p| !queues[p].is_empty()).collect();
        let Some(&p) = live.choose(rng) else { break };
        let piece = queues[p].pop_front().unwrap();
        e.observe(&piece, now).unwrap();
        fired.extend(e.take_pending());
    }
    e.drain(now);
    fired.extend(e.take_pending());
    let t = e.time_stats();
    assert_eq!((t.late, t.skewed, t.forced), (0, 0, 0), "{t:?}");
    said(fired)
}

#[test]
fn the_same_events_give_the_same_alerts_however_partitioned_and_interleaved() {
    let mut fired_some = 0;
    for seed in 0..48u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let evs = traffic(&mut rng, 160);
        let reference = run_spread(&evs, 1, &mut rng);
        fired_some += usize::from(!reference.is_empty());
        for parts in [2, 3, 4] {
            let got = run_spread(&evs, parts, &mut rng);
            assert_eq!(got, reference, "seed {seed}, {parts} partitions");
        }
    }
    // The property is about alerts: most cases must raise some.
    assert!(
        fired_some >= 40,
        "only {fired_some} of 48 cases raised alerts"
    );
}

#[test]
fn a_partition_far_ahead_does_not_make_the_others_late() {
    // Partition 1 is replayed from an hour later (a backfill running ahead); partition 0's
    // burst, read after it, is still evaluated in order and alerts.
    let mut e = engine();
    let now = T0 + 7200 * S;
    e.expect_log("t/0", now);
    e.expect_log("t/1", now);
    let mut p0 = Part::new("t", 0);
    let mut p1 = Part::new("t", 1);
    let ahead: Vec<Ev> = (0..50)
        .map(|i| ev(T0 + 3600 * S + i * S, "10.9.9.9", true, i as usize))
        .collect();
    e.observe(&p1.piece(&ahead, None), now).unwrap();
    let burst: Vec<Ev> = (0..6)
        .map(|i| ev(T0 + i * S, "10.0.0.7", false, 100 + i as usize))
        .collect();
    e.observe(&p0.piece(&burst, None), now).unwrap();
    e.drain(now);
    let got = e.take_pending();
    assert!(
        got.iter()
            .any(|a| a.rule_id == "p.burst"
                && a.group_key["caller_ip"].as_deref() == Some("10.0.0.7")),
        "{got:#?}"
    );
    assert_eq!(e.time_stats().late, 0);
}

fn ev(t: i64, ip: &str, allow: bool, id: usize) -> Ev {
    Ev {
        t,
        ip: ip.into(),
        allow,
        path: format!("/x{}", id % 7),
        id,
    }
}

#[test]
fn a_forged_2099_decision_blinds_nothing_and_is_itself_an_alert_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let now = T0 + 60 * S;
    let mut e = engine();
    let mut p0 = Part::new("decisions", 0);
    // One decision dated 2099 (its Kafka timestamp forged too).
    let forged = ev(4_070_908_800 * S, "203.0.113.66", false, 0);
    e.observe(&p0.piece(&[forged], Some(4_070_908_800_000)), now)
        .unwrap();
    // The only log, quiet for the idle time: what it sent is evaluated.
    e.tick(now + 3 * S);
    let first = e.take_pending();
    assert!(
        first.iter().any(|a| a.rule_id == "vigil.time.skewed_source"
            && a.group_key["kafka_topic"].as_deref() == Some("decisions")),
        "{first:#?}"
    );
    assert_eq!(e.time_stats().skewed, 1);
    assert!(e.time_stats().watermark_ns <= now + 1);
    // Saved and restored: the clocks come back no further than receive time.
    e.drain(now);
    e.save(&state).unwrap();
    let mut r = engine();
    r.restore(&state).unwrap();
    r.know_stored(&first);
    // The real burst right after it alerts.
    let burst: Vec<Ev> = (0..6)
        .map(|i| ev(now + i * S, "198.51.100.4", false, 10 + i as usize))
        .collect();
    r.observe(&p0.piece(&burst, None), now + 10 * S).unwrap();
    r.drain(now + 10 * S);
    let got = r.take_pending();
    assert!(
        got.iter().any(|a| a.rule_id == "p.burst"),
        "the burst after the forged event alerts: {got:#?}"
    );
    assert_eq!(r.time_stats().late, 0, "nothing real is late");
}

#[test]
fn a_state_saved_with_a_clock_in_2099_is_brought_back_to_receive_time() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let e = engine();
    e.save(&state).unwrap();
    // As an older version saved it after one forged event: every clock in 2099.
    let text = std::fs::read_to_string(&state).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["newest_ns"] = serde_json::json!(4_070_908_800i64 * S);
    for r in v["rules"].as_array_mut().unwrap() {
        r["state"]["clock"]["newest_ns"] = serde_json::json!(4_070_908_800i64 * S);
    }
    std::fs::write(&state, v.to_string()).unwrap();
    let mut r = engine();
    r.restore(&state).unwrap();
    let now = vigil_store::clock::now_ns();
    assert!(r.time_stats().watermark_ns <= now + TimeConfig::default().max_future_skew_ns);
    // A burst at the real time alerts, not late.
    let mut p = Part::new("t", 0);
    let burst: Vec<Ev> = (0..5)
        .map(|i| ev(now - 10 * S + i * S, "192.0.2.5", false, i as usize))
        .collect();
    r.observe(&p.piece(&burst, None), now).unwrap();
    r.drain(now);
    assert!(r.take_pending().iter().any(|a| a.rule_id == "p.burst"));
}

#[test]
fn a_backdated_burst_is_evaluated_and_its_log_said_to_be_late() {
    let mut e = engine();
    let now = T0 + 7200 * S;
    let mut p = Part::new("decisions", 2);
    // Normal traffic up to now.
    let normal: Vec<Ev> = (0..20)
        .map(|i| ev(now - 20 * S + i * S, "10.1.1.1", true, i as usize))
        .collect();
    e.observe(&p.piece(&normal, None), now).unwrap();
    e.tick(now + 5 * S);
    // A burst of denials backdated by an hour, to slip behind every window.
    let back: Vec<Ev> = (0..25)
        .map(|i| {
            ev(
                now - 3600 * S + i * S,
                "203.0.113.9",
                false,
                100 + i as usize,
            )
        })
        .collect();
    e.observe(&p.piece(&back, None), now + 6 * S).unwrap();
    e.drain(now + 6 * S);
    let got = e.take_pending();
    let rules: Vec<&str> = got.iter().map(|a| a.rule_id.as_str()).collect();
    assert!(rules.contains(&"p.burst"), "{rules:?}");
    assert!(rules.contains(&"vigil.time.late_source"), "{rules:?}");
    let t = e.time_stats();
    assert_eq!(t.late, 25);
    assert_eq!(t.sources[0].0, "decisions/2");
    assert_eq!(t.sources[0].1.late, 25);
}

#[test]
fn an_idle_partition_stops_holding_the_watermark() {
    let mut e = engine_with(
        &[],
        TimeConfig {
            idle_source_ns: 2 * S,
            ..TimeConfig::default()
        },
    );
    let now = T0 + 100 * S;
    e.expect_log("t/1", now);
    let mut p0 = Part::new("t", 0);
    let burst: Vec<Ev> = (0..6)
        .map(|i| ev(T0 + i * S, "10.0.0.8", false, i as usize))
        .collect();
    e.observe(&p0.piece(&burst, None), now).unwrap();
    // t/1 is expected and silent: the burst waits…
    assert!(e.take_pending().is_empty());
    assert_eq!(e.time_stats().buffered, 6);
    // …until it has been silent for the idle time.
    e.tick(now + 3 * S);
    assert!(e.take_pending().iter().any(|a| a.rule_id == "p.burst"));
    assert_eq!(e.time_stats().buffered, 0);
}

#[test]
fn a_log_that_only_follows_holds_no_live_log_back() {
    // Idle only after 5 s: before, a log read from the store (another process's partition,
    // or detection's own revisions, written a moment ago) held every live event back that long.
    let mut e = engine_with(
        &[],
        TimeConfig {
            idle_source_ns: 5 * S,
            ..TimeConfig::default()
        },
    );
    let now = T0 + 10 * S;
    let mut tailed = Part::new("t", 9);
    e.observe_followed(
        &tailed.piece(&[ev(T0 - 20 * S, "10.0.0.1", true, 0)], None),
        now,
    )
    .unwrap();
    let mut live = Part::new("t", 0);
    let burst: Vec<Ev> = (0..5)
        .map(|i| ev(T0 + i * S, "10.0.0.8", false, 10 + i as usize))
        .collect();
    e.observe(&live.piece(&burst, None), now).unwrap();
    e.tick(now);
    // Everything before the live log's newest event is evaluated at once: the burst alerts.
    let st = e.time_stats();
    assert_eq!(st.buffered, 1, "only the event at the watermark waits");
    assert!(e.take_pending().iter().any(|a| a.rule_id == "p.burst"));
    // The follower's events are still ordered with the others' (its newer one waits too).
    e.observe_followed(
        &tailed.piece(&[ev(T0 + 8 * S, "10.0.0.1", true, 1)], None),
        now,
    )
    .unwrap();
    assert_eq!(e.time_stats().buffered, 2);
    e.observe(
        &live.piece(&[ev(T0 + 9 * S, "10.0.0.3", true, 30)], None),
        now,
    )
    .unwrap();
    assert_eq!(e.time_stats().buffered, 1);
}

#[test]
fn a_log_of_records_that_fail_to_decode_does_not_hold_the_watermark() {
    // An attacker sends garbage on one partition without pause: before, the log was "active
    // with no event" and held the watermark (and every other log's events) for as long as it
    // kept sending. Its rows now say where it stands: their Kafka timestamps.
    let mut e = engine_with(
        &[],
        TimeConfig {
            idle_source_ns: 5 * S,
            ..TimeConfig::default()
        },
    );
    let now = T0 + 10 * S;
    let mut garbage = Part::new("t", 1);
    let mut live = Part::new("t", 0);
    let burst: Vec<Ev> = (0..4)
        .map(|i| ev(T0 + i * S, "10.0.0.8", false, 10 + i as usize))
        .collect();
    for k in 0..3 {
        let at = now + k * S;
        let sent = T0 + (k + 2) * S + S / 2;
        e.observe(&garbage.raw_piece(&[("not json {".to_owned(), sent)]), at)
            .unwrap();
        let evs = if k == 0 {
            burst.clone()
        } else {
            vec![ev(T0 + (4 + k) * S, "10.0.0.2", true, 20 + k as usize)]
        };
        e.observe(&live.piece(&evs, None), at).unwrap();
        e.tick(at);
    }
    assert!(e.take_pending().iter().any(|a| a.rule_id == "p.burst"));
    let st = e.time_stats();
    assert_eq!(
        st.watermark_ns,
        T0 + 4 * S + S / 2,
        "where the garbage's log stands"
    );
    assert_eq!(st.buffered, 2, "the live events after it wait");
}

#[test]
fn a_partition_whose_records_are_on_their_way_to_detection_is_not_idle() {
    let mut e = engine_with(
        &[],
        TimeConfig {
            idle_source_ns: 2 * S,
            ..TimeConfig::default()
        },
    );
    let now = T0 + 100 * S;
    let mut p0 = Part::new("t", 0);
    let mut p1 = Part::new("t", 1);
    e.observe(&p1.piece(&[ev(T0, "10.0.0.1", true, 0)], None), now)
        .unwrap();
    let burst: Vec<Ev> = (0..6)
        .map(|i| ev(T0 + 10 * S + i * S, "10.0.0.8", false, 10 + i as usize))
        .collect();
    e.observe(&p0.piece(&burst, None), now).unwrap();
    // t/1's next records take 5 s to come (its pipeline is behind); ingest says they are on
    // their way.
    for k in 1..=5 {
        e.hold_logs(&[("t/0".into(), false), ("t/1".into(), true)], now + k * S);
        e.tick(now + k * S);
    }
    // The watermark waited for t/1 (idle after 2 s otherwise): nothing of t/0 went ahead.
    let st = e.time_stats();
    assert_eq!(st.buffered, 7);
    assert!(st.watermark_ns <= T0 + 5 * S, "{}", st.watermark_ns - T0);
    // Its records arrive, older than the burst: in order, none behind or late.
    let older: Vec<Ev> = (0..3)
        .map(|i| ev(T0 + 5 * S + i * S, "10.0.0.2", true, 20 + i as usize))
        .collect();
    e.observe(&p1.piece(&older, None), now + 5 * S).unwrap();
    e.tick(now + 8 * S);
    let st = e.time_stats();
    assert_eq!((st.buffered, st.late), (0, 0));
    assert!(e.take_pending().iter().any(|a| a.rule_id == "p.burst"));
}

#[test]
fn a_log_whose_pieces_wait_behind_others_while_detection_is_busy_is_not_idle() {
    let mut e = engine_with(
        &[],
        TimeConfig {
            idle_source_ns: S,
            allowed_lateness_ns: S / 2,
            ..TimeConfig::default()
        },
    );
    let now = T0 + 100 * S;
    let (mut a, mut b) = (Part::new("t", 0), Part::new("t", 1));
    let at = |t: i64, id: usize| ev(t, "10.0.0.1", true, id);
    e.expect_log("t/1", now);
    e.observe(&a.piece(&[at(T0 + 10 * S, 0)], None), now)
        .unwrap();
    e.observe(&b.piece(&[at(T0, 1)], None), now).unwrap();
    // Detection was busy for 3 s; the queue then holds a's next piece, and b's behind it.
    e.set_backlog(true, now, now + 3 * S);
    e.observe(&a.piece(&[at(T0 + 20 * S, 2)], None), now + 3 * S)
        .unwrap();
    e.observe(&b.piece(&[at(T0 + 12 * S, 3)], None), now + 3 * S)
        .unwrap();
    e.set_backlog(false, now, now + 3 * S);
    // b was never idle, only queued: none of its events is late.
    assert_eq!(e.time_stats().late, 0);
    // Once caught up, idleness counts from now: b goes idle only a second later.
    e.tick(now + 3 * S + S / 2);
    assert!(e.time_stats().watermark_ns <= T0 + 12 * S);
}

#[test]
fn the_buffer_is_bounded_and_forcing_is_counted() {
    let mut e = engine_with(
        &[],
        TimeConfig {
            max_buffered_events: 10,
            ..TimeConfig::default()
        },
    );
    let now = T0 + 100 * S;
    e.expect_log("t/1", now);
    let mut p0 = Part::new("t", 0);
    let evs: Vec<Ev> = (0..30)
        .map(|i| ev(T0 + i * S, "10.0.0.8", true, i as usize))
        .collect();
    e.observe(&p0.piece(&evs, None), now).unwrap();
    let t = e.time_stats();
    assert_eq!((t.buffered, t.forced), (10, 20));
    assert_eq!(e.rows, 20);
}

#[test]
fn a_learning_rule_says_so_until_its_learning_period_has_passed() {
    const LEARN: &str = r#"
id = "p.new_edge"
version = 1
title = "new edge"
severity = "medium"
kind = "first_seen"
filter = 'decision == "allow"'
group_by = ["caller_ip", "resource"]
learn = "1h"
forget = "30d"
"#;
    let learning = |e: &Engine| {
        let s = e.stats();
        let r = s.iter().find(|r| r.id == "p.new_edge").unwrap();
        (r.learning, r.learning_until_ns)
    };
    let mut e = engine_with(&[("learn.toml", LEARN)], TimeConfig::default());
    assert_eq!(learning(&e), (true, None), "not started: learning");
    let mut p = Part::new("t", 0);
    let now = T0 + 10_000 * S;
    e.observe(&p.piece(&[ev(T0, "10.0.0.1", true, 0)], None), now)
        .unwrap();
    e.drain(now);
    assert_eq!(learning(&e), (true, Some(T0 + 3600 * S)));
    e.observe(
        &p.piece(&[ev(T0 + 3601 * S, "10.0.0.1", true, 1)], None),
        now,
    )
    .unwrap();
    e.drain(now);
    assert_eq!(learning(&e), (false, Some(T0 + 3600 * S)));
}

fn ts(t: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A Hubble flow from pod `src` at `src_ip` to `dst_ip`:8080, allowed.
fn hubble(n: usize, src: &str, src_ip: &str, dst_ip: &str, t: i64) -> (String, i64) {
    (
        format!(
            r#"{{"flow":{{"time":"{}","uuid":"f{n}","verdict":"FORWARDED","IP":{{"source":"{src_ip}","destination":"{dst_ip}"}},"l4":{{"TCP":{{"source_port":{},"destination_port":8080}}}},"source":{{"namespace":"shop","pod_name":"{src}"}},"destination":{{"namespace":"shop","pod_name":"orders-1"}},"is_reply":false}}}}"#,
            ts(t),
            40000 + n
        ),
        t,
    )
}

/// An OPA (Envoy ext_authz) decision from `src_ip` to `dst_ip`:8080, on the connection of
/// [`hubble`]'s flow `n` (source port 40000 + n).
fn decision(n: usize, src_ip: &str, dst_ip: &str, t: i64) -> (String, i64) {
    (
        format!(
            r#"{{"decision_id":"d{n}","result":true,"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{src_ip}","portValue":{}}}}}}},"destination":{{"address":{{"socketAddress":{{"address":"{dst_ip}","portValue":8080}}}}}},"request":{{"http":{{"method":"GET","path":"/","host":"orders"}}}}}}}}}}"#,
            ts(t),
            40000 + n
        ),
        t,
    )
}

#[test]
fn a_flow_whose_decision_comes_from_another_partition_is_no_bypass_and_one_without_is() {
    let bypass = crate::rules::DEFAULT_PACK
        .iter()
        .find(|(n, _)| *n == "sidecar_bypass.toml")
        .map(|(_, t)| *t)
        .unwrap();
    let mut e = engine_with(&[("bypass.toml", bypass)], TimeConfig::default());
    let now = T0 + 3600 * S;
    e.expect_log("mesh/0", now);
    e.expect_log("mesh/1", now);
    let mut flows = Part::new("mesh", 0);
    let mut decisions = Part::new("mesh", 1);
    // The flows come first (partition 0 is read ahead); the decisions for the frontend's
    // calls are on partition 1, read after — within 5 s of their flows in event time.
    let f: Vec<(String, i64)> = (0..5)
        .map(|i| hubble(i, "frontend-1", "10.0.1.10", "10.0.2.10", T0 + i as i64 * S))
        .chain([hubble(9, "xwing", "10.0.5.66", "10.0.2.10", T0 + 3 * S)])
        .collect();
    e.observe(&flows.raw_piece(&f), now).unwrap();
    let d: Vec<(String, i64)> = (0..5)
        .map(|i| decision(i, "10.0.1.10", "10.0.2.10", T0 + i as i64 * S + S / 2))
        .collect();
    e.observe(&decisions.raw_piece(&d), now).unwrap();
    // Time moves on in both logs.
    e.observe(
        &flows.raw_piece(&[hubble(
            20,
            "frontend-1",
            "10.0.1.10",
            "10.0.9.9",
            T0 + 30 * S,
        )]),
        now,
    )
    .unwrap();
    e.observe(
        &decisions.raw_piece(&[decision(20, "10.0.1.10", "10.0.2.10", T0 + 31 * S)]),
        now,
    )
    .unwrap();
    let got = e.take_pending();
    let bypasses: Vec<String> = got
        .iter()
        .filter(|a| a.rule_id == "vigil.enforcement_gap.sidecar_bypass")
        .map(|a| format!("{:?}", a.group_key))
        .collect();
    assert_eq!(bypasses.len(), 1, "{got:#?}");
    assert!(bypasses[0].contains("10.0.5.66"), "{bypasses:?}");
}

#[test]
fn alerts_about_one_subject_within_the_window_are_one_incident() {
    let mut e = engine_with(&[], TimeConfig::default()).with_incident_window(1800 * S);
    let now = T0 + 7200 * S;
    let mut p = Part::new("t", 0);
    // 10.0.0.66: denials on many paths, then allowed: burst, paths and the sequence fire.
    let mut evs: Vec<Ev> = (0..6)
        .map(|i| Ev {
            path: format!("/admin/{i}"),
            ..ev(T0 + i * S, "10.0.0.66", false, i as usize)
        })
        .collect();
    evs.push(ev(T0 + 7 * S, "10.0.0.66", true, 7));
    // 10.0.0.77: a burst of its own.
    evs.extend((0..4).map(|i| ev(T0 + 10 * S + i * S, "10.0.0.77", false, 20 + i as usize)));
    // 10.0.0.66 again, two hours later: a new incident.
    evs.extend((0..4).map(|i| ev(T0 + 7200 * S + i * S, "10.0.0.66", false, 40 + i as usize)));
    e.observe(&p.piece(&evs, None), now + 7300 * S).unwrap();
    e.drain(now + 7300 * S);
    let got = crate::alerts::latest(e.take_pending());
    let of = |ip: &str| -> Vec<&Alert> {
        got.iter()
            .filter(|a| a.group_key["caller_ip"].as_deref() == Some(ip))
            .collect()
    };
    let first: BTreeSet<Option<&str>> = of("10.0.0.66")
        .iter()
        .filter(|a| a.first_event_ns < T0 + 3600 * S)
        .map(|a| a.incident_id.as_deref())
        .collect();
    let rules: BTreeSet<&str> = of("10.0.0.66")
        .iter()
        .filter(|a| a.first_event_ns < T0 + 3600 * S)
        .map(|a| a.rule_id.as_str())
        .collect();
    assert_eq!(
        rules,
        ["p.burst", "p.paths", "p.seq"].into_iter().collect(),
        "{got:#?}"
    );
    assert_eq!(first.len(), 1, "one incident: {got:#?}");
    let later: Vec<&Alert> = of("10.0.0.66")
        .into_iter()
        .filter(|a| a.first_event_ns >= T0 + 3600 * S)
        .collect();
    // Its burst and its paths again: together, in a new incident past the window.
    let later_incidents: BTreeSet<Option<&str>> =
        later.iter().map(|a| a.incident_id.as_deref()).collect();
    assert_eq!((later.len(), later_incidents.len()), (2, 1), "{later:#?}");
    assert!(
        first.is_disjoint(&later_incidents),
        "past the window: a new one"
    );
    let other = of("10.0.0.77");
    assert_eq!(other[0].incident_subject.as_deref(), Some("ip:10.0.0.77"));
    assert!(!first.contains(&other[0].incident_id.as_deref()));
}

#[test]
fn a_replay_merges_stored_logs_per_event_not_per_file() {
    // Partition 0's one file spans two hours; partition 1's burst lies inside that span.
    // Merged per file, all of partition 0 would go first and the burst would be two hours
    // late; merged per event, it is evaluated in its place and alerts.
    let dir = tempfile::tempdir().unwrap();
    let store = vigil_store::Store::open(dir.path(), Default::default()).unwrap();
    let mut p0 = Part::new("t", 0);
    let long: Vec<Ev> = (0..120)
        .map(|i| ev(T0 + i * 60 * S, "10.0.0.1", true, i as usize))
        .collect();
    p0.piece(&long, None);
    store.write(&p0.batch.seal().unwrap().unwrap()).unwrap();
    let mut p1 = Part::new("t", 1);
    let burst: Vec<Ev> = (0..6)
        .map(|i| ev(T0 + 1800 * S + i * S, "10.0.0.9", false, 500 + i as usize))
        .collect();
    p1.piece(&burst, None);
    store.write(&p1.batch.seal().unwrap().unwrap()).unwrap();

    let mut e = engine();
    let mut fired = Vec::new();
    crate::replay::replay(
        &mut e,
        &store,
        |e, p| -> Result<(), vigil_store::StoreError> {
            e.observe(&p, vigil_store::clock::now_ns())
                .map_err(|_| vigil_store::StoreError::Internal("observe"))?;
            fired.extend(e.take_pending());
            Ok(())
        },
    )
    .unwrap();
    fired.extend(e.take_pending());
    assert!(
        fired
            .iter()
            .any(|a| a.rule_id == "p.burst"
                && a.group_key["caller_ip"].as_deref() == Some("10.0.0.9")),
        "{fired:#?}"
    );
    let t = e.time_stats();
    assert_eq!((t.late, t.buffered), (0, 0), "{t:?}");
}

#[test]
fn a_partition_gone_silent_while_its_peers_send_is_said_once_per_silence() {
    let mut e = engine();
    let now = T0 + 3600 * S;
    let mut p0 = Part::new("decisions", 0);
    let mut p1 = Part::new("decisions", 1);
    let mut own = Part::new("vigil.api", 0);
    e.observe(&p0.piece(&[ev(T0, "10.0.0.1", true, 0)], None), now)
        .unwrap();
    e.observe(&p1.piece(&[ev(T0, "10.0.0.2", true, 1)], None), now)
        .unwrap();
    e.observe(&own.piece(&[ev(T0, "10.0.0.3", true, 2)], None), now)
        .unwrap();
    // Partition 0 keeps sending for ten minutes; partition 1 and the API's log say nothing.
    let mut said = Vec::new();
    for m in 1..=10 {
        let t = now + m * 60 * S;
        e.observe(
            &p0.piece(
                &[ev(T0 + m * 60 * S, "10.0.0.1", true, 10 + m as usize)],
                None,
            ),
            t,
        )
        .unwrap();
        said.extend(e.silent_logs(t, 300 * S));
    }
    let logs: Vec<&str> = said.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(logs, ["decisions/1"], "once, and never Vigil's own log");
    assert_eq!(said[0].1, now);
    // It sends again: a later silence is said again.
    let t = now + 11 * 60 * S;
    e.observe(
        &p1.piece(&[ev(T0 + 660 * S, "10.0.0.2", true, 99)], None),
        t,
    )
    .unwrap();
    assert!(e.silent_logs(t, 300 * S).is_empty());
    let t2 = t + 400 * S;
    e.observe(
        &p0.piece(&[ev(T0 + 1100 * S, "10.0.0.1", true, 100)], None),
        t2,
    )
    .unwrap();
    assert_eq!(e.silent_logs(t2, 300 * S).len(), 1);
}
