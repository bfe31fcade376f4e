//! `vigil alerts`: the stored alerts (newest revision of each), newest first.

use std::path::PathBuf;
use std::process::ExitCode;

use vigil_detect::alerts::{Alert, latest, read_revisions};

use crate::config::Config;

#[derive(clap::Args)]
pub struct AlertsArgs {
    /// Store directory (overrides `store.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Only this rule's alerts.
    #[arg(long)]
    rule: Option<String>,
    /// At most this many (newest first).
    #[arg(long)]
    limit: Option<usize>,
    /// One alert per line as JSON (with its evidence).
    #[arg(long)]
    json: bool,
}

fn time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// One alert as a line of text.
pub fn line(a: &Alert) -> String {
    let group: Vec<String> = a
        .group_key
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("-")))
        .collect();
    format!(
        "{}  {:<8} {:<36} events={:<6} first={} last={}  {}  [{}]",
        &a.alert_id[..16.min(a.alert_id.len())],
        a.severity,
        a.rule_id,
        a.event_count,
        time(a.first_event_ns),
        time(a.last_event_ns),
        group.join(" "),
        a.title
    )
}

pub fn run(cfg: &Config, args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.unwrap_or_else(|| cfg.store.data_dir.clone());
    anyhow::ensure!(dir.is_dir(), "no data directory at {}", dir.display());
    let mut alerts = latest(read_revisions(&dir)?);
    if let Some(r) = &args.rule {
        alerts.retain(|a| &a.rule_id == r);
    }
    if let Some(n) = args.limit {
        alerts.truncate(n);
    }
    for a in &alerts {
        if args.json {
            println!("{}", serde_json::to_string(a)?);
        } else {
            println!("{}", line(a));
        }
    }
    if !args.json {
        eprintln!("{} alert(s)", alerts.len());
    }
    Ok(ExitCode::SUCCESS)
}
