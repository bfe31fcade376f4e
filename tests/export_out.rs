//! `vigil export`: a store made by `vigil serve` from real samples (OPA, Hubble, Kubernetes
//! audit, an Envoy access log, a native authentication event) exported as OCSF Parquet in
//! Security Lake's layout — every event read back and validated against the OCSF 1.8.0
//! schema files — as ECS JSON lines, and into a bucket (moto on loopback).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::*;
use serde_json::Value;

fn records() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = Vec::new();
    for l in data_text("opa/opa_decision_logs.jsonl").lines() {
        v.push(l.as_bytes().to_vec());
    }
    for l in data_text("hubble/hubble_flows.jsonl").lines() {
        v.push(l.as_bytes().to_vec());
    }
    for f in [
        "exec_pod.json",
        "create_secret.json",
        "some-user_creates_namespace_foo.json",
    ] {
        let t = data_text(&format!("k8s-audit-falco/trace_files/{f}"));
        v.push(t.lines().next().unwrap().as_bytes().to_vec());
    }
    v.push(br#"{"start_time":"2026-11-30T10:00:00.000Z","method":"GET","path":"/api/orders/7","protocol":"HTTP/1.1","response_code":403,"response_flags":"UAEX","response_code_details":"ext_authz_denied","bytes_received":0,"bytes_sent":0,"duration":1,"user_agent":"curl/8.5","request_id":"9a1c-envoy","authority":"orders.shop:8080","downstream_remote_address":"10.4.0.9:41000","downstream_local_address":"10.8.0.3:8080","downstream_peer_uri_san":"spiffe://cluster.local/ns/web/sa/frontend"}"#.to_vec());
    v.push(br#"{"schema":"vigil.event/v1","kind":"authn","decision":"deny","time":"2026-11-30T10:00:01Z","id":"login-1","caller":{"principal":"alice","ip":"203.0.113.9","port":5555},"callee":{"service":"login"},"action":"POST","resource":"/login","status_code":401,"reason":"bad password"}"#.to_vec());
    v
}

/// Every Parquet file under `dir`, as (path relative to `dir`, its rows as JSON).
fn parquet_rows(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    fn walk(d: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        assert!(rel.ends_with(".parquet"), "{rel}");
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&f).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let mut buf = Vec::new();
        {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
            for b in r {
                w.write(&b.unwrap()).unwrap();
            }
            w.finish().unwrap();
        }
        let rows = String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        out.insert(rel, rows);
    }
    out
}

#[test]
fn stored_events_export_as_valid_ocsf_in_security_lakes_layout_as_ecs_and_into_a_bucket() {
    let DetectSetup {
        broker,
        dir,
        config,
        tmp,
    } = detect_setup("mesh", 1, "");
    let recs = on_partition_0(records());
    let s = serve(&broker, "mesh", &dir, "g-export", &[], Some(&config));
    produce(&broker.producer(), "mesh", &recs);
    wait_stored(
        &[&s],
        &dir,
        recs.len() as u64,
        std::time::Duration::from_secs(60),
    );
    let (ok, log) = s.stop();
    assert!(ok, "serve failed: {log}");

    let out = tmp.path().join("lake");
    let data = dir.display().to_string();
    let range = [
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
    ];
    let mut args = vec!["export", "--data-dir", &data, "--format", "ocsf", "--out"];
    let out_s = out.display().to_string();
    args.push(&out_s);
    args.extend(range);
    args.extend(["--region", "eu-west-1", "--account-id", "123456789012"]);
    let ran = vigil(&args);
    assert_eq!(ran.code, 0, "{}", ran.out);
    assert!(out.exists(), "{}", ran.out);

    let schema = Ocsf::load();
    let files = parquet_rows(&out);
    let mut classes = BTreeSet::new();
    let mut seen = 0;
    for (rel, rows) in &files {
        // ext/<source>/region=…/accountId=…/eventDay=YYYYMMDD/part-NNNNN.parquet
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 6, "{rel}");
        assert_eq!(
            (parts[0], parts[2], parts[3]),
            ("ext", "region=eu-west-1", "accountId=123456789012"),
            "{rel}"
        );
        assert!(
            parts[4].starts_with("eventDay=") && parts[4].len() == "eventDay=".len() + 8,
            "{rel}"
        );
        let class = match parts[1] {
            "vigil-authentication" => "authentication",
            "vigil-api-activity" => "api_activity",
            "vigil-network-activity" => "network_activity",
            other => panic!("{other}"),
        };
        classes.insert(class);
        let mut last = i64::MIN;
        for r in rows {
            let errs = schema.validate(class, r);
            assert!(errs.is_empty(), "{rel}: {errs:#?}\n{r:#}");
            // One class per source, sorted by time.
            let t = r["time"].as_i64().unwrap();
            assert!(t >= last, "{rel} is not sorted by time");
            last = t;
            let day = chrono::DateTime::from_timestamp_millis(t)
                .unwrap()
                .format("%Y%m%d")
                .to_string();
            assert_eq!(parts[4], format!("eventDay={day}"));
            assert!(r["raw_data"].as_str().is_some_and(|s| !s.is_empty()));
            seen += 1;
        }
    }
    assert_eq!(
        classes,
        BTreeSet::from(["api_activity", "authentication", "network_activity"])
    );
    assert!(seen >= recs.len(), "{seen} of {} events", recs.len());
    // What a reader checks by hand: the denied login, the dropped flow, the forbidden call.
    let all: Vec<&Value> = files.values().flatten().collect();
    let login = all
        .iter()
        .find(|r| r["metadata"]["uid"] == "login-1")
        .unwrap();
    assert_eq!(
        (login["class_uid"].as_i64(), login["status_id"].as_i64()),
        (Some(3002), Some(2))
    );
    assert_eq!(login["user"]["name"], "alice");
    assert_eq!(login["src_endpoint"]["ip"], "203.0.113.9");
    assert_eq!(login["disposition_id"], 2);
    assert!(
        all.iter()
            .any(|r| r["class_uid"] == 4001 && r["activity_id"] == 5 && r["disposition_id"] == 2)
    );
    let exec = all
        .iter()
        .find(|r| {
            r["metadata"]["product"]["name"] == "Kubernetes API server"
                && r["resources"][0]["name"]
                    .as_str()
                    .is_some_and(|p| p.contains("/exec"))
        })
        .unwrap();
    assert_eq!(exec["activity_id"], 1);
    assert_eq!(exec["actor"]["user"]["name"], "minikube-user");

    // ECS: one event a line.
    let ecs = tmp.path().join("ecs");
    let ecs_s = ecs.display().to_string();
    let mut args = vec![
        "export",
        "--data-dir",
        &data,
        "--format",
        "ecs",
        "--out",
        &ecs_s,
    ];
    args.extend(range);
    let ran = vigil(&args);
    assert_eq!(ran.code, 0, "{}", ran.out);
    let mut lines = Vec::new();
    for day in std::fs::read_dir(ecs.join("ecs")).unwrap() {
        for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            lines.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
    }
    assert_eq!(lines.len(), seen);
    let login = lines
        .iter()
        .find(|l| l["event"]["id"] == "login-1")
        .unwrap();
    assert_eq!(login["event"]["category"][0], "authentication");
    assert_eq!(login["event"]["type"][0], "denied");
    assert_eq!(login["event"]["outcome"], "failure");
    assert_eq!(login["user"]["name"], "alice");
    assert_eq!(login["source"]["ip"], "203.0.113.9");
    assert_eq!(login["url"]["path"], "/login");
    assert!(
        lines
            .iter()
            .all(|l| l["@timestamp"].is_string() && l["event"]["original"].is_string())
    );

    // Into a bucket: the same files, put create-only. The same export again puts the same
    // bytes (a retry: nothing changes); one that would write other bytes under a name already
    // there is refused.
    let s3 = S3Server::start();
    s3.create_bucket("lake", false);
    let mut cmd = vigil_command();
    cmd.args([
        "export",
        "--data-dir",
        &data,
        "--format",
        "ocsf",
        "--out",
        "s3://lake/vigil",
    ]);
    cmd.args(range);
    cmd.args(["--region", "eu-west-1", "--account-id", "123456789012"]);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let ran = run(&mut cmd);
    assert_eq!(ran.code, 0, "{}", ran.out);
    let keys: BTreeSet<String> = s3.keys("lake", "vigil/").into_iter().collect();
    let want: BTreeSet<String> = files.keys().map(|k| format!("vigil/{k}")).collect();
    assert_eq!(keys, want);
    let ran = run(&mut cmd);
    assert_eq!(ran.code, 0, "{}", ran.out);
    assert_eq!(s3.keys("lake", "vigil/").len(), want.len());
    cmd.args(["--max-rows-per-file", "1"]);
    let ran = run(&mut cmd);
    assert_ne!(ran.code, 0, "{}", ran.out);
    assert!(ran.out.contains("already in the bucket"), "{}", ran.out);
}
