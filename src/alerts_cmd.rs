//! `vigil alerts`: the stored alerts (newest revision of each), newest first; `vigil alerts
//! ack|resolve|suppress ID`: lifecycle changes, applied here when no `vigil serve` runs
//! detection on the data directory, else queued for the one that does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use vigil_detect::alerts::{Alert, latest, read_revisions};
use vigil_detect::lifecycle::{Action, Command, Reply};

use crate::config::Config;
use crate::services::alerts::{apply_or_queue, line};

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

pub fn run(cfg: &Config, args: AlertsArgs) -> anyhow::Result<ExitCode> {
    match args.change {
        Some(Change::Ack(a)) => change(cfg, Action::Acknowledge, a),
        Some(Change::Resolve(a)) => change(cfg, Action::Resolve, a),
        Some(Change::Suppress(a)) => change(cfg, Action::Suppress, a),
        None => list(cfg, args.list),
    }
}

fn list(cfg: &Config, args: ListArgs) -> anyhow::Result<ExitCode> {
    let dir = crate::services::bucket::reading_dir(cfg, args.data_dir)?;
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
        // A whole id this copy has not seen yet (another instance runs detection and raised
        // it since this one started): the detection holder decides.
        [] if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(id.to_owned()),
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
