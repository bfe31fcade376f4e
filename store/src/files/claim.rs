//! Which logs this instance writes, when the store is in a bucket: a log is claimed through
//! its head object ([`crate::bucket::HeadObject`]) before the first file, and every file it
//! writes advances that head by a conditional put. Losing either put means another instance
//! writes the log now: [`StoreError::Fenced`], and the log is given up.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::LogId;
use crate::batch::BatchSpan;
use crate::bucket::{Bucket, HeadObject, ReadHead};
use crate::error::StoreError;

use super::Store;

/// Times a claim reads the head again when it changed between the read and the put.
const CLAIM_ATTEMPTS: usize = 5;

/// The logs this store's writers hold, each with its head as last put.
#[derive(Clone, Debug, Default)]
pub(crate) struct Claims {
    held: Arc<Mutex<HashMap<LogId, ReadHead>>>,
}

/// Keeps two copies of a log from the bucket (claims, the follower's rounds, from any handle
/// on the store in this process) from running at once.
static COPYING: Mutex<()> = Mutex::new(());

impl Claims {
    fn get(&self, log: &LogId) -> Option<ReadHead> {
        self.lock().get(log).cloned()
    }

    fn set(&self, log: LogId, head: ReadHead) {
        self.lock().insert(log, head);
    }

    fn drop_log(&self, log: &LogId) {
        self.lock().remove(log);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LogId, ReadHead>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This instance's name as a log's writer: made once (random), kept in the data directory.
pub(crate) fn instance_id(data_dir: &Path) -> Result<String, StoreError> {
    // The threads of one process (each with its handle on the store) make it once.
    static MAKING: Mutex<()> = Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let path = crate::layout::instance_id(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(&path)(e)),
    }
    let mut rnd = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut rnd);
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let id = if host.is_empty() {
        hex::encode(rnd)
    } else {
        format!("{host}-{}", hex::encode(rnd))
    };
    super::write_durably(&path, id.as_bytes())?;
    Ok(id)
}

impl Store {
    fn fenced(log: &LogId, why: impl Into<String>) -> StoreError {
        StoreError::Fenced {
            log: log.to_string(),
            why: why.into(),
        }
    }

    /// This instance's name in the heads of the logs it writes.
    pub fn instance_id(&self) -> Result<String, StoreError> {
        instance_id(&self.root)
    }

    /// Take `topic`/`partition` for this instance's writers (a partition assigned to it):
    /// bring the log's files and checkpoints here from the bucket, then put its head naming
    /// this instance, conditional on the head read. From then on a writer still holding the
    /// log elsewhere is fenced at its next file. `take_over: false` refuses a log another
    /// instance holds ([`StoreError::Fenced`]): Vigil's own logs, each one process's.
    /// Without a bucket there is nothing to claim.
    pub fn claim_log(
        &self,
        topic: &str,
        partition: i32,
        take_over: bool,
    ) -> Result<(), StoreError> {
        let Some(bucket) = self.bucket.clone() else {
            return Ok(());
        };
        let log = LogId::new(topic, partition);
        let me = self.instance_id()?;
        let _copying = self.copying();
        for _ in 0..CLAIM_ATTEMPTS {
            let read = bucket.get_head(topic, partition)?;
            if let Some(r) = &read
                && r.head.owner != me
                && !take_over
            {
                return Err(Self::fenced(
                    &log,
                    format!("instance {} holds it", r.head.owner),
                ));
            }
            bucket.pull_log(&self.root, topic, partition, read.as_ref().map(|r| &r.head))?;
            let head = self.claimed_head(&bucket, &log, &me, read.as_ref())?;
            match bucket.put_head(
                topic,
                partition,
                &head,
                read.as_ref().map(|r| r.etag.as_str()),
            ) {
                Ok(etag) => {
                    tracing::info!(log = %log, owner = %me, last_offset = head.last_offset,
                        "log claimed in the bucket");
                    self.claims.set(log, ReadHead { head, etag });
                    return Ok(());
                }
                // Changed between the read and the put: read it again.
                Err(StoreError::Fenced { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Self::fenced(
            &log,
            "its head kept changing while this instance claimed it",
        ))
    }

    /// The head a claim puts: where the log stands once its files are here, owned by `me`.
    fn claimed_head(
        &self,
        bucket: &Bucket,
        log: &LogId,
        me: &str,
        read: Option<&ReadHead>,
    ) -> Result<HeadObject, StoreError> {
        let (files, _) = self.list(&log.topic, log.partition)?;
        let newest = files.last();
        if let Some(r) = read {
            let here = newest.map_or(-1, |f| f.last_offset);
            if here != r.head.last_offset {
                return Err(StoreError::Invalid(format!(
                    "{log}: the bucket's head is at offset {}, its files copied here end at {here}: \
                     check the bucket with `vigil verify --store {}`",
                    r.head.last_offset,
                    bucket.url()
                )));
            }
        }
        let mut head = HeadObject::empty(me);
        head.seq = read.map_or(0, |r| r.head.seq + 1);
        let skip = files.len().saturating_sub(crate::bucket::RECENT_FILES);
        for f in &files[skip..] {
            head.recent.push(Bucket::rel(&self.root, &f.path)?);
        }
        if let Some(f) = newest {
            head.file = Some(Bucket::rel(&self.root, &f.path)?);
            head.first_offset = f.first_offset;
            head.last_offset = f.last_offset;
        }
        Ok(head)
    }

    /// Put a new file of `log` (create-only) while this writer holds it as `claim`. Another
    /// object under the name is a stray (a writer that lost the log put it and never named it)
    /// if the head is still `claim`'s: replaced; otherwise the log is another writer's now.
    fn put_new(
        &self,
        bucket: &Bucket,
        log: &LogId,
        claim: &ReadHead,
        path: &Path,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        match bucket.put(&self.root, path, bytes.clone(), true) {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict(what)) => match bucket.get_head(&log.topic, log.partition)? {
                Some(now) if now.etag == claim.etag => {
                    tracing::warn!(object = %what,
                            "replacing a file no head named (a writer that lost this log put it)");
                    bucket.put(&self.root, path, bytes, false).map(|_| ())
                }
                _ => {
                    self.claims.drop_log(log);
                    Err(Self::fenced(
                        log,
                        format!("{what} exists with other content"),
                    ))
                }
            },
            Err(e) => Err(e),
        }
    }

    /// A compaction's file (`path`, replacing the files `run`) into the bucket, and the log's
    /// head moved over it: its file and newest files name it instead of those it replaces.
    /// The log must be claimed (and is fenced like any writer).
    pub(super) fn put_compacted(
        &self,
        bucket: &Bucket,
        span: &BatchSpan,
        path: &Path,
        bytes: Vec<u8>,
        run: &[std::path::PathBuf],
    ) -> Result<(), StoreError> {
        let log = LogId::new(&span.topic, span.partition);
        let claim = self
            .claims
            .get(&log)
            .ok_or_else(|| Self::fenced(&log, "compacted without claiming it first"))?;
        self.put_new(bucket, &log, &claim, path, bytes)?;
        let new = Bucket::rel(&self.root, path)?;
        let replaced: Vec<String> = run
            .iter()
            .map(|p| Bucket::rel(&self.root, p))
            .collect::<Result<_, _>>()?;
        let mut head = claim.head.clone();
        head.seq += 1;
        if head.file.as_ref().is_some_and(|f| replaced.contains(f)) {
            head.file = Some(new.clone());
            head.first_offset = span.first_offset;
        }
        if let Some(at) = head.recent.iter().position(|r| replaced.contains(r)) {
            head.recent.retain(|r| !replaced.contains(r));
            head.recent.insert(at.min(head.recent.len()), new);
        }
        self.advance(bucket, log, &claim, head)
    }

    /// Put `head` over the version `claim` holds and keep it as the claim. Fenced (the head
    /// changed), the log is dropped — unless the change is this very put, landed with its
    /// answer lost (and retried). The file put before it stays: another writer may have put
    /// the very same bytes and named them (the same records make the same file); if not, it
    /// is a stray no head reaches — no part of the log, never copied, replaced by the log's
    /// writer if it needs the name.
    fn advance(
        &self,
        bucket: &Bucket,
        log: LogId,
        claim: &ReadHead,
        head: HeadObject,
    ) -> Result<(), StoreError> {
        let etag = match bucket.put_head(&log.topic, log.partition, &head, Some(&claim.etag)) {
            Ok(etag) => etag,
            Err(StoreError::Fenced { why, .. }) => {
                match bucket.get_head(&log.topic, log.partition)? {
                    Some(now) if now.head == head => now.etag,
                    _ => {
                        self.claims.drop_log(&log);
                        return Err(Self::fenced(&log, why));
                    }
                }
            }
            Err(e) => return Err(e),
        };
        self.claims.set(log, ReadHead { head, etag });
        Ok(())
    }

    /// Held while a log is copied from the bucket into this directory.
    pub(crate) fn copying(&self) -> std::sync::MutexGuard<'_, ()> {
        COPYING.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this instance's writers hold `log` (claimed, not given up).
    pub fn holds(&self, log: &LogId) -> bool {
        self.claims.get(log).is_some()
    }

    /// Whether this instance writes `log`: always without a bucket; with one, when it holds
    /// the log or the log's head names it (its own logs, kept by other handles on the store).
    pub fn writes_log(&self, log: &LogId) -> Result<bool, StoreError> {
        let Some(bucket) = &self.bucket else {
            return Ok(true);
        };
        if self.holds(log) {
            return Ok(true);
        }
        let me = self.instance_id()?;
        Ok(bucket
            .get_head(&log.topic, log.partition)?
            .is_some_and(|r| r.head.owner == me))
    }

    /// Bring this directory's copy of every log that other instances write up to the bucket
    /// ([`Bucket::follow`]), so that SQL and detection here see all partitions.
    pub fn follow(
        &self,
        seen: &mut HashMap<LogId, String>,
    ) -> Result<crate::bucket::FollowReport, StoreError> {
        let Some(bucket) = &self.bucket else {
            return Ok(Default::default());
        };
        bucket.follow(self, seen)
    }

    /// Stop writing `topic`/`partition` (revoked): forget its claim.
    pub fn release_log(&self, topic: &str, partition: i32) {
        self.claims.drop_log(&LogId::new(topic, partition));
    }

    /// Put the file `path` (its content `bytes`) of `span` into the bucket and advance the
    /// log's head to it. A log not claimed yet is claimed here, without taking it over, and
    /// must stand where `span` begins.
    pub(super) fn put_file(
        &self,
        bucket: &Bucket,
        span: &BatchSpan,
        path: &Path,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let log = LogId::new(&span.topic, span.partition);
        let claim = match self.claims.get(&log) {
            Some(c) => c,
            None => {
                self.claim_log(&span.topic, span.partition, false)?;
                self.claims
                    .get(&log)
                    .ok_or(StoreError::Internal("a claim not kept"))?
            }
        };
        if claim.head.last_offset != span.prev.offset {
            self.claims.drop_log(&log);
            return Err(Self::fenced(
                &log,
                format!(
                    "the bucket's head is at offset {}, this writer's batch follows {}",
                    claim.head.last_offset, span.prev.offset
                ),
            ));
        }
        self.put_new(bucket, &log, &claim, path, bytes)?;
        let head = claim.head.advanced(
            Bucket::rel(&self.root, path)?,
            span.first_offset,
            span.last_offset,
        );
        self.advance(bucket, log, &claim, head)
    }
}
