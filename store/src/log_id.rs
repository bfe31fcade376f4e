//! A partition log's id: one Kafka topic's partition, as Vigil chains, checkpoints and names
//! it (`<topic>/<partition>` wherever it is written: evidence, proofs, the API, metrics).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One partition log. Written and read as `<topic>/<partition>`; ordered by topic, then
/// partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId {
    pub topic: String,
    pub partition: i32,
}

impl LogId {
    pub fn new(topic: impl Into<String>, partition: i32) -> LogId {
        LogId {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Text that is no `<topic>/<partition>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a log: expected TOPIC/PARTITION ({why})")]
pub struct LogIdError {
    /// The text given (its first 300 characters).
    pub text: String,
    pub why: &'static str,
}

impl FromStr for LogId {
    type Err = LogIdError;

    /// `<topic>/<partition>`: a valid Kafka topic name and a partition ≥ 0.
    fn from_str(s: &str) -> Result<LogId, LogIdError> {
        let err = |why| LogIdError {
            text: s.chars().take(300).collect(),
            why,
        };
        let (topic, partition) = s.rsplit_once('/').ok_or_else(|| err("no `/`"))?;
        crate::files::validate_topic(topic).map_err(|_| err("not a topic name"))?;
        let partition: i32 = partition
            .parse()
            .map_err(|_| err("the partition is not a number"))?;
        if partition < 0 {
            return Err(err("the partition is negative"));
        }
        Ok(LogId::new(topic, partition))
    }
}

impl Serialize for LogId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LogId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_and_read_as_topic_slash_partition() {
        let id = LogId::new("vigil.audit", 0);
        assert_eq!(id.to_string(), "vigil.audit/0");
        assert_eq!("vigil.audit/0".parse::<LogId>(), Ok(id.clone()));
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"vigil.audit/0\"");
        assert_eq!(
            serde_json::from_str::<LogId>("\"vigil.audit/0\"").unwrap(),
            id
        );
        // The last `/` splits: no topic holds one, so `a/b/0` is no log either.
        for bad in [
            "mesh",
            "mesh/",
            "/0",
            "mesh/x",
            "mesh/-1",
            "a/b/0",
            "../0",
            "mesh/99999999999",
        ] {
            assert!(bad.parse::<LogId>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<LogId>("\"mesh\"").is_err());
        assert!(
            LogId::new("a", 2) < LogId::new("a", 10) && LogId::new("a", 10) < LogId::new("b", 0)
        );
    }
}
