//! Reload the rules and the policy graph when their files change: `detect.rules_dir`,
//! `detect.policy_dir` and `detect.allowlist_file` are watched (inotify, through `notify`),
//! and once they have been quiet for `detect.watch_debounce_ms` the same reload as
//! `POST /v1/rules/reload` runs, recorded in Vigil's own log as done by `file-watch`. A
//! change that does not load (a typo, a policy that does not parse) is refused whole and
//! logged: the running rules stay. With `detect.policy_audit_topics`, the stored Kubernetes
//! audit events are looked at every `detect.policy_audit_poll_ms`, and a change in the
//! workloads they describe reloads the same way, recorded as done by `audit-watch`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use notify::{RecursiveMode, Watcher};

use crate::config::DetectConfig;
use crate::services::policy::PolicyFeed;

/// Who the reloads are recorded as.
pub const BY: &str = "file-watch";

/// Who the reloads for a change in the audit stream's workloads are recorded as.
pub const BY_AUDIT: &str = "audit-watch";

/// The running watches: dropping them stops them.
pub struct RulesWatch {
    _files: Option<(notify::RecommendedWatcher, std::thread::JoinHandle<()>)>,
    /// Dropped: the audit poll ends.
    _audit: Option<(crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// Watch what `cfg` names, if anything and if `watch_debounce_ms` is not 0; and look at the
/// audit stream's workloads (`feed`) every `policy_audit_poll_ms`.
pub fn start(
    cfg: &DetectConfig,
    reload: Arc<vigil_query::api::ReloadFn>,
    feed: Option<Arc<PolicyFeed>>,
) -> anyhow::Result<Option<RulesWatch>> {
    let audit = match feed {
        Some(feed) => {
            let (tx, rx) = crossbeam_channel::bounded::<()>(1);
            let poll = Duration::from_millis(cfg.policy_audit_poll_ms.max(100));
            let reload = reload.clone();
            let thread = std::thread::Builder::new()
                .name("vigil-audit-watch".into())
                .spawn(move || poll_audit(&rx, poll, &feed, reload.as_ref()))?;
            tracing::info!(topics = ?cfg.policy_audit_topics, poll_ms = poll.as_millis() as u64,
                "workloads from the Kubernetes audit stream: a change reloads the rules and the policy graph");
            Some((tx, thread))
        }
        None => None,
    };
    let files = watch_files(cfg, reload)?;
    Ok((files.is_some() || audit.is_some()).then_some(RulesWatch {
        _files: files,
        _audit: audit,
    }))
}

/// Read the audit stream's new workload events every `poll`; reload when they changed the
/// workloads. Ends when `stop`'s sender is dropped.
fn poll_audit(
    stop: &crossbeam_channel::Receiver<()>,
    poll: Duration,
    feed: &PolicyFeed,
    reload: &vigil_query::api::ReloadFn,
) {
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(poll) {
        match feed.read() {
            Ok(false) => {}
            Ok(true) => match reload(BY_AUDIT) {
                Ok(r) => tracing::info!(
                    rules = r.reloaded.rules.len(),
                    by = BY_AUDIT,
                    "workloads changed in the Kubernetes audit stream: rules and policy graph reloaded"
                ),
                Err(e) => tracing::warn!(error = ?e, by = BY_AUDIT,
                    "workloads changed in the Kubernetes audit stream but the rules were not reloaded: the running ones stay"),
            },
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the Kubernetes audit stream's workloads")
            }
        }
    }
}

/// The file watch, if there is anything to watch and `watch_debounce_ms` is not 0.
fn watch_files(
    cfg: &DetectConfig,
    reload: Arc<vigil_query::api::ReloadFn>,
) -> anyhow::Result<Option<(notify::RecommendedWatcher, std::thread::JoinHandle<()>)>> {
    let debounce = Duration::from_millis(cfg.watch_debounce_ms);
    if debounce.is_zero() {
        return Ok(None);
    }
    // Directories watched whole; a file through its directory, its own events only.
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for d in [&cfg.rules_dir, &cfg.policy_dir] {
        if !d.as_os_str().is_empty() {
            dirs.push(d.clone());
        }
    }
    if !cfg.allowlist_file.as_os_str().is_empty() {
        files.push(cfg.allowlist_file.clone());
    }
    files.extend(cfg.sigma_pipelines.iter().cloned());
    if dirs.is_empty() && files.is_empty() {
        return Ok(None);
    }
    // Bounded: a flood of file events only needs to say "something changed".
    let (tx, rx) = crossbeam_channel::bounded::<()>(64);
    let relevant = {
        let (dirs, files) = (dirs.clone(), files.clone());
        move |p: &Path| {
            files
                .iter()
                .any(|f| f == p || f.file_name() == p.file_name())
                || dirs.iter().any(|d| p.starts_with(d))
        }
    };
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.kind.is_access() => {}
            Ok(ev) => {
                if ev.paths.iter().any(|p| relevant(p)) {
                    let _ = tx.try_send(());
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching rule and policy files"),
        })
        .context("watching rule and policy files")?;
    for d in &dirs {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", d.display()))?;
    }
    for f in &files {
        let dir = f
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
    }
    tracing::info!(dirs = ?dirs, files = ?files, debounce_ms = cfg.watch_debounce_ms,
        "watching rules and policies: a change reloads them");
    let thread = std::thread::Builder::new()
        .name("vigil-rules-watch".into())
        .spawn(move || run(&rx, debounce, reload.as_ref()))?;
    Ok(Some((watcher, thread)))
}

/// Reload once changes have been quiet for `debounce`; end when the watcher is dropped.
fn run(
    rx: &crossbeam_channel::Receiver<()>,
    debounce: Duration,
    reload: &vigil_query::api::ReloadFn,
) {
    let mut changed: Option<Instant> = None;
    loop {
        let wait = changed.map_or(Duration::from_secs(3600), |c| {
            debounce.saturating_sub(c.elapsed())
        });
        match rx.recv_timeout(wait) {
            Ok(()) => changed = Some(Instant::now()),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if changed.take().is_some() {
                    match reload(BY) {
                        Ok(r) => tracing::info!(
                            rules = r.reloaded.rules.len(),
                            inactive = r.inactive.len(),
                            by = BY,
                            "rules and policies changed on disk: reloaded"
                        ),
                        Err(e) => tracing::warn!(error = ?e, by = BY,
                            "rules and policies changed on disk but were not reloaded: the running ones stay"),
                    }
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}
