//! Alerts Vigil raises about itself rather than from a rule over events: a partition log gone
//! silent, a rule's state under pressure (groups evicted — someone may be flooding a rule's
//! group keys to push out the counter that would catch them). Built here, stored and
//! delivered like any other alert by the detection thread ([`crate::run`]).

use std::collections::{BTreeMap, HashMap};

use crate::alerts::{Alert, Severity, Status};

/// One system alert: what it is about and why.
struct About<'a> {
    rule_id: &'a str,
    title: &'a str,
    severity: Severity,
    group_key: BTreeMap<String, Option<String>>,
    first_ns: i64,
    now_ns: i64,
    detail: String,
    /// The same occurrence, the same id (a restart raises no second alert for it).
    alert_id: String,
}

/// An id from a blake3 key derivation context and what identifies the occurrence.
fn id(context: &str, parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    h.finalize().to_hex()[..32].to_owned()
}

fn alert(a: About<'_>) -> Alert {
    Alert {
        alert_id: a.alert_id,
        revision: 1,
        rule_id: a.rule_id.into(),
        rule_version: 1,
        rule_kind: "system".into(),
        title: a.title.into(),
        severity: a.severity,
        status: Status::Open,
        status_by: None,
        status_at_ns: None,
        status_note: None,
        incident_subject: crate::engine::incident_subject(&a.group_key),
        incident_id: None,
        group_key: a.group_key,
        first_event_ns: a.first_ns,
        last_event_ns: a.now_ns,
        detected_ns: a.now_ns,
        event_count: 0,
        detail: vec![a.detail],
        evidence: Vec::new(),
    }
}

/// The alert about a partition log that went silent (its producers stopped, were stopped, or
/// lost their way to Kafka) while the topic's other partitions kept sending.
pub(crate) fn source_silent(log: &str, seen_ns: i64, now_ns: i64) -> Alert {
    let (topic, partition) = log.rsplit_once('/').unwrap_or((log, ""));
    alert(About {
        rule_id: "vigil.telemetry.source_silent",
        title: "A partition log went silent while the others kept sending",
        severity: Severity::Medium,
        group_key: [
            ("kafka_topic".to_owned(), Some(topic.to_owned())),
            ("kafka_partition".to_owned(), Some(partition.to_owned())),
        ]
        .into(),
        first_ns: seen_ns,
        now_ns,
        detail: format!(
            "nothing from {log} for {:.0} s while the topic's other partitions sent",
            (now_ns - seen_ns) as f64 / 1e9
        ),
        alert_id: id(
            "vigil 2026 silent source alert id v1",
            &[log.as_bytes(), &seen_ns.to_le_bytes()],
        ),
    })
}

/// The rule id of [`Evictions`]' alerts.
pub(crate) const STATE_EVICTED: &str = "vigil.detect.state_evicted";

/// Watches every rule's eviction counter: a rule that evicts groups (its table full, the least
/// recently seen pushed out) is an alert, at most once per rule per `every_ns` — flooding a
/// rule with new group keys to push out the counter that would catch an attacker is itself
/// seen.
#[derive(Debug, Default)]
pub(crate) struct Evictions {
    /// Per rule: evictions counted when last looked at, and when it last alerted.
    seen: HashMap<String, (u64, Option<i64>)>,
    started: bool,
}

impl Evictions {
    /// What changed since the last call: an alert per rule that evicted groups since (and has
    /// not alerted within `every_ns`). The first call only takes note (evictions made before
    /// are not news).
    pub(crate) fn check(
        &mut self,
        stats: impl IntoIterator<Item = (String, u64, usize)>,
        now_ns: i64,
        every_ns: i64,
    ) -> Vec<Alert> {
        let first = !self.started;
        self.started = true;
        let mut out = Vec::new();
        for (rule, evicted, groups) in stats {
            let (before, last) = self.seen.get(&rule).copied().unwrap_or((0, None));
            if first || evicted <= before {
                self.seen.insert(rule, (evicted.max(before), last));
                continue;
            }
            if last.is_some_and(|t| now_ns - t < every_ns) {
                // Within the quiet period: counted from where it was, said next time.
                continue;
            }
            out.push(alert(About {
                rule_id: STATE_EVICTED,
                title: "A rule's state is full: groups were evicted",
                severity: Severity::High,
                group_key: [("rule_id".to_owned(), Some(rule.clone()))].into(),
                first_ns: last.unwrap_or(now_ns),
                now_ns,
                detail: format!(
                    "{} groups evicted by rule {rule} ({groups} kept, the least recently seen \
                     pushed out: its table was full, or detection's memory budget was reached \
                     and it held the most): many new group keys at once — a flood of user \
                     names, addresses or paths may be pushing out a real counter",
                    evicted - before
                ),
                alert_id: id(
                    "vigil 2026 state evicted alert id v1",
                    &[rule.as_bytes(), &now_ns.to_le_bytes()],
                ),
            }));
            self.seen.insert(rule, (evicted, Some(now_ns)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_alert_once_per_rule_per_period_and_not_for_the_past() {
        let mut e = Evictions::default();
        let s = |n: u64| vec![("r".to_owned(), n, 10usize), ("quiet".to_owned(), 0, 3)];
        // What was evicted before the first look is not news.
        assert!(e.check(s(50), 0, 100).is_empty());
        assert!(e.check(s(50), 10, 100).is_empty());
        let a = e.check(s(70), 20, 100);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].rule_id, STATE_EVICTED);
        assert_eq!(a[0].group_key["rule_id"].as_deref(), Some("r"));
        assert!(
            a[0].detail[0].starts_with("20 groups evicted by rule r"),
            "{:?}",
            a[0].detail
        );
        // More within the period: nothing; after it, one more, counting all since.
        assert!(e.check(s(90), 60, 100).is_empty());
        let b = e.check(s(95), 130, 100);
        assert_eq!(b.len(), 1);
        assert!(
            b[0].detail[0].starts_with("25 groups evicted"),
            "{:?}",
            b[0].detail
        );
        assert_ne!(a[0].alert_id, b[0].alert_id);
    }

    #[test]
    fn a_silent_source_alert_names_its_log() {
        let a = source_silent("mesh/3", 1_000, 61_000_001_000);
        assert_eq!(a.rule_id, "vigil.telemetry.source_silent");
        assert_eq!(a.group_key["kafka_partition"].as_deref(), Some("3"));
        assert_eq!(a, source_silent("mesh/3", 1_000, 61_000_001_000));
    }
}
