//! Faults an attacker can cause or simply wait for: the broker unreachable for 30 s (its
//! process stopped, so connections hang and nothing answers — a partition, a flood against
//! the broker, a broker restart gone slow), and the data volume full (a small tmpfs filled by
//! a filler file; mounting it needs root, as this machine's CI has). `vigil serve` rides both
//! out: the API answers or refuses clearly meanwhile, and once the fault is gone every record
//! is stored exactly once, each partition's offsets without a gap, the chain verifies, and
//! detection alerts as before.

use std::time::{Duration, Instant};

use crate::support::*;

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

/// `vigil verify` finds nothing tampered and no gap (incomplete only for what nothing outside
/// vouches for: no keys are pinned in these tests).
fn verifies_untampered(dir: &std::path::Path) {
    let out = vigil_command()
        .args(["verify", "--json", "--data-dir"])
        .arg(dir)
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

/// Every offset of partitions 0 and 1 up to `per_partition`, stored once.
fn assert_stored_once(dir: &std::path::Path, per_partition: i64) {
    let mut positions: Vec<(i32, i64)> = stored_positions(dir)
        .into_iter()
        .map(|(p, o, _)| (p, o))
        .collect();
    positions.sort();
    let expected: Vec<(i32, i64)> = (0..2)
        .flat_map(|p| (0..per_partition).map(move |o| (p, o)))
        .collect();
    assert_eq!(positions, expected, "every offset once, no gap");
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child process this test started.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    http_get_status_line(addr, path)?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
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
    assert_stored_once(&dir, 100);
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
    verifies_untampered(&dir);
}

/// A tmpfs mounted for one test, unmounted (lazily) however the test ends.
struct Volume(std::path::PathBuf);

impl Volume {
    fn mount(at: &std::path::Path, size: &str) -> Volume {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs (as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Volume(at.to_owned())
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fill the volume holding `dir` with one file until nothing more fits.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    path
}

/// The data volume fills up (an upload flood, a runaway log — here a filler file): partitions
/// pause, the API refuses what it cannot record with a clear 503, nothing is torn; when space
/// returns everything resumes by itself: every record stored once with no offset gap, the
/// chain verifying, the alerts raised meanwhile stored.
#[test]
fn a_full_data_volume_pauses_and_refuses_then_resumes_by_itself_with_nothing_lost() {
    full_volume(false);
}

/// The same with serve's own log on the full volume too (as when /var/log and the data share
/// a disk): a log that cannot be written stops nothing.
#[test]
fn a_full_volume_holding_serves_own_log_stops_nothing_either() {
    full_volume(true);
}

fn full_volume(log_on_volume: bool) {
    const ADMIN: &str = "vk_admin_full_0123456789";
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    let _volume = Volume::mount(&vol, "48m");
    let config = tmp.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[detect]\nalert_flush_ms = 200\nstate_interval_ms = 500\n{}",
            api_key_entry("admin", ADMIN, &["admin"])
        ),
    )
    .unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 2);
    broker.create_topic("vigil.checkpoints", 1);
    // serve's log is written beside the data directory: off the volume when the volume is
    // the data directory, on it when the data directory is inside.
    let dir = if log_on_volume {
        vol.join("data")
    } else {
        vol.clone()
    };
    let mut s = serve(&broker, "mesh", &dir, "g-full", &[], Some(&config));
    produce(
        &broker.producer(),
        "mesh",
        &decisions("a", 0, 100, "192.0.2.1", true),
    );
    wait_stored(&[&s], &dir, 100, Duration::from_secs(60));

    let filler = fill(&vol);
    // Records and a denial burst arrive while nothing more fits.
    produce(
        &broker.producer(),
        "mesh",
        &decisions("b", 100, 200, "192.0.2.1", true),
    );
    produce(
        &broker.producer(),
        "mesh",
        &decisions("c", 300, 60, "203.0.113.55", false),
    );
    let full_since = Instant::now();
    if log_on_volume {
        std::thread::sleep(Duration::from_secs(2));
    } else {
        wait_for("the full volume noticed", Duration::from_secs(30), || {
            s.log_text()
                .contains("the data volume is full")
                .then_some(())
        });
    }
    // A changing call cannot be recorded: refused, and it says why (not run when its intent
    // could not be recorded; its answer withheld when only its outcome could not — space
    // freed by a failed write can let a small record through).
    let reload = {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&s.api).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "POST /v1/rules/reload HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    assert!(reload.starts_with("HTTP/1.1 503"), "{reload}");
    assert!(
        reload.contains("audit log unavailable: the call could not be recorded"),
        "{reload}"
    );
    assert!(reload.contains("No space left on device"), "{reload}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "serve stopped: {}",
        s.log_text()
    );
    assert!(stored_per_partition(&dir, "mesh").values().sum::<i64>() < 360);

    // Room again: everything resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    wait_stored(&[&s], &dir, 360, Duration::from_secs(90));
    let resumed_after = full_since.elapsed();
    assert_stored_once(&dir, 180);
    wait_for("the burst's alert", Duration::from_secs(60), || {
        stored_alerts(&dir)
            .iter()
            .any(|a| {
                a.group_key
                    .values()
                    .any(|v| v.as_deref() == Some("203.0.113.55"))
            })
            .then_some(())
    });
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "serve stopped: {}",
        s.log_text()
    );
    let log = s.log_text();
    assert!(s.terminate(), "vigil serve did not exit cleanly: {log}");
    verifies_untampered(&dir);
    println!(
        "full volume (log on it: {log_on_volume}): resumed {resumed_after:?} after it filled; \
         360 records stored once"
    );
}
