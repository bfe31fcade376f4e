//! A fault an attacker can cause or simply wait for: the broker unreachable for 30 s (its
//! process stopped, so connections hang and nothing answers — a partition, a flood against
//! the broker, a broker restart gone slow). `vigil serve` rides it out: the API answers
//! meanwhile, and once the broker is back every record is stored exactly once, each
//! partition's offsets without a gap, the chain verifies, and detection alerts as before.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn decisions(tag: &str, from: usize, n: usize, ip: &str, allow: bool) -> Vec<Rec> {
    let now = chrono::Utc::now();
    (from..from + n)
        .map(|i| Rec {
            partition: (i % 2) as i32,
            key: None,
            value: Some(format!(
                r#"{{"decision_id":"{tag}{i}","result":{allow},"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{ip}","portValue":1}}}}}},"destination":{{"principal":"spiffe://c/ns/auth/sa/login"}},"request":{{"http":{{"method":"POST","path":"/login"}}}}}}}}}}"#,
                (now + chrono::Duration::milliseconds(i as i64)).to_rfc3339()
            ).into_bytes()),
            headers: Vec::new(),
        })
        .collect()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child process this test started.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split(' ').nth(1)?.parse().ok()
}

#[test]
fn the_broker_unreachable_for_30_s_costs_no_record_and_no_chain_link() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 2);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let mut s = serve(&broker, "mesh", &dir, "g-outage", &[], None);
    produce(
        &broker.producer(),
        "mesh",
        &decisions("a", 0, 100, "192.0.2.1", true),
    );
    wait_stored(&[&s], &dir, 100, Duration::from_secs(60));

    // 30 s with the broker stopped: serve stays up, its API answers.
    signal(broker.pid(), libc::SIGSTOP);
    let stopped = Instant::now();
    let mut answered = 0;
    while stopped.elapsed() < Duration::from_secs(30) {
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "serve stopped: {}",
            s.log_text()
        );
        if http_status(&s.api, "/healthz") == Some(200) {
            answered += 1;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    signal(broker.pid(), libc::SIGCONT);
    assert!(
        answered >= 25,
        "the API answered {answered} of about 30 probes"
    );

    // Back: what is produced now is stored, and nothing before it is lost or doubled.
    produce(
        &broker.producer(),
        "mesh",
        &decisions("b", 100, 100, "192.0.2.1", true),
    );
    wait_stored(&[&s], &dir, 200, Duration::from_secs(90));
    let mut positions: Vec<(i32, i64)> = stored_positions(&dir)
        .into_iter()
        .map(|(p, o, _)| (p, o))
        .collect();
    positions.sort();
    let expected: Vec<(i32, i64)> = (0..2).flat_map(|p| (0..100).map(move |o| (p, o))).collect();
    assert_eq!(positions, expected, "every offset once, no gap");
    // Detection as before: a burst after the outage alerts.
    produce(
        &broker.producer(),
        "mesh",
        &decisions("c", 200, 60, "203.0.113.44", false),
    );
    wait_for(
        "the alert after the outage",
        Duration::from_secs(60),
        || {
            stored_alerts(&dir)
                .iter()
                .any(|a| {
                    a.group_key
                        .values()
                        .any(|v| v.as_deref() == Some("203.0.113.44"))
                })
                .then_some(())
        },
    );
    assert!(s.terminate(), "vigil serve did not exit cleanly");
    // The chain verifies: nothing tampered, no gap (incomplete only for what nothing outside
    // vouches for: no keys were pinned here).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["verify", "--json", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["verdict"] == "tampered" || f["what"].as_str().unwrap_or("").contains("gap"))
        .collect();
    assert!(
        bad.is_empty(),
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    assert_eq!(out.status.code(), Some(2), "{report}");
}
