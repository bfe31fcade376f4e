//! `vigil alerts`: the stored alerts (newest revision of each), newest first; `vigil alerts
//! ack|resolve|suppress ID`: lifecycle changes, applied here when no `vigil serve` runs
//! detection on the data directory, else queued for the one that does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use vigil_detect::alerts::{Alert, latest, read_revisions};
use vigil_detect::lifecycle::{Action, Command, Queue, Reply};
use vigil_detect::run::{DetectError, RunConfig};

use crate::config::Config;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AlertsArgs {
    #[command(subcommand)]
    change: Option<Change>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(clap::Subcommand)]
enum Change {
    /// Acknowledge an alert: someone is on it (later events still update it).
    Ack(ChangeArgs),
    /// Resolve an alert: dealt with; its group's next firing is a new alert.
    Resolve(ChangeArgs),
    /// Suppress an alert: its further events raise no revisions until its suppression window
    /// ends.
    Suppress(ChangeArgs),
}

#[derive(clap::Args)]
struct ChangeArgs {
    /// The alert id, or a prefix of it that only one alert has (as `vigil alerts` shows).
    id: String,
    /// Why (kept with the change, at most 4096 bytes).
    #[arg(long)]
    note: Option<String>,
    /// Store directory (overrides `store.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Kafka brokers to anchor the change's checkpoint in, when applied here (overrides
    /// `kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// Seconds to wait for a running `vigil serve` to take the change (it is withdrawn if not).
    #[arg(long, default_value_t = 10)]
    wait_secs: u64,
    /// Print the new revision as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ListArgs {
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

pub fn time_text(ns: i64) -> String {
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
        "{}  {:<8} {:<12} {:<36} events={:<6} first={} last={}  {}  [{}]",
        &a.alert_id[..16.min(a.alert_id.len())],
        a.severity,
        a.status,
        a.rule_id,
        a.event_count,
        time_text(a.first_event_ns),
        time_text(a.last_event_ns),
        group.join(" "),
        a.title
    )
}

pub fn run(cfg: &Config, args: AlertsArgs) -> anyhow::Result<ExitCode> {
    match args.change {
        Some(Change::Ack(a)) => change(cfg, Action::Acknowledge, a),
        Some(Change::Resolve(a)) => change(cfg, Action::Resolve, a),
        Some(Change::Suppress(a)) => change(cfg, Action::Suppress, a),
        None => list(cfg, args.list),
    }
}

fn list(cfg: &Config, args: ListArgs) -> anyhow::Result<ExitCode> {
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

/// Who runs the CLI: the operating system's user (not authenticated: whoever can write the
/// data directory can act; the HTTP API names its authenticated caller instead).
fn local_user() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|n| !n.is_empty() && n.len() <= 64 && !n.contains(char::is_control));
    match (name, uid) {
        (Some(n), Some(u)) => format!("local:{n}(uid={u})"),
        (Some(n), None) => format!("local:{n}"),
        (None, Some(u)) => format!("local:uid={u}"),
        (None, None) => "local:unknown".into(),
    }
}

/// The one stored alert whose id is or starts with `id`.
fn resolve_id(dir: &Path, id: &str) -> anyhow::Result<String> {
    let alerts = latest(read_revisions(dir)?);
    let found: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.alert_id.starts_with(id))
        .collect();
    match found.as_slice() {
        [] => anyhow::bail!("no alert {id} in {}", dir.display()),
        [a] => Ok(a.alert_id.clone()),
        many => anyhow::bail!(
            "{} alerts start with {id}: give more of the id ({})",
            many.len(),
            many.iter()
                .map(|a| a.alert_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn change(cfg: &Config, action: Action, args: ChangeArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.unwrap_or_else(|| cfg.store.data_dir.clone());
    anyhow::ensure!(dir.is_dir(), "no data directory at {}", dir.display());
    anyhow::ensure!(!args.id.is_empty(), "an alert id is needed");
    let cmd = Command {
        alert_id: resolve_id(&dir, &args.id)?,
        action,
        by: local_user(),
        note: args.note,
        at_ns: vigil_store::clock::now_ns(),
    };
    cmd.check().map_err(anyhow::Error::msg)?;
    let mut cfg = cfg.clone();
    if let Some(b) = args.brokers {
        cfg.kafka.brokers = b;
    }
    let reply = apply_or_queue(&cfg, &dir, &cmd, Duration::from_secs(args.wait_secs.max(1)))?;
    match reply {
        Reply::Applied { alert } => {
            if args.json {
                println!("{}", serde_json::to_string(&alert)?);
            } else {
                println!("{}", line(&alert));
                eprintln!(
                    "alert {} is {} (revision {}, by {})",
                    alert.alert_id,
                    alert.status,
                    alert.revision,
                    alert.status_by.as_deref().unwrap_or("-")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Reply::Refused { refusal } => {
            eprintln!("refused: {refusal}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Apply a change here when no process holds the detection lock; otherwise queue it for the
/// one that does (it alone writes alert revisions: a `vigil serve`) and wait up to `wait` for
/// its answer.
pub fn apply_or_queue(
    cfg: &Config,
    dir: &Path,
    cmd: &Command,
    wait: Duration,
) -> anyhow::Result<Reply> {
    // Held (a `serve` runs detection): no need to set up signing and delivery here first.
    let here = if vigil_detect::run::lock_held(dir) {
        Err(anyhow::Error::from(DetectError::Locked(
            dir.display().to_string(),
        )))
    } else {
        apply_here(cfg, dir, cmd)
    };
    match here {
        Ok(r) => Ok(r),
        Err(e)
            if e.downcast_ref::<DetectError>()
                .is_some_and(|d| matches!(d, DetectError::Locked(_))) =>
        {
            let q = Queue::new(dir);
            let ticket = q.submit(cmd)?;
            Ok(q.wait(&ticket, wait)?)
        }
        Err(e) => Err(e),
    }
}

/// Apply the change in this process (no `serve` holds the detection lock): the same steps the
/// detection thread takes, signed with the store's keys, anchored if Kafka is reachable.
fn apply_here(cfg: &Config, dir: &Path, cmd: &Command) -> anyhow::Result<Reply> {
    let mut cfg = cfg.clone();
    cfg.store.data_dir = dir.to_path_buf();
    let targets = cfg
        .deliver
        .targets
        .iter()
        .cloned()
        .map(|c| vigil_detect::deliver::Target::new(c, |k| std::env::var(k).ok()))
        .collect::<Result<Vec<_>, _>>()?;
    let outbox = (!targets.is_empty())
        .then(|| vigil_detect::deliver::Outbox::open(dir, targets, Arc::default()))
        .transpose()?;
    let icfg = crate::serve_cmd::ingest_config(&cfg)?;
    let anchor_metrics = Arc::new(vigil_ingest::IngestMetrics::default());
    // Quiet: one warning below says whether the anchor got out, not librdkafka's retries.
    let publisher =
        vigil_ingest::AnchorPublisher::new(&icfg, anchor_metrics.clone(), true)?.map(Arc::new);
    let reply = vigil_detect::run::apply_direct(
        RunConfig {
            data_dir: dir.to_path_buf(),
            alert_flush_ms: cfg.detect.alert_flush_ms,
            state_interval_ms: cfg.detect.state_interval_ms,
            outbox,
            signer: Some(vigil_store::LogSigner::new(
                crate::serve_cmd::checkpointer(&cfg)?,
                publisher.clone().map(|p| p as Arc<dyn vigil_store::Anchor>),
            )),
            time: crate::rules_cmd::time_config(&cfg.detect)?,
            incident_window_ns: crate::rules_cmd::incident_window_ns(&cfg.detect)?,
            max_state_bytes: cfg.detect.max_state_bytes,
            silent_source_ns: i64::try_from(cfg.detect.silent_source_ms)?.saturating_mul(1_000_000),
            assigned: None,
        },
        cmd,
    )?;
    if let Some(p) = publisher
        && let Err(e) = p
            .flush(Duration::from_secs(5))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let failed = anchor_metrics.snapshot().anchors_failed;
                if failed == 0 {
                    Ok(())
                } else {
                    Err(format!("{failed} failed"))
                }
            })
    {
        eprintln!(
            "warning: the change is stored and signed, but its checkpoint did not reach the \
             Kafka anchor topic ({e}); the next `vigil serve` publishes a fresh one"
        );
    }
    Ok(reply)
}
