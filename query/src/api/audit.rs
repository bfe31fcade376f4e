//! The API's own accounting: every call but the health probes recorded in Vigil's own log
//! (`vigil.api`), whatever the client does. Authentication's outcome and the role check
//! ([`require`]; a changing call's intent is recorded before it runs, and not run if it
//! cannot be), the call on its own task so that a client going away cancels neither its effect
//! nor its record ([`audited`]), a panic answered 500 and recorded, and the body read whole
//! only for an authenticated caller ([`read_whole`]). [`audit_event`] is the record's shape.
//! **Not for:** what the handlers do (`super`), who may call what (the route table).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

use super::auth::{AuthError, Principal, Role};
use super::{API_SERVICE, AppState, ClientCert, error};
use vigil_store::clock::now_ns;

/// One API call, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApiCall {
    pub time_ns: i64,
    /// The authenticated caller (`None`: not authenticated).
    pub principal: Option<String>,
    pub peer: Option<SocketAddr>,
    pub method: String,
    /// The request path (at most 256 bytes).
    pub path: String,
    pub status: u16,
    /// Whether authentication and the role check let it through.
    pub allowed: bool,
    /// Why it was denied, or what failed.
    pub reason: Option<String>,
    pub sql: Option<String>,
    pub rows: Option<u64>,
    pub duration_ms: f64,
    /// The same for a call's records: its intent and its outcome.
    pub call_id: String,
    /// For a call that changes something: `intent` (recorded before it runs; no status yet)
    /// or `outcome`. `None`: a call that changes nothing, recorded once.
    pub phase: Option<Phase>,
}

/// Which record of a changing call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Intent,
    Outcome,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Intent => "intent",
            Phase::Outcome => "outcome",
        }
    }
}

/// An API call for the audit log, and where to say it is recorded (durably: `true`).
#[derive(Debug)]
pub struct Audited {
    pub call: ApiCall,
    /// `Err`: why it was not recorded (the volume is full, say).
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The most of a query's SQL an audit record holds (its length and SHA-256 are always there).
pub(crate) const MAX_RECORDED_SQL_BYTES: usize = 64 << 10;

/// The native `admin_audit` event recording an API call (`seq` makes its id unique in this
/// process).
pub fn audit_event(c: &ApiCall, seq: u64) -> Vec<u8> {
    let t = chrono::DateTime::from_timestamp_nanos(c.time_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut caller = serde_json::Map::new();
    if let Some(p) = &c.principal {
        caller.insert("principal".into(), p.clone().into());
    }
    if let Some(peer) = c.peer {
        caller.insert("ip".into(), peer.ip().to_string().into());
        caller.insert("port".into(), peer.port().into());
    }
    let mut ev = serde_json::json!({
        "schema": vigil_schemas::NATIVE_SCHEMA_V1,
        "id": format!("api-{}-{}-{seq}", c.time_ns, std::process::id()),
        "time": t,
        "kind": "admin_audit",
        "decision": if c.allowed { "allow" } else { "deny" },
        "caller": caller,
        "callee": {"service": API_SERVICE},
        "action": format!("{} {}", c.method, c.path),
        "resource": c.path,
        "api": {"rows": c.rows, "duration_ms": c.duration_ms, "call": c.call_id},
    });
    if let Some(p) = c.phase {
        ev["api"]["phase"] = p.as_str().into();
    }
    if c.phase != Some(Phase::Intent) {
        ev["status_code"] = c.status.into();
    }
    if let Some(q) = &c.sql {
        // Whole up to a generous cap; past it, its start, with its length and digest, marked.
        let cut = q.floor_char_boundary(MAX_RECORDED_SQL_BYTES);
        use sha2::Digest;
        ev["api"]["sql"] = q[..cut].into();
        ev["api"]["sql_bytes"] = q.len().into();
        ev["api"]["sql_sha256"] = hex::encode(sha2::Sha256::digest(q.as_bytes())).into();
        ev["api"]["sql_truncated"] = (cut < q.len()).into();
    }
    if let Some(r) = &c.reason {
        ev["reason"] = r.chars().take(1024).collect::<String>().into();
    }
    serde_json::to_vec(&ev).unwrap_or_default()
}

/// What authentication found, for the role check.
#[derive(Clone)]
struct Authn(Result<Principal, AuthError>);

/// What a handler adds to the audit record.
#[derive(Clone, Default)]
pub(super) struct Detail {
    pub(super) sql: Option<String>,
    pub(super) rows: Option<u64>,
    pub(super) reason: Option<String>,
}

/// A refusal by authentication or the role check.
#[derive(Clone)]
struct Denied(String);

/// The request's body read whole before the handler runs, within `body_read_timeout_ms` and
/// `max_body_bytes` (after authentication: an unauthenticated client's body is never read), so
/// a client dripping its body holds a call open for no longer than that (408, recorded).
pub(super) async fn read_whole(State(s): State<AppState>, req: Request, next: Next) -> Response {
    // No valid credential: the role check refuses it without its body being read.
    if !matches!(req.extensions().get::<Authn>(), Some(Authn(Ok(_)))) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let wait = std::time::Duration::from_millis(s.cfg.body_read_timeout_ms);
    let d = |reason: String| Detail {
        reason: Some(reason),
        ..Default::default()
    };
    match tokio::time::timeout(wait, axum::body::to_bytes(body, s.cfg.max_body_bytes)).await {
        Ok(Ok(b)) => next.run(Request::from_parts(parts, Body::from(b))).await,
        Ok(Err(e)) if e.to_string().contains("length limit") => {
            let why = format!("the body is more than {} bytes", s.cfg.max_body_bytes);
            with_detail(error(StatusCode::PAYLOAD_TOO_LARGE, &why), d(why))
        }
        Ok(Err(e)) => {
            let why = format!("the body could not be read: {e}");
            with_detail(error(StatusCode::BAD_REQUEST, &why), d(why))
        }
        Err(_) => {
            let why = format!(
                "the body had not arrived {} ms after the request began",
                s.cfg.body_read_timeout_ms
            );
            with_detail(error(StatusCode::REQUEST_TIMEOUT, &why), d(why))
        }
    }
}

/// Authenticate, run the route, and record the call — on a task of its own, so that a client
/// closing its connection cancels neither the call nor its record; a panic is caught, answered
/// 500 and recorded.
pub(super) async fn audited(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::spawn(audited_call(s, req, next)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "an API call's task failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// What the role check needs to record a changing call's intent.
#[derive(Clone)]
struct CallStart {
    call_id: String,
    peer: Option<SocketAddr>,
    method: String,
    path: String,
    audit: tokio::sync::mpsc::Sender<Audited>,
    /// Set once the call's intent is recorded (a panic in the handler leaves it set).
    intent: Arc<AtomicBool>,
}

/// Set on the answer to a call that was not run (its intent could not be recorded).
#[derive(Clone, Copy)]
struct NotRun;

/// Whether a call can change anything (uploads, key rotation, lifecycle, reloads): recorded
/// before it runs, and again with its outcome.
fn changes(method: &str, path: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS") && path != "/v1/query"
}

/// Record `call` durably, or say why it was not.
async fn record(audit: &tokio::sync::mpsc::Sender<Audited>, call: ApiCall) -> Result<(), String> {
    let (done, recorded) = tokio::sync::oneshot::channel();
    if audit.send(Audited { call, done }).await.is_err() {
        return Err("the audit log writer is gone".into());
    }
    recorded
        .await
        .unwrap_or_else(|_| Err("the audit log writer is gone".into()))
}

/// The answer to a call that could not be recorded: nothing ran, and why.
fn unrecorded(why: &str, ran: bool) -> Response {
    let what = if ran {
        "the call could not be recorded, so its answer is withheld"
    } else {
        "the call could not be recorded, so it was not run"
    };
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("audit log unavailable: {what} ({why})"),
    )
}

fn new_call_id(time_ns: i64) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{time_ns:x}-{}-{n}", std::process::id())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

async fn audited_call(s: AppState, mut req: Request, next: Next) -> Response {
    use futures::FutureExt;
    let started = Instant::now();
    let path: String = req.uri().path().chars().take(256).collect();
    let probe = path == "/healthz" || path == "/readyz";
    let method = req.method().to_string();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let now_s = u64::try_from(now_ns() / 1_000_000_000).unwrap_or(0);
    // A bearer credential if one is given, else the connection's client certificate.
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let who = match (bearer, req.extensions().get::<ClientCert>()) {
        (None, Some(c)) => s.auth.authenticate_cert(&c.0),
        (bearer, _) => s.auth.authenticate(bearer, now_s),
    };
    let principal = who.as_ref().ok().map(|p| p.id.clone());
    let unauthenticated = who.as_ref().err().map(ToString::to_string);
    req.extensions_mut().insert(Authn(who));
    let call_id = new_call_id(now_ns());
    let intent = Arc::new(AtomicBool::new(false));
    req.extensions_mut().insert(CallStart {
        call_id: call_id.clone(),
        peer,
        method: method.clone(),
        path: path.clone(),
        audit: s.audit.clone(),
        intent: intent.clone(),
    });
    let resp = match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(p) => {
            let why = format!("the handler panicked: {}", panic_text(p.as_ref()));
            tracing::error!(%method, %path, reason = %why, "API call failed");
            with_detail(
                error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
                Detail {
                    reason: Some(why),
                    ..Default::default()
                },
            )
        }
    };
    if probe {
        return resp;
    }
    // Refused by the role check, or without a valid credential wherever it went (an unknown
    // path included: probing for routes is refused traffic too).
    let denied = resp
        .extensions()
        .get::<Denied>()
        .map(|d| d.0.clone())
        .or(unauthenticated);
    let detail = resp
        .extensions()
        .get::<Detail>()
        .cloned()
        .unwrap_or_default();
    let phase = intent.load(Ordering::SeqCst).then_some(Phase::Outcome);
    let status = resp.status().as_u16();
    let call = ApiCall {
        time_ns: now_ns(),
        // A refused credential names no one.
        principal,
        peer,
        method,
        path,
        status,
        allowed: denied.is_none(),
        reason: denied.or(detail.reason),
        sql: detail.sql,
        rows: detail.rows,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
        call_id,
        phase,
    };
    if let Err(why) = record(&s.audit, call).await {
        // A call refused because its intent could not be recorded did nothing: its answer
        // (503, not run) stands.
        if resp.extensions().get::<NotRun>().is_some() {
            return resp;
        }
        tracing::error!(reason = %why, "the API audit log did not record a call: refusing its response");
        return unrecorded(&why, true);
    }
    resp
}

/// The role check of one route.
pub(super) async fn require(
    State(roles): State<&'static [Role]>,
    mut req: Request,
    next: Next,
) -> Response {
    let who = req.extensions().get::<Authn>().map(|a| a.0.clone());
    let p = match who {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let mut r = error(StatusCode::UNAUTHORIZED, &e);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vigil\""),
            );
            r.extensions_mut().insert(Denied(e.to_string()));
            return r;
        }
        None => return error(StatusCode::INTERNAL_SERVER_ERROR, "no authentication ran"),
    };
    if !p.roles.iter().any(|r| roles.contains(r)) {
        let want: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let why = format!(
            "{} lacks the role for this route (one of: {})",
            p.id,
            want.join(", ")
        );
        let mut r = error(StatusCode::FORBIDDEN, &why);
        r.extensions_mut().insert(Denied(why));
        return r;
    }
    // A call that can change something is recorded before it runs: who, what, from where.
    let start = req.extensions().get::<CallStart>().cloned();
    let intent = match start {
        Some(c) if changes(&c.method, &c.path) => Some(c),
        _ => None,
    };
    if let Some(c) = &intent {
        let call = ApiCall {
            time_ns: now_ns(),
            principal: Some(p.id.clone()),
            peer: c.peer,
            method: c.method.clone(),
            path: c.path.clone(),
            status: 0,
            allowed: true,
            reason: None,
            sql: None,
            rows: None,
            duration_ms: 0.0,
            call_id: c.call_id.clone(),
            phase: Some(Phase::Intent),
        };
        if let Err(why) = record(&c.audit, call).await {
            tracing::error!(reason = %why, "the API audit log did not record a call's intent: not run");
            let mut r = unrecorded(&why, false);
            r.extensions_mut().insert(NotRun);
            return r;
        }
        c.intent.store(true, Ordering::SeqCst);
    }
    req.extensions_mut().insert(p);
    next.run(req).await
}

pub(super) fn with_detail(mut r: Response, d: Detail) -> Response {
    r.extensions_mut().insert(d);
    r
}
