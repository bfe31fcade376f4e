//! Event time against a hostile producer, end to end on the real Tansu broker through
//! `vigil serve` with the default rules: one decision dated 2099 blinds nothing (the burst
//! right after it alerts, and the forged log is itself an alert — also after a restart); a
//! burst backdated by an hour is evaluated, alerts, and its log is said to be late.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;

const S: i64 = 1_000_000_000;

fn ts(t_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(t_ns)
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

use vigil_store::clock::now_ns;

/// A denied (or allowed) unauthenticated login from `ip`, dated `t_ns`, to `partition`.
fn login(n: usize, ip: &str, allow: bool, t_ns: i64, partition: i32) -> Rec {
    let v = format!(
        r#"{{"decision_id":"t-{n}","path":"envoy/authz/allow","result":{allow},"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{ip}","portValue":41000}}}}}},"destination":{{"address":{{"socketAddress":{{"address":"10.0.9.1","portValue":8080}}}}}},"request":{{"http":{{"method":"POST","path":"/login","host":"login"}}}}}}}}}}"#,
        ts(t_ns)
    );
    Rec {
        partition,
        key: Some(ip.as_bytes().to_vec()),
        value: Some(v.into_bytes()),
        headers: Vec::new(),
    }
}

fn pair(rule: &str, key: &str) -> (String, String) {
    (rule.to_owned(), key.to_owned())
}

#[test]
fn a_forged_2099_decision_blinds_nothing_before_or_after_a_restart_and_backdating_is_seen() {
    let DetectSetup {
        broker,
        dir,
        config,
        tmp: _tmp,
    } = detect_setup("decisions", 3, "");
    let p = broker.producer();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };

    let s = serve(&broker, "decisions", &dir, "g-time", &[], Some(&config));
    // Ordinary traffic on every partition, then one decision dated 2099 on partition 2, then
    // a real burst of 60 denied logins from one address right after it, on all partitions.
    let now = now_ns();
    let mut recs: Vec<Rec> = (0..90)
        .map(|i| login(next(), &format!("10.0.0.{}", i % 9), true, now, i % 3))
        .collect();
    recs.push(login(next(), "192.0.2.99", false, 4_070_908_800 * S, 2));
    recs.extend((0..60).map(|i| {
        login(
            next(),
            "203.0.113.7",
            false,
            now + i * 10_000_000,
            i as i32 % 3,
        )
    }));
    recs.extend((0..30).map(|i| login(next(), "10.0.0.1", true, now + S, i % 3)));
    let mut total = recs.len() as u64;
    produce(&p, "decisions", &recs);
    wait_stored(&[&s], &dir, total, Duration::from_secs(60));
    let expected: BTreeSet<_> = [
        pair("vigil.denial_burst.source_ip", "203.0.113.7"),
        pair("vigil.time.skewed_source", "2 decisions"),
    ]
    .into_iter()
    .collect();
    let got = wait_alerts(&dir, &expected, Duration::from_secs(30));
    assert!(expected.is_subset(&got), "{got:#?}");
    let (ok, log) = s.stop();
    assert!(ok, "serve failed: {log}");
    assert!(
        log.contains(" skewed=1 "),
        "the progress/summary counts it: {log}"
    );
    assert!(
        log.contains("skewed_by_log=decisions/2=1"),
        "per log: {log}"
    );

    // Restarted on the same data directory (its state saved after the forged event): another
    // burst right away alerts, and a burst backdated by an hour is evaluated and seen as late.
    let s = serve(&broker, "decisions", &dir, "g-time", &[], Some(&config));
    let now = now_ns();
    let mut recs: Vec<Rec> = (0..60)
        .map(|i| {
            login(
                next(),
                "198.51.100.8",
                false,
                now + i * 10_000_000,
                i as i32 % 3,
            )
        })
        .collect();
    recs.extend((0..60).map(|i| login(next(), "10.0.0.2", true, now + S, i % 3)));
    produce(&p, "decisions", &recs);
    total += recs.len() as u64;
    wait_stored(&[&s], &dir, total, Duration::from_secs(60));
    let back: Vec<Rec> = (0..55)
        .map(|i| login(next(), "203.0.113.66", false, now - 3600 * S + i * S, 0))
        .collect();
    produce(&p, "decisions", &back);
    total += back.len() as u64;
    wait_stored(&[&s], &dir, total, Duration::from_secs(60));
    let expected: BTreeSet<_> = [
        pair("vigil.denial_burst.source_ip", "203.0.113.7"),
        pair("vigil.time.skewed_source", "2 decisions"),
        pair("vigil.denial_burst.source_ip", "198.51.100.8"),
        pair("vigil.denial_burst.source_ip", "203.0.113.66"),
        pair("vigil.time.late_source", "0 decisions"),
    ]
    .into_iter()
    .collect();
    let got = wait_alerts(&dir, &expected, Duration::from_secs(30));
    let (ok, log) = s.stop();
    assert!(ok, "serve failed: {log}");
    assert!(expected.is_subset(&got), "{got:#?}\n{log}");
    // Nothing else: the ordinary traffic raised nothing.
    assert_eq!(got, expected, "{got:#?}");
    assert!(
        log.contains("late_by_log=decisions/0=55"),
        "the late events are counted per log: {log}"
    );
}

#[test]
fn a_partition_that_goes_silent_while_the_others_send_is_an_alert() {
    let DetectSetup {
        broker,
        dir,
        config,
        tmp: _tmp,
    } = detect_setup("decisions", 2, "silent_source_ms = 2000\n");
    let p = broker.producer();
    let s = serve(&broker, "decisions", &dir, "g-silent", &[], Some(&config));
    let mut n = 0;
    let mut total = 0;
    let mut send = |parts: &[i32], total: &mut u64| {
        let recs: Vec<Rec> = parts
            .iter()
            .map(|&part| {
                n += 1;
                login(n, "10.0.0.5", true, now_ns(), part)
            })
            .collect();
        *total += recs.len() as u64;
        produce(&p, "decisions", &recs);
    };
    send(&[0, 1, 0, 1], &mut total);
    wait_stored(&[&s], &dir, total, Duration::from_secs(60));
    // Partition 0 keeps sending; partition 1 stops (its producer was killed).
    let expected: BTreeSet<_> = [pair("vigil.telemetry.source_silent", "1 decisions")]
        .into_iter()
        .collect();
    let start = Instant::now();
    while !expected.is_subset(&alert_summary(&stored_alerts(&dir)))
        && start.elapsed() < Duration::from_secs(20)
    {
        send(&[0], &mut total);
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_stored(&[&s], &dir, total, Duration::from_secs(60));
    let (ok, log) = s.stop();
    assert!(ok, "serve failed: {log}");
    let got = alert_summary(&stored_alerts(&dir));
    assert_eq!(got, expected, "{log}");
}
