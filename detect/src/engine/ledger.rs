//! Alert bookkeeping: each rule's open alerts (one per group), the revisions not yet taken,
//! the ids already stored, lifecycle changes carried into later revisions, and incidents (the
//! alerts about one subject within a window).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{LogNames, evidence};
use crate::alerts::{Alert, Evidence, Status};
use crate::evidence::{EvRef, Hit, Outcome};
use crate::filter::Row;
use crate::group::{GroupBy, PackedKey, Table};
use crate::rules::{Meta, Rule};

/// A group's open alert: further matches within the rule's suppression window update it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct OpenAlert {
    /// Event time it fired at; it stays open for the rule's suppression window after.
    pub(super) fired_ns: i64,
    pub(super) alert: Alert,
}

/// Alert bookkeeping: open alerts per rule (found from an event's group without copying its
/// key), the changes not yet taken, and the ids already stored.
pub(super) struct AlertLedger {
    /// Per rule (same index as the rules).
    pub(super) open: Vec<Table<OpenAlert>>,
    /// Open alerts changed since the last take: (rule, key); their current revision is taken.
    pub(super) pending: BTreeMap<String, (usize, PackedKey)>,
    /// Changed alerts that closed (or were replaced) before they were taken.
    pub(super) pending_closed: Vec<Alert>,
    /// Whether anything pending is a new alert (not only updates).
    pub(super) pending_new: bool,
    /// Highest revision already stored per alert id (so a re-fire after a restart updates it).
    pub(super) stored: HashMap<String, i64>,
    /// Alerts stored or raised, by rule and group: (id, first and last event time). A group
    /// firing again within the rule's suppression window of one of them is that alert again
    /// (a replay in another order fires at another event, not another alert).
    pub(super) known: HashMap<(String, GroupKey), Vec<KnownAlert>>,
    /// Alerts someone acknowledged, suppressed or resolved: their newest revision's status
    /// fields, carried into any later revision. A resolved alert is never raised again (a
    /// replay firing its id is that alert, already dealt with) nor updated; its group's next
    /// firing is a new alert.
    pub(super) lifecycle: HashMap<String, Alert>,
    /// Per subject, its newest incident: (id, newest event time of its alerts).
    pub(super) incidents: HashMap<String, (String, i64)>,
    /// Alerts about one subject whose events lie within this of its incident's newest share it.
    pub(super) incident_window_ns: i64,
}

/// Who an alert is about, from its group key: a principal (the caller, the user), else an
/// address, else the partition log (alerts about a source). `None`: no subject (an alert about
/// a node, a target): it is its own incident.
pub(crate) fn incident_subject(group_key: &BTreeMap<String, Option<String>>) -> Option<String> {
    let get = |k: &str| group_key.get(k).cloned().flatten();
    for k in ["caller_principal", "caller"] {
        if let Some(v) = get(k) {
            return Some(format!("principal:{v}"));
        }
    }
    if let Some(v) = get("caller_ip") {
        return Some(format!("ip:{v}"));
    }
    match (get("kafka_topic"), get("kafka_partition")) {
        (Some(t), Some(p)) => Some(format!("log:{t}/{p}")),
        _ => None,
    }
}

pub(super) type GroupKey = BTreeMap<String, Option<String>>;

/// A known alert of a rule and group: its id and first and last event time.
pub(super) type KnownAlert = (String, i64, i64);

impl AlertLedger {
    /// Put a new alert in its subject's incident (a new one past the window).
    pub(super) fn assign_incident(&mut self, a: &mut Alert) {
        let Some(subject) = incident_subject(&a.group_key) else {
            a.incident_id = Some(a.alert_id.clone());
            return;
        };
        let window = self.incident_window_ns;
        let id = match self.incidents.get_mut(&subject) {
            Some((id, newest)) if a.first_event_ns <= newest.saturating_add(window) => {
                *newest = (*newest).max(a.last_event_ns);
                id.clone()
            }
            _ => {
                let mut h = blake3::Hasher::new_derive_key("vigil 2026 incident id v1");
                h.update(subject.as_bytes());
                h.update(&[0]);
                h.update(a.alert_id.as_bytes());
                let id = h.finalize().to_hex()[..32].to_owned();
                self.incidents
                    .insert(subject.clone(), (id.clone(), a.last_event_ns));
                id
            }
        };
        a.incident_id = Some(id);
        a.incident_subject = Some(subject);
    }

    /// A stored alert's incident, so that alerts raised after a restart join it.
    pub(super) fn remember_incident(&mut self, a: &Alert) {
        if let (Some(id), Some(subject)) = (&a.incident_id, &a.incident_subject) {
            let e = self
                .incidents
                .entry(subject.clone())
                .or_insert_with(|| (id.clone(), a.last_event_ns));
            if e.0 == *id {
                e.1 = e.1.max(a.last_event_ns);
            } else if a.last_event_ns > e.1 {
                *e = (id.clone(), a.last_event_ns);
            }
        }
    }

    /// What rule `r` said about an event (`row`): its group's open alert counts it, or a new
    /// alert is raised with its evidence (`event_id` names the events it can).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take(
        &mut self,
        r: usize,
        rule: &Rule,
        row: &impl Row,
        outcome: Outcome,
        now_ns: i64,
        logs: &LogNames,
        event_id: &dyn Fn(&EvRef) -> Option<String>,
    ) {
        let fields = rule.kind.group_fields();
        match outcome {
            Outcome::Nothing => {}
            Outcome::Updated { count, ev } => self.update(r, fields, row, count, ev),
            Outcome::Fired(hit) => {
                let evidence = evidence(logs, &hit.evidence, event_id);
                self.fire(r, &rule.meta, fields, row, hit, now_ns, evidence);
            }
        }
    }

    pub(super) fn remember(&mut self, a: &Alert) {
        self.remember_incident(a);
        let r = self.stored.entry(a.alert_id.clone()).or_insert(0);
        if a.revision >= *r && a.status != Status::Open {
            self.lifecycle.insert(a.alert_id.clone(), a.clone());
        }
        *r = (*r).max(a.revision);
        let v = self
            .known
            .entry((a.rule_id.clone(), a.group_key.clone()))
            .or_default();
        match v.iter_mut().find(|(id, _, _)| *id == a.alert_id) {
            Some(e) => {
                e.1 = e.1.min(a.first_event_ns);
                e.2 = e.2.max(a.last_event_ns);
            }
            None => v.push((a.alert_id.clone(), a.first_event_ns, a.last_event_ns)),
        }
    }
}

impl AlertLedger {
    /// Count an event into its group's open alert.
    pub(super) fn update(
        &mut self,
        r: usize,
        fields: &GroupBy,
        row: &impl Row,
        count: u64,
        ev: EvRef,
    ) {
        let Some((key, open)) = self.open[r].get(fields, row) else {
            return;
        };
        let a = &mut open.alert;
        a.event_count = a.event_count.max(i64::try_from(count).unwrap_or(i64::MAX));
        a.last_event_ns = a.last_event_ns.max(ev.time_ns);
        a.first_event_ns = a.first_event_ns.min(ev.time_ns);
        // A suppressed alert counts its events but raises no revision for them.
        if a.status == Status::Suppressed {
            return;
        }
        // One new revision per take, however many events updated it.
        if !self.pending.contains_key(&a.alert_id) {
            a.revision += 1;
            self.pending.insert(a.alert_id.clone(), (r, key.clone()));
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fire(
        &mut self,
        r: usize,
        meta: &Meta,
        fields: &GroupBy,
        row: &impl Row,
        hit: Hit,
        now_ns: i64,
        evidence: Vec<Evidence>,
    ) {
        // The id names the rule, the group and the event time it fired at: replaying the same
        // events fires the same id.
        let mut h = blake3::Hasher::new_derive_key("vigil 2026 alert id v1");
        h.update(meta.id.as_bytes());
        h.update(&[0]);
        h.update(&meta.version.to_le_bytes());
        for k in &hit.key {
            match k {
                Some(v) => {
                    h.update(&[1]);
                    h.update(&(v.len() as u64).to_le_bytes());
                    h.update(v.as_bytes());
                }
                None => {
                    h.update(&[0]);
                }
            }
        }
        h.update(&hit.last_ns.to_le_bytes());
        let group_key: GroupKey = meta
            .group_names
            .iter()
            .cloned()
            .zip(hit.key.iter().cloned())
            .collect();
        let suppress = meta.suppress_ns;
        let resolved = |id: &str| {
            self.lifecycle
                .get(id)
                .is_some_and(|a| a.status == Status::Resolved)
        };
        let same = self
            .known
            .get(&(meta.id.clone(), group_key.clone()))
            .and_then(|v| {
                v.iter().find(|(id, first, last)| {
                    hit.last_ns < last.saturating_add(suppress)
                        && hit.last_ns >= first.saturating_sub(suppress)
                        && !resolved(id)
                })
            });
        let id = match same {
            Some((id, _, _)) => id.clone(),
            None => h.finalize().to_hex()[..32].to_owned(),
        };
        if resolved(&id) {
            // The very firing someone resolved (replayed after a rebuild): nothing new.
            return;
        }
        let revision = self.stored.get(&id).copied().unwrap_or(0) + 1;
        let mut alert = Alert {
            alert_id: id.clone(),
            revision,
            rule_id: meta.id.clone(),
            rule_version: i32::try_from(meta.version).unwrap_or(i32::MAX),
            rule_kind: meta.kind.as_str().to_owned(),
            title: meta.title.clone(),
            severity: meta.severity,
            status: Status::Open,
            status_by: None,
            status_at_ns: None,
            status_note: None,
            group_key,
            first_event_ns: hit.first_ns,
            last_event_ns: hit.last_ns,
            detected_ns: now_ns,
            event_count: i64::try_from(hit.count).unwrap_or(i64::MAX),
            detail: hit.detail,
            evidence,
            incident_id: None,
            incident_subject: None,
        };
        // Stored alerts' incidents are known (`remember`): the same alert fired again by a
        // replay lands in the incident it was in.
        self.assign_incident(&mut alert);
        let life = self.lifecycle.get(&id);
        if let Some(l) = life {
            alert.status.clone_from(&l.status);
            alert.status_by.clone_from(&l.status_by);
            alert.status_at_ns = l.status_at_ns;
            alert.status_note.clone_from(&l.status_note);
        }
        if revision == 1 {
            self.pending_new = true;
        }
        let (_, open) = self.open[r].entry(fields, row, || OpenAlert {
            fired_ns: hit.last_ns,
            alert: alert.clone(),
        });
        // A group that fires again replaces its old open alert: keep that one's last change.
        if open.alert.alert_id != id && self.pending.remove(&open.alert.alert_id).is_some() {
            self.pending_closed.push(open.alert.clone());
        }
        open.fired_ns = hit.last_ns;
        open.alert = alert;
        self.pending.insert(id, (r, PackedKey::from_key(&hit.key)));
        let a = open.alert.clone();
        self.remember(&a);
    }
}
