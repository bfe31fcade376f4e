//! The engine's state file (`detect/state.json`): positions, each rule's groups and open
//! alerts, the watermark and per-source counts; written to a temporary file, synced, renamed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Engine, EngineError, OpenAlert};
use crate::group::Entry;
use crate::time::SourceTime;

/// Persisted engine state.
#[derive(Serialize, Deserialize)]
struct State {
    format: String,
    positions: BTreeMap<String, u64>,
    rules: Vec<SavedRule>,
    /// The watermark.
    newest_ns: i64,
    /// Per log: events, skewed and late counts (times start afresh after a restart).
    #[serde(default)]
    sources: BTreeMap<String, SourceTime>,
}

#[derive(Serialize, Deserialize)]
struct SavedRule {
    id: String,
    version: u32,
    /// Parsed by the rule's kind itself (no JSON tree of every group in between).
    state: Box<serde_json::value::RawValue>,
    #[serde(default)]
    open: Vec<Entry<OpenAlert>>,
}

const STATE_FORMAT: &str = "vigil-detect-state-v2";

impl Engine {
    /// Write the state (positions, every rule's groups and open alerts) durably to `path`.
    /// Nothing may wait for the watermark ([`Engine::drain`] first): positions are past it.
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        let err = |m: String| EngineError::State {
            path: path.display().to_string(),
            message: m,
        };
        if !self.reorder.is_empty() {
            return Err(err(format!(
                "{} events still wait for the watermark (drain before saving)",
                self.reorder.len()
            )));
        }
        // The shape of `State`, borrowed: streamed to the file, never built in memory whole
        // (a million groups would take gigabytes as a JSON tree).
        #[derive(Serialize)]
        struct RuleRef<'a> {
            id: &'a str,
            version: u32,
            state: crate::rules::SavedKind<'a>,
            open: Vec<&'a Entry<OpenAlert>>,
        }
        #[derive(Serialize)]
        struct StateRef<'a> {
            format: &'a str,
            positions: BTreeMap<&'a str, u64>,
            rules: Vec<RuleRef<'a>>,
            newest_ns: i64,
            sources: BTreeMap<&'a str, SourceTime>,
        }
        let state = StateRef {
            format: STATE_FORMAT,
            positions: self
                .positions
                .iter()
                .map(|(l, p)| (self.logs.names[*l as usize].as_str(), *p))
                .collect(),
            rules: self
                .rules
                .iter()
                .enumerate()
                .map(|(r, rule)| RuleRef {
                    id: &rule.meta.id,
                    version: rule.meta.version,
                    state: rule.kind.saved(),
                    open: self.book.open[r].entries().collect(),
                })
                .collect(),
            newest_ns: self.clocks.watermark_ns(),
            sources: self
                .clocks
                .sources()
                .map(|(id, s)| (self.logs.names[id as usize].as_str(), *s))
                .collect(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        vigil_store::write_durably_with(path, |w| {
            serde_json::to_writer(w, &state).map_err(std::io::Error::other)
        })
        .map_err(|e| err(e.to_string()))
    }

    /// Restore state saved by [`Engine::save`]. Rules whose id and version match get their
    /// state back; others start empty (and say so in the returned list).
    pub fn restore(&mut self, path: &Path) -> Result<Vec<String>, EngineError> {
        let err = |m: String| EngineError::State {
            path: path.display().to_string(),
            message: m,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let state: State = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        if state.format != STATE_FORMAT {
            return Err(err(format!("unknown format {:?}", state.format)));
        }
        for (log, p) in state.positions {
            let id = self.logs.id(&log);
            self.positions.insert(id, p);
        }
        // Saved by a version that let a forged event time move the clocks (2099): no
        // clock is restored past receive time.
        let max_ns = vigil_store::clock::now_ns().saturating_add(self.time.max_future_skew_ns);
        self.clocks.restore(state.newest_ns, max_ns);
        for (log, s) in &state.sources {
            let id = self.logs.id(log);
            self.clocks.restore_counts(id, s);
        }
        let mut fresh = Vec::new();
        let mut saved: HashMap<(String, u32), SavedRule> = state
            .rules
            .into_iter()
            .map(|s| ((s.id.clone(), s.version), s))
            .collect();
        for (r, rule) in self.rules.iter_mut().enumerate() {
            match saved.remove(&(rule.meta.id.clone(), rule.meta.version)) {
                Some(s) => {
                    rule.kind
                        .restore(&s.state)
                        .map_err(|e| err(format!("rule {}: {e}", rule.meta.id)))?;
                    rule.kind.clamp_clock(max_ns);
                    for o in &s.open {
                        let rev = self
                            .book
                            .stored
                            .entry(o.state.alert.alert_id.clone())
                            .or_insert(0);
                        *rev = (*rev).max(o.state.alert.revision);
                    }
                    self.book.open[r].restore(rule.kind.group_fields(), s.open);
                }
                None => fresh.push(rule.meta.id.clone()),
            }
        }
        Ok(fresh)
    }
}
