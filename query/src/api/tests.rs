use super::openapi::openapi_doc;
use super::*;
use serde_json::Value;

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// Follow a `#/components/schemas/X` reference.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => v,
    }
}

/// An API state over an empty store in `dir`, with one admin key, recording calls with
/// `recorded` (what each record's writer answers): the calls it was asked to record.
fn test_state(
    dir: &std::path::Path,
    recorded: Result<(), String>,
) -> (AppState, Arc<std::sync::Mutex<Vec<ApiCall>>>) {
    std::fs::create_dir_all(vigil_store::layout::events(dir)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Audited>(16);
    let calls: Arc<std::sync::Mutex<Vec<ApiCall>>> = Arc::default();
    {
        let calls = calls.clone();
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                calls.lock().unwrap().push(a.call);
                let _ = a.done.send(recorded.clone());
            }
        });
    }
    let limits = sql::Limits {
        max_rows: 10,
        timeout_ms: 1000,
        memory_bytes: 1 << 20,
        max_result_bytes: 1 << 20,
    };
    let sharing = runner::Sharing {
        threads: 1,
        max_concurrent: 1,
        memory_total_bytes: 1 << 20,
    };
    let auth = Auth::new(
        vec![auth::ApiKey {
            name: "admin".into(),
            sha256: auth::hash_key("vk_admin_unit_0123456789"),
            roles: vec![Role::Admin],
        }],
        vec![],
        None,
    )
    .unwrap();
    let state = AppState {
        cfg: Arc::new(ApiConfig {
            data_dir: dir.to_owned(),
            max_body_bytes: 1 << 20,
            body_read_timeout_ms: 1000,
            max_uploads_per_credential: 1,
            max_decompressed_bytes: 1 << 20,
        }),
        catalog: Arc::new(crate::Catalog::open(dir).unwrap()),
        queries: runner::Runner::new(limits, sharing).unwrap(),
        auth: Arc::new(auth),
        lifecycle: None,
        reload: Arc::new(|_: &str| Err(ReloadFail::Unavailable("not here".into()))),
        rules: Arc::new(|| Ok(RulesList::default())),
        audit: tx,
        checkpoints: None,
        uploads: None,
        upload_slots: Arc::default(),
        ready: Arc::default(),
        metrics: Arc::new(String::new),
    };
    (state, calls)
}

/// A request with the admin key.
fn admin(method: &str, path: &str) -> axum::http::Request<Body> {
    axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", "Bearer vk_admin_unit_0123456789")
        .body(Body::empty())
        .unwrap()
}

/// When a changing call's intent cannot be recorded (the volume is full, say), it does
/// not run, and its answer says so — not replaced when its outcome cannot be recorded
/// either.
#[tokio::test]
async fn a_call_whose_intent_cannot_be_recorded_is_not_run_and_says_so() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let (state, calls) = test_state(dir.path(), Err("No space left on device".into()));
    let ran = Arc::new(AtomicBool::new(false));
    let app = {
        let ran = ran.clone();
        Router::new()
            .route(
                "/v1/change",
                post(move || {
                    ran.store(true, Ordering::SeqCst);
                    async { StatusCode::OK }
                })
                .route_layer(middleware::from_fn_with_state(ADMIN, require)),
            )
            .layer(middleware::from_fn_with_state(state.clone(), audited))
            .with_state(state)
    };
    let resp = app.oneshot(admin("POST", "/v1/change")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("so it was not run (No space left on device)"),
        "{text}"
    );
    assert!(!ran.load(Ordering::SeqCst), "the handler ran");
    // Both records were tried: the intent, then the outcome of the refusal.
    let phases: Vec<_> = calls.lock().unwrap().iter().map(|c| c.phase).collect();
    assert_eq!(phases, [Some(Phase::Intent), None]);
}

/// A changing call is recorded (intent) before its handler runs, and again with its
/// outcome; a handler that panics is answered 500 and recorded with why.
#[tokio::test]
async fn a_changing_call_is_recorded_before_it_runs_and_a_panic_is_answered_and_recorded() {
    use std::sync::Mutex;
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let (state, calls) = test_state(dir.path(), Ok(()));
    let seen_before_run = Arc::new(Mutex::new(None::<Vec<ApiCall>>));
    let app = {
        let (calls, seen) = (calls.clone(), seen_before_run.clone());
        Router::new()
            .route(
                "/v1/boom",
                post(move || {
                    *seen.lock().unwrap() = Some(calls.lock().unwrap().clone());
                    async move {
                        if true {
                            panic!("boom");
                        }
                        StatusCode::OK
                    }
                })
                .route_layer(middleware::from_fn_with_state(ADMIN, require)),
            )
            .layer(middleware::from_fn_with_state(state.clone(), audited))
            .with_state(state)
    };
    let resp = app.oneshot(admin("POST", "/v1/boom")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let before = seen_before_run.lock().unwrap().clone().unwrap();
    assert_eq!(
        before.len(),
        1,
        "the intent is recorded before the handler runs"
    );
    assert_eq!(before[0].phase, Some(Phase::Intent));
    assert_eq!(before[0].principal.as_deref(), Some("key:admin"));
    let all = calls.lock().unwrap().clone();
    assert_eq!(all.len(), 2);
    let outcome = &all[1];
    assert_eq!((outcome.phase, outcome.status), (Some(Phase::Outcome), 500));
    assert_eq!(outcome.call_id, all[0].call_id);
    assert!(
        outcome.reason.as_deref() == Some("the handler panicked: boom"),
        "{outcome:?}"
    );
    let ev: Value = serde_json::from_slice(&audit_event(&all[0], 1)).unwrap();
    assert_eq!(ev["api"]["phase"], "intent");
    assert!(ev.get("status_code").is_none(), "{ev}");
}

#[test]
fn the_openapi_document_describes_every_route_from_its_types_and_every_ref_resolves() {
    let doc = openapi_doc();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r}: not a component"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
    let op = |m: &str, p: &str| doc["paths"][p][m].clone();

    // The query body and its answer formats.
    let q = op("post", "/v1/query");
    let body = resolve(
        &doc,
        &q["requestBody"]["content"]["application/json"]["schema"],
    );
    assert_eq!(body["required"], serde_json::json!(["sql"]), "{body}");
    assert!(body["properties"]["format"].is_object());
    let content = q["responses"]["200"]["content"].as_object().unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(content["application/json"]["schema"]["type"], "array");

    // Query parameters, each its own parameter; the answer's alerts with their fields.
    let a = op("get", "/v1/alerts");
    let mut names: Vec<&str> = a["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "format", "from", "limit", "offset", "rule", "severity", "status", "to"
        ]
    );
    assert!(
        a["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["in"] == "query")
    );
    let page = resolve(
        &doc,
        &a["responses"]["200"]["content"]["application/json"]["schema"],
    );
    let alert = resolve(&doc, &page["properties"]["alerts"]["items"]);
    for f in [
        "alert_id",
        "revision",
        "rule_id",
        "status",
        "evidence",
        "group_key",
    ] {
        assert!(alert["properties"][f].is_object(), "Alert.{f}: {alert}");
    }

    // Path parameters; errors; roles; the probes open.
    let c = op("post", "/v1/alerts/{id}/{action}");
    assert_eq!(c["parameters"][0]["in"], "path");
    let note = resolve(
        &doc,
        &c["requestBody"]["content"]["application/json"]["schema"],
    );
    assert!(note["properties"]["note"].is_object());
    let err = resolve(
        &doc,
        &c["responses"]["403"]["content"]["application/json"]["schema"],
    );
    assert_eq!(err["required"], serde_json::json!(["error"]));
    assert_eq!(
        op("post", "/v1/rules/reload")["x-vigil-roles"],
        serde_json::json!(["admin"])
    );
    assert!(op("get", "/healthz")["security"].is_null());
    assert_eq!(
        op("get", "/metrics")["responses"]["200"]["content"]["application/openmetrics-text"]["schema"]
            ["type"],
        "string"
    );
}

/// The console's files answer anyone, with the policy, and are not API calls (no record);
/// everything else on the listener still is — an unknown path and an unauthenticated call
/// included — and the console's own calls (`whoami`, one alert, a bad time filter) answer as
/// the API does.
#[tokio::test]
async fn the_console_is_served_outside_the_audit_and_everything_else_is_recorded() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let (state, calls) = test_state(dir.path(), Ok(()));
    let app = router(state);
    let get = |p: &str| axum::http::Request::get(p).body(Body::empty()).unwrap();
    let r = app.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let r = app
        .clone()
        .oneshot(get("/assets/missing.js"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        calls.lock().unwrap().is_empty(),
        "console files are not recorded"
    );

    let r = app.clone().oneshot(get("/admin/secrets")).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app.clone().oneshot(get("/v1/whoami")).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .clone()
        .oneshot(admin("GET", "/v1/whoami"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    let who: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        who,
        serde_json::json!({"principal": "key:admin", "roles": ["admin"]})
    );
    let r = app
        .clone()
        .oneshot(admin("GET", "/v1/alerts/nope"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .clone()
        .oneshot(admin("GET", "/v1/alerts?from=yesterday"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let paths: Vec<(String, u16)> = (calls.lock().unwrap().iter())
        .map(|c| (c.path.clone(), c.status))
        .collect();
    assert_eq!(
        paths,
        [
            ("/admin/secrets".to_owned(), 404),
            ("/v1/whoami".to_owned(), 401),
            ("/v1/whoami".to_owned(), 200),
            ("/v1/alerts/nope".to_owned(), 404),
            ("/v1/alerts".to_owned(), 400),
        ]
    );
}
