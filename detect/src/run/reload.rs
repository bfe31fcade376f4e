//! Replacing the rules while detection runs: a [`Reloader`] asks the detection thread, which
//! keeps unchanged rules' state, starts changed and new ones empty, and records the change in
//! Vigil's own log.

use std::time::Duration;

use vigil_store::clock::now_ns;

use super::thread::ThreadState;
use super::{DetectError, restore_fresh};
use crate::engine::Engine;
use crate::rules::Rule;

/// A request to replace the running rules.
#[derive(Debug)]
pub struct Reload {
    pub rules: Vec<Rule>,
    /// Who asked (recorded in Vigil's own log).
    pub by: String,
    pub reply: crossbeam_channel::Sender<Result<Reloaded, ReloadError>>,
}

/// Why rules were not reloaded (the running ones stay).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("detection is busy or stopped: try again")]
    Busy,
    #[error("detection did not answer in time: the reload may still happen")]
    NoAnswer,
    #[error("the new rules could not take the state back: {0}")]
    State(String),
    #[error("detection failed while reloading: {0}")]
    Failed(String),
}

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Reloaded {
    /// The rules running now (ids).
    pub rules: Vec<String>,
    /// Rules new or changed (another version): they start with an empty state.
    pub fresh: Vec<String>,
    /// Rules no longer running (their open alerts stay as stored; nothing updates them).
    pub removed: Vec<String>,
}

/// Replaces the rules of a running detection thread: its state is saved first (every pending
/// alert stored), then the new rules take it back as a restart would — a rule of the same id
/// and version keeps its groups and open alerts, a new or changed one starts empty — with no
/// event missed or evaluated twice. The change is recorded in Vigil's own log.
#[derive(Clone, Debug)]
pub struct Reloader(pub(super) crossbeam_channel::Sender<Reload>);

impl Reloader {
    /// Ask for the reload and wait up to `wait` for it to be done.
    pub fn reload(
        &self,
        rules: Vec<Rule>,
        by: &str,
        wait: Duration,
    ) -> Result<Reloaded, ReloadError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let req = Reload {
            rules,
            by: by.to_owned(),
            reply,
        };
        self.0
            .send_timeout(req, wait)
            .map_err(|_| ReloadError::Busy)?;
        answer
            .recv_timeout(wait)
            .map_err(|_| ReloadError::NoAnswer)?
    }
}

/// The `admin_audit` event of a reload: who, and the rules (id, version) running after it.
fn reload_event(by: &str, engine: &Engine, done: &Reloaded, now_ns: i64) -> Vec<u8> {
    let rules: Vec<serde_json::Value> = engine
        .rules()
        .iter()
        .map(|r| serde_json::json!({"id": r.meta.id, "version": r.meta.version}))
        .collect();
    let ev = serde_json::json!({
        "schema": vigil_schemas::NATIVE_SCHEMA_V1,
        "id": format!("rules.reload:{now_ns}"),
        "time": crate::lifecycle::time_rfc3339(now_ns),
        "kind": "admin_audit",
        "decision": "allow",
        "caller": {"principal": by},
        "callee": {"service": "vigil"},
        "action": "rules.reload",
        "resource": "rules",
        "reason": format!("{} rules; new or changed: {}; removed: {}", done.rules.len(),
            list_or_none(&done.fresh), list_or_none(&done.removed)),
        "rules": rules,
    });
    serde_json::to_vec(&ev).unwrap_or_default()
}

fn list_or_none(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}

impl ThreadState {
    /// Take the reloads asked for, one by one.
    pub(super) fn reloads(&mut self, engine: &mut Engine) -> Result<(), DetectError> {
        while let Some(r) = self.reloads.as_ref().and_then(|rx| rx.try_recv().ok()) {
            match self.reload(engine, r.rules, &r.by) {
                Ok(answer) => {
                    let _ = r.reply.send(answer);
                }
                Err(e) => {
                    let _ = r.reply.send(Err(ReloadError::Failed(e.to_string())));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Save the state, then let `rules` take it back (as a restart would), and record it.
    /// `Ok(Err)`: the new rules could not take the state back; the old ones keep running.
    pub(super) fn reload(
        &mut self,
        engine: &mut Engine,
        rules: Vec<Rule>,
        by: &str,
    ) -> Result<Result<Reloaded, ReloadError>, DetectError> {
        self.save(engine)?;
        let (mut next, _, fresh, _) = match restore_fresh(&self.cfg, rules) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "rules not reloaded: the running ones stay");
                return Ok(Err(ReloadError::State(e.to_string())));
            }
        };
        next.rows = engine.rows;
        next.skipped_rows = engine.skipped_rows;
        let ids =
            |e: &Engine| -> Vec<String> { e.rules().iter().map(|r| r.meta.id.clone()).collect() };
        let now_running = ids(&next);
        let removed: Vec<String> = ids(engine)
            .into_iter()
            .filter(|id| !now_running.contains(id))
            .collect();
        let done = Reloaded {
            rules: now_running,
            fresh,
            removed,
        };
        *engine = next;
        // The state just saved is the one the new rules started from: only the stats change.
        self.publish_stats(engine);
        tracing::warn!(by, rules = done.rules.len(), fresh = ?done.fresh, removed = ?done.removed,
            "detection rules reloaded");
        let event = reload_event(by, engine, &done, now_ns());
        self.record(engine, &[event])?;
        Ok(Ok(done))
    }
}
