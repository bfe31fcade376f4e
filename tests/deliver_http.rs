//! Alert delivery to real HTTP receivers on loopback (axum servers in the test): every target
//! type's body, headers and signatures as that target expects them; receivers that fail,
//! hang, or are down at first; a restart with alerts in the outbox; undeliverable alerts; and
//! `vigil serve --webhook` end to end over the real broker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use vigil_detect::alerts::{Alert, Status};
use vigil_detect::deliver::{
    self, DeliverMetrics, Outbox, Target, TargetConfig, TargetKind, verify_webhook,
};

/// What a receiver got: path, headers, body.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// How a receiver answers: `fail_first` requests get 500, then `hang_first` hang for 2 s.
#[derive(Default)]
struct Behaviour {
    fail_first: usize,
    hang_first: usize,
    always_fail: bool,
}

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    seen: Arc<AtomicUsize>,
    behaviour: Arc<Behaviour>,
}

async fn handle(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = r.seen.fetch_add(1, Ordering::SeqCst);
    let b = &r.behaviour;
    r.got.lock().unwrap().push(Got {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.to_vec(),
    });
    if b.always_fail || n < b.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if n < b.fail_first + b.hang_first {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    StatusCode::OK
}

/// A receiver on `addr` (a free loopback port if None), served from its own thread.
fn receiver(addr: Option<SocketAddr>, behaviour: Behaviour) -> (SocketAddr, Receiver) {
    let r = Receiver {
        got: Default::default(),
        seen: Default::default(),
        behaviour: Arc::new(behaviour),
    };
    let app = axum::Router::new().fallback(handle).with_state(r.clone());
    let addr = crate::support::http_server(addr, app);
    (addr, r)
}

fn alert(id: &str, rev: i64, severity: &str) -> Alert {
    Alert {
        alert_id: id.into(),
        revision: rev,
        rule_id: "vigil.denial_burst.source_ip".into(),
        rule_version: 1,
        rule_kind: "threshold".into(),
        title: "Repeated denials from one source IP".into(),
        severity: severity.parse().expect("a severity"),
        status: Status::Open,
        status_by: None,
        status_at_ns: None,
        status_note: None,
        group_key: [("caller_ip".to_string(), Some("203.0.113.50".to_string()))].into(),
        first_event_ns: 1_795_000_000_000_000_000,
        last_event_ns: 1_795_000_030_000_000_000,
        detected_ns: 1_795_000_030_500_000_000,
        event_count: 50,
        detail: vec![],
        evidence: vec![],
        incident_id: None,
        incident_subject: None,
    }
}

fn target(name: &str, kind: TargetKind, url: String) -> TargetConfig {
    let mut c = TargetConfig::webhook(name, &url, "s3cret".into());
    c.kind = kind;
    c.backoff_initial_ms = 20;
    c.backoff_max_ms = 100;
    c.timeout_ms = 300;
    c
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn queued(dir: &Path, target: &str) -> usize {
    std::fs::read_dir(vigil_store::layout::outbox(dir).join(target))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count()
}

struct Running {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

fn run(dir: &Path, targets: Vec<TargetConfig>) -> (Outbox, Running) {
    let targets = targets
        .into_iter()
        .map(|c| Target::new(c, |_: &str| None).unwrap())
        .collect();
    let outbox = Outbox::open(dir, targets, Arc::new(DeliverMetrics::default())).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let handle = deliver::start(outbox.clone(), stop.clone()).unwrap();
    (outbox, Running { stop, handle })
}

impl Running {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
    }
}

#[test]
fn every_target_type_gets_what_it_expects() {
    let (addr, r) = receiver(None, Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.jsonl");
    let base = format!("http://{addr}");
    let mut splunk = target("splunk", TargetKind::Splunk, base.clone());
    splunk.secret = "hec-token".into();
    let (outbox, running) = run(
        dir.path(),
        vec![
            target("hook", TargetKind::Webhook, format!("{base}/hooks/vigil")),
            target(
                "slack",
                TargetKind::Slack,
                format!("{base}/services/T0/B0/x"),
            ),
            splunk,
            target("am", TargetKind::Alertmanager, base.clone()),
            target("file", TargetKind::File, file.display().to_string()),
        ],
    );
    let a = alert("a1", 1, "high");
    assert_eq!(outbox.enqueue(std::slice::from_ref(&a)).unwrap(), 5);
    wait("four HTTP deliveries", 10, || {
        r.got.lock().unwrap().len() >= 4
    });
    wait("the file line", 10, || {
        std::fs::read_to_string(&file).is_ok_and(|s| s.lines().count() == 1)
    });
    wait("an empty outbox", 10, || {
        ["hook", "slack", "splunk", "am", "file"]
            .iter()
            .all(|t| queued(dir.path(), t) == 0)
    });
    running.stop();
    let got = r.got.lock().unwrap().clone();
    let by_path = |p: &str| {
        got.iter()
            .find(|g| g.path == p)
            .unwrap_or_else(|| panic!("{p}: {got:?}"))
            .clone()
    };

    // Generic webhook: JSON with the alert, the idempotency key, and a signature a receiver can
    // check with the shared key.
    let hook = by_path("/hooks/vigil");
    assert_eq!(hook.headers["idempotency-key"], "a1:1");
    assert_eq!(hook.headers["content-type"], "application/json");
    let now = chrono::Utc::now().timestamp();
    assert!(verify_webhook(
        b"s3cret",
        &hook.headers["x-vigil-timestamp"],
        &hook.headers["x-vigil-signature"],
        &hook.body,
        now,
        300
    ));
    let v: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(v["alert"]["rule_id"], "vigil.denial_burst.source_ip");
    assert_eq!(v["idempotency_key"], "a1:1");

    // Slack: a readable message.
    let slack: serde_json::Value =
        serde_json::from_slice(&by_path("/services/T0/B0/x").body).unwrap();
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.contains("[HIGH] Repeated denials from one source IP"),
        "{text}"
    );
    assert!(
        text.contains("caller_ip=203.0.113.50") && text.contains("50 events"),
        "{text}"
    );

    // Splunk HEC: the event endpoint, token auth, sourcetype, the alert as the event.
    let hec = by_path("/services/collector/event");
    assert_eq!(hec.headers["authorization"], "Splunk hec-token");
    let e: serde_json::Value = serde_json::from_slice(&hec.body).unwrap();
    assert_eq!(e["sourcetype"], "vigil:alert");
    assert_eq!(e["event"]["alert_id"], "a1");
    assert!(e["time"].as_f64().unwrap() > 1.7e9);

    // Alertmanager: a list of alerts with labels and annotations, startsAt, no endsAt while open.
    let am: serde_json::Value = serde_json::from_slice(&by_path("/api/v2/alerts").body).unwrap();
    assert_eq!(am[0]["labels"]["alertname"], "vigil.denial_burst.source_ip");
    assert_eq!(am[0]["labels"]["severity"], "high");
    assert_eq!(am[0]["labels"]["caller_ip"], "203.0.113.50");
    assert_eq!(
        am[0]["annotations"]["summary"],
        "Repeated denials from one source IP"
    );
    assert!(
        am[0]["startsAt"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-18T")
    );
    assert!(am[0].get("endsAt").is_none());

    // File: one JSON line per delivery.
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&file).unwrap().trim()).unwrap();
    assert_eq!(line["idempotency_key"], "a1:1");
}

#[test]
fn failing_hanging_and_late_receivers_get_every_alert_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    // 500 three times, then a hang past the 300 ms timeout, then OK.
    let (flaky, fr) = receiver(
        None,
        Behaviour {
            fail_first: 3,
            hang_first: 1,
            ..Default::default()
        },
    );
    // Down at first: a port nothing listens on yet.
    let late_addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (outbox, running) = run(
        dir.path(),
        vec![
            target("flaky", TargetKind::Webhook, format!("http://{flaky}/")),
            target("late", TargetKind::Webhook, format!("http://{late_addr}/")),
        ],
    );
    let alerts: Vec<Alert> = (0..5)
        .map(|i| alert(&format!("f{i}"), 1, "medium"))
        .collect();
    outbox.enqueue(&alerts).unwrap();
    wait("failed attempts on the late receiver", 10, || {
        std::fs::read_to_string(
            vigil_store::layout::outbox(dir.path()).join("late/f0-0000000001.json"),
        )
        .is_ok_and(|s| s.contains("\"attempts\":1"))
    });
    // Vigil restarts with alerts still in the outbox; then the late receiver comes up.
    running.stop();
    assert_eq!(queued(dir.path(), "late"), 5);
    let (_, lr) = receiver(Some(late_addr), Behaviour::default());
    let (_, running) = run(
        dir.path(),
        vec![
            target("flaky", TargetKind::Webhook, format!("http://{flaky}/")),
            target("late", TargetKind::Webhook, format!("http://{late_addr}/")),
        ],
    );
    wait("both outboxes empty", 30, || {
        queued(dir.path(), "flaky") + queued(dir.path(), "late") == 0
    });
    running.stop();
    for r in [&fr, &lr] {
        let got = r.got.lock().unwrap();
        let keys: std::collections::BTreeSet<&str> = got
            .iter()
            .map(|g| g.headers["idempotency-key"].as_str())
            .collect();
        // Every alert arrived; retries repeat a key, never invent one.
        assert_eq!(keys.len(), 5, "{keys:?}");
        assert!(keys.iter().all(|k| k.starts_with('f') && k.ends_with(":1")));
    }
    // Five deliveries, and three 500s and one timeout before them: all retried.
    let tries = fr.got.lock().unwrap().len();
    assert!(tries > 5 + 3, "{tries} requests");
}

#[test]
fn an_alert_past_its_max_age_is_undeliverable_and_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, r) = receiver(
        None,
        Behaviour {
            always_fail: true,
            ..Default::default()
        },
    );
    let mut c = target("dead", TargetKind::Webhook, format!("http://{addr}/"));
    c.max_age_ms = 300;
    let (outbox, running) = run(dir.path(), vec![c]);
    outbox.enqueue(&[alert("u1", 1, "critical")]).unwrap();
    let aside =
        vigil_store::layout::outbox(dir.path()).join("dead/undeliverable/u1-0000000001.json");
    wait("the undeliverable entry", 10, || aside.exists());
    running.stop();
    // Giving up is itself an alert (the detection thread stores it and sends it on), for every
    // target but the one that failed.
    let gave_up = outbox.take_gave_up();
    assert_eq!(gave_up.len(), 1);
    assert_eq!(gave_up[0].target, "dead");
    let a = deliver::undeliverable_alert(&gave_up[0], 0);
    assert_eq!(a.rule_id, "vigil.delivery.undeliverable");
    assert_eq!(a.group_key["alert_id"].as_deref(), Some("u1"));
    assert!(a.detail.iter().any(|d| d.contains("u1:1")));
    assert_eq!(
        outbox.enqueue_except(&[a], Some("dead")).unwrap(),
        0,
        "no other target here"
    );
    assert_eq!(queued(dir.path(), "dead"), 0);
    let q: serde_json::Value = serde_json::from_slice(&std::fs::read(&aside).unwrap()).unwrap();
    assert!(q["attempts"].as_u64().unwrap() >= 2);
    assert_eq!(q["last_error"], "HTTP 500 Internal Server Error");
    assert!(r.seen.load(Ordering::SeqCst) >= 2);
}

#[test]
fn serve_with_webhook_delivers_signed_alerts_from_the_broker() {
    use crate::support::*;
    let (addr, r) = receiver(None, Behaviour::default());
    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // The path stands for a credential (a Slack webhook's is one): it is never logged.
    let url = format!("http://{addr}/vigil/T0kenSecretPath");
    let s = serve_with(
        &broker,
        "mesh",
        &dir,
        "g-hook",
        &[("VIGIL_WEBHOOK_SECRET", "hook-key")],
        None,
        &["--webhook", &url],
    );
    let now = chrono::Utc::now();
    let recs: Vec<Rec> = (0..60)
        .map(|i| {
            let t = (now + chrono::Duration::milliseconds(i)).to_rfc3339();
            Rec {
                partition: 0,
                key: None,
                value: Some(format!(
                    r#"{{"decision_id":"h{i}","result":false,"timestamp":"{t}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"203.0.113.77","portValue":1}}}}}},"destination":{{"principal":"spiffe://c/ns/auth/sa/login"}},"request":{{"http":{{"method":"POST","path":"/login"}}}}}}}}}}"#
                ).into_bytes()),
                headers: Vec::new(),
            }
        })
        .collect();
    produce(&broker.producer(), "mesh", &recs);
    wait("the webhook", 60, || !r.got.lock().unwrap().is_empty());
    // The whole log, its shutdown summary included.
    let (ok, log) = s.stop();
    assert!(ok, "{log}");
    assert!(
        !log.contains("hook-key"),
        "the secret is never logged: {log}"
    );
    assert!(
        !log.contains("T0kenSecretPath") && log.contains(&format!("http://{addr}/…")),
        "the URL is logged without its path: {log}"
    );
    let got = r.got.lock().unwrap();
    let g = &got[0];
    assert_eq!(g.path, "/vigil/T0kenSecretPath");
    assert!(verify_webhook(
        b"hook-key",
        &g.headers["x-vigil-timestamp"],
        &g.headers["x-vigil-signature"],
        &g.body,
        chrono::Utc::now().timestamp(),
        300
    ));
    let v: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!(v["alert"]["rule_id"], "vigil.denial_burst.source_ip");
    assert_eq!(v["alert"]["group_key"]["caller_ip"], "203.0.113.77");
    // One alert: its revisions share the alert id.
    assert!(got.iter().all(|g| {
        g.headers["idempotency-key"].starts_with(v["alert"]["alert_id"].as_str().unwrap())
    }));
}

/// Receivers that redirect: a 302 (followed, the POST would become a bodiless GET whose 200
/// counts as delivered) and a 307 (followed, the signed body would be posted elsewhere) are
/// failed attempts; the alert stays queued until it is undeliverable; and the targets' URLs,
/// whose paths are credentials, appear in no error, outbox entry or alert — not even those of
/// a target that cannot be reached.
#[test]
fn redirects_are_failed_attempts_and_no_target_url_is_ever_shown() {
    use axum::response::Redirect;
    // (axum's `Redirect::to` is a 303; Slack-style receivers and proxies answer 302.)
    use axum::routing::{get, post};
    let elsewhere = Arc::new(AtomicUsize::new(0));
    let landing = Arc::new(AtomicUsize::new(0));
    let other = {
        let n = elsewhere.clone();
        let app = axum::Router::new().fallback(move || {
            n.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::OK }
        });
        crate::support::http_server(None, app)
    };
    let app = {
        let n = landing.clone();
        axum::Router::new()
            .route(
                "/services/T000/B000/SlackSecretPath",
                post(|| async { (StatusCode::FOUND, [("location", "/landing")]) }),
            )
            .route(
                "/hook/HookSecretPath",
                post(move || async move { Redirect::temporary(&format!("http://{other}/steal")) }),
            )
            .route(
                "/landing",
                get(move || {
                    n.fetch_add(1, Ordering::SeqCst);
                    async { StatusCode::OK }
                }),
            )
    };
    let addr = crate::support::http_server(None, app);
    let closed = crate::support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut targets = vec![
        target(
            "slack",
            TargetKind::Slack,
            format!("http://{addr}/services/T000/B000/SlackSecretPath"),
        ),
        target(
            "hook",
            TargetKind::Webhook,
            format!("http://{addr}/hook/HookSecretPath"),
        ),
        target(
            "down",
            TargetKind::Webhook,
            format!("http://user:UserSecret@127.0.0.1:{closed}/DownSecretPath?token=QuerySecret"),
        ),
    ];
    for t in &mut targets {
        t.max_age_ms = 400;
    }
    let shown: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let targets: Vec<Target> = targets
        .into_iter()
        .map(|c| Target::new(c, |_: &str| None).unwrap())
        .collect();
    let metrics = Arc::new(DeliverMetrics::default());
    let outbox = Outbox::open(dir.path(), targets, metrics.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let handle = deliver::start(outbox.clone(), stop.clone()).unwrap();
    outbox.enqueue(&[alert("r1", 1, "critical")]).unwrap();
    let aside = |t: &str| {
        vigil_store::layout::outbox(dir.path())
            .join(format!("{t}/undeliverable/r1-0000000001.json"))
    };
    wait("all three undeliverable", 15, || {
        ["slack", "hook", "down"].iter().all(|t| aside(t).exists())
    });
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();

    assert_eq!(metrics.delivered.load(Ordering::SeqCst), 0);
    assert!(metrics.failed_attempts.load(Ordering::SeqCst) >= 6);
    assert_eq!(landing.load(Ordering::SeqCst), 0, "a 302 was followed");
    assert_eq!(elsewhere.load(Ordering::SeqCst), 0, "a 307 was followed");
    let secrets = [
        "SlackSecretPath",
        "HookSecretPath",
        "DownSecretPath",
        "UserSecret",
        "QuerySecret",
    ];
    let clean = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows {s}: {text}");
        }
    };
    for t in ["slack", "hook", "down"] {
        let entry = std::fs::read_to_string(aside(t)).unwrap();
        clean(t, &entry);
        let q: serde_json::Value = serde_json::from_str(&entry).unwrap();
        let last = q["last_error"].as_str().unwrap();
        match t {
            "slack" => assert!(
                last.starts_with("HTTP 302 Found (redirects are not followed"),
                "{last}"
            ),
            "hook" => assert!(
                last.starts_with("HTTP 307 Temporary Redirect (redirects"),
                "{last}"
            ),
            _ => assert!(last.contains("connect"), "{last}"),
        }
    }
    for g in outbox.take_gave_up() {
        let a = deliver::undeliverable_alert(&g, 0);
        clean(
            "the undeliverable alert",
            &serde_json::to_string(&a).unwrap(),
        );
    }
    for s in &shown {
        clean("a target's Debug", s);
    }
    assert!(
        shown[2].contains(&format!("http://127.0.0.1:{closed}/…")),
        "{}",
        shown[2]
    );
}
