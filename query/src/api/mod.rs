//! The analyst HTTP API (axum): thin handlers over explicit state.
//!
//! Every route but `/healthz` and `/readyz` needs a caller ([`auth`]) with one of the route's
//! roles: none is 401, the wrong ones 403. Every call but the health probes is handed to the
//! audit sink — who, route, SQL, rows, time taken, allowed or denied, and why — before its
//! response goes out; the sink is bounded, so a stalled audit log slows the API rather than
//! losing records.

mod audit;
pub mod auth;
pub mod runner;
pub mod sql;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vigil_detect::alerts::{Alert, Severity, Status};
use vigil_detect::lifecycle::{Action, Command, Refusal, Reply};

pub use audit::{ApiCall, Audited, MAX_RECORDED_SQL_BYTES, Phase, audit_event};
use audit::{Detail, audited, read_whole, require, with_detail};
use auth::{Auth, Principal, Role};

/// Settings of the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub data_dir: PathBuf,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// A request's body must have arrived whole this long after the call was let through.
    pub body_read_timeout_ms: u64,
    /// Uploads (`POST /logs`) one credential may have being stored at once; more: 429.
    pub max_uploads_per_credential: usize,
    /// How large an upload may decompress to (the decoder's limit).
    pub max_decompressed_bytes: usize,
}

/// Applies a lifecycle change (queued for, or applied by, whoever holds the detection lock).
pub type LifecycleFn = dyn Fn(Command) -> Result<Reply, String> + Send + Sync;

/// Reloads the detection rules for the named caller: what changed.
pub type ReloadFn = dyn Fn(&str) -> Result<RulesReloaded, ReloadFail> + Send + Sync;

/// What `POST /v1/rules/reload` changed.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RulesReloaded {
    /// The rules running now, the new or changed, the removed.
    #[serde(flatten)]
    pub reloaded: vigil_detect::run::Reloaded,
    /// Loaded but not running (`enabled = false`, or the data they need is missing).
    pub inactive: Vec<InactiveRule>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct InactiveRule {
    pub id: String,
    pub reason: String,
}

/// Why the rules were not reloaded.
#[derive(Debug, thiserror::Error)]
pub enum ReloadFail {
    /// Rules that do not load (file:line: why): nothing changed.
    #[error("rules do not load: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// Detection does not run here, or did not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// An OPA decision-log upload (`POST /logs`: the body as received, usually a gzip JSON array)
/// to store, and where to say what became of it once it is durable.
#[derive(Debug)]
pub struct Upload {
    pub body: Vec<u8>,
    /// Who uploaded it, and from where (stored with it, as its headers).
    pub principal: String,
    pub peer: Option<SocketAddr>,
    /// What it decompresses to (its size if not compressed; the limit if past it): what the
    /// writer bounds a batch by.
    pub inflated_bytes: usize,
    pub done: tokio::sync::oneshot::Sender<Result<Uploaded, String>>,
}

/// A stored upload: its events, or why it did not decode (then it is stored as a rejected
/// row, like a Kafka record that does not decode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub events: usize,
    pub rejected: Option<String>,
}

/// The callee service of the API's audit events (rules match on it).
pub const API_SERVICE: &str = "vigil-api";

/// The API's state.
#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<ApiConfig>,
    /// The store's tables, shared by every query (file statistics read once).
    pub catalog: Arc<crate::Catalog>,
    /// Where queries run (their own threads, a cap on how many at once, shared memory).
    pub queries: runner::Runner,
    pub auth: Arc<Auth>,
    /// `None`: alert lifecycle changes are not available in this process.
    pub lifecycle: Option<Arc<LifecycleFn>>,
    /// Replaces the running detection rules (`POST /v1/rules/reload`).
    pub reload: Arc<ReloadFn>,
    /// Where calls are recorded; a call's response waits until its record is durable.
    pub audit: tokio::sync::mpsc::Sender<Audited>,
    /// The running signer (`POST /v1/keys/rotate`; `None`: not here).
    pub checkpoints: Option<Arc<vigil_store::checkpoint::Checkpointer>>,
    /// Where `POST /logs` uploads go (`None`: not taken here).
    pub uploads: Option<tokio::sync::mpsc::Sender<Upload>>,
    /// Uploads being stored, per credential.
    pub upload_slots: Arc<Slots>,
    /// Ready: consuming (set by the binary).
    pub ready: Arc<AtomicBool>,
    /// OpenMetrics text of the process's metrics.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

/// Places per credential (uploads being stored by each).
#[derive(Debug, Default)]
pub struct Slots(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// A place taken, given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    who: String,
}

impl Slots {
    /// A place for `who` if it holds fewer than `max`.
    pub fn take(self: &Arc<Self>, who: &str, max: usize) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(who.to_owned()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            who: who.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.who);
            }
        }
    }
}

/// The SHA-256 of the verified client certificate of the request's TLS connection (set by the
/// server loop when mTLS is on).
#[derive(Clone, Copy, Debug)]
pub struct ClientCert(pub [u8; 32]);

const READ: &[Role] = &[Role::Reader, Role::Analyst, Role::Admin];
const CHANGE: &[Role] = &[Role::Analyst, Role::Admin];
const INGEST: &[Role] = &[Role::Ingestor];
const ADMIN: &[Role] = &[Role::Admin];

/// One route as `/openapi.json` describes it.
#[derive(Clone, Debug, Serialize)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    /// `None`: no authentication (the probes).
    pub roles: Option<&'static [Role]>,
    pub summary: &'static str,
    /// What it takes and answers.
    #[serde(skip)]
    pub io: Io,
}

/// The JSON Schema of a type, from its definition (schemars).
type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

fn schema_of<T: JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// A route's inputs and its answer, as the handler's own types: its query parameters, its
/// JSON body, and its 200 answer (`ok`, in the first of `content`; other content types as
/// text or bytes).
#[derive(Clone, Copy, Debug)]
pub struct Io {
    query: Option<SchemaFn>,
    body: Option<SchemaFn>,
    ok: Option<SchemaFn>,
    content: &'static [&'static str],
}

impl Io {
    /// Answers JSON of type `T`.
    fn json<T: JsonSchema>() -> Io {
        Io {
            query: None,
            body: None,
            ok: Some(schema_of::<T>),
            content: &["application/json"],
        }
    }

    /// Answers text.
    fn text() -> Io {
        Io {
            query: None,
            body: None,
            ok: None,
            content: &["text/plain"],
        }
    }

    /// Answers OpenMetrics text.
    fn openmetrics() -> Io {
        Io {
            content: &["application/openmetrics-text"],
            ..Io::text()
        }
    }

    /// Takes query parameters `Q`.
    fn query<Q: JsonSchema>(mut self) -> Io {
        self.query = Some(schema_of::<Q>);
        self
    }

    /// Takes a JSON body `B`.
    fn body<B: JsonSchema>(mut self) -> Io {
        self.body = Some(schema_of::<B>);
        self
    }

    /// Answers in these content types too.
    fn also(mut self, content: &'static [&'static str]) -> Io {
        self.content = content;
        self
    }
}

/// Every error answer.
#[derive(Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// A query's rows (`format: json`): one object per row, columns by name.
type Rows = Vec<serde_json::Map<String, serde_json::Value>>;

/// A proof bundle, as `vigil proof` writes it and `vigil verify-proof` checks it.
type ProofBundle = serde_json::Map<String, serde_json::Value>;

/// `GET /v1/alerts`.
#[derive(Serialize, JsonSchema)]
pub struct AlertsPage {
    /// Newest revision of each alert, newest first.
    pub alerts: Vec<Alert>,
    /// Alerts matching the filters (all pages).
    pub total: usize,
    /// The `offset` of the next page, if there is one.
    pub next_offset: Option<usize>,
}

/// `POST /v1/keys/rotate`.
#[derive(Serialize, JsonSchema)]
pub struct Rotated {
    /// The new signing key (C2SP note verifier key).
    pub public_key: String,
    /// The key registry to pin (`vigil verify --keys`).
    pub registry: String,
}

/// `GET /v1/checkpoints/latest`.
#[derive(Serialize, JsonSchema)]
pub struct LatestCheckpoints {
    pub checkpoints: Vec<LatestCheckpoint>,
}

#[derive(Serialize, JsonSchema)]
pub struct LatestCheckpoint {
    /// `<topic>/<partition>`.
    pub log: String,
    pub tree_size: u64,
    /// The signed note (C2SP tlog-checkpoint).
    pub note: String,
}

/// `POST /logs`.
#[derive(Serialize, JsonSchema)]
pub struct UploadAnswer {
    /// Decisions stored as events.
    pub events: usize,
}

/// The router under construction and the description of each route added.
struct Routes {
    router: Router<AppState>,
    docs: Vec<RouteDoc>,
}

impl Routes {
    /// Add a route: its handler behind the role check (if it has roles), and its description.
    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        roles: Option<&'static [Role]>,
        summary: &'static str,
        io: Io,
        handler: axum::routing::MethodRouter<AppState>,
    ) -> Routes {
        let handler = match roles {
            Some(r) => handler.route_layer(middleware::from_fn_with_state(r, require)),
            None => handler,
        };
        self.router = self.router.route(path, handler);
        self.docs.push(RouteDoc {
            method,
            path,
            roles,
            summary,
            io,
        });
        self
    }
}

/// Every route, described.
pub fn routes() -> Vec<RouteDoc> {
    build().docs
}

fn build() -> Routes {
    let r = Routes {
        router: Router::new(),
        docs: Vec::new(),
    };
    let ndjson_csv_arrow: &[&str] = &[
        "application/json",
        "application/x-ndjson",
        "text/csv",
        "application/vnd.apache.arrow.stream",
    ];
    r.add("get", "/healthz", None, "Alive.", Io::text(), get(|| async { "ok\n" }))
        .add("get", "/readyz", None, "Ready: consuming (503 until partitions are assigned).", Io::text(), get(readyz))
        .add("post", "/v1/query", Some(READ), "SQL over the store: body {\"sql\", \"format\": json|ndjson|csv|arrow}; read-only, capped in rows, time and memory.", Io::json::<Rows>().body::<QueryBody>().also(ndjson_csv_arrow), post(query))
        .add("get", "/v1/alerts", Some(READ), "Alerts (newest revision each), newest first; filters status, rule, severity; paging offset, limit.", Io::json::<AlertsPage>().query::<AlertFilter>(), get(alerts))
        .add("post", "/v1/alerts/{id}/{action}", Some(CHANGE), "Alert lifecycle: action ack, resolve or suppress; body {\"note\"}.", Io::json::<Alert>().body::<ChangeBody>(), post(change))
        .add("get", "/v1/keys", Some(READ), "The checkpoint signing keys (registry).", Io::text(), get(keys))
        .add("post", "/v1/rules/reload", Some(ADMIN), "Read the rules directory again and replace the running rules (unchanged ones keep their state; any rule that fails to load refuses the whole reload: 422); the rules now running, the new or changed, the removed.", Io::json::<RulesReloaded>(), post(reload))
        .add("post", "/v1/keys/rotate", Some(ADMIN), "Start signing checkpoints with a new key (query overlap_secs, default 3600: how long the current keys keep signing); the new registry to pin.", Io::json::<Rotated>().query::<RotateQuery>(), post(rotate))
        .add("get", "/v1/checkpoints/latest", Some(READ), "Each log's newest signed checkpoint.", Io::json::<LatestCheckpoints>(), get(checkpoints))
        .add("get", "/v1/proofs/inclusion", Some(READ), "Inclusion proof bundle: log=T/P and index or offset.", Io::json::<ProofBundle>().query::<ProofQuery>(), get(inclusion))
        .add("get", "/v1/proofs/consistency", Some(READ), "Consistency proof bundle: log=T/P, from, to (default newest).", Io::json::<ProofBundle>().query::<ProofQuery>(), get(consistency))
        .add("post", "/logs", Some(INGEST), "OPA decision-log upload (what OPA's decision_logs plugin sends: a gzip JSON array), chained under Vigil's own log vigil.opa/<n>.", Io::json::<UploadAnswer>(), post(upload))
        .add("get", "/metrics", Some(READ), "Prometheus metrics (OpenMetrics text).", Io::openmetrics(), get(metrics))
        .add("get", "/openapi.json", Some(READ), "This description.", Io::json::<serde_json::Map<String, serde_json::Value>>(), get(openapi))
}

/// The router: every route with its roles, behind authentication and audit.
pub fn router(state: AppState) -> Router {
    let limit = state.cfg.max_body_bytes;
    build()
        .router
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), read_whole))
        .layer(middleware::from_fn_with_state(state.clone(), audited))
        .with_state(state)
}

/// An OpenAPI 3.1 description of [`routes`]: each route's roles, parameters, body and answer,
/// their JSON Schemas derived from the handlers' own types (schemars).
pub fn openapi_doc() -> serde_json::Value {
    use schemars::generate::{Contract, SchemaSettings};
    use serde_json::{Value, json};
    let settings = |contract: Contract| {
        SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.contract = contract;
        })
    };
    // Inputs as they are read, answers as they are written; parameters inline (each becomes
    // its own parameter object).
    let mut inputs = settings(Contract::Deserialize).into_generator();
    let mut answers = settings(Contract::Serialize).into_generator();
    let mut params = settings(Contract::Deserialize)
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let error_schema = answers.subschema_for::<ErrorBody>().to_value();
    let mut paths = serde_json::Map::new();
    for r in routes() {
        let mut parameters: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if let Some(q) = r.io.query {
            let schema = q(&mut params).to_value();
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            if let Some(props) = schema["properties"].as_object() {
                for (name, s) in props {
                    parameters.push(json!({
                        "name": name, "in": "query",
                        "required": required.contains(&Value::from(name.as_str())),
                        "description": s.get("description").cloned().unwrap_or(Value::Null),
                        "schema": s,
                    }));
                }
            }
        }
        let mut content = serde_json::Map::new();
        for (i, ct) in r.io.content.iter().enumerate() {
            let schema = match (i, r.io.ok) {
                (0, Some(ok)) => ok(&mut answers).to_value(),
                _ if ct.starts_with("text/") => json!({"type": "string"}),
                _ => json!({"type": "string", "contentEncoding": "binary"}),
            };
            content.insert((*ct).to_owned(), json!({"schema": schema}));
        }
        let error = json!({"content": {"application/json": {"schema": error_schema}}});
        let with = |d: &str| {
            let mut e = error.clone();
            e["description"] = d.into();
            e
        };
        let mut op = json!({
            "summary": r.summary,
            "parameters": parameters,
            "responses": {"200": {"description": "OK", "content": content}},
        });
        if let Some(b) = r.io.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": b(&mut inputs).to_value()}}});
        }
        if let Some(roles) = r.roles {
            op["security"] = json!([{"bearer": []}]);
            op["x-vigil-roles"] = roles.iter().map(|x| x.as_str()).collect::<Vec<_>>().into();
            op["responses"]["400"] = with("the request is not valid (the reason in `error`)");
            op["responses"]["401"] = with("no valid credential");
            op["responses"]["403"] = with("none of the route's roles");
            op["responses"]["503"] =
                with("the call could not be recorded, or the service it needs does not run here");
        }
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    let mut schemas = inputs.take_definitions(true);
    schemas.extend(answers.take_definitions(true));
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Vigil analyst API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "An API key or a JWT (HS256, RS256, ES256)"}},
        },
    })
}

async fn openapi() -> Response {
    Json(openapi_doc()).into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body = ErrorBody {
        error: message.to_string(),
    };
    (status, Json(body)).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not consuming yet\n").into_response()
    }
}

#[derive(Deserialize, JsonSchema)]
struct QueryBody {
    /// One read-only statement (SELECT, WITH, EXPLAIN, SHOW).
    sql: String,
    /// The answer's format (default: from `Accept`, else json).
    #[serde(default)]
    format: Option<sql::Format>,
}

async fn query(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
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
struct AlertFilter {
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
}

/// Most alerts one page holds.
const MAX_PAGE: usize = 1000;

async fn alerts(State(s): State<AppState>, Query(f): Query<AlertFilter>) -> Response {
    let dir = s.cfg.data_dir.clone();
    let all = tokio::task::spawn_blocking(move || vigil_detect::alerts::read_revisions(&dir)).await;
    let all = match all {
        Ok(Ok(a)) => vigil_detect::alerts::latest(a),
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let limit = f.limit.unwrap_or(100).min(MAX_PAGE);
    let matching: Vec<&Alert> = all
        .iter()
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
    let page = AlertsPage {
        alerts: page.into_iter().cloned().collect(),
        total: matching.len(),
        next_offset: next,
    };
    with_detail(Json(page).into_response(), d)
}

#[derive(Deserialize, Default, JsonSchema)]
struct ChangeBody {
    /// Why (kept with the revision and in Vigil's own log).
    note: Option<String>,
}

async fn change(
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

async fn reload(
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

async fn keys(State(s): State<AppState>) -> Response {
    let path = vigil_store::layout::registry(&s.cfg.data_dir);
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, format!("no key registry: {e}")),
    }
}

#[derive(Deserialize, JsonSchema)]
struct RotateQuery {
    /// How long the current keys keep signing beside the new one (default 3600).
    #[serde(default = "default_overlap")]
    overlap_secs: u64,
}

fn default_overlap() -> u64 {
    3600
}

async fn rotate(State(s): State<AppState>, Query(q): Query<RotateQuery>) -> Response {
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
async fn checkpoints(State(s): State<AppState>) -> Response {
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

async fn upload(
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
struct ProofQuery {
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
async fn proof(
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
async fn inclusion(State(s): State<AppState>, Query(q): Query<ProofQuery>) -> Response {
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
async fn consistency(State(s): State<AppState>, Query(q): Query<ProofQuery>) -> Response {
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
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], (s.metrics)()).into_response()
}

#[cfg(test)]
mod tests {
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
            audit: tx,
            checkpoints: None,
            uploads: None,
            upload_slots: Arc::default(),
            ready: Arc::default(),
            metrics: Arc::new(String::new),
        };
        (state, calls)
    }

    fn admin_post(path: &str) -> axum::http::Request<Body> {
        axum::http::Request::post(path)
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
        let resp = app.oneshot(admin_post("/v1/change")).await.unwrap();
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
        let resp = app.oneshot(admin_post("/v1/boom")).await.unwrap();
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
        assert_eq!(names, ["limit", "offset", "rule", "severity", "status"]);
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
}
