//! Every decoder against every real public sample in `../shared/data` (see its README):
//! the mapped decision, caller, callee, action and resource are asserted, not only "it parsed".
//! Expectations are either checked by hand against the sample (named events) or read from the
//! sample's own fields with plain JSON lookups (whole files), independently of the decoders.

use std::io::Write;

use crate::support::*;
use serde_json::Value;
use vigil_schemas::{Decision, Decoder, DecoderConfig, Event, Kind, SourceFormat};

fn lines(rel: &str) -> Vec<String> {
    std::fs::read_to_string(data_path(rel))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn decode(raw: &[u8]) -> Vec<Event<'static>> {
    decode_as(raw, None)
}

fn decode_as(raw: &[u8], format: Option<SourceFormat>) -> Vec<Event<'static>> {
    let mut out = Vec::new();
    Decoder::new(DecoderConfig::default(), format)
        .decode_with(raw, |e| out.push(e.clone().into_owned()))
        .unwrap_or_else(|e| panic!("{e}\nrecord: {}", String::from_utf8_lossy(raw)));
    out
}

fn one(raw: &str) -> Event<'static> {
    let mut v = decode(raw.as_bytes());
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn s<'a>(o: &'a Option<std::borrow::Cow<'_, str>>) -> Option<&'a str> {
    o.as_deref()
}

fn ns(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap()
}

// ---------- OPA ----------

#[test]
fn opa_documented_upload_event() {
    let lines = lines("opa/opa_decision_logs.jsonl");
    let e = one(&lines[0]);
    assert_eq!(e.format, SourceFormat::Opa);
    assert_eq!(
        (e.kind, e.decision),
        (Kind::Authz, Decision::Allow),
        "result is the string \"true\""
    );
    assert_eq!(s(&e.event_id), Some("4ca636c1-55e4-417a-b1d8-4aceb67960d1"));
    assert_eq!(s(&e.policy), Some("http/example/authz/allow"));
    assert_eq!(
        s(&e.policy_revision),
        Some("authz=W3sibCI6InN5cy9jYXRhbG9nIiwicyI6NDA3MX1d")
    );
    assert_eq!(
        (s(&e.action), s(&e.resource)),
        (Some("GET"), Some("/salary/bob"))
    );
    assert_eq!(e.time_ns, Some(ns("2018-01-01T00:00:00Z")));
    assert_eq!(
        e.raw.as_ref(),
        lines[0].as_bytes(),
        "raw bytes are kept exactly"
    );
}

#[test]
fn opa_envoy_plugin_deny_and_allow() {
    let lines = lines("opa/opa_decision_logs.jsonl");
    let deny = one(&lines[1]);
    assert_eq!(deny.decision, Decision::Deny);
    assert_eq!(
        s(&deny.event_id),
        Some("1df154b5-658a-47bf-ac18-be52998605da")
    );
    assert_eq!(
        (s(&deny.caller.ip), deny.caller.port),
        (Some("10.244.2.10"), Some(53488))
    );
    assert_eq!(
        (s(&deny.callee.ip), deny.callee.port),
        (Some("10.0.16.44"), Some(14001))
    );
    assert_eq!(s(&deny.callee.service), Some("bookstore.bookstore:14001"));
    assert_eq!(
        (s(&deny.action), s(&deny.resource)),
        (Some("GET"), Some("/books-bought"))
    );
    assert_eq!(
        s(&deny.request_id),
        Some("69b80716-6af4-4986-bf8c-8f209d96f131")
    );
    assert_eq!(s(&deny.policy), Some("envoy/authz/allow"));
    assert_eq!(deny.time_ns, Some(ns("2021-05-04T01:21:18.1971808Z")));

    let allow = one(&lines[2]);
    assert_eq!(allow.decision, Decision::Allow);
    assert_eq!(
        (s(&allow.action), s(&allow.resource)),
        (Some("GET"), Some("/buy-a-book/new"))
    );
    assert_eq!(allow.caller.port, Some(48860));
}

#[test]
fn opa_envoy_principals_under_mtls_become_caller_and_callee() {
    // The real sample ran without mTLS; add the principals Envoy sets under mTLS to it.
    let lines = lines("opa/opa_decision_logs.jsonl");
    let mut v: Value = serde_json::from_str(&lines[1]).unwrap();
    v["input"]["attributes"]["source"]["principal"] =
        "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer".into();
    v["input"]["attributes"]["destination"]["principal"] =
        "spiffe://cluster.local/ns/bookstore/sa/bookstore".into();
    let e = one(&v.to_string());
    assert_eq!(
        s(&e.caller.principal),
        Some("spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer")
    );
    assert_eq!(s(&e.caller.namespace), Some("bookbuyer"));
    assert_eq!(
        s(&e.callee.principal),
        Some("spiffe://cluster.local/ns/bookstore/sa/bookstore")
    );
    assert_eq!(s(&e.callee.namespace), Some("bookstore"));
}

fn opa_upload(gzip: bool) -> Vec<u8> {
    // What OPA's decision-log plugin POSTs: a JSON array of events, gzip-compressed.
    let body = format!("[{}]", lines("opa/opa_decision_logs.jsonl").join(","));
    if !gzip {
        return body.into_bytes();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    gz.finish().unwrap()
}

#[test]
fn opa_upload_arrays_plain_and_gzipped_match_the_single_records() {
    let singles: Vec<Event> = lines("opa/opa_decision_logs.jsonl")
        .iter()
        .map(|l| one(l))
        .collect();
    for gzip in [false, true] {
        let events = decode(&opa_upload(gzip));
        assert_eq!(events.len(), 3);
        for (i, (a, b)) in events.iter().zip(&singles).enumerate() {
            assert_eq!(a.record_index, i as u32);
            assert_eq!(a.raw, b.raw, "each event's raw is its exact element");
            let mut a = a.clone();
            a.record_index = 0;
            assert_eq!(&a, b, "gzip={gzip} element {i}");
        }
    }
}

// ---------- Hubble ----------

#[test]
fn hubble_exporter_lines() {
    let lines = lines("hubble/hubble_flows.jsonl");
    let e = one(&lines[0]);
    assert_eq!(
        (e.format, e.kind, e.decision),
        (SourceFormat::Hubble, Kind::Flow, Decision::Deny)
    );
    assert_eq!(s(&e.reason), Some("INVALID_SOURCE_IP"));
    assert_eq!(
        (s(&e.caller.ip), s(&e.callee.ip)),
        (Some("fe80::64d8:8aff:fe72:fc14"), Some("ff02::2"))
    );
    assert_eq!(s(&e.action), Some("ICMPv6"));
    assert_eq!(e.is_reply, Some(false));

    let e = one(&lines[1]);
    assert_eq!(e.decision, Decision::Deny);
    assert_eq!(s(&e.reason), Some("POLICY_DENIED"));
    assert_eq!(
        (s(&e.caller.principal), s(&e.caller.namespace)),
        (Some("xwing"), Some("default"))
    );
    assert_eq!(
        (s(&e.caller.ip), e.caller.port),
        (Some("10.244.1.60"), Some(44916))
    );
    assert_eq!(s(&e.callee.principal), Some("deathstar-7848d6c4d5-th9v2"));
    assert_eq!(
        (s(&e.callee.ip), e.callee.port),
        (Some("10.244.1.5"), Some(80))
    );
    assert_eq!(s(&e.action), Some("TCP"));
    assert_eq!(e.time_ns, Some(ns("2023-08-21T12:12:18.510175415Z")));
}

#[test]
fn hubble_bare_flows_decode_like_wrapped_ones() {
    for line in lines("hubble/hubble_flows.jsonl") {
        let v: Value = serde_json::from_str(&line).unwrap();
        let bare = v["flow"].to_string();
        let mut a = one(&line);
        let mut b = one(&bare);
        a.raw = Default::default();
        b.raw = Default::default();
        assert_eq!(a, b);
    }
}

#[test]
fn hubble_forwarded_replies_are_kept_and_marked() {
    let line = &lines("hubble/hubble_flows.jsonl")[1];
    let mut v: Value = serde_json::from_str(line).unwrap();
    v["flow"]["verdict"] = "FORWARDED".into();
    v["flow"]["is_reply"] = true.into();
    let e = one(&v.to_string());
    assert_eq!(
        (e.decision, e.is_reply, e.reason),
        (Decision::Allow, Some(true), None)
    );
}

// ---------- Kubernetes audit (Falco) ----------

/// Expected mapping of a Kubernetes audit event, read from its own fields.
fn check_k8s(v: &Value, e: &Event<'_>, ctx: &str) {
    let code = v.pointer("/responseStatus/code").and_then(Value::as_i64);
    let authz = v
        .pointer("/annotations/authorization.k8s.io~1decision")
        .and_then(Value::as_str);
    let expect = if code == Some(401) {
        (Kind::Authn, Decision::Deny)
    } else if code == Some(403) || authz == Some("forbid") {
        (Kind::Authz, Decision::Deny)
    } else if authz == Some("allow") || code.is_some_and(|c| c < 400) {
        (Kind::AdminAudit, Decision::Allow)
    } else {
        (Kind::AdminAudit, Decision::Unknown)
    };
    assert_eq!((e.kind, e.decision), expect, "{ctx}");
    let str_at = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    assert_eq!(s(&e.caller.principal), str_at("/user/username"), "{ctx}");
    assert_eq!(s(&e.caller.ip), str_at("/sourceIPs/0"), "{ctx}");
    assert_eq!(s(&e.action), str_at("/verb"), "{ctx}");
    assert_eq!(
        s(&e.callee.namespace),
        str_at("/objectRef/namespace"),
        "{ctx}"
    );
    assert_eq!(s(&e.callee.service), Some("kube-apiserver"), "{ctx}");
    if let Some(uri) = str_at("/requestURI") {
        assert_eq!(s(&e.resource), Some(uri), "{ctx}");
    }
    assert_eq!(s(&e.event_id), str_at("/auditID"), "{ctx}");
    assert_eq!(e.status_code, code.map(|c| c as i32), "{ctx}");
}

#[test]
fn falco_k8s_audit_trace_files() {
    let dir = data_path("k8s-audit-falco/trace_files");
    let (mut decoded, mut rejected, mut files) = (0, Vec::new(), 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        files += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for (i, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let ctx = format!("{name}:{}", i + 1);
            match Decoder::default().decode_with(line.as_bytes(), |_| {}) {
                Err(err) => rejected.push((ctx, err.to_string())),
                Ok(_) => {
                    let e = one(line);
                    assert_eq!(e.format, SourceFormat::K8sAudit, "{ctx}");
                    check_k8s(&serde_json::from_str(line).unwrap(), &e, &ctx);
                    decoded += 1;
                }
            }
        }
    }
    assert_eq!(files, 47);
    // The README counts 52 events; one of them is Falco's own malformed-input test.
    assert_eq!(decoded, 51);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].0.starts_with("fal_01_003.json"), "{rejected:?}");
}

#[test]
fn falco_malformed_event_is_rejected_even_when_pinned() {
    // Falco expects "data not recognized as a k8s audit event" for this file.
    let raw = std::fs::read(data_path("k8s-audit-falco/trace_files/fal_01_003.json")).unwrap();
    let err = Decoder::default().decode_with(&raw, |_| {}).unwrap_err();
    assert_eq!(err.kind_name(), "unknown_format");
    assert_eq!(err.raw, raw);
    let err = Decoder::new(DecoderConfig::default(), Some(SourceFormat::K8sAudit))
        .decode_with(&raw, |_| {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "k8s_audit: at /verb: required field is missing"
    );
}

#[test]
fn falco_unexpected_caller_pair() {
    // The allowlist pair the data README names: some-user must trip it, minikube-user not.
    let some = std::fs::read_to_string(data_path(
        "k8s-audit-falco/trace_files/some-user_creates_namespace_foo.json",
    ))
    .unwrap();
    let e = one(some.trim());
    assert_eq!(s(&e.caller.principal), Some("some-user"));
    assert_eq!(
        (s(&e.action), s(&e.resource)),
        (Some("create"), Some("/api/v1/namespaces"))
    );
    assert_eq!((e.kind, e.decision), (Kind::AdminAudit, Decision::Allow));
    assert_eq!(s(&e.caller.ip), Some("192.168.99.1"));
    assert_eq!(e.time_ns, Some(ns("2018-10-25T13:58:49.730588Z")));

    let mini = std::fs::read_to_string(data_path(
        "k8s-audit-falco/trace_files/minikube_creates_namespace_foo.json",
    ))
    .unwrap();
    let e = one(mini.trim());
    assert_eq!(s(&e.caller.principal), Some("minikube-user"));
    assert_eq!(s(&e.action), Some("create"));
}

// ---------- Kubernetes audit shapes (Panther) ----------

fn panther_logs(shape: &str) -> Vec<Value> {
    lines(&format!("panther/by_event_shape/{shape}.jsonl"))
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["log"].clone())
        .collect()
}

#[test]
fn panther_k8s_audit_events() {
    let logs = panther_logs("k8s_audit");
    assert_eq!(logs.len(), 188);
    let mut denied = 0;
    for (i, v) in logs.iter().enumerate() {
        let raw = v.to_string();
        let e = one(&raw);
        assert_eq!(e.format, SourceFormat::K8sAudit, "event {i}");
        check_k8s(v, &e, &format!("panther k8s event {i}"));
        denied += (e.decision == Decision::Deny) as usize;
    }
    assert_eq!(denied, 37, "the 403s in the sample");
}

#[test]
fn panther_eks_anonymous_access_event() {
    let logs = panther_logs("k8s_audit");
    let v = logs.iter().find(|v| v["auditID"] == "abcde12345").unwrap();
    let e = one(&v.to_string());
    assert_eq!(s(&e.caller.principal), Some("system:anonymous"));
    assert_eq!((e.kind, e.decision), (Kind::AdminAudit, Decision::Allow));
    assert_eq!(
        s(&e.reason),
        Some("RBAC: allowed by ClusterRoleBinding system:public-info-viewer")
    );
    assert_eq!(
        s(&e.resource),
        Some("/api/v1/namespaces/default/pods/test-pod")
    );
    assert_eq!(s(&e.callee.namespace), Some("default"));
    // Panther writes zone-less timestamps; they are UTC.
    assert_eq!(e.time_ns, Some(ns("2022-11-29T00:09:04.38Z")));
}

#[test]
fn panther_gke_audit_events() {
    let logs = panther_logs("gcp_k8s_audit");
    assert_eq!(logs.len(), 41);
    for (i, v) in logs.iter().enumerate() {
        let e = one(&v.to_string());
        let ctx = format!("gke event {i}");
        assert_eq!(e.format, SourceFormat::GkeAudit, "{ctx}");
        let p = &v["protoPayload"];
        let granted: Vec<bool> = p["authorizationInfo"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x["granted"].as_bool().unwrap_or(false))
                    .collect()
            })
            .unwrap_or_default();
        let code = p.pointer("/status/code").and_then(Value::as_i64);
        // gRPC 16 (UNAUTHENTICATED) or 7 (PERMISSION_DENIED), or any permission not granted.
        let expect = if code == Some(16) || code == Some(7) || granted.contains(&false) {
            Decision::Deny
        } else if !granted.is_empty() {
            Decision::Allow
        } else {
            Decision::Unknown
        };
        assert_eq!(e.decision, expect, "{ctx}");
        assert_eq!(
            s(&e.caller.principal),
            p.pointer("/authenticationInfo/principalEmail")
                .and_then(Value::as_str),
            "{ctx}"
        );
        assert_eq!(
            s(&e.caller.ip),
            p.pointer("/requestMetadata/callerIP")
                .and_then(Value::as_str),
            "{ctx}"
        );
        assert_eq!(s(&e.resource), p["resourceName"].as_str(), "{ctx}");
        assert_eq!(
            s(&e.action),
            p["methodName"].as_str().and_then(|m| m.rsplit('.').next()),
            "{ctx}"
        );
    }
}

#[test]
fn panther_aks_wrapped_audit_events() {
    let logs = panther_logs("azure_k8s_audit");
    assert_eq!(logs.len(), 34);
    for (i, v) in logs.iter().enumerate() {
        let raw = v.to_string();
        let e = one(&raw);
        let ctx = format!("aks event {i}");
        assert_eq!(e.format, SourceFormat::K8sAudit, "{ctx}");
        assert_eq!(
            e.raw.as_ref(),
            raw.as_bytes(),
            "{ctx}: raw is the whole wrapper"
        );
        let inner: Value = serde_json::from_str(v["properties"]["log"].as_str().unwrap()).unwrap();
        check_k8s(&inner, &e, &ctx);
    }
}

// ---------- Pinning ----------

#[test]
fn pinned_formats_decode_their_samples_and_refuse_others() {
    let opa = &lines("opa/opa_decision_logs.jsonl")[1];
    assert_eq!(
        decode_as(opa.as_bytes(), Some(SourceFormat::Opa))[0].decision,
        Decision::Deny
    );
    let hubble = &lines("hubble/hubble_flows.jsonl")[1];
    let err = Decoder::new(DecoderConfig::default(), Some(SourceFormat::Opa))
        .decode_with(hubble.as_bytes(), |_| {})
        .unwrap_err();
    assert_eq!(err.format, Some(SourceFormat::Opa));
    assert_eq!(err.kind_name(), "missing_field");
    let err = Decoder::new(DecoderConfig::default(), Some(SourceFormat::Native))
        .decode_with(opa.as_bytes(), |_| {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "native: at /schema: required field is missing"
    );
}
