//! The analyst HTTP API (axum): thin handlers over explicit state.
//!
//! Every route but `/healthz` and `/readyz` needs a caller ([`auth`]) with one of the route's
//! roles: none is 401, the wrong ones 403. Every call but the health probes is handed to the
//! audit sink — who, route, SQL, rows, time taken, allowed or denied, and why — before its
//! response goes out; the sink is bounded, so a stalled audit log slows the API rather than
//! losing records.

mod audit;
pub mod auth;
mod console;
mod handlers;
mod openapi;
mod own_logs;
pub mod runner;
pub mod sql;

use handlers::*;
pub use openapi::Io;
use openapi::RouteDoc;
use openapi::openapi;
pub use own_logs::{OwnLogs, OwnLogsError};

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

pub use audit::{ApiCall, Audited, Phase, audit_event};
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

/// The rules as the rules directory defines them now (`GET /v1/rules`).
pub type RulesFn = dyn Fn() -> Result<RulesList, String> + Send + Sync;

/// One rule as `GET /v1/rules` describes it.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RuleInfo {
    pub id: String,
    /// The version alerts carry (`rule_version`).
    pub version: u32,
    pub title: String,
    pub severity: Severity,
    /// Its kind (`threshold`, `sequence`, `sigma`, …).
    pub kind: String,
    pub description: String,
    /// Where it is defined: a file of the rules directory, or `default:<name>`.
    pub source: String,
    /// The text of the file that defines it (at most 64 KiB; `None` past that).
    pub definition: Option<String>,
}

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
pub(crate) const API_SERVICE: &str = "vigil-api";

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
    /// Describes the rules (`GET /v1/rules`).
    pub rules: Arc<RulesFn>,
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
const ANY: &[Role] = &[Role::Reader, Role::Analyst, Role::Ingestor, Role::Admin];

/// Every error answer.
#[derive(Serialize, JsonSchema)]
pub(crate) struct ErrorBody {
    pub error: String,
}

/// A query's rows (`format: json`): one object per row, columns by name.
type Rows = Vec<serde_json::Map<String, serde_json::Value>>;

/// A proof bundle, as `vigil proof` writes it and `vigil verify-proof` checks it.
type ProofBundle = serde_json::Map<String, serde_json::Value>;

/// `GET /v1/alerts`.
#[derive(Serialize, JsonSchema)]
pub(crate) struct AlertsPage {
    /// Newest revision of each alert, newest first.
    pub alerts: Vec<Alert>,
    /// Alerts matching the filters (all pages).
    pub total: usize,
    /// The `offset` of the next page, if there is one.
    pub next_offset: Option<usize>,
}

/// `GET /v1/alerts/{id}`.
#[derive(Serialize, JsonSchema)]
pub(crate) struct AlertRevisions {
    /// Every revision of the alert, oldest first: what changed, by whom, when.
    pub revisions: Vec<Alert>,
}

/// `GET /v1/whoami`.
#[derive(Serialize, JsonSchema)]
pub(crate) struct Caller {
    /// `jwt:<iss>/<sub>` or `key:<name>`.
    pub principal: String,
    /// Its roles: what the console offers it.
    pub roles: Vec<String>,
}

/// `GET /v1/rules`.
#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
pub struct RulesList {
    /// The rules that load.
    pub rules: Vec<RuleInfo>,
    /// Loaded but not running (`enabled = false`, or the data they need is missing).
    pub inactive: Vec<InactiveRule>,
}

/// `GET /v1/alerts?format=ocsf`.
#[derive(Serialize, JsonSchema)]
pub(crate) struct FindingsPage {
    /// Newest revision of each alert as an OCSF 1.8.0 Detection Finding (class 2004), newest
    /// first.
    pub findings: Vec<serde_json::Value>,
    /// Alerts matching the filters (all pages).
    pub total: usize,
    /// The `offset` of the next page, if there is one.
    pub next_offset: Option<usize>,
}

/// `POST /v1/keys/rotate`.
#[derive(Serialize, JsonSchema)]
pub(crate) struct Rotated {
    /// The new signing key (C2SP note verifier key).
    pub public_key: String,
    /// The key registry to pin (`vigil verify --keys`).
    pub registry: String,
}

/// `GET /v1/checkpoints/latest`.
#[derive(Serialize, JsonSchema)]
pub(crate) struct LatestCheckpoints {
    pub checkpoints: Vec<LatestCheckpoint>,
}

#[derive(Serialize, JsonSchema)]
pub(crate) struct LatestCheckpoint {
    /// `<topic>/<partition>`.
    pub log: String,
    pub tree_size: u64,
    /// The signed note (C2SP tlog-checkpoint).
    pub note: String,
}

/// `POST /logs`.
#[derive(Serialize, JsonSchema)]
pub(crate) struct UploadAnswer {
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
        .add("get", "/v1/alerts", Some(READ), "Alerts (newest revision each), newest first; filters status, rule, severity, from, to (RFC 3339, on detection time); paging offset, limit; format=ocsf answers OCSF 1.8.0 Detection Findings (`findings`) instead.", Io::json::<AlertsPage>().query::<AlertFilter>(), get(alerts))
        .add("get", "/v1/alerts/{id}", Some(READ), "One alert: every revision, oldest first (who changed it, when, with what note).", Io::json::<AlertRevisions>(), get(alert))
        .add("post", "/v1/alerts/{id}/{action}", Some(CHANGE), "Alert lifecycle: action ack, resolve or suppress; body {\"note\"}.", Io::json::<Alert>().body::<ChangeBody>(), post(change))
        .add("get", "/v1/whoami", Some(ANY), "The caller: its principal and roles.", Io::json::<Caller>(), get(whoami))
        .add("get", "/v1/rules", Some(READ), "The rules as the rules directory defines them now: id, version, kind, source, definition, and why one does not run.", Io::json::<RulesList>(), get(rules))
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

/// The router: every route with its roles, behind authentication and audit; then the
/// console's files, which are neither (see [`console`]).
pub fn router(state: AppState) -> Router {
    let limit = state.cfg.max_body_bytes;
    let api = build()
        .router
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), read_whole))
        .layer(middleware::from_fn_with_state(state.clone(), audited));
    console::routes(api).with_state(state)
}

#[cfg(test)]
mod tests;
