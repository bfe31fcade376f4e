//! The analyst console in a real browser: Debian's `chromium`, driven by `playwright-core`
//! (console/e2e/console.e2e.mjs), against the real broker, `vigil serve` and `vigil simulate`,
//! all started here. The script signs in, waits on the alerts page while this test injects an
//! attack (its alert must appear without a reload), opens it, proves its evidence in the page
//! (and sees tampered bundles, served by a test double in the browser, refused), acknowledges
//! it, finds the acknowledgement in Vigil's own log with SQL and downloads it as CSV, pivots on
//! events, and checks that a reader sees no lifecycle buttons and is refused (403) when it
//! forces the call. Screenshots of each page go to `target/console-e2e/`.
//!
//! What it needs (`scripts/install.sh` installs both): `/usr/bin/chromium` and
//! `console/node_modules` (`npm ci` in console/). Missing, the test fails saying so.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const ANALYST_KEY: &str = "vk_e2e_analyst_0123456789abcdef";
const READER_KEY: &str = "vk_e2e_reader_0123456789abcdef";

#[test]
fn an_analyst_sees_proves_and_acknowledges_an_attack_in_the_browser_and_a_reader_cannot_change_it()
{
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("VIGIL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/install.sh (it installs Debian's chromium)"
    );
    assert!(
        root.join("console/node_modules/playwright-core").exists(),
        "console/node_modules is missing: run scripts/install.sh (npm ci in console/)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 3);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let config = tmp.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\n{}\n{}",
            api_key_entry("e2e-analyst", ANALYST_KEY, &["reader", "analyst"]),
            api_key_entry("e2e-reader", READER_KEY, &["reader"]),
        ),
    )
    .unwrap();
    let s = serve(&broker, "mesh", &dir, "g-console", &[], Some(&config));
    wait_for("vigil serve ready", Duration::from_secs(60), || {
        http_get_status_line(&s.api, "/readyz")
            .filter(|l| l.contains(" 200 "))
            .map(|_| ())
    });
    // Normal traffic first, so the overview, the SQL page and the events have something.
    simulate(
        &broker.addr,
        &["--topic", "mesh", "--rate", "50", "--duration", "3"],
    );
    // The keys an analyst pins: the store's registry, as `vigil keys show` prints it.
    let pinned = tmp.path().join("pinned.keys");
    std::fs::write(
        &pinned,
        succeed(
            vigil_command()
                .args(["keys", "show", "--data-dir"])
                .arg(&dir),
        ),
    )
    .unwrap();

    let artifacts = root.join("target/console-e2e");
    let _ = std::fs::remove_dir_all(&artifacts);
    let signal = tmp.path().join("signed-in");
    let out = tmp.path().join("e2e.out");
    let err = tmp.path().join("e2e.err");
    let mut node = Command::new("node")
        .arg("e2e/console.e2e.mjs")
        .current_dir(root.join("console"))
        .env("VIGIL_API", format!("http://{}", s.api))
        .env("VIGIL_ANALYST_KEY", ANALYST_KEY)
        .env("VIGIL_READER_KEY", READER_KEY)
        .env("VIGIL_PINNED", &pinned)
        .env("VIGIL_SIGNAL", &signal)
        .env("VIGIL_ARTIFACTS", &artifacts)
        .env("VIGIL_CHROMIUM", &chromium)
        // What the simulator's credential-stuffing scenario fires (its `expect`).
        .env("VIGIL_EXPECT_RULE", "vigil.denial_burst.source_ip")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run node (console/e2e/console.e2e.mjs)");
    let log = || {
        format!(
            "stdout: {}\nstderr: {}\nserve: {}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default(),
            s.log_text()
        )
    };
    // The browser is signed in and on the alerts page: now the attack.
    let start = Instant::now();
    while !signal.exists() {
        if let Some(st) = node.try_wait().unwrap() {
            panic!(
                "the browser script ended before signing in ({st}): {}",
                log()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no sign-in: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (sim, stdout) = simulate(
        &broker.addr,
        &[
            "--topic",
            "mesh",
            "--rate",
            "50",
            "--duration",
            "6",
            "--attack-every",
            "2",
            "--scenario",
            "credential-stuffing",
        ],
    );
    assert_eq!(sim.injected.len(), 1, "{stdout}");
    // The script ends by itself (its own waits are bounded); a hung browser is killed.
    let start = Instant::now();
    let status = loop {
        if let Some(st) = node.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = node.kill();
            panic!("the browser script did not finish in 300 s: {}", log());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(status.success(), "the browser script failed: {}", log());
    let result: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {}", log()));
    assert_eq!(result["ok"], true, "{}", log());
    for shot in [
        "02-overview",
        "04-alert-proven",
        "05-alert-tampered",
        "07-sql-own-log",
        "09-reader-alert",
        "10-overview-alerts",
    ] {
        assert!(artifacts.join(format!("{shot}.png")).exists(), "{shot}.png");
    }
    let alert_id = result["alert_id"].as_str().unwrap().to_owned();

    // The server's side of it: the acknowledgement is a revision by the analyst, and both the
    // analyst's change and the reader's refused attempt are in Vigil's own log.
    let (ok, _) = s.stop();
    assert!(ok);
    let revs: Vec<_> = vigil_detect::alerts::read_revisions(&dir)
        .unwrap()
        .into_iter()
        .filter(|a| a.alert_id == alert_id)
        .collect();
    assert!(
        revs.iter()
            .any(|a| a.status == vigil_detect::alerts::Status::Acknowledged
                && a.status_by.as_deref() == Some("key:e2e-analyst")
                && a.status_note.as_deref() == Some("e2e: looked at it")),
        "{revs:?}"
    );
    let own = sql_strings(
        &dir,
        &format!(
            "SELECT caller_principal, decision, CAST(status_code AS VARCHAR) FROM events \
             WHERE callee_service = 'vigil-api' AND action = 'POST /v1/alerts/{alert_id}/ack' \
             AND status_code IS NOT NULL ORDER BY event_time"
        ),
    );
    assert!(
        own.contains(&vec![
            "key:e2e-analyst".into(),
            "allow".into(),
            "200".into()
        ]),
        "{own:?}"
    );
    assert!(
        own.contains(&vec!["key:e2e-reader".into(), "deny".into(), "403".into()]),
        "{own:?}"
    );
}
