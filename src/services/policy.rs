//! Policies and the Kubernetes audit stream's workloads: the declared graph's inputs, shared by
//! `policy import`, rule loading and the watch.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use vigil_detect::policy::AuditFeed;

use crate::config::Config;

/// The files at `paths` (directories: their `*.yaml`/`*.yml` and audit logs, sorted), read.
pub fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let wanted = |f: &Path| {
        f.extension().is_some_and(|x| x == "yaml" || x == "yml")
            || vigil_detect::policy::is_audit_log(&f.to_string_lossy())
    };
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && wanted(f))
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    files
        .iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            Ok((f.display().to_string(), text))
        })
        .collect()
}

/// The workloads of the Kubernetes audit events stored from `detect.policy_audit_topics`.
pub struct PolicyFeed {
    data_dir: PathBuf,
    feed: Mutex<AuditFeed>,
}

impl PolicyFeed {
    /// `None` when no topic is named.
    pub fn from_config(cfg: &Config) -> Option<Arc<PolicyFeed>> {
        let d = &cfg.detect;
        (!d.policy_audit_topics.is_empty()).then(|| {
            Arc::new(PolicyFeed {
                data_dir: cfg.store.data_dir.clone(),
                feed: Mutex::new(AuditFeed::new(
                    d.policy_audit_topics.clone(),
                    d.policy_audit_max_objects,
                )),
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuditFeed> {
        self.feed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read what was stored since the last look; whether the workloads changed.
    pub fn read(&self) -> anyhow::Result<bool> {
        let Ok(store) = vigil_store::Store::open_existing(&self.data_dir) else {
            return Ok(false); // nothing stored yet
        };
        let mut f = self.lock();
        let (dropped, unusable) = (f.dropped, f.unusable);
        let changed = f
            .read(&store)
            .context("reading the stored Kubernetes audit events")?;
        if f.dropped > dropped {
            tracing::warn!(
                dropped = f.dropped - dropped,
                held = f.len(),
                "workloads from the audit stream: past detect.policy_audit_max_objects, the least recently changed were dropped"
            );
        }
        if f.unusable > unusable {
            tracing::warn!(events = f.unusable - unusable, last = ?f.last_unusable,
                "audit events about workloads without a usable object");
        }
        Ok(changed)
    }

    fn manifests(&self) -> (String, String) {
        self.lock().manifests()
    }
}

/// Import the policies at `paths` into a graph (notes logged), with the workloads of `feed`
/// (read up to now first).
pub fn import(
    paths: &[PathBuf],
    trust_domain: &str,
    feed: Option<&PolicyFeed>,
) -> anyhow::Result<vigil_detect::policy::Imported> {
    let mut files = read_files(paths)?;
    if let Some(f) = feed {
        f.read()?;
        files.push(f.manifests());
    }
    let got = vigil_detect::policy::import(&files, trust_domain)?;
    for n in &got.notes {
        tracing::warn!(note = %n, "policy import: left out");
    }
    Ok(got)
}
