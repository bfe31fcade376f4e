//! Detection's settings and rules from the configuration: what `serve`, `rules` and `alerts`
//! open the same way.

use anyhow::Context;
use vigil_detect::rules::{self, Defaults, Loaded};

use crate::config::{DetectConfig, nonempty};
use crate::services::policy::PolicyFeed;

/// How detection judges event time, from the configuration.
pub fn time_config(d: &DetectConfig) -> anyhow::Result<vigil_detect::time::TimeConfig> {
    let ns = |ms: u64| -> anyhow::Result<i64> { Ok(i64::try_from(ms)?.saturating_mul(1_000_000)) };
    anyhow::ensure!(
        d.max_buffered_events >= 1,
        "detect.max_buffered_events must be ≥ 1"
    );
    Ok(vigil_detect::time::TimeConfig {
        max_future_skew_ns: ns(d.max_future_skew_ms)?,
        allowed_lateness_ns: ns(d.allowed_lateness_ms)?,
        idle_source_ns: ns(d.idle_source_ms)?.max(1),
        max_buffered_events: d.max_buffered_events,
    })
}

/// `detect.incident_window_ms` in ns.
pub fn incident_window_ns(d: &DetectConfig) -> anyhow::Result<i64> {
    Ok(i64::try_from(d.incident_window_ms)?.saturating_mul(1_000_000))
}

/// The engine defaults from the configuration (reads the allowlist file if one is set, and
/// imports `policy_dir` with the workloads of `feed`, the audit stream, if there is one).
pub fn defaults(d: &DetectConfig, feed: Option<&PolicyFeed>) -> anyhow::Result<Defaults> {
    let mut allowlist = match nonempty(&d.allowlist_file) {
        Some(p) => Some(rules::load_policy(p)?),
        None => None,
    };
    if let Some(dir) = nonempty(&d.policy_dir) {
        let got = crate::services::policy::import(&[dir.to_path_buf()], &d.trust_domain, feed)
            .with_context(|| format!("detect.policy_dir {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), policies = got.policies.len(), edges = got.graph.edges.len(),
            workloads = got.workloads, audit_changes = got.audit_changes,
            left_out = got.notes.len(), "policy graph imported");
        allowlist
            .get_or_insert_with(Default::default)
            .edges
            .extend(got.graph.edges);
    }
    anyhow::ensure!(
        d.max_groups_per_rule >= 1,
        "detect.max_groups_per_rule must be ≥ 1"
    );
    anyhow::ensure!(
        d.max_state_bytes >= 1 << 20,
        "detect.max_state_bytes must be ≥ 1 MiB (1048576)"
    );
    let sigma_pipelines = vigil_detect::sigma::load_pipelines(&d.sigma_pipelines)
        .context("detect.sigma_pipelines")?;
    Ok(Defaults {
        sigma_pipelines,
        allowed_lateness_ns: i64::try_from(d.allowed_lateness_ms)?.saturating_mul(1_000_000),
        max_groups: d.max_groups_per_rule,
        allowlist,
        ..Defaults::default()
    })
}

/// Load the configured rules. Problems are logged with file and line; the other rules load.
pub fn load(d: &DetectConfig, feed: Option<&PolicyFeed>) -> anyhow::Result<Loaded> {
    let defaults = defaults(d, feed)?;
    let sources = rules::sources(nonempty(&d.rules_dir), d.default_rules)
        .context("reading the rules directory")?;
    let loaded = rules::load(&sources, &defaults);
    for e in &loaded.errors {
        tracing::error!(file = %e.file, line = e.line, reason = %e.message, "rule not loaded");
    }
    for w in &loaded.warnings {
        tracing::warn!(file = %w.file, reason = %w.message, "rule loaded, but cannot do all it says");
    }
    for (id, why) in &loaded.inactive {
        tracing::info!(rule = %id, reason = %why, "rule inactive");
    }
    Ok(loaded)
}
