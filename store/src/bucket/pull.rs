//! A local copy of the bucket: a writer's working copy brought up to it, or a reader's made
//! exactly it.

use std::collections::BTreeMap;
use std::path::Path;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as Key;

use super::{Bucket, HeadObject};
use crate::error::StoreError;
use crate::files::{create_dirs_durably, is_temp_name, write_durably};

/// What [`Bucket::pull`] changed in the local copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Objects in the bucket.
    pub objects: usize,
    /// Files fetched (missing locally, or different).
    pub fetched: usize,
    /// Local files removed because the bucket does not hold them.
    pub removed: usize,
    /// Event files in the bucket that are no part of their log (put by a writer that lost
    /// the log, never named by its head): not fetched.
    pub strays: usize,
}

/// Who a local copy is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `serve`'s working copy: fetch, never remove; refuse on disagreement.
    Writer,
    /// A reader's or verifier's copy: exactly the bucket's.
    Reader,
}

/// The pieces of the data directory that live in the bucket (directories, and single files).
const PULLED_DIRS: [&str; 3] = [
    crate::layout::EVENTS_DIR,
    crate::layout::CHECKPOINTS_DIR,
    crate::layout::ALERTS_DIR,
];

impl Bucket {
    /// Bring a writer's working copy under `data_dir` up to the bucket: event files,
    /// checkpoints and the alert log the directory lacks are fetched (a new machine, or files
    /// put before a crash kept them from their local name); a checkpoint or alert file the
    /// bucket holds in another version is fetched (the bucket's is the newer: it is put first).
    /// Nothing local is ever removed: a local file the bucket lacks, or an event file of
    /// another size, means the bucket was changed behind Vigil's back (or the directory holds
    /// a store never put there) — refused, with every such file named, so that nothing is
    /// written on top. The key registry is the writer's own (the signer puts it).
    pub fn pull(&self, data_dir: &Path) -> Result<PullReport, StoreError> {
        self.pull_scope(data_dir, Mode::Writer)
    }

    /// Make a reader's or verifier's copy under `data_dir` exactly the bucket's, the key
    /// registry included: what is missing or differs is fetched (by size and content:
    /// its ETag), local files the bucket does not hold are removed (a copy never hides
    /// what the bucket lost; temp files are left to `head`).
    pub fn pull_for_reading(&self, data_dir: &Path) -> Result<PullReport, StoreError> {
        self.pull_scope(data_dir, Mode::Reader)
    }

    /// Bring one log's files and checkpoints in a writer's working copy up to the bucket, as
    /// [`Bucket::pull`] does for all (a log this instance is given, which another may have
    /// written since): its files up to `head`'s, none past it.
    pub(crate) fn pull_log(
        &self,
        data_dir: &Path,
        topic: &str,
        partition: i32,
        head: Option<&HeadObject>,
    ) -> Result<PullReport, StoreError> {
        let dirs = [
            crate::layout::log_events_rel(topic, partition)?,
            crate::layout::log_checkpoints_rel(topic, partition)?,
        ];
        let log = crate::LogId::new(topic, partition);
        self.pull_dirs(data_dir, &dirs, Mode::Writer, Heads::Given(&log, head))
    }

    /// Make this copy of one log's event files exactly the bucket's, up to `head`'s file
    /// (a log another instance writes, followed here).
    pub(super) fn copy_log(
        &self,
        data_dir: &Path,
        log: &crate::LogId,
        head: &HeadObject,
    ) -> Result<PullReport, StoreError> {
        let dirs = [crate::layout::log_events_rel(&log.topic, log.partition)?];
        self.pull_dirs(data_dir, &dirs, Mode::Reader, Heads::Given(log, Some(head)))
    }

    /// Make this copy of the alert log exactly the bucket's (an instance taking detection
    /// over, or standing by: the holder's files, merged ones replacing the small ones).
    pub fn pull_alerts(&self, data_dir: &Path) -> Result<PullReport, StoreError> {
        let dirs = [crate::layout::ALERTS_DIR.to_owned()];
        self.pull_dirs(data_dir, &dirs, Mode::Writer, Heads::Fetch)
    }

    /// Make a writer's copy of the delivery outbox exactly the bucket's (an instance taking
    /// detection over carries on the last holder's deliveries).
    pub fn pull_outbox(&self, data_dir: &Path) -> Result<PullReport, StoreError> {
        let dirs = [crate::layout::OUTBOX_DIR.to_owned()];
        self.pull_dirs(data_dir, &dirs, Mode::Writer, Heads::Fetch)
    }

    /// Replace the local file `path` (under `data_dir`) with its object in the bucket, if
    /// there is one; whether there was.
    pub fn fetch_file(&self, data_dir: &Path, path: &Path) -> Result<bool, StoreError> {
        let rel = Self::rel(data_dir, path)?;
        let Some(bytes) = self.get(&rel)? else {
            return Ok(false);
        };
        if let Some(dir) = path.parent() {
            create_dirs_durably(dir)?;
        }
        write_durably(path, &bytes)?;
        Ok(true)
    }

    fn pull_scope(&self, data_dir: &Path, mode: Mode) -> Result<PullReport, StoreError> {
        let dirs = PULLED_DIRS.map(str::to_owned);
        self.pull_dirs(data_dir, &dirs, mode, Heads::Fetch)
    }

    fn pull_dirs(
        &self,
        data_dir: &Path,
        dirs: &[String],
        mode: Mode,
        heads: Heads<'_>,
    ) -> Result<PullReport, StoreError> {
        // One pull at a time in this process: they share the index file.
        static PULLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _pulling = PULLING.lock().unwrap_or_else(|p| p.into_inner());
        let index_path = crate::layout::bucket_index(data_dir);
        let mut index: BTreeMap<String, String> = match std::fs::read(&index_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        let mut report = PullReport::default();
        let mut refused = Vec::new();
        for dir in dirs {
            self.pull_dir(
                data_dir,
                dir,
                mode,
                heads,
                &mut index,
                &mut report,
                &mut refused,
            )?;
        }
        if !refused.is_empty() {
            let n = refused.len();
            refused.truncate(10);
            return Err(StoreError::Invalid(format!(
                "the data directory {} and the bucket {} disagree on {n} file(s), e.g. {}: the \
                 bucket was changed behind Vigil's back, or this directory holds a store never \
                 put there. Nothing was changed; check the bucket with `vigil verify --store {} \
                 --data-dir NEW_DIR`, and start from a new data directory (the signing keys \
                 copied) or put this store into another prefix",
                data_dir.display(),
                self.url,
                refused.join("; "),
                self.url
            )));
        }
        if mode == Mode::Reader && matches!(heads, Heads::Fetch) {
            self.pull_file(
                data_dir,
                &crate::layout::registry_rel(),
                &mut index,
                &mut report,
            )?;
        }
        create_dirs_durably(data_dir)?;
        let bytes = serde_json::to_vec(&index).map_err(|e| StoreError::Invalid(e.to_string()))?;
        write_durably(&index_path, &bytes)?;
        Ok(report)
    }

    pub(super) fn list(&self, rel_dir: &str) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
        let key = self.key(rel_dir)?;
        let objects = self.objects.clone();
        self.block("list", async move {
            objects.list(Some(&key)).try_collect::<Vec<_>>().await
        })
        .map_err(|e| self.error(rel_dir, e))
    }

    /// A listed object's path relative to the data directory, each segment checked (an object
    /// key never reaches a path outside the store's directory).
    pub(super) fn local_rel(&self, key: &Key) -> Option<String> {
        let s = key.as_ref();
        let rel = if self.url.prefix.is_empty() {
            s
        } else {
            s.strip_prefix(self.url.prefix.as_str())?
                .strip_prefix('/')?
        };
        rel.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\0'))
            .then(|| rel.to_owned())
    }

    /// Fetch the object `meta` names into `data_dir/rel`, durably, and record its ETag.
    pub(super) fn fetch(
        &self,
        data_dir: &Path,
        rel: &str,
        meta: &object_store::ObjectMeta,
        index: &mut BTreeMap<String, String>,
        report: &mut PullReport,
    ) -> Result<(), StoreError> {
        let (objects, key) = (self.objects.clone(), meta.location.clone());
        let (bytes, etag) = self
            .block("get", async move {
                let r = objects.get(&key).await?;
                let etag = r.meta.e_tag.clone();
                Ok((r.bytes().await?, etag))
            })
            .map_err(|e| self.error(rel, e))?;
        let path = data_dir.join(rel);
        if let Some(dir) = path.parent() {
            create_dirs_durably(dir)?;
        }
        write_durably(&path, &bytes)?;
        report.fetched += 1;
        match etag.or_else(|| meta.e_tag.clone()) {
            Some(t) => index.insert(rel.to_owned(), t),
            None => index.remove(rel),
        };
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn pull_dir(
        &self,
        data_dir: &Path,
        rel_dir: &str,
        mode: Mode,
        heads: Heads<'_>,
        index: &mut BTreeMap<String, String>,
        report: &mut PullReport,
        refused: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let mut remote = BTreeMap::new();
        for meta in self.list(rel_dir)? {
            match self.local_rel(&meta.location) {
                Some(rel) => {
                    remote.insert(rel, meta);
                }
                None => {
                    tracing::warn!(key = %meta.location, "an object whose key cannot be a file: not fetched")
                }
            }
        }
        report.objects += remote.len();
        // The alert log and the outbox belong to whichever instance runs detection: a copy
        // follows the bucket's (files merged or delivered there go here too). The alert log's
        // every revision is also in Vigil's own chained log.
        let mode = if rel_dir == crate::layout::ALERTS_DIR || rel_dir == crate::layout::OUTBOX_DIR {
            Mode::Reader
        } else {
            mode
        };
        if rel_dir.starts_with(crate::layout::EVENTS_DIR) {
            self.drop_strays(&mut remote, heads, report)?;
        }
        for (rel, meta) in &remote {
            let path = data_dir.join(rel);
            if mode == Mode::Writer {
                // A writer compares sizes only (its files are its own, read at every start
                // otherwise); a verifier compares content.
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.len() == meta.size => continue,
                    Ok(_) if rel_dir == crate::layout::EVENTS_DIR => {
                        refused.push(format!("{rel} (another size in the bucket)"));
                        continue;
                    }
                    _ => {}
                }
            } else if up_to_date(&path, meta, index.get(rel)) {
                continue;
            }
            self.fetch(data_dir, rel, meta, index, report)?;
        }
        let mut stack = vec![data_dir.join(rel_dir)];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(&dir)(e)),
            };
            for e in entries {
                let e = e.map_err(StoreError::io(&dir))?;
                let path = e.path();
                let t = e.file_type().map_err(StoreError::io(&path))?;
                if t.is_dir() {
                    stack.push(path);
                    continue;
                }
                if e.file_name().to_str().is_some_and(is_temp_name) {
                    continue;
                }
                let rel = Self::rel(data_dir, &path)?;
                if !remote.contains_key(&rel)
                    && mode == Mode::Writer
                    && !self.pruned_away(&rel, &remote)?
                {
                    refused.push(format!("{rel} (not in the bucket)"));
                } else if !remote.contains_key(&rel) {
                    tracing::warn!(path = %path.display(), "removing a local file the bucket does not hold");
                    std::fs::remove_file(&path).map_err(StoreError::io(&path))?;
                    index.remove(&rel);
                    report.removed += 1;
                }
            }
        }
        Ok(())
    }

    /// Whether the local event file `rel`, which the bucket lacks, was pruned or compacted away
    /// by its log's writer (another instance, maybe): a file of the bucket spans its offsets,
    /// or it ends before the bucket's oldest file of the log begins and the bucket holds a
    /// signed prune of that log. Such a file is removed from a writer's copy too; any other is
    /// refused. (`verify` checks the bucket's files and the prune themselves.)
    fn pruned_away(
        &self,
        rel: &str,
        remote: &BTreeMap<String, object_store::ObjectMeta>,
    ) -> Result<bool, StoreError> {
        let Some((log, first, last)) = event_file(rel) else {
            return Ok(false);
        };
        // Compacted by the log's writer: a file of the bucket spans it.
        let covered = remote
            .keys()
            .filter_map(|r| event_file(r))
            .any(|(l, f, t)| l == log && f <= first && last <= t && (f, t) != (first, last));
        if covered {
            return Ok(true);
        }
        let oldest = remote
            .keys()
            .filter_map(|r| event_file(r))
            .filter(|(l, ..)| *l == log)
            .map(|(_, first, _)| first)
            .min();
        if oldest.is_none_or(|first| last >= first) {
            return Ok(false);
        }
        let dir = crate::layout::log_checkpoints_rel(&log.topic, log.partition)?;
        Ok(self.list(&dir)?.iter().any(|m| {
            m.location
                .filename()
                .is_some_and(|n| n.starts_with("pruned-") && n.ends_with(".note"))
        }))
    }

    /// Leave out of `remote` (event files listed) every file that is no part of its log: not
    /// on the chain its head names ([`super::strays`]). Logs without a head keep every file.
    fn drop_strays(
        &self,
        remote: &mut BTreeMap<String, object_store::ObjectMeta>,
        heads: Heads<'_>,
        report: &mut PullReport,
    ) -> Result<(), StoreError> {
        let mut logs: BTreeMap<crate::LogId, Vec<(String, i64, i64)>> = BTreeMap::new();
        for rel in remote.keys() {
            if let Some((log, first, last)) = event_file(rel) {
                logs.entry(log)
                    .or_default()
                    .push((rel.clone(), first, last));
            }
        }
        for (log, files) in logs {
            let head = match heads {
                Heads::Given(l, h) if *l == log => h.cloned(),
                Heads::Given(..) => continue,
                Heads::Fetch => self.get_head(&log.topic, log.partition)?.map(|r| r.head),
            };
            let Some(head) = head else { continue };
            for rel in super::strays(&files, &head) {
                tracing::warn!(file = %rel, log = %log,
                    "an event file its log's head does not reach (put by a writer that lost the log): no part of the log, not fetched");
                remote.remove(&rel);
                report.strays += 1;
            }
        }
        Ok(())
    }

    fn pull_file(
        &self,
        data_dir: &Path,
        rel: &str,
        index: &mut BTreeMap<String, String>,
        report: &mut PullReport,
    ) -> Result<(), StoreError> {
        let key = self.key(rel)?;
        let objects = self.objects.clone();
        match self.block("head", async move { objects.head(&key).await }) {
            Ok(meta) => {
                report.objects += 1;
                if !up_to_date(&data_dir.join(rel), &meta, index.get(rel)) {
                    self.fetch(data_dir, rel, &meta, index, report)?;
                }
                Ok(())
            }
            // None in the bucket (a store nothing signed yet): a verifier says so.
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(rel, e)),
        }
    }
}

/// Where each log's head is to be found by a pull.
#[derive(Clone, Copy)]
enum Heads<'a> {
    /// Read from the bucket, for each log listed.
    Fetch,
    /// This log's, read already (the only log pulled).
    Given(&'a crate::LogId, Option<&'a HeadObject>),
}

/// `events/topic=T/partition=P/…/F-L.parquet`: its log and offsets.
fn event_file(rel: &str) -> Option<(crate::LogId, i64, i64)> {
    let mut parts = rel.split('/');
    (parts.next()? == crate::layout::EVENTS_DIR).then_some(())?;
    let topic = parts.next()?.strip_prefix("topic=")?;
    let partition = parts.next()?.strip_prefix("partition=")?.parse().ok()?;
    let name = rel.rsplit('/').next()?;
    let (first, last) = crate::files::parse_name(name)?;
    Some((crate::LogId::new(topic, partition), first, last))
}

/// Whether the local file at `path` holds the object `meta` describes: a regular file of its
/// size whose content has the object's ETag — the MD5 of the content for an object put in one
/// request, as Vigil puts them — or, for other ETags (multipart, some encryption modes), the
/// ETag recorded when the file was fetched. When unsure, it is fetched again.
pub(super) fn up_to_date(
    path: &Path,
    meta: &object_store::ObjectMeta,
    fetched: Option<&String>,
) -> bool {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !m.is_file() || m.len() != meta.size {
        return false;
    }
    let Some(etag) = meta.e_tag.as_deref().map(|t| t.trim_matches('"')) else {
        return false;
    };
    if fetched.is_some_and(|f| f.trim_matches('"') == etag) {
        return true;
    }
    if etag.len() != 32 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    use md5::Digest;
    std::fs::read(path)
        .is_ok_and(|b| hex::encode(md5::Md5::digest(&b)) == etag.to_ascii_lowercase())
}
