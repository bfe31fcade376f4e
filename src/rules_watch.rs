//! Reload the rules and the policy graph when their files change: `detect.rules_dir`,
//! `detect.policy_dir` and `detect.allowlist_file` are watched (inotify, through `notify`),
//! and once they have been quiet for `detect.watch_debounce_ms` the same reload as
//! `POST /v1/rules/reload` runs, recorded in Vigil's own log as done by `file-watch`. A
//! change that does not load (a typo, a policy that does not parse) is refused whole and
//! logged: the running rules stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use notify::{RecursiveMode, Watcher};

use crate::config::DetectConfig;

/// Who the reloads are recorded as.
pub const BY: &str = "file-watch";

/// The running watch: dropping it stops it.
pub struct RulesWatch {
    _watcher: notify::RecommendedWatcher,
    _thread: std::thread::JoinHandle<()>,
}

/// Watch what `cfg` names, if anything and if `watch_debounce_ms` is not 0.
pub fn start(
    cfg: &DetectConfig,
    reload: Arc<vigil_query::api::ReloadFn>,
) -> anyhow::Result<Option<RulesWatch>> {
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
    Ok(Some(RulesWatch {
        _watcher: watcher,
        _thread: thread,
    }))
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
