//! The alert lifecycle end to end against the real Tansu broker: an alert raised by `vigil
//! serve` is acknowledged from the CLI while serve runs (queued, applied by serve's detection
//! thread), updated by later events without losing who acknowledged it, resolved from the CLI
//! once serve has stopped (applied directly); each change reaches the webhook, is a revision in
//! the alert log, and is an `admin_audit` event in Vigil's own chained log — signed, anchored,
//! queryable — so `vigil verify` covers it, and deleting it, or the alert log, is seen.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use arrow::array::AsArray;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use vigil_detect::alerts::{latest, read_revisions};

type Got = Arc<Mutex<Vec<Value>>>;

async fn hook(State(got): State<Got>, body: Bytes) -> StatusCode {
    if let Ok(v) = serde_json::from_slice(&body) {
        got.lock().unwrap().push(v);
    }
    StatusCode::OK
}

fn denials(from: usize, n: usize) -> Vec<Rec> {
    let now = chrono::Utc::now();
    (from..from + n)
        .map(|i| {
            let t = (now + chrono::Duration::milliseconds(i as i64)).to_rfc3339();
            Rec {
                partition: 0,
                key: None,
                value: Some(format!(
                    r#"{{"decision_id":"l{i}","result":false,"timestamp":"{t}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"203.0.113.9","portValue":1}}}}}},"destination":{{"principal":"spiffe://c/ns/auth/sa/login"}},"request":{{"http":{{"method":"POST","path":"/login"}}}}}}}}}}"#
                ).into_bytes()),
                headers: Vec::new(),
            }
        })
        .collect()
}

/// `vigil ARGS --data-dir DIR`, with the test's broker.
fn vigil_at(dir: &Path, broker: &Broker, args: &[&str]) -> Ran {
    run(vigil_command()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("VIGIL_KAFKA__BROKERS", &broker.addr))
}

/// The webhook deliveries of one alert with this status.
fn delivered(got: &Got, id: &str, status: &str) -> Vec<Value> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|v| v["alert"]["alert_id"] == id && v["alert"]["status"] == status)
        .cloned()
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(60), || f().then_some(()));
}

#[test]
fn ack_while_serving_resolve_after_each_change_delivered_signed_anchored_and_queryable() {
    let got: Got = Default::default();
    let app = axum::Router::new().fallback(hook).with_state(got.clone());
    let addr = http_server(None, app);
    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    broker.create_topic("vigil.checkpoints", 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let url = format!("http://{addr}/hook");
    let mut s = serve_with(
        &broker,
        "mesh",
        &dir,
        "g-life",
        &[("VIGIL_WEBHOOK_SECRET", "k")],
        None,
        &["--webhook", &url],
    );
    produce(&broker.producer(), "mesh", &denials(0, 60));
    wait_for("the alert at the webhook", Duration::from_secs(60), || {
        if s.child.try_wait().unwrap().is_some() {
            panic!("vigil serve stopped: {}", s.log_text());
        }
        (!got.lock().unwrap().is_empty()).then_some(())
    });
    let id = got.lock().unwrap()[0]["alert"]["alert_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Queued for delivery before it is in the alert log (a crash between the two delivers an
    // alert twice, never loses one): the CLI finds it once it is stored.
    wait_until("the alert in the alert log", || {
        read_revisions(&dir)
            .unwrap_or_default()
            .iter()
            .any(|a| a.alert_id == id)
    });

    // Acknowledged while serve runs: queued, applied by serve (a prefix of the id will do).
    let ack = vigil_at(
        &dir,
        &broker,
        &["alerts", "ack", &id[..12], "--note", "on it", "--json"],
    );
    assert_eq!(ack.code, 0, "{ack}");
    let rev: Value = serde_json::from_slice(&ack.stdout).unwrap();
    assert_eq!(rev["alert_id"], id.as_str());
    assert_eq!(rev["status"], "acknowledged");
    assert_eq!(rev["status_note"], "on it");
    let by = rev["status_by"].as_str().unwrap().to_owned();
    assert!(by.starts_with("local:"), "{by}");
    // Twice: refused, said why, nothing changed.
    let again = vigil_at(&dir, &broker, &["alerts", "ack", &id]);
    assert_eq!(again.code, 1, "{again}");
    assert!(again.out.contains("already acknowledged"), "{again}");
    // No such alert: an error, before anything is queued.
    let none = vigil_at(&dir, &broker, &["alerts", "resolve", "ffffffffffff"]);
    assert_eq!(none.code, 2, "{none}");
    assert!(none.out.contains("no alert"), "{none}");

    wait_until("the acknowledgement at the webhook", || {
        !delivered(&got, &id, "acknowledged").is_empty()
    });
    // Later events update it; it stays acknowledged, by the same person.
    produce(&broker.producer(), "mesh", &denials(60, 10));
    wait_until("an update of the acknowledged alert", || {
        delivered(&got, &id, "acknowledged").iter().any(|v| {
            v["alert"]["event_count"].as_i64().unwrap() > rev["event_count"].as_i64().unwrap()
        })
    });
    let upd = delivered(&got, &id, "acknowledged").pop().unwrap();
    assert_eq!(upd["alert"]["status_by"], by.as_str());
    assert!(s.terminate(), "vigil serve did not stop cleanly");

    // Resolved with serve stopped: applied by the CLI itself, signed and anchored.
    let res = vigil_at(
        &dir,
        &broker,
        &["alerts", "resolve", &id, "--note", "blocked at the edge"],
    );
    assert_eq!(res.code, 0, "{res}");
    assert!(!res.out.contains("warning"), "{res}");
    let newest = latest(read_revisions(&dir).unwrap());
    let a = newest.iter().find(|a| a.alert_id == id).unwrap();
    assert_eq!(a.status, vigil_detect::alerts::Status::Resolved);
    assert_eq!(a.status_by.as_deref(), Some(by.as_str()));
    assert_eq!(a.status_note.as_deref(), Some("blocked at the edge"));
    let list = vigil_at(&dir, &broker, &["alerts"]);
    assert!(list.stdout_text().contains("resolved"), "{list}");

    // Every revision and change is in Vigil's own log, in order, queryable like any event.
    let batches = sql(
        &dir,
        "SELECT caller_principal, action, decision, resource FROM events \
         WHERE kafka_topic = 'vigil.audit' ORDER BY kafka_offset",
    );
    let mut rows = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            let c = |i: usize| b.column(i).as_string::<i32>().value(r).to_owned();
            assert_eq!(c(3), format!("alert/{id}"));
            rows.push((c(0), c(1), c(2)));
        }
    }
    assert_eq!(
        rows.first(),
        Some(&(
            "vigil:detect".to_owned(),
            "alert.raise".to_owned(),
            "allow".to_owned()
        ))
    );
    let people: Vec<(&str, &str)> = rows
        .iter()
        .filter(|(p, _, _)| p.starts_with("local:"))
        .map(|(_, a, d)| (a.as_str(), d.as_str()))
        .collect();
    assert_eq!(
        people,
        [
            ("alert.acknowledge", "allow"),
            ("alert.acknowledge", "deny"),
            ("alert.resolve", "allow")
        ]
    );

    // `vigil verify` covers it: chained, signed, anchored in Kafka.
    let keys = tmp.path().join("pinned.keys");
    std::fs::copy(vigil_store::layout::registry(&dir), &keys).unwrap();
    let verify = |d: &Path| {
        let o = run(vigil_command()
            .args(["verify", "--json", "--data-dir"])
            .arg(d)
            .arg("--keys")
            .arg(&keys)
            .args(["--anchor-kafka", &broker.addr]));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{o}"));
        (o.code, v)
    };
    let (code, report) = verify(&dir);
    assert_eq!(code, 0, "{report:#}");
    let own = report["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["topic"] == "vigil.audit")
        .expect("Vigil's own log is verified");
    assert_eq!(own["records"].as_u64(), Some(rows.len() as u64));
    assert_eq!(own["anchored"].as_u64(), Some(rows.len() as u64));

    // Deleting the newest change (its file) from a copy of the store is seen.
    let copy = tmp.path().join("copy");
    copy_dir(&dir, &copy);
    let store = vigil_store::Store::open_existing(&copy).unwrap();
    let (files, _) = store.list("vigil.audit", 0).unwrap();
    std::fs::remove_file(&files.last().unwrap().path).unwrap();
    let (code, report) = verify(&copy);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["verdict"], "tampered", "{report:#}");

    // So is deleting the alert log (the alerts table) while Vigil's own log stands.
    let copy = tmp.path().join("copy2");
    copy_dir(&dir, &copy);
    std::fs::remove_dir_all(vigil_store::layout::alerts(&copy)).unwrap();
    let (code, report) = verify(&copy);
    assert_eq!(code, 1, "{report:#}");
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["place"] == format!("alert {id} revision 1")
                && f["what"]
                    .as_str()
                    .unwrap()
                    .contains("missing from the alert log")),
        "{report:#}"
    );
}
