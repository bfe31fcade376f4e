//! The store's bucket: an S3-compatible object store that holds everything a reader or a
//! verifier needs — event files, signed checkpoints, the public key registry, the alert log —
//! so that losing the machine loses nothing that was acknowledged.
//!
//! The local data directory stays the instance's working copy. A file is written there
//! durably under a hidden temp name, then put into the bucket, and given its final local name
//! only once the bucket has acknowledged it: a file under its final name locally is always in
//! the bucket, and a batch's offsets (committed after [`crate::Store::write`] returns) are
//! never ahead of the bucket. A put is one request, so no partial object is ever visible under
//! its final name. [`Bucket::pull`] brings a writer's copy up to the bucket (on a new machine,
//! after a crash), [`Bucket::pull_for_reading`] makes a reader's exactly the bucket's, and
//! [`Bucket::follow`] brings in what other instances write.
//!
//! What instances sharing the bucket coordinate through is there too: each log's head
//! (`head.rs`), the detection lease (`lease.rs`), detection's saved state and the delivery
//! outbox. What stays local, never in the bucket: the signing keys (`keys/*.key`),
//! detection's lock and command queue, temp files, the instance's name (`instance-id`).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use crate::error::StoreError;

mod follow;
mod head;
mod lease;
mod pull;

pub use follow::FollowReport;
pub(crate) use head::RECENT_FILES;
pub use head::{HeadObject, ReadHead, strays};
pub use lease::Lease;
pub use pull::PullReport;

/// What `s3://` stores need beyond the URL.
#[derive(Clone, Default)]
pub struct BucketOptions {
    /// `AWS_*` settings as the standard environment variables spell them (credentials,
    /// endpoint, region, web identity, …), read by the binary and handed down (this crate
    /// reads no environment); the fields below win over them.
    pub aws_settings: Vec<(String, String)>,
    /// An S3-compatible server's address (`http://127.0.0.1:9000`); AWS's when empty.
    pub endpoint: Option<String>,
    /// The bucket's region.
    pub region: Option<String>,
    /// Allow plain `http://` endpoints (a test server on loopback).
    pub allow_http: bool,
    /// Longest one request may take before it is retried.
    pub request_timeout_ms: u64,
    /// Longest a request is retried (with backoff) before the write fails.
    pub retry_timeout_ms: u64,
    /// S3 Object Lock in compliance mode on every object put, for this many days (0: none):
    /// no one, the bucket's owner included, can delete or overwrite a version before then.
    /// The bucket must have Object Lock enabled.
    pub object_lock_days: u32,
}

/// Names the settings, never their values (credentials among them).
impl std::fmt::Debug for BucketOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.aws_settings.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("BucketOptions")
            .field("aws_settings", &names)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("object_lock_days", &self.object_lock_days)
            .finish_non_exhaustive()
    }
}

/// An `s3://bucket/prefix` URL, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketUrl {
    pub bucket: String,
    /// Where the store's objects live in the bucket (`""`: at its root).
    pub prefix: String,
}

impl BucketUrl {
    /// Parse `s3://bucket[/prefix]`; `None` for anything that is not an `s3://` URL (a path).
    pub fn parse(url: &str) -> Option<Result<BucketUrl, StoreError>> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        // S3's rule for bucket names (the subset every S3-compatible server accepts).
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Some(Err(StoreError::Invalid(format!(
                "{url}: {bucket:?} is not an S3 bucket name (3 to 63 of a-z 0-9 . -)"
            ))));
        }
        if !prefix.is_empty() && Key::parse(prefix).is_err() {
            return Some(Err(StoreError::Invalid(format!(
                "{url}: the prefix {prefix:?} is not an object path"
            ))));
        }
        Some(Ok(BucketUrl {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }))
    }
}

impl std::fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// A private runtime for the object store's requests: the store's callers are synchronous
/// threads (writers, verifiers), some of them inside another runtime, where `block_on` is not
/// allowed. Shut down in the background so that dropping it anywhere is safe.
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The bucket the store lives in.
pub struct Bucket {
    url: BucketUrl,
    objects: Arc<dyn ObjectStore>,
    /// What puts go through: `objects`, or under Object Lock a client whose every request
    /// carries the lock headers (object_store has no per-request headers), made again before
    /// its retention date would fall short of `object_lock_days` from now.
    puts: std::sync::Mutex<Option<LockedPuts>>,
    object_lock_days: u32,
    builder: AmazonS3Builder,
    client: ClientOptions,
    rt: Runtime,
}

/// The put client under Object Lock, and until when it locks what it puts.
struct LockedPuts {
    objects: Arc<dyn ObjectStore>,
    made: std::time::Instant,
}

/// A put client under Object Lock is made again this often; it locks each object for this
/// much longer than `object_lock_days` (so every object gets at least the configured days).
const LOCK_CLIENT_EVERY: Duration = Duration::from_secs(3600);

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("url", &self.url.to_string())
            .finish()
    }
}

impl Bucket {
    /// Connect to the bucket at `url` (no request is made yet).
    pub fn open(url: &BucketUrl, opts: &BucketOptions) -> Result<Bucket, StoreError> {
        let mut b = AmazonS3Builder::new();
        for (k, v) in &opts.aws_settings {
            match k.to_ascii_lowercase().parse() {
                Ok(key) => b = b.with_config(key, v),
                Err(_) => tracing::debug!(setting = %k, "not an S3 setting: ignored"),
            }
        }
        let mut b = b.with_bucket_name(&url.bucket);
        if let Some(e) = opts.endpoint.as_deref().filter(|e| !e.is_empty()) {
            b = b.with_endpoint(e);
        }
        if let Some(r) = opts.region.as_deref().filter(|r| !r.is_empty()) {
            b = b.with_region(r);
        }
        let timeout = Duration::from_millis(opts.request_timeout_ms.max(1));
        let client = ClientOptions::new()
            .with_allow_http(opts.allow_http)
            .with_timeout(timeout)
            .with_connect_timeout(timeout);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: usize::MAX,
            retry_timeout: Duration::from_millis(opts.retry_timeout_ms),
        };
        let b = b.with_retry(retry);
        let objects = b
            .clone()
            .with_client_options(client.clone())
            .build()
            .map_err(|e| StoreError::Invalid(format!("{url}: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vigil-bucket")
            .enable_all()
            .build()
            .map_err(StoreError::io("the object store's runtime"))?;
        Ok(Bucket {
            url: url.clone(),
            objects: Arc::new(objects),
            puts: std::sync::Mutex::new(None),
            object_lock_days: opts.object_lock_days,
            builder: b,
            client,
            rt: Runtime(Some(rt)),
        })
    }

    /// The Object Lock period every put sets, in days (0: none).
    pub fn object_lock_days(&self) -> u32 {
        self.object_lock_days
    }

    /// The client a put goes through: the bucket's, or under Object Lock one whose requests
    /// carry the lock headers, made again every hour.
    fn put_client(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        if self.object_lock_days == 0 {
            return Ok(self.objects.clone());
        }
        let mut puts = self.puts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = puts
            .as_ref()
            .filter(|p| p.made.elapsed() < LOCK_CLIENT_EVERY)
        {
            return Ok(p.objects.clone());
        }
        let until = chrono::Utc::now()
            + chrono::Duration::days(i64::from(self.object_lock_days))
            + chrono::Duration::from_std(LOCK_CLIENT_EVERY * 2).unwrap_or_default();
        let mut headers = object_store::HeaderMap::new();
        headers.insert(
            "x-amz-object-lock-mode",
            object_store::HeaderValue::from_static("COMPLIANCE"),
        );
        let date = until.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        headers.insert(
            "x-amz-object-lock-retain-until-date",
            object_store::HeaderValue::from_str(&date)
                .map_err(|_| StoreError::Internal("a retention date header"))?,
        );
        // Which checksum the content's `x-amz-checksum-sha256` is: AWS's SDKs send it with the
        // checksum, and moto takes a locked object only with it (S3 with either).
        headers.insert(
            "x-amz-sdk-checksum-algorithm",
            object_store::HeaderValue::from_static("SHA256"),
        );
        let objects: Arc<dyn ObjectStore> = Arc::new(
            self.builder
                .clone()
                // S3 takes a locked object only with a checksum of its content.
                .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                .with_client_options(self.client.clone().with_default_headers(headers))
                .build()
                .map_err(|e| StoreError::Invalid(format!("{}: {e}", self.url)))?,
        );
        *puts = Some(LockedPuts {
            objects: objects.clone(),
            made: std::time::Instant::now(),
        });
        Ok(objects)
    }

    /// The bucket's URL.
    pub fn url(&self) -> &BucketUrl {
        &self.url
    }

    /// Run a request on the bucket's runtime and wait for it, from any thread.
    fn block<T: Send + 'static>(
        &self,
        what: &str,
        f: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Result<T, object_store::Error> {
        let rt = self.rt.0.as_ref().ok_or_else(|| stopped(what))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| stopped(what))?
    }

    /// The object key of a path relative to the data directory (`events/topic=t/…`).
    fn key(&self, rel: &str) -> Result<Key, StoreError> {
        let full = if self.url.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.url.prefix)
        };
        Key::parse(&full).map_err(|e| StoreError::Invalid(format!("object key {full:?}: {e}")))
    }

    /// `path` (under `data_dir`) as a key relative to the store: its components joined by `/`.
    pub(crate) fn rel(data_dir: &Path, path: &Path) -> Result<String, StoreError> {
        let rel = path
            .strip_prefix(data_dir)
            .map_err(|_| StoreError::Internal("a bucket file outside the data directory"))?;
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        parts
            .map(|p| p.join("/"))
            .ok_or(StoreError::Internal("a file name that is not UTF-8"))
    }

    fn error(&self, rel: &str, e: object_store::Error) -> StoreError {
        StoreError::Bucket {
            key: format!("{}/{rel}", self.url),
            message: e.to_string(),
        }
    }

    /// Put `bytes` as the object for `final_path` (under `data_dir`). `create`: the object
    /// must not exist yet (If-None-Match) — unless it holds exactly these bytes already (the
    /// same write retried after a crash); anything else there is a conflict: another writer
    /// got there first, and this one must not go on. Otherwise the object is replaced.
    /// Returns whether this put made the object (false: it held these bytes already).
    pub fn put(
        &self,
        data_dir: &Path,
        final_path: &Path,
        bytes: Vec<u8>,
        create: bool,
    ) -> Result<bool, StoreError> {
        let rel = Self::rel(data_dir, final_path)?;
        let key = self.key(&rel)?;
        let objects = self.put_client()?;
        let opts = PutOptions::from(if create {
            PutMode::Create
        } else {
            PutMode::Overwrite
        });
        // A payload shares its bytes: the one kept to compare with costs no copy.
        let payload = PutPayload::from(bytes);
        let sent = payload.clone();
        match self.block(
            "put",
            async move { objects.put_opts(&key, payload, opts).await },
        ) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => {
                if self.holds(&rel, &sent)? {
                    Ok(false)
                } else {
                    Err(StoreError::Conflict(format!("{}/{rel}", self.url)))
                }
            }
            Err(e) => Err(self.error(&rel, e)),
        }
    }

    /// Put `bytes` as the object for `path` (under `data_dir`) only if the object is still the
    /// version whose ETag is `expected` — or, with `None`, only if there is none (or it holds
    /// these very bytes: a retry). Returns the new ETag; [`StoreError::Conflict`] when another
    /// writer changed or made it. What a log's checkpoints are put with: a writer that lost
    /// the log cannot replace a note the new writer's checkpoints link to.
    pub(crate) fn put_versioned(
        &self,
        data_dir: &Path,
        path: &Path,
        bytes: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.put_rel_versioned(&Self::rel(data_dir, path)?, bytes, expected)
    }

    /// [`Bucket::put_versioned`] by the object's path relative to the store.
    pub(crate) fn put_rel_versioned(
        &self,
        rel: &str,
        bytes: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let rel = rel.to_owned();
        let key = self.key(&rel)?;
        let objects = self.put_client()?;
        let mode = match expected {
            None => PutMode::Create,
            Some(etag) => PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(etag.to_owned()),
                version: None,
            }),
        };
        let payload = PutPayload::from(bytes);
        let sent = payload.clone();
        let no_etag =
            || StoreError::Invalid(format!("{}/{rel}: the bucket gave no ETag", self.url));
        match self.block("put", async move {
            objects
                .put_opts(&key, payload, PutOptions::from(mode))
                .await
        }) {
            Ok(r) => r.e_tag.ok_or_else(no_etag),
            Err(object_store::Error::AlreadyExists { .. }) => {
                if !self.holds(&rel, &sent)? {
                    return Err(StoreError::Conflict(format!("{}/{rel}", self.url)));
                }
                self.etag(&rel)?.ok_or_else(no_etag)
            }
            Err(object_store::Error::Precondition { .. }) => {
                Err(StoreError::Conflict(format!("{}/{rel}", self.url)))
            }
            Err(e) => Err(self.error(&rel, e)),
        }
    }

    /// Whether the object at `rel` holds exactly the bytes of `sent` (a put retried, or the
    /// same file made by another writer from the same records).
    fn holds(&self, rel: &str, sent: &PutPayload) -> Result<bool, StoreError> {
        Ok(self.get(rel)?.is_some_and(|existing| {
            existing.len() == sent.content_length()
                && existing
                    .iter()
                    .eq(sent.iter().flat_map(|chunk| chunk.iter()))
        }))
    }

    /// The ETag of the object of `path` (under `data_dir`), if there is one.
    pub(crate) fn etag_of(
        &self,
        data_dir: &Path,
        path: &Path,
    ) -> Result<Option<String>, StoreError> {
        self.etag(&Self::rel(data_dir, path)?)
    }

    fn etag(&self, rel: &str) -> Result<Option<String>, StoreError> {
        let key = self.key(rel)?;
        let objects = self.objects.clone();
        match self.block("head", async move { objects.head(&key).await }) {
            Ok(meta) => Ok(meta.e_tag),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Put the local file `path` (under `data_dir`), replacing the object.
    pub fn publish(&self, data_dir: &Path, path: &Path) -> Result<(), StoreError> {
        let bytes = std::fs::read(path).map_err(StoreError::io(path))?;
        self.put(data_dir, path, bytes, false).map(|_| ())
    }

    /// Remove the object of the local file `path` (under `data_dir`); gone already is fine.
    /// Under Object Lock this only hides it (a delete marker): its locked version stays.
    pub fn unpublish(&self, data_dir: &Path, path: &Path) -> Result<(), StoreError> {
        self.delete_object(&Self::rel(data_dir, path)?)
    }

    /// A small coordination object (`detect/commands/…`), by its path relative to the store.
    pub fn get_object(&self, rel: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(rel)
    }

    /// Make the coordination object `rel`, only if there is none: whether this call made it
    /// (or it held these very bytes already). The first to make it decides.
    pub fn create_object(&self, rel: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
        match self.put_rel_versioned(rel, bytes, None) {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove the coordination object `rel` (gone already is fine).
    pub fn delete_object(&self, rel: &str) -> Result<(), StoreError> {
        let key = self.key(rel)?;
        let objects = self.objects.clone();
        match self.block("delete", async move { objects.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// The coordination objects under `rel_dir`, as paths relative to the store.
    pub fn list_objects(&self, rel_dir: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list(rel_dir)?
            .iter()
            .filter_map(|m| self.local_rel(&m.location))
            .collect())
    }

    /// The object of a path relative to the data directory and its ETag, if there is one.
    pub(crate) fn get_with_etag(&self, rel: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let key = self.key(rel)?;
        let objects = self.objects.clone();
        let got = self.block("get", async move {
            let r = objects.get(&key).await?;
            let etag = r.meta.e_tag.clone();
            Ok((r.bytes().await?, etag))
        });
        match got {
            Ok((bytes, Some(etag))) => Ok(Some((bytes.to_vec(), etag))),
            Ok((_, None)) => Err(StoreError::Invalid(format!(
                "{}/{rel}: the bucket gave no ETag",
                self.url
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// The object of a path relative to the data directory, if there is one.
    pub(crate) fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(rel)?;
        let objects = self.objects.clone();
        match self.block("get", async move { objects.get(&key).await?.bytes().await }) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }
}

fn stopped(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "vigil",
        source: format!("the object store's runtime stopped during {what}").into(),
    }
}

#[cfg(test)]
mod tests;
