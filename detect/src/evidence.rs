//! What a rule kind says about one event, shared by every kind.

use serde::{Deserialize, Serialize};

use crate::group::Key;

/// Where an event is in the store: its partition log (an id the engine interns), its leaf
/// index in that log, its leaf hash, and its event time. Enough to prove the event from the
/// store (`vigil proof --log … --index …`) and to check the proof is about this event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvRef {
    pub log: u32,
    pub index: u64,
    pub time_ns: i64,
    #[serde(with = "hex32")]
    pub leaf: [u8; 32],
}

/// An event at this time, nowhere in particular (unit tests of the rule kinds).
#[cfg(test)]
pub(crate) fn at(time_ns: i64) -> EvRef {
    EvRef {
        time_ns,
        ..EvRef::default()
    }
}

/// A new alert for a group: the key, the window's first and last event time, the count in it,
/// details (the distinct values, the unexpected edge, the baseline…), and the evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub key: Key,
    pub first_ns: i64,
    pub last_ns: i64,
    pub count: u64,
    pub detail: Vec<String>,
    pub evidence: Vec<EvRef>,
}

/// What one event did to a rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Did not match, or matched without reaching the rule's condition.
    Nothing,
    /// A new alert for this group.
    Fired(Hit),
    /// The group's open alert (within its suppression window) counts one more event. The
    /// group is the event's (the caller finds its alert from the event, without a copy of
    /// the key).
    Updated { count: u64, ev: EvRef },
}

impl Outcome {
    pub fn fired(&self) -> bool {
        matches!(self, Outcome::Fired(_))
    }
}

/// Counters every rule keeps for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub matched: u64,
    pub late: u64,
    pub evicted: u64,
    pub fired: u64,
}

/// The most evidence an alert carries (the newest events in its window).
pub(crate) const MAX_EVIDENCE: usize = 16;

/// Keep the newest `MAX_EVIDENCE` of `refs`.
pub fn newest(mut refs: Vec<EvRef>) -> Vec<EvRef> {
    refs.sort_by_key(|r| (r.time_ns, r.log, r.index));
    let n = refs.len();
    if n > MAX_EVIDENCE {
        refs.drain(..n - MAX_EVIDENCE);
    }
    refs
}

pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out)
            .map_err(|_| serde::de::Error::custom("expected 64 hex digits"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_hash_round_trips_and_a_hostile_one_is_an_error_not_a_panic() {
        let ev = EvRef {
            leaf: [0xab; 32],
            ..at(7)
        };
        let text = serde_json::to_string(&ev).unwrap();
        assert!(text.contains(&"ab".repeat(32)), "{text}");
        assert_eq!(serde_json::from_str::<EvRef>(&text).unwrap(), ev);
        // 64 bytes, not 64 hex digits: a state file edited by hand (or by an attacker) used
        // to slice through a multi-byte character and panic.
        for leaf in [
            format!("{}a", "€".repeat(21)),
            "zz".repeat(32),
            "ab".repeat(31),
        ] {
            let bad = text.replace(&"ab".repeat(32), &leaf);
            assert!(serde_json::from_str::<EvRef>(&bad).is_err(), "{leaf}");
        }
    }
}
