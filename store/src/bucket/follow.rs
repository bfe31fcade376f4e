//! Following the logs other instances write: each log's new files fetched into this
//! instance's directory as their writers name them, so that its SQL and its detection see
//! every partition, not only the ones its consumer holds.
//!
//! One listing of `heads/` per round; a log whose head has not changed since the last round
//! costs nothing more. A changed one costs a read of its head and one read per new file: the
//! head names its newest files ([`super::RECENT_FILES`]), so a follower that keeps up never
//! lists the log. One that fell further behind (or whose copy the log's writer pruned) copies
//! the log's directory as a reader does.

use std::collections::HashMap;

use super::Bucket;
use crate::LogId;
use crate::error::StoreError;
use crate::files::Store;

/// What one round of [`Bucket::follow`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowReport {
    /// Logs whose head changed since the last round (and are written elsewhere).
    pub logs_changed: usize,
    /// Event files fetched.
    pub fetched: usize,
    /// Logs copied whole (this copy was too far behind their heads' lists of newest files).
    pub copied: usize,
}

impl Bucket {
    /// Fetch into `store`'s directory the files other instances' writers named since the
    /// last round, for every log `store` does not hold and whose head names another
    /// instance. `seen` keeps each log's head ETag from round to round.
    pub fn follow(
        &self,
        store: &Store,
        seen: &mut HashMap<LogId, String>,
    ) -> Result<FollowReport, StoreError> {
        let mut report = FollowReport::default();
        let me = store.instance_id()?;
        for meta in self.list(crate::layout::HEADS_DIR)? {
            let Some(log) = self.local_rel(&meta.location).and_then(|r| head_log(&r)) else {
                continue;
            };
            if meta.e_tag.is_some() && seen.get(&log) == meta.e_tag.as_ref() {
                continue;
            }
            // Not while a claim of the log copies it (this instance is being given it).
            let _copying = store.copying();
            if store.holds(&log) {
                continue;
            }
            let Some(read) = self.get_head(&log.topic, log.partition)? else {
                continue;
            };
            // This instance's own (its logs, and its partitions' of a run before).
            if read.head.owner == me {
                seen.insert(log, read.etag);
                continue;
            }
            report.logs_changed += 1;
            let (files, _) = store.list(&log.topic, log.partition)?;
            let newest = match files.last() {
                Some(f) => Some(Bucket::rel(store.data_dir(), &f.path)?),
                None => None,
            };
            let recent = &read.head.recent;
            let new: Option<&[String]> = match &newest {
                Some(n) => recent.iter().position(|r| r == n).map(|i| &recent[i + 1..]),
                // Nothing here yet: the list is the whole log only while it is short.
                None if recent.len() < super::RECENT_FILES => Some(&recent[..]),
                None => None,
            };
            let mut from_head_list = new.is_some();
            for rel in new.unwrap_or_default() {
                let meta = object_store::ObjectMeta {
                    location: self.key(rel)?,
                    last_modified: chrono::Utc::now(),
                    size: 0,
                    e_tag: None,
                    version: None,
                };
                let (mut index, mut pulled) = Default::default();
                match self.fetch(store.data_dir(), rel, &meta, &mut index, &mut pulled) {
                    Ok(()) => report.fetched += 1,
                    // A file the head names but the bucket no longer holds (its writer pruned
                    // it since): the head's list is not the log any more — copy the log.
                    Err(_) if self.etag(rel)?.is_none() => {
                        from_head_list = false;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !from_head_list {
                let r = self.copy_log(store.data_dir(), &log, &read.head)?;
                report.fetched += r.fetched;
                report.copied += 1;
            }
            seen.insert(log, read.etag);
        }
        Ok(report)
    }
}

/// `heads/topic=T/partition=P.json`: its log.
fn head_log(rel: &str) -> Option<LogId> {
    let rest = rel
        .strip_prefix(crate::layout::HEADS_DIR)?
        .strip_prefix('/')?;
    let (t, p) = rest.split_once('/')?;
    let topic = t.strip_prefix("topic=")?;
    let partition = p
        .strip_prefix("partition=")?
        .strip_suffix(".json")?
        .parse()
        .ok()?;
    crate::files::validate_topic(topic).ok()?;
    Some(LogId::new(topic, partition))
}
