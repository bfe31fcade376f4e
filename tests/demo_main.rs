//! The README's main command, `scripts/demo.sh`, run the way a new user runs it: a fresh data
//! directory, nothing configured, the broker, `vigil serve` and the simulator all started by the
//! script; then Ctrl-C, as a terminal sends it. Every injected attack must have its alert (read
//! over the API with the key the script made), SQL over the API must return the events, and
//! the store must verify.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The script's process group: stopped (TERM, then KILL) if the test fails half-way.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        let pgid = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
        let _ = self.0.wait();
    }
}

/// Text up to its last complete line (a file being written).
fn complete_lines(text: &str) -> &str {
    text.rfind('\n').map_or("", |i| &text[..=i])
}

#[test]
fn the_main_command_alerts_every_attack_answers_sql_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("vigil-data");
    let out_path = tmp.path().join("demo.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut group = Group(
        Command::new("bash")
            .arg("scripts/demo.sh")
            .args(["--attack-every", "3"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("VIGIL_BIN", env!("CARGO_BIN_EXE_vigil"))
            .env("VIGIL_DATA_DIR", &data)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("VIGIL_CONFIG")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("run scripts/demo.sh"),
    );
    let log = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let after = |prefix: &str| {
        log().lines().find_map(|l| {
            l.split_once(prefix)
                .map(|(_, rest)| rest.split([';', ')', ' ']).next().unwrap_or("").to_owned())
        })
    };
    let broker = wait_for("the broker's line", Duration::from_secs(120), || {
        after("Kafka broker (Tansu, in memory) at ")
    });
    let api = wait_for("the API's line", Duration::from_secs(60), || {
        after("API on ")
    });
    let key = wait_for("the API key", Duration::from_secs(10), || {
        std::fs::read_to_string(data.join("demo/api-key")).ok()
    });
    let key = key.trim().to_owned();
    assert!(key.starts_with("vk_"), "{key}");

    // What the simulator injected, as it records it.
    let sim = wait_for("six injections", Duration::from_secs(90), || {
        let text = std::fs::read_to_string(data.join("demo/simulated.jsonl")).ok()?;
        // The file exists a moment before its first line does.
        let lines = complete_lines(&text);
        if lines.is_empty() {
            return None;
        }
        let sim = Simulated::parse(lines);
        (sim.injected.len() == 6).then_some(sim)
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let get = |path: &str| -> serde_json::Value {
        rt.block_on(async {
            let r = http
                .get(format!("{api}{path}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "GET {path}: {}", r.status());
            r.json().await.unwrap()
        })
    };
    let query = |sql: &str| -> serde_json::Value {
        rt.block_on(async {
            let r = http
                .post(format!("{api}/v1/query"))
                .bearer_auth(&key)
                .json(&serde_json::json!({ "sql": sql }))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(status.is_success(), "{sql}: {status} {body}");
            body
        })
    };

    // Every attack's alerts, over the API, within a bounded time.
    let alerts = sim.wait_for_alerts(
        Duration::from_secs(90),
        || {
            let page = get("/v1/alerts?limit=1000");
            page["alerts"]
                .as_array()
                .unwrap_or_else(|| panic!("{page}"))
                .iter()
                .map(|a| {
                    (
                        a["rule_id"].as_str().unwrap().to_owned(),
                        serde_json::from_value(a["group_key"].clone()).unwrap(),
                    )
                })
                .collect()
        },
        log,
    );
    sim.assert_nothing_else(&alerts, &log());

    // SQL over the API returns the events: the mesh's traffic, and each of the credential
    // stuffer's 60 denied logins.
    let n = query("SELECT count(*) AS n FROM events WHERE kafka_topic = 'mesh'");
    assert!(n[0]["n"].as_i64().unwrap() > 700, "{n}");
    let stuffing = sim
        .injected
        .iter()
        .find(|i| i["scenario"] == "credential-stuffing")
        .unwrap();
    let ip = stuffing["subject"].as_str().unwrap();
    assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{ip}");
    let denied = query(&format!(
        "SELECT count(*) AS n FROM events WHERE caller_ip = '{ip}' AND decision = 'deny'"
    ));
    assert_eq!(denied[0]["n"], 60, "{denied}");

    // Ctrl-C, as a terminal sends it: SIGINT to the whole foreground process group.
    let pgid = format!("-{}", group.0.id());
    assert!(
        Command::new("kill")
            .args(["-INT", "--", &pgid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(st) = group.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the demo did not stop within 90 s of Ctrl-C\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = log();
    assert!(status.success(), "exit {status}\n{text}");
    assert!(text.contains("VALID: "), "{text}");
    assert!(
        text.contains("SIGTERM: flushing and committing")
            || text.contains("SIGINT: flushing and committing"),
        "{text}"
    );
    // Everything it started is stopped: the broker no longer listens.
    assert!(
        std::net::TcpStream::connect(&broker).is_err(),
        "the broker at {broker} still runs\n{text}"
    );

    // The data it wrote verifies offline (the broker and its anchors gone) with the keys it
    // pinned and the state its last verify trusted.
    succeed(
        vigil_command()
            .args(["verify", "--data-dir"])
            .arg(&data)
            .arg("--keys")
            .arg(data.join("demo/vigil.keys"))
            .arg("--trusted")
            .arg(data.join("demo/trusted.json")),
    );
}
