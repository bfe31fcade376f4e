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

mod format;
mod outbox;
#[cfg(test)]
mod tests;
mod thread;

use format::*;
pub use format::{redacted_url, request, verify_webhook};
pub use outbox::GaveUp;
pub(crate) use outbox::outbox_depth;
use outbox::*;
pub use outbox::{Outbox, Queued, idempotency_key, undeliverable_alert};
pub use thread::start;

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
    /// What the alert is sent as (webhook, file, splunk): Vigil's JSON or an OCSF 1.8.0
    /// Detection Finding.
    #[serde(default)]
    pub format: crate::alerts::AlertFormat,
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
            .field("format", &self.format)
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
            format: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("delivery target {target}: {message}")]
    Config { target: String, message: String },
    #[error("outbox {path}: {message}")]
    Io { path: PathBuf, message: String },
    /// The outbox's copy in the bucket (several instances: the next detection holder's).
    #[error("outbox in the bucket: {0}")]
    Bucket(#[from] vigil_store::StoreError),
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
        if cfg.format != crate::alerts::AlertFormat::Vigil
            && matches!(cfg.kind, TargetKind::Slack | TargetKind::Alertmanager)
        {
            return Err(err(
                "format applies to webhook, file and splunk targets (slack and alertmanager have shapes of their own)".into(),
            ));
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

/// Counters for `serve`'s progress and the API's metrics.
#[derive(Debug, Default)]
pub struct DeliverMetrics {
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub undeliverable: AtomicU64,
}
