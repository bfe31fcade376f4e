//! Alert delivery: a durable outbox in the data directory and the targets it drains into
//! (signed generic webhooks, Slack, Splunk HEC, Prometheus Alertmanager, a file or stdout).
//!
//! An alert revision is queued for every target whose routing matches it, as one file per
//! (target, alert, revision) under `<data_dir>/outbox/<target>/`, made durable before the
//! alert log is appended; it leaves the outbox only when the target answered 2xx. Failed
//! deliveries are retried with exponential backoff and jitter; one older than the target's
//! `max_age_ms` moves to `<data_dir>/outbox/<target>/undeliverable/` and is logged and
//! counted. Each target has its own bound on deliveries in flight. Every delivery carries the
//! idempotency key `<alert_id>:<revision>`, the same on every retry.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::alerts::{Alert, Severity, Status};
use vigil_store::clock::now_ns;

/// What a target speaks.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// JSON body, HMAC-SHA256 signature over timestamp and body.
    Webhook,
    /// Slack incoming webhook: a readable message.
    Slack,
    /// Splunk HTTP Event Collector (`/services/collector/event`, token auth).
    Splunk,
    /// Prometheus Alertmanager (`/api/v2/alerts`).
    Alertmanager,
    /// JSON lines appended to a file (`-`: stdout).
    File,
}

/// One delivery target, as configured.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Names the target's outbox directory: letters, digits, `-`, `_`.
    pub name: String,
    pub kind: TargetKind,
    /// Where to send (for `file`: the path, or `-`).
    pub url: String,
    /// The HMAC key (webhook) or token (Splunk). Prefer `secret_env`.
    #[serde(default)]
    pub secret: String,
    /// The environment variable holding the secret.
    #[serde(default)]
    pub secret_env: String,
    /// Only alerts at least this severe.
    #[serde(default = "min_severity")]
    pub min_severity: Severity,
    /// Only alerts of rules matching one of these patterns (`*` any run); empty: all.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Deliver updates of an alert (new revisions), not only new alerts. Default: true, but
    /// false for Slack.
    #[serde(default)]
    pub updates: Option<bool>,
    /// Deliveries in flight at most.
    #[serde(default = "concurrency")]
    pub concurrency: usize,
    /// One delivery's time limit.
    #[serde(default = "timeout_ms")]
    pub timeout_ms: u64,
    /// Retries back off from this…
    #[serde(default = "backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// …doubling up to this (each with ±50% jitter).
    #[serde(default = "backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// A delivery still failing this long after it was queued is undeliverable.
    #[serde(default = "max_age_ms")]
    pub max_age_ms: u64,
    /// Splunk: the event's sourcetype.
    #[serde(default = "sourcetype")]
    pub sourcetype: String,
}

fn min_severity() -> Severity {
    Severity::Info
}
fn concurrency() -> usize {
    4
}
fn timeout_ms() -> u64 {
    5000
}
fn backoff_initial_ms() -> u64 {
    500
}
fn backoff_max_ms() -> u64 {
    60_000
}
fn max_age_ms() -> u64 {
    24 * 3600 * 1000
}
fn sourcetype() -> String {
    "vigil:alert".into()
}

impl std::fmt::Debug for TargetConfig {
    // Secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &redacted_url(&self.url))
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("secret_env", &self.secret_env)
            .field("min_severity", &self.min_severity)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl TargetConfig {
    /// A generic webhook with default settings.
    pub fn webhook(name: &str, url: &str, secret: String) -> TargetConfig {
        TargetConfig {
            name: name.into(),
            kind: TargetKind::Webhook,
            url: url.into(),
            secret,
            secret_env: String::new(),
            min_severity: min_severity(),
            rules: Vec::new(),
            updates: None,
            concurrency: concurrency(),
            timeout_ms: timeout_ms(),
            backoff_initial_ms: backoff_initial_ms(),
            backoff_max_ms: backoff_max_ms(),
            max_age_ms: max_age_ms(),
            sourcetype: sourcetype(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("delivery target {target}: {message}")]
    Config { target: String, message: String },
    #[error("outbox {path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// A target ready to use: its settings, its secret resolved, its routing compiled.
#[derive(Clone)]
pub struct Target {
    pub cfg: TargetConfig,
    secret: String,
    rules: Vec<regex::Regex>,
}

impl std::fmt::Debug for Target {
    // The resolved secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cfg.fmt(f)
    }
}

impl Target {
    /// `env` resolves `secret_env` (the binary passes the process environment; this crate
    /// reads none of its own).
    pub fn new(
        cfg: TargetConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Target, DeliverError> {
        let err = |m: String| DeliverError::Config {
            target: cfg.name.clone(),
            message: m,
        };
        if cfg.name.is_empty()
            || !cfg
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err("name: use letters, digits, `-`, `_`".into()));
        }
        if cfg.concurrency == 0 {
            return Err(err("concurrency must be ≥ 1".into()));
        }
        if cfg.kind != TargetKind::File
            && !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://"))
        {
            return Err(err(format!(
                "url {:?} is not http(s)",
                redacted_url(&cfg.url)
            )));
        }
        let secret = if !cfg.secret_env.is_empty() {
            env(&cfg.secret_env).ok_or_else(|| {
                err(format!(
                    "environment variable {} is not set",
                    cfg.secret_env
                ))
            })?
        } else {
            cfg.secret.clone()
        };
        match cfg.kind {
            TargetKind::Webhook if secret.is_empty() => {
                return Err(err(
                    "a webhook needs an HMAC key (secret_env or secret)".into()
                ));
            }
            TargetKind::Splunk if secret.is_empty() => {
                return Err(err(
                    "Splunk needs an HEC token (secret_env or secret)".into()
                ));
            }
            _ => {}
        }
        let rules = cfg
            .rules
            .iter()
            .map(|p| regex::Regex::new(&format!("^{}$", regex::escape(p).replace(r"\*", ".*"))))
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        Ok(Target { cfg, secret, rules })
    }

    /// Whether this target takes this alert revision.
    pub fn routes(&self, a: &Alert) -> bool {
        let severity_ok = a.severity >= self.cfg.min_severity;
        let rule_ok = self.rules.is_empty() || self.rules.iter().any(|r| r.is_match(&a.rule_id));
        let updates = self
            .cfg
            .updates
            .unwrap_or(self.cfg.kind != TargetKind::Slack);
        severity_ok && rule_ok && (a.revision == 1 || updates)
    }
}

/// One queued delivery, as stored in the outbox.
#[derive(Debug, Serialize, Deserialize)]
pub struct Queued {
    pub alert: Alert,
    pub queued_ns: i64,
    pub attempts: u32,
    pub next_ns: i64,
    #[serde(default)]
    pub last_error: String,
}

/// The idempotency key of an alert revision.
pub fn idempotency_key(a: &Alert) -> String {
    format!("{}:{}", a.alert_id, a.revision)
}

/// Counters for `serve`'s progress and the API's metrics.
#[derive(Debug, Default)]
pub struct DeliverMetrics {
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub undeliverable: AtomicU64,
}

/// Deliveries waiting in the outbox, per target (entries being written excluded).
pub fn outbox_depth(data_dir: &Path) -> Vec<(String, u64)> {
    let dir = vigil_store::layout::outbox(data_dir);
    let Ok(targets) = vigil_store::files::read_dir_names(&dir) else {
        return Vec::new();
    };
    targets
        .into_iter()
        .map(|t| {
            let n = vigil_store::files::read_dir_names(&dir.join(&t))
                .unwrap_or_default()
                .iter()
                .filter(|n| n.ends_with(".json") && !vigil_store::files::is_temp_name(n))
                .count() as u64;
            (t, n)
        })
        .collect()
}

/// A delivery given up on (past the target's `max_age_ms`).
#[derive(Clone, Debug)]
pub struct GaveUp {
    pub target: String,
    pub alert: Alert,
    pub attempts: u32,
    pub last_error: String,
}

/// The queueing side, used by the detection thread.
#[derive(Clone, Debug)]
pub struct Outbox {
    dir: PathBuf,
    targets: Arc<Vec<Target>>,
    wake: Arc<tokio::sync::Notify>,
    metrics: Arc<DeliverMetrics>,
    gave_up: (
        crossbeam_channel::Sender<GaveUp>,
        crossbeam_channel::Receiver<GaveUp>,
    ),
}

/// The alert Vigil raises about an alert it could not deliver: stored like any alert and sent
/// to every other target.
pub fn undeliverable_alert(g: &GaveUp, now_ns: i64) -> Alert {
    let mut h = blake3::Hasher::new_derive_key("vigil 2026 undeliverable alert id v1");
    h.update(g.target.as_bytes());
    h.update(&[0]);
    h.update(idempotency_key(&g.alert).as_bytes());
    Alert {
        alert_id: h.finalize().to_hex()[..32].to_owned(),
        revision: 1,
        rule_id: "vigil.delivery.undeliverable".into(),
        rule_version: 1,
        rule_kind: "system".into(),
        title: "An alert could not be delivered".into(),
        severity: Severity::High,
        status: Status::Open,
        status_by: None,
        status_at_ns: None,
        status_note: None,
        group_key: [
            ("target".to_owned(), Some(g.target.clone())),
            ("alert_id".to_owned(), Some(g.alert.alert_id.clone())),
        ]
        .into(),
        first_event_ns: g.alert.first_event_ns,
        last_event_ns: g.alert.last_event_ns,
        detected_ns: now_ns,
        event_count: 1,
        detail: vec![
            format!(
                "undelivered: {} ({})",
                idempotency_key(&g.alert),
                g.alert.rule_id
            ),
            format!("attempts={}", g.attempts),
            format!("last_error={}", g.last_error),
        ],
        evidence: g.alert.evidence.clone(),
        incident_id: None,
        incident_subject: None,
    }
}

impl Outbox {
    pub fn open(
        data_dir: &Path,
        targets: Vec<Target>,
        metrics: Arc<DeliverMetrics>,
    ) -> Result<Outbox, DeliverError> {
        let dir = vigil_store::layout::outbox(data_dir);
        for t in &targets {
            let d = dir.join(&t.cfg.name);
            std::fs::create_dir_all(d.join("undeliverable")).map_err(|e| DeliverError::Io {
                path: d.clone(),
                message: e.to_string(),
            })?;
        }
        Ok(Outbox {
            dir,
            targets: Arc::new(targets),
            wake: Arc::new(tokio::sync::Notify::new()),
            metrics,
            gave_up: crossbeam_channel::bounded(1024),
        })
    }

    /// Deliveries given up on since the last call (the detection thread raises an alert for
    /// each).
    pub fn take_gave_up(&self) -> Vec<GaveUp> {
        self.gave_up.1.try_iter().collect()
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Queue each revision for each target that routes it; durable when this returns.
    pub fn enqueue(&self, alerts: &[Alert]) -> Result<usize, DeliverError> {
        self.enqueue_except(alerts, None)
    }

    /// [`Outbox::enqueue`], skipping one target (the one an undeliverable alert was for).
    pub fn enqueue_except(
        &self,
        alerts: &[Alert],
        skip: Option<&str>,
    ) -> Result<usize, DeliverError> {
        let now = now_ns();
        let mut n = 0;
        for t in self
            .targets
            .iter()
            .filter(|t| Some(t.cfg.name.as_str()) != skip)
        {
            for a in alerts.iter().filter(|a| t.routes(a)) {
                let q = Queued {
                    alert: a.clone(),
                    queued_ns: now,
                    attempts: 0,
                    next_ns: now,
                    last_error: String::new(),
                };
                let path = self
                    .dir
                    .join(&t.cfg.name)
                    .join(format!("{}-{:010}.json", a.alert_id, a.revision));
                write(&path, &q)?;
                n += 1;
            }
        }
        if n > 0 {
            self.metrics.queued.fetch_add(n as u64, Ordering::Relaxed);
            self.wake.notify_one();
        }
        Ok(n)
    }
}

fn write(path: &Path, q: &Queued) -> Result<(), DeliverError> {
    let bytes = serde_json::to_vec(q).map_err(|e| DeliverError::Io {
        path: path.into(),
        message: e.to_string(),
    })?;
    vigil_store::write_durably(path, &bytes).map_err(|e| DeliverError::Io {
        path: path.into(),
        message: e.to_string(),
    })
}

/// The body and headers one target gets for one alert revision.
pub fn request(t: &Target, a: &Alert, now_s: i64) -> (Vec<u8>, Vec<(String, String)>) {
    let key = idempotency_key(a);
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("idempotency-key".to_owned(), key.clone()),
    ];
    let body = match t.cfg.kind {
        TargetKind::Webhook | TargetKind::File => serde_json::json!({
            "idempotency_key": key,
            "alert": a,
        }),
        TargetKind::Slack => {
            let group: Vec<String> = a
                .group_key
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("-")))
                .collect();
            let incident = a
                .incident_id
                .as_deref()
                .map(|i| format!(" · incident `{}`", slack_escape(i)))
                .unwrap_or_default();
            serde_json::json!({
                "text": format!(
                    "*[{}] {}* — {} events, {}\nrule `{}` · alert `{}` (revision {}){incident}",
                    slack_escape(&a.severity.as_str().to_uppercase()),
                    slack_escape(&a.title),
                    a.event_count,
                    slack_escape(&group.join(", ")),
                    slack_escape(&a.rule_id),
                    slack_escape(&a.alert_id),
                    a.revision
                ),
            })
        }
        TargetKind::Splunk => {
            headers.push(("authorization".into(), format!("Splunk {}", t.secret)));
            serde_json::json!({
                "time": a.detected_ns as f64 / 1e9,
                "host": "vigil",
                "source": "vigil",
                "sourcetype": t.cfg.sourcetype,
                "event": a,
                "fields": { "idempotency_key": key, "rule_id": a.rule_id, "severity": a.severity, "incident_id": a.incident_id },
            })
        }
        TargetKind::Alertmanager => {
            let rfc3339 = |ns: i64| {
                chrono::DateTime::from_timestamp_nanos(ns)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            };
            let mut labels = serde_json::Map::new();
            labels.insert("alertname".into(), a.rule_id.clone().into());
            labels.insert("severity".into(), a.severity.as_str().into());
            labels.insert("alert_id".into(), a.alert_id.clone().into());
            // `group_by: [incident_id]` in Alertmanager: one notification per incident, updated
            // as its alerts come.
            if let Some(i) = &a.incident_id {
                labels.insert("incident_id".into(), i.clone().into());
            }
            for (k, v) in &a.group_key {
                labels.insert(k.clone(), v.clone().unwrap_or_default().into());
            }
            let mut alert = serde_json::json!({
                "labels": labels,
                "annotations": {
                    "summary": a.title,
                    "events": a.event_count.to_string(),
                    "revision": a.revision.to_string(),
                },
                "startsAt": rfc3339(a.first_event_ns),
            });
            alert["annotations"]["status"] = a.status.as_str().into();
            if let Some(by) = &a.status_by {
                alert["annotations"]["status_by"] = by.clone().into();
            }
            if let Some(note) = &a.status_note {
                alert["annotations"]["status_note"] = note.clone().into();
            }
            if a.status == Status::Resolved {
                alert["endsAt"] = rfc3339(a.status_at_ns.unwrap_or(a.detected_ns)).into();
            }
            serde_json::json!([alert])
        }
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    if t.cfg.kind == TargetKind::Webhook {
        let ts = now_s.to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(t.secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(&body);
        let sig = hex::encode(mac.finalize().into_bytes());
        headers.push(("x-vigil-timestamp".into(), ts));
        headers.push(("x-vigil-signature".into(), format!("v1={sig}")));
    }
    (body, headers)
}

/// A target's URL as it may be shown (logs, errors, the outbox, alerts): scheme, host and
/// port, never the path, query or user info (a Slack webhook's path is its credential).
pub fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.has_host() => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.path() == "/" && u.query().is_none() {
                ""
            } else {
                "/…"
            };
            format!(
                "{}://{}{port}{rest}",
                u.scheme(),
                u.host_str().unwrap_or_default()
            )
        }
        // A file target's path, or something that is no URL: shown by what it is.
        _ if !url.contains("://") => url.to_owned(),
        _ => "<a URL that does not parse>".into(),
    }
}

/// A failed request's error without its URL, with what caused it.
fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Text for Slack's mrkdwn: `&`, `<` and `>` escaped, so a value from an event cannot
/// mention (`<!channel>`), link (`<https://…|click>`) or break out of the message.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Where a target's requests go.
fn endpoint(t: &Target) -> String {
    let base = t.cfg.url.trim_end_matches('/');
    match t.cfg.kind {
        TargetKind::Splunk if !base.ends_with("/services/collector/event") => {
            format!("{base}/services/collector/event")
        }
        TargetKind::Alertmanager if !base.ends_with("/api/v2/alerts") => {
            format!("{base}/api/v2/alerts")
        }
        _ => t.cfg.url.clone(),
    }
}

/// Backoff before attempt `attempts + 1`: initial · 2^attempts, capped, ±50% jitter.
pub fn backoff_ms(cfg: &TargetConfig, attempts: u32, jitter: f64) -> u64 {
    let base = cfg
        .backoff_initial_ms
        .saturating_mul(1u64 << attempts.min(30))
        .min(cfg.backoff_max_ms);
    (base as f64 * (0.5 + jitter.clamp(0.0, 1.0))) as u64
}

/// Start the delivery thread: it drains every target's outbox (what earlier runs left too)
/// until `shutdown`, then returns (undelivered entries stay queued for the next run).
pub fn start(
    outbox: Outbox,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vigil-deliver".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "delivery: no runtime");
                    return;
                }
            };
            rt.block_on(run(outbox, shutdown));
        })
}

async fn run(outbox: Outbox, shutdown: Arc<AtomicBool>) {
    // No redirects: a 3xx is a failed attempt (followed, a 302 turns the POST into a bodiless
    // GET whose 200 would count as delivered; a 307 re-posts the signed body elsewhere).
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "delivery: no HTTP client");
            return;
        }
    };
    // Per target: the entries being attempted, and when each entry seen is next due (so a
    // queued entry's file is read once, not on every pass).
    let mut in_flight: Vec<HashSet<PathBuf>> =
        outbox.targets.iter().map(|_| HashSet::new()).collect();
    let mut due_at: Vec<HashMap<PathBuf, i64>> =
        outbox.targets.iter().map(|_| HashMap::new()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if shutdown.load(Ordering::Relaxed) {
            break;
        }
        let now = now_ns();
        for (i, t) in outbox.targets.iter().enumerate() {
            let dir = outbox.dir.join(&t.cfg.name);
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut queued: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    // An entry being written is a temp file until it is renamed in place.
                    p.extension().is_some_and(|x| x == "json")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| !vigil_store::files::is_temp_name(n))
                })
                .collect();
            queued.sort();
            for path in queued {
                if in_flight[i].len() >= t.cfg.concurrency {
                    break;
                }
                if in_flight[i].contains(&path) || due_at[i].get(&path).is_some_and(|&n| n > now) {
                    continue;
                }
                let q: Queued = match std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                {
                    Some(q) => q,
                    // Complete entries only are listed, so this is damage: said once, left in place.
                    None => {
                        tracing::error!(path = %path.display(), "outbox entry unreadable; left in place");
                        due_at[i].insert(path, i64::MAX);
                        continue;
                    }
                };
                if q.next_ns > now {
                    due_at[i].insert(path, q.next_ns);
                    continue;
                }
                in_flight[i].insert(path.clone());
                let (t, client, metrics) = (t.clone(), client.clone(), outbox.metrics.clone());
                let (dir, gave_up) = (dir.clone(), outbox.gave_up.0.clone());
                tasks.spawn(async move {
                    let next = attempt(&t, &client, &dir, &path, q, &metrics, &gave_up).await;
                    (i, path, next)
                });
            }
        }
        while let Some(r) = tasks.try_join_next() {
            match r {
                Ok((i, path, next)) => {
                    in_flight[i].remove(&path);
                    match next {
                        Some(n) => due_at[i].insert(path, n),
                        None => due_at[i].remove(&path),
                    };
                }
                Err(e) => tracing::error!(error = %e, "delivery task failed"),
            }
        }
        tokio::select! {
            _ = outbox.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    // Let deliveries in flight finish (each is bounded by its timeout).
    while tasks.join_next().await.is_some() {}
}

/// One delivery attempt; when the entry is next due, or `None` once it left the outbox.
async fn attempt(
    t: &Target,
    client: &reqwest::Client,
    dir: &Path,
    path: &Path,
    mut q: Queued,
    metrics: &DeliverMetrics,
    gave_up: &crossbeam_channel::Sender<GaveUp>,
) -> Option<i64> {
    let (body, headers) = request(t, &q.alert, now_ns() / 1_000_000_000);
    let result: Result<(), String> = if t.cfg.kind == TargetKind::File {
        append_line(&t.cfg.url, &body).map_err(|e| e.to_string())
    } else {
        let mut req = client
            .post(endpoint(t))
            .timeout(Duration::from_millis(t.cfg.timeout_ms))
            .body(body);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) if r.status().is_redirection() => Err(format!(
                "HTTP {} (redirects are not followed: a target's URL must be where it receives)",
                r.status()
            )),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(e) => Err(error_text(e)),
        }
    };
    match result {
        Ok(()) => {
            metrics.delivered.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = std::fs::remove_file(path) {
                tracing::error!(path = %path.display(), error = %e, "delivered, but the outbox entry stays: it will be sent again (same idempotency key)");
            }
            None
        }
        Err(why) => {
            metrics.failed_attempts.fetch_add(1, Ordering::Relaxed);
            q.attempts += 1;
            q.last_error = why.clone();
            let now = now_ns();
            let age_ms = (now - q.queued_ns) / 1_000_000;
            if age_ms >= i64::try_from(t.cfg.max_age_ms).unwrap_or(i64::MAX) {
                metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target_name = %t.cfg.name, alert_id = %q.alert.alert_id,
                    revision = q.alert.revision, attempts = q.attempts, last_error = %why,
                    "alert undeliverable: gave up after max_age_ms");
                let dest = dir
                    .join("undeliverable")
                    .join(path.file_name().unwrap_or_default());
                if write(&dest, &q).is_ok() {
                    let _ = std::fs::remove_file(path);
                }
                let notice = GaveUp {
                    target: t.cfg.name.clone(),
                    alert: q.alert,
                    attempts: q.attempts,
                    last_error: why,
                };
                if gave_up.try_send(notice).is_err() {
                    tracing::error!("too many undeliverable alerts to raise an alert for each");
                }
                return None;
            }
            let jitter = (now as u64 % 1000) as f64 / 1000.0;
            let wait = backoff_ms(&t.cfg, q.attempts - 1, jitter);
            q.next_ns = now + i64::try_from(wait).unwrap_or(i64::MAX / 2) * 1_000_000;
            tracing::warn!(target_name = %t.cfg.name, alert_id = %q.alert.alert_id,
                attempts = q.attempts, retry_in_ms = wait, error = %why, "alert delivery failed");
            if let Err(e) = write(path, &q) {
                tracing::error!(error = %e, "outbox entry not updated");
            }
            Some(q.next_ns)
        }
    }
}

fn append_line(path: &str, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if path == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(body)?;
        out.write_all(b"\n")?;
        return out.flush();
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut line = body.to_vec();
    line.push(b'\n');
    f.write_all(&line)?;
    f.sync_data()
}

/// Check a webhook delivery as a receiver should: the signature over `timestamp.body` with the
/// shared key, and a timestamp within `tolerance_s` of now (replays are refused).
pub fn verify_webhook(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now_s - ts).abs() > tolerance_s {
        return false;
    }
    let Some(hex_sig) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(sev: &str, rule: &str, rev: i64) -> Alert {
        Alert {
            alert_id: "a1".into(),
            revision: rev,
            rule_id: rule.into(),
            rule_version: 1,
            rule_kind: "threshold".into(),
            title: "Repeated denials".into(),
            severity: sev.parse().unwrap(),
            status: Status::Open,
            status_by: None,
            status_at_ns: None,
            status_note: None,
            group_key: [("caller_ip".to_string(), Some("1.2.3.4".to_string()))].into(),
            first_event_ns: 1_795_000_000_000_000_000,
            last_event_ns: 1_795_000_001_000_000_000,
            detected_ns: 1_795_000_002_000_000_000,
            event_count: 20,
            detail: vec![],
            evidence: vec![],
            incident_id: None,
            incident_subject: None,
        }
    }

    fn target(kind: TargetKind) -> Target {
        let mut c = TargetConfig::webhook("t", "http://127.0.0.1:9/x", "k3y".into());
        c.kind = kind;
        Target::new(c, |_: &str| None).unwrap()
    }

    /// Values an attacker controls (a user name, a path) cannot mention, link or format
    /// outside their place in a Slack message.
    #[test]
    fn slack_messages_escape_event_values() {
        let mut a = alert("high", "vigil.bruteforce.source_ip", 1);
        a.group_key = [(
            "user".to_string(),
            Some("<!channel> & <https://evil.example|log in>".to_string()),
        )]
        .into();
        let (body, _) = request(&target(TargetKind::Slack), &a, 0);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.contains("user=&lt;!channel&gt; &amp; &lt;https://evil.example|log in&gt;"),
            "{text}"
        );
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
    }

    #[test]
    fn urls_are_shown_without_path_query_or_user() {
        assert_eq!(
            redacted_url("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redacted_url("http://u:p@127.0.0.1:8088/?token=x"),
            "http://127.0.0.1:8088/…"
        );
        assert_eq!(
            redacted_url("https://siem.example:8088/"),
            "https://siem.example:8088"
        );
        assert_eq!(
            redacted_url("/var/log/vigil-alerts.jsonl"),
            "/var/log/vigil-alerts.jsonl"
        );
        assert_eq!(
            redacted_url("ftp:://x/secret"),
            "<a URL that does not parse>"
        );
    }

    #[test]
    fn routing_by_severity_rule_and_revision() {
        let mut c = TargetConfig::webhook("t", "http://127.0.0.1:9/", "k".into());
        c.min_severity = Severity::High;
        c.rules = vec!["vigil.k8s.*".into()];
        let t = Target::new(c, |_: &str| None).unwrap();
        assert!(t.routes(&alert("high", "vigil.k8s.forbidden_burst.user", 1)));
        assert!(t.routes(&alert("critical", "vigil.k8s.x", 2)));
        assert!(!t.routes(&alert("medium", "vigil.k8s.x", 1)));
        assert!(!t.routes(&alert("high", "vigil.denial_burst.caller", 1)));
        // Slack gets new alerts only, unless told otherwise.
        let s = target(TargetKind::Slack);
        assert!(s.routes(&alert("low", "r", 1)) && !s.routes(&alert("low", "r", 2)));
    }

    #[test]
    fn alertmanager_gets_the_lifecycle_and_ends_at_when_resolved() {
        let t = target(TargetKind::Alertmanager);
        let mut a = alert("high", "r", 2);
        let body = |a: &Alert| -> serde_json::Value {
            serde_json::from_slice(&request(&t, a, 1_795_000_000).0).unwrap()
        };
        let open = body(&a);
        assert_eq!(open[0]["annotations"]["status"], "open");
        assert!(open[0].get("endsAt").is_none());
        a.status = Status::Resolved;
        a.status_by = Some("local:ana".into());
        a.status_at_ns = Some(1_795_000_060_000_000_000);
        let res = body(&a);
        assert_eq!(res[0]["endsAt"], "2026-11-18T11:07:40.000Z");
        assert_eq!(res[0]["annotations"]["status_by"], "local:ana");
    }

    #[test]
    fn webhook_signatures_verify_and_forgeries_and_replays_do_not() {
        let t = target(TargetKind::Webhook);
        let a = alert("high", "r", 3);
        let (body, headers) = request(&t, &a, 1_795_000_000);
        let h = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(h("idempotency-key"), "a1:3");
        let (ts, sig) = (h("x-vigil-timestamp"), h("x-vigil-signature"));
        assert!(verify_webhook(b"k3y", &ts, &sig, &body, 1_795_000_010, 300));
        // Another key, a changed body, an old timestamp: refused.
        assert!(!verify_webhook(
            b"other",
            &ts,
            &sig,
            &body,
            1_795_000_010,
            300
        ));
        let mut forged = body.clone();
        forged[10] ^= 1;
        assert!(!verify_webhook(
            b"k3y",
            &ts,
            &sig,
            &forged,
            1_795_000_010,
            300
        ));
        assert!(!verify_webhook(
            b"k3y",
            &ts,
            &sig,
            &body,
            1_795_001_000,
            300
        ));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["alert"]["alert_id"], "a1");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let c = TargetConfig::webhook("t", "http://x/", "k".into());
        assert_eq!(backoff_ms(&c, 0, 0.5), 500);
        assert_eq!(backoff_ms(&c, 3, 0.5), 4000);
        assert_eq!(backoff_ms(&c, 30, 0.5), 60_000);
        assert_eq!(backoff_ms(&c, 0, 0.0), 250);
        assert_eq!(backoff_ms(&c, 0, 1.0), 750);
    }

    #[test]
    fn bad_targets_are_refused_and_secrets_never_printed() {
        let mut c = TargetConfig::webhook("t", "ftp://x", "k".into());
        let unset = |_: &str| None;
        assert!(Target::new(c.clone(), unset).is_err());
        c.url = "http://x/".into();
        c.secret = String::new();
        assert!(
            Target::new(c.clone(), unset)
                .unwrap_err()
                .to_string()
                .contains("HMAC key")
        );
        c.secret = "hunter2".into();
        assert!(!format!("{c:?}").contains("hunter2"));
        c.secret_env = "HOOK_KEY".into();
        assert!(
            Target::new(c.clone(), unset)
                .unwrap_err()
                .to_string()
                .contains("environment variable HOOK_KEY is not set")
        );
        // Resolved through what the caller passes, the environment's value wins.
        let t = Target::new(c, |k: &str| {
            (k == "HOOK_KEY").then(|| "from-env".to_owned())
        })
        .unwrap();
        assert_eq!(t.secret, "from-env");
    }
}
