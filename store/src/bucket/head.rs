//! A partition log's head in the bucket: the one object that says who writes the log and
//! which file is its newest, advanced only by conditional writes. It is what fences a stale
//! writer — paused, cut off, its assignment lost — from forking the chain.
//!
//! ```text
//! heads/topic=T/partition=P.json   {"owner", "seq", "file", "first_offset", "last_offset", …}
//! ```
//!
//! Every change is a put that succeeds only if the object is still the one its writer last
//! saw (`If-Match` its ETag; `If-None-Match: *` for the first): a writer claims the log when
//! it is given it ([`crate::Store::claim_log`]), and each of its files is put (create-only)
//! and then named by the head. A writer whose head put fails has lost the log and stops.
//! `seq` grows with every change, so no two versions of a head have the same content — nor
//! the same ETag.
//!
//! A file a writer put but never named (it lost the log, or died between the two puts) is
//! not part of the log: walking back from the head's file ([`strays`]) leaves it out, and no
//! copy of the bucket fetches it. Nothing acknowledged can be such a file: offsets are
//! committed only once the head names it. The losing writer does not remove what it put: the
//! same records make the same file, so the winner may have put those very bytes and named
//! them. The log's writer replaces a stray whose name it needs.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Bucket;
use crate::error::StoreError;
use crate::layout;

/// A log's head object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadObject {
    /// The instance that writes the log ([`crate::Store::instance_id`]).
    pub owner: String,
    /// Grows by one with every change of the object.
    pub seq: u64,
    /// The log's newest file, relative to the store (`events/topic=…/….parquet`); `None`
    /// while the log has none.
    pub file: Option<String>,
    /// That file's first and last Kafka offsets (-1: no file).
    pub first_offset: i64,
    pub last_offset: i64,
    /// The log's newest files, oldest first, `file` last (at most [`RECENT_FILES`]): what
    /// another instance following the log fetches without listing it.
    #[serde(default)]
    pub recent: Vec<String>,
}

/// How many of a log's newest files its head names.
pub(crate) const RECENT_FILES: usize = 32;

impl HeadObject {
    /// The head of a log with no file yet, claimed by `owner`.
    pub fn empty(owner: &str) -> HeadObject {
        HeadObject {
            owner: owner.to_owned(),
            seq: 0,
            file: None,
            first_offset: -1,
            last_offset: -1,
            recent: Vec::new(),
        }
    }

    /// The head after `file` (from `first` to `last`), written by the same owner.
    pub fn advanced(&self, file: String, first: i64, last: i64) -> HeadObject {
        let mut recent = self.recent.clone();
        recent.push(file.clone());
        let drop = recent.len().saturating_sub(RECENT_FILES);
        recent.drain(..drop);
        HeadObject {
            owner: self.owner.clone(),
            seq: self.seq + 1,
            file: Some(file),
            first_offset: first,
            last_offset: last,
            recent,
        }
    }
}

/// A head as read from the bucket, with the ETag a conditional put names.
#[derive(Clone, Debug)]
pub struct ReadHead {
    pub head: HeadObject,
    pub etag: String,
}

impl Bucket {
    /// The head object of `topic`/`partition`, if the log has one.
    pub fn get_head(&self, topic: &str, partition: i32) -> Result<Option<ReadHead>, StoreError> {
        let rel = layout::head_rel(topic, partition)?;
        let Some((bytes, etag)) = self.get_with_etag(&rel)? else {
            return Ok(None);
        };
        let head: HeadObject = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Invalid(format!("{}/{rel}: not a log head: {e}", self.url)))?;
        Ok(Some(ReadHead { head, etag }))
    }

    /// Replace the head of `topic`/`partition` with `head`, only if it is still the version
    /// whose ETag is `expected` (`None`: only if the log has no head yet). Returns the new
    /// ETag; [`StoreError::Fenced`] when the head changed meanwhile (another writer has the
    /// log).
    pub fn put_head(
        &self,
        topic: &str,
        partition: i32,
        head: &HeadObject,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let rel = layout::head_rel(topic, partition)?;
        let body = serde_json::to_vec(head).map_err(|e| StoreError::Invalid(e.to_string()))?;
        match self.put_rel_versioned(&rel, body, expected) {
            Err(StoreError::Conflict(_)) => Err(StoreError::Fenced {
                log: crate::LogId::new(topic, partition).to_string(),
                why: "its head in the bucket changed since this instance read it".into(),
            }),
            r => r,
        }
    }
}

/// The files of one log that are not on its chain, given its head: those after the head's
/// file, and those the walk back from it passes over (a lost writer's). `files` are
/// `(rel, first_offset, last_offset)`. Walking back, a file's predecessor is the file that
/// ends last before it begins (the widest of equals: a compaction's). When the head's file
/// is not among `files`, nothing is called a stray: the bucket lost it, and a verifier is to
/// say so, not a copy to hide it.
pub fn strays(files: &[(String, i64, i64)], head: &HeadObject) -> BTreeSet<String> {
    let Some(head_file) = head.file.as_deref() else {
        // No file named yet: every file is a lost writer's.
        return files.iter().map(|f| f.0.clone()).collect();
    };
    let Some(mut cur) = files.iter().find(|f| f.0 == head_file) else {
        return BTreeSet::new();
    };
    let mut chain = BTreeSet::from([cur.0.clone()]);
    while let Some(prev) = files
        .iter()
        .filter(|f| f.2 < cur.1)
        .max_by_key(|f| (f.2, std::cmp::Reverse(f.1)))
    {
        chain.insert(prev.0.clone());
        cur = prev;
    }
    files
        .iter()
        .filter(|f| !chain.contains(&f.0))
        .map(|f| f.0.clone())
        .collect()
}
