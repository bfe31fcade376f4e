//! The engine's alerts: what changed since the last take, stored alerts it is told of, open
//! alerts expiring after their rule's suppression window, and lifecycle commands
//! (acknowledge, suppress, resolve) applied to them.

use std::collections::HashMap;

use super::Engine;
use crate::alerts::{Alert, Status};
use crate::group::PackedKey;
use crate::lifecycle::{Command, Refusal};

impl Engine {
    /// Alerts already stored (their newest revisions): firing one of them again updates it.
    /// An open alert the store has a newer revision of (a lifecycle change applied while this
    /// state was saved: by the CLI with no `serve` running) takes that revision; resolved, it
    /// is closed.
    pub(crate) fn know_stored(&mut self, alerts: &[Alert]) {
        for a in alerts {
            self.book.remember(a);
        }
        let newer: HashMap<&str, &Alert> =
            alerts.iter().map(|a| (a.alert_id.as_str(), a)).collect();
        let Engine { rules, book, .. } = self;
        for (r, rule) in rules.iter_mut().enumerate() {
            let fields = rule.kind.group_fields().clone();
            let stale: Vec<(PackedKey, Alert)> = book.open[r]
                .entries()
                .filter_map(|e| {
                    let s = newer.get(e.state.alert.alert_id.as_str())?;
                    (s.revision > e.state.alert.revision).then(|| (e.key.clone(), (*s).clone()))
                })
                .collect();
            for (key, s) in stale {
                if s.status == Status::Resolved {
                    book.open[r].remove_by_key(&fields, &key);
                    rule.kind.close(&key);
                } else if let Some(o) = book.open[r].get_by_key_mut(&fields, &key) {
                    o.alert = s;
                }
            }
        }
    }

    /// Whether alerts wait to be taken; `true` in the second place when one is new.
    pub(crate) fn has_pending(&self) -> (bool, bool) {
        (
            !self.book.pending.is_empty() || !self.book.pending_closed.is_empty(),
            self.book.pending_new,
        )
    }

    /// The alert revisions raised since the last call. Store them before reporting them.
    /// Alerts [`Engine::take_pending`] gave that could not be stored (the volume was full):
    /// given again, first, by the next one.
    pub(crate) fn requeue(&mut self, mut alerts: Vec<Alert>) {
        alerts.append(&mut self.book.pending_closed);
        self.book.pending_closed = alerts;
    }

    pub fn take_pending(&mut self) -> Vec<Alert> {
        let book = &mut self.book;
        book.pending_new = false;
        let mut taken = std::mem::take(&mut book.pending_closed);
        for (_, (r, key)) in std::mem::take(&mut book.pending) {
            let fields = self.rules[r].kind.group_fields();
            if let Some(o) = book.open[r].get_by_key(fields, &key) {
                taken.push(o.alert.clone());
            }
        }
        for a in &taken {
            book.remember(a);
        }
        taken.sort_by(|a, b| {
            a.alert_id
                .cmp(&b.alert_id)
                .then(a.revision.cmp(&b.revision))
        });
        taken
    }

    /// Drop state the watermarks have passed: groups with nothing left in their windows,
    /// open alerts past their suppression windows.
    pub(crate) fn expire(&mut self) {
        let newest = self.clocks.watermark_ns();
        let book = &mut self.book;
        for (r, rule) in self.rules.iter_mut().enumerate() {
            rule.kind.expire();
            let suppress = rule.meta.suppress_ns;
            let (pending, closed) = (&mut book.pending, &mut book.pending_closed);
            book.open[r].retain(|o| {
                let keep = o.fired_ns.saturating_add(suppress) > newest;
                if !keep && pending.remove(&o.alert.alert_id).is_some() {
                    closed.push(o.alert.clone());
                }
                keep
            });
        }
        // Stored alerts matter while a group could fire them again: until the suppression
        // window after their last event has passed.
        let suppress: HashMap<&str, i64> = self
            .rules
            .iter()
            .map(|r| (r.meta.id.as_str(), r.meta.suppress_ns))
            .collect();
        let mut keep = std::collections::HashSet::new();
        book.known.retain(|(rule, _), v| {
            let s = suppress.get(rule.as_str()).copied().unwrap_or(0);
            v.retain(|(_, _, last)| last.saturating_add(s) > newest);
            keep.extend(v.iter().map(|(id, _, _)| id.clone()));
            !v.is_empty()
        });
        book.stored.retain(|id, _| keep.contains(id));
        book.lifecycle.retain(|id, _| keep.contains(id));
        // An incident no new alert can join any more.
        let window = book.incident_window_ns;
        book.incidents
            .retain(|_, (_, last)| last.saturating_add(window) > newest);
    }

    /// Apply a lifecycle change: the alert's new revision, pending like any other (take it to
    /// store it). `stored` is the alert's newest stored revision, for an alert no longer open
    /// here. Take pending revisions before, so that revisions stay in order.
    pub fn apply(&mut self, cmd: &Command, stored: Option<&Alert>) -> Result<Alert, Refusal> {
        let Engine { rules, book, .. } = self;
        let open = rules.iter().enumerate().find_map(|(r, rule)| {
            book.open[r]
                .entries()
                .find(|e| e.state.alert.alert_id == cmd.alert_id)
                .map(|e| (r, rule.kind.group_fields(), e.key.clone()))
        });
        let current = match &open {
            Some((r, fields, key)) => book.open[*r]
                .get_by_key(fields, key)
                .map(|o| o.alert.clone()),
            None => stored.cloned(),
        }
        .ok_or_else(|| Refusal::NoSuchAlert {
            alert_id: cmd.alert_id.clone(),
        })?;
        let to =
            cmd.action
                .apply_to(current.status)
                .map_err(|not_allowed| Refusal::NotAllowed {
                    alert_id: cmd.alert_id.clone(),
                    not_allowed,
                })?;
        let mut next = current;
        next.revision = next
            .revision
            .max(stored.map_or(0, |s| s.revision))
            .max(book.stored.get(&cmd.alert_id).copied().unwrap_or(0))
            + 1;
        next.status = to;
        next.status_by = Some(cmd.by.clone());
        next.status_at_ns = Some(cmd.at_ns);
        next.status_note.clone_from(&cmd.note);
        match open {
            Some((r, fields, key)) if to != Status::Resolved => {
                if let Some(o) = book.open[r].get_by_key_mut(fields, &key) {
                    o.alert = next.clone();
                }
                book.pending.insert(next.alert_id.clone(), (r, key));
            }
            Some((r, fields, key)) => {
                book.open[r].remove_by_key(fields, &key);
                rules[r].kind.close(&key);
                book.pending.remove(&next.alert_id);
                book.pending_closed.push(next.clone());
            }
            None => book.pending_closed.push(next.clone()),
        }
        book.remember(&next);
        Ok(next)
    }
}
