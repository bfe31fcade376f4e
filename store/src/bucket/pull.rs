//! A local copy of the bucket: a writer's working copy brought up to it, or a reader's made
//! exactly it.

use std::collections::BTreeMap;
use std::path::Path;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as Key;

use super::Bucket;
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

    fn pull_scope(&self, data_dir: &Path, mode: Mode) -> Result<PullReport, StoreError> {
        let index_path = crate::layout::bucket_index(data_dir);
        let mut index: BTreeMap<String, String> = match std::fs::read(&index_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        let mut report = PullReport::default();
        let mut refused = Vec::new();
        for dir in PULLED_DIRS {
            self.pull_dir(data_dir, dir, mode, &mut index, &mut report, &mut refused)?;
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
        if mode == Mode::Reader {
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

    fn list(&self, rel_dir: &str) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
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
    fn fetch(
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

    fn pull_dir(
        &self,
        data_dir: &Path,
        rel_dir: &str,
        mode: Mode,
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
                if !remote.contains_key(&rel) && mode == Mode::Writer {
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
