//! The handlers: each reads its request, calls what `AppState` holds, and answers.

use super::*;

pub(super) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body = ErrorBody {
        error: message.to_string(),
    };
    (status, Json(body)).into_response()
}

pub(super) async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not consuming yet\n").into_response()
    }
}

#[derive(Deserialize, JsonSchema)]
pub(super) struct QueryBody {
    /// One read-only statement (SELECT, WITH, EXPLAIN, SHOW).
    sql: String,
    /// The answer's format (default: from `Accept`, else json).
    #[serde(default)]
    format: Option<sql::Format>,
}

pub(super) async fn query(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let q: QueryBody = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "body: {e} (expected {{\"sql\": \"…\", \"format\": \"json|ndjson|csv|arrow\"}})"
                ),
            );
        }
    };
    let format = q
        .format
        .or_else(|| {
            headers
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .and_then(sql::Format::from_accept)
        })
        .unwrap_or(sql::Format::Json);
    let mut d = Detail {
        sql: Some(q.sql.clone()),
        ..Default::default()
    };
    match s.queries.run(s.catalog.clone(), q.sql, format).await {
        Ok(out) => {
            d.rows = Some(out.rows as u64);
            let body = Body::from_stream(futures::stream::iter(
                out.chunks.into_iter().map(Ok::<_, std::io::Error>),
            ));
            let r = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
            with_detail(r, d)
        }
        Err(e) => {
            d.reason = Some(e.to_string());
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut r = error(status, &e);
            if matches!(e, sql::QueryFail::Busy(_)) {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            with_detail(r, d)
        }
    }
}

#[derive(Deserialize, JsonSchema)]
pub(super) struct AlertFilter {
    /// open, acknowledged, resolved or suppressed (another is a 400).
    status: Option<Status>,
    /// A rule id.
    rule: Option<String>,
    /// info, low, medium, high or critical (another is a 400).
    severity: Option<Severity>,
    /// Alerts to skip (paging).
    #[serde(default)]
    offset: usize,
    /// Alerts on the page (default 100, at most 1000).
    limit: Option<usize>,
    /// `vigil` (default: the alerts as Vigil stores them) or `ocsf` (each an OCSF 1.8.0
    /// Detection Finding, in `findings`).
    #[serde(default)]
    format: vigil_detect::alerts::AlertFormat,
    /// Alerts detected at or after this time (RFC 3339).
    from: Option<String>,
    /// Alerts detected before this time (RFC 3339).
    to: Option<String>,
}

/// An RFC 3339 time as nanoseconds, or why not (naming the parameter).
fn time_param(name: &str, v: Option<&str>) -> Result<Option<i64>, String> {
    let Some(v) = v else { return Ok(None) };
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map(Some)
        .ok_or_else(|| format!("{name}: {v:?} is not an RFC 3339 time (2026-12-03T10:00:00Z)"))
}

/// Most alerts one page holds.
pub(super) const MAX_PAGE: usize = 1000;

pub(super) async fn alerts(State(s): State<AppState>, Query(f): Query<AlertFilter>) -> Response {
    let dir = s.cfg.data_dir.clone();
    let all = tokio::task::spawn_blocking(move || vigil_detect::alerts::read_revisions(&dir)).await;
    let all = match all {
        Ok(Ok(a)) => vigil_detect::alerts::latest(a),
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let limit = f.limit.unwrap_or(100).min(MAX_PAGE);
    let (from, to) = match (
        time_param("from", f.from.as_deref()),
        time_param("to", f.to.as_deref()),
    ) {
        (Ok(a), Ok(b)) => (a.unwrap_or(i64::MIN), b.unwrap_or(i64::MAX)),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let matching: Vec<&Alert> = all
        .iter()
        .filter(|a| from <= a.detected_ns && a.detected_ns < to)
        .filter(|a| f.status.is_none_or(|x| a.status == x))
        .filter(|a| f.rule.as_ref().is_none_or(|x| &a.rule_id == x))
        .filter(|a| f.severity.is_none_or(|x| a.severity == x))
        .collect();
    let page: Vec<&Alert> = matching
        .iter()
        .skip(f.offset)
        .take(limit)
        .copied()
        .collect();
    let next = (f.offset + page.len() < matching.len()).then_some(f.offset + page.len());
    let d = Detail {
        rows: Some(page.len() as u64),
        ..Default::default()
    };
    if f.format == vigil_detect::alerts::AlertFormat::Ocsf {
        let page = super::FindingsPage {
            findings: page
                .into_iter()
                .map(vigil_detect::alerts::detection_finding)
                .collect(),
            total: matching.len(),
            next_offset: next,
        };
        return with_detail(Json(page).into_response(), d);
    }
    let page = AlertsPage {
        alerts: page.into_iter().cloned().collect(),
        total: matching.len(),
        next_offset: next,
    };
    with_detail(Json(page).into_response(), d)
}

/// `GET /v1/alerts/{id}`: every revision of one alert, oldest first.
pub(super) async fn alert(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let dir = s.cfg.data_dir.clone();
    let all = tokio::task::spawn_blocking(move || vigil_detect::alerts::read_revisions(&dir)).await;
    let mut revisions: Vec<Alert> = match all {
        Ok(Ok(a)) => a.into_iter().filter(|a| a.alert_id == id).collect(),
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if revisions.is_empty() {
        return error(StatusCode::NOT_FOUND, "there is no alert with this id");
    }
    revisions.sort_by_key(|a| a.revision);
    let d = Detail {
        rows: Some(revisions.len() as u64),
        ..Default::default()
    };
    with_detail(Json(AlertRevisions { revisions }).into_response(), d)
}

/// `GET /v1/whoami`: the caller as the API sees it.
pub(super) async fn whoami(axum::Extension(p): axum::Extension<Principal>) -> Response {
    let roles = p.roles.iter().map(|r| r.as_str().to_owned()).collect();
    Json(Caller {
        principal: p.id,
        roles,
    })
    .into_response()
}

/// `GET /v1/rules`: the rules as the rules directory defines them now.
pub(super) async fn rules(State(s): State<AppState>) -> Response {
    let list = s.rules.clone();
    match tokio::task::spawn_blocking(move || list()).await {
        Ok(Ok(list)) => {
            let d = Detail {
                rows: Some(list.rules.len() as u64),
                ..Default::default()
            };
            with_detail(Json(list).into_response(), d)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize, Default, JsonSchema)]
pub(super) struct ChangeBody {
    /// Why (kept with the revision and in Vigil's own log).
    note: Option<String>,
}

pub(super) async fn change(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let action = match action.as_str() {
        "ack" | "acknowledge" => Action::Acknowledge,
        "resolve" => Action::Resolve,
        "suppress" => Action::Suppress,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "no such action (ack, resolve, suppress)",
            );
        }
    };
    let b: ChangeBody = if body.is_empty() {
        ChangeBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body: {e} (expected {{\"note\": \"…\"}})"),
                );
            }
        }
    };
    let Some(apply) = s.lifecycle.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "alert changes are not available in this process",
        );
    };
    let cmd = Command {
        alert_id: id,
        action,
        by: p.id.clone(),
        note: b.note,
        at_ns: vigil_store::clock::now_ns(),
    };
    if let Err(e) = cmd.check() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let reply = tokio::task::spawn_blocking(move || apply(cmd)).await;
    match reply {
        Ok(Ok(Reply::Applied { alert })) => Json(alert).into_response(),
        Ok(Ok(Reply::Refused { refusal })) => {
            let status = match refusal {
                Refusal::NoSuchAlert { .. } => StatusCode::NOT_FOUND,
                Refusal::NotAllowed { .. } => StatusCode::CONFLICT,
                Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
                Refusal::Elsewhere => StatusCode::SERVICE_UNAVAILABLE,
            };
            let reason = refusal.to_string();
            let r = error(status, &reason);
            with_detail(
                r,
                Detail {
                    reason: Some(reason),
                    ..Default::default()
                },
            )
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub(super) async fn reload(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Response {
    let reload = s.reload.clone();
    match tokio::task::spawn_blocking(move || reload(&p.id)).await {
        Ok(Ok(done)) => Json(done).into_response(),
        Ok(Err(e @ ReloadFail::Invalid(_))) => {
            let reason = e.to_string();
            with_detail(
                error(StatusCode::UNPROCESSABLE_ENTITY, &reason),
                Detail {
                    reason: Some(reason),
                    ..Default::default()
                },
            )
        }
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub(super) async fn keys(State(s): State<AppState>) -> Response {
    let path = vigil_store::layout::registry(&s.cfg.data_dir);
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, format!("no key registry: {e}")),
    }
}

#[derive(Deserialize, JsonSchema)]
pub(super) struct RotateQuery {
    /// How long the current keys keep signing beside the new one (default 3600).
    #[serde(default = "default_overlap")]
    overlap_secs: u64,
}

pub(super) fn default_overlap() -> u64 {
    3600
}

pub(super) async fn rotate(State(s): State<AppState>, Query(q): Query<RotateQuery>) -> Response {
    let Some(cp) = s.checkpoints.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no signer in this process");
    };
    let overlap_ms = i64::try_from(q.overlap_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    match tokio::task::spawn_blocking(move || cp.rotate(overlap_ms)).await {
        Ok(Ok((public_key, registry))) => {
            tracing::warn!(%public_key, "checkpoint signing key rotated through the API");
            Json(Rotated {
                public_key,
                registry,
            })
            .into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The newest signed checkpoint of every log (notes as text).
pub(super) async fn checkpoints(State(s): State<AppState>) -> Response {
    let dir = s.cfg.data_dir.clone();
    let r = tokio::task::spawn_blocking(move || -> Result<Vec<LatestCheckpoint>, String> {
        let root = vigil_store::layout::checkpoints(&dir);
        let mut out = Vec::new();
        for id in vigil_store::files::partitions_under(&root).map_err(|e| e.to_string())? {
            let log =
                vigil_store::checkpoint::Checkpointer::log_dir(&root, &id.topic, id.partition)
                    .map_err(|e| e.to_string())?;
            let notes = vigil_store::checkpoint::list_notes(&log).map_err(|e| e.to_string())?;
            if let Some((size, path)) = notes.last() {
                let note = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
                out.push(LatestCheckpoint {
                    log: id.to_string(),
                    tree_size: *size,
                    note,
                });
            }
        }
        Ok(out)
    })
    .await;
    match r {
        Ok(Ok(checkpoints)) => Json(LatestCheckpoints { checkpoints }).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub(super) async fn upload(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<Principal>,
    ext: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Response {
    let Some(tx) = s.uploads.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "uploads are not taken in this process",
        );
    };
    if body.is_empty() {
        return error(StatusCode::BAD_REQUEST, "an empty upload");
    }
    let Some(_slot) = s
        .upload_slots
        .take(&who.id, s.cfg.max_uploads_per_credential)
    else {
        let why = format!(
            "{} has {} uploads being stored, as many as one credential may: try again shortly",
            who.id, s.cfg.max_uploads_per_credential
        );
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, &why);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return with_detail(
            r,
            Detail {
                reason: Some(why),
                ..Default::default()
            },
        );
    };
    let max = s.cfg.max_decompressed_bytes;
    let body = body.to_vec();
    let (body, inflated_bytes) = match tokio::task::spawn_blocking(move || {
        let n = vigil_schemas::inflated_len(&body, max).unwrap_or(max);
        (body, n)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("upload: {e}")),
    };
    let (done, stored) = tokio::sync::oneshot::channel();
    if tx
        .send(Upload {
            body,
            principal: who.id.clone(),
            peer: ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
            inflated_bytes,
            done,
        })
        .await
        .is_err()
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the upload log is gone");
    }
    match stored.await {
        Ok(Ok(Uploaded {
            events,
            rejected: None,
        })) => with_detail(
            Json(UploadAnswer { events }).into_response(),
            Detail {
                rows: Some(events as u64),
                ..Default::default()
            },
        ),
        Ok(Ok(Uploaded {
            rejected: Some(why),
            ..
        })) => {
            let r = (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": why, "stored": "as a rejected record" })),
            )
                .into_response();
            with_detail(
                r,
                Detail {
                    reason: Some(why),
                    ..Default::default()
                },
            )
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("not stored: {e}")),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "not stored"),
    }
}

#[derive(Deserialize, JsonSchema)]
pub(super) struct ProofQuery {
    /// The log: `<topic>/<partition>`.
    log: String,
    /// Inclusion: the record's leaf index in its log.
    index: Option<u64>,
    /// Inclusion: the record's Kafka offset (instead of `index`).
    offset: Option<i64>,
    /// Consistency: the older tree size.
    from: Option<u64>,
    /// Consistency: the newer tree size (default: the newest signed).
    to: Option<u64>,
}

/// Run a proof builder off the async threads; its errors are about what was asked (404).
pub(super) async fn proof(
    log: &str,
    data_dir: PathBuf,
    build: impl FnOnce(&std::path::Path, &str, i32) -> Result<serde_json::Value, String>
    + Send
    + 'static,
) -> Response {
    let log = match log.parse::<vigil_store::LogId>() {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("log: {e}")),
    };
    match tokio::task::spawn_blocking(move || build(&data_dir, &log.topic, log.partition)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `?log=T/P&index=I` or `&offset=O`: the bundle `vigil verify-proof` checks.
pub(super) async fn inclusion(State(s): State<AppState>, Query(q): Query<ProofQuery>) -> Response {
    use vigil_store::proof::{Target, inclusion_json, prove_inclusion};
    let target = match (q.index, q.offset) {
        (Some(i), None) => Target::Index(i),
        (None, Some(o)) => Target::Offset(o),
        _ => return error(StatusCode::BAD_REQUEST, "give index or offset"),
    };
    proof(&q.log, s.cfg.data_dir.clone(), move |dir, t, p| {
        prove_inclusion(dir, t, p, target)
            .map(|b| inclusion_json(&b))
            .map_err(|e| e.to_string())
    })
    .await
}

/// `?log=T/P&from=N[&to=M]`: the log's consistency between two signed sizes.
pub(super) async fn consistency(
    State(s): State<AppState>,
    Query(q): Query<ProofQuery>,
) -> Response {
    use vigil_store::proof::{consistency_json, prove_consistency};
    let Some(from) = q.from else {
        return error(StatusCode::BAD_REQUEST, "give from (and to, or the newest)");
    };
    let to = q.to;
    proof(&q.log, s.cfg.data_dir.clone(), move |dir, t, p| {
        prove_consistency(dir, t, p, from, to)
            .map(|b| consistency_json(&b))
            .map_err(|e| e.to_string())
    })
    .await
}

/// The content type of `/metrics`: what prometheus-client encodes.
pub(super) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], (s.metrics)()).into_response()
}
