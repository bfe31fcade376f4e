//! The store's bucket from the configuration (`store.url`), and the local copy a reading
//! command works on.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use vigil_store::{Bucket, BucketOptions, BucketUrl};

use crate::config::Config;

/// Where `store.url` puts the store: a bucket, or the local data directory (`url` empty, a
/// path or a `file://` URL, which then replaces `store.data_dir`).
pub fn resolve(cfg: &mut Config) -> anyhow::Result<Option<BucketUrl>> {
    let url = cfg.store.url.trim().to_owned();
    if url.is_empty() {
        return Ok(None);
    }
    if let Some(parsed) = BucketUrl::parse(&url) {
        return Ok(Some(parsed.with_context(|| "store.url")?));
    }
    let path = match url.strip_prefix("file://") {
        Some(p) => p,
        None if url.contains("://") => {
            anyhow::bail!("store.url {url:?}: only s3:// URLs, file:// URLs and paths are stores")
        }
        None => url.as_str(),
    };
    anyhow::ensure!(!path.is_empty(), "store.url {url:?} names no directory");
    cfg.store.data_dir = PathBuf::from(path);
    Ok(None)
}

/// The bucket `store.url` names, connected (no request made yet), or `None` for a local store.
pub fn open(cfg: &mut Config) -> anyhow::Result<Option<Arc<Bucket>>> {
    let Some(url) = resolve(cfg)? else {
        return Ok(None);
    };
    let s = &cfg.store;
    let opts = BucketOptions {
        // The standard AWS variables (credentials, endpoint, region, web identity, …), read
        // here: the store reads no environment.
        aws_settings: std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect(),
        endpoint: Some(s.s3_endpoint.clone()),
        region: Some(s.s3_region.clone()),
        allow_http: s.s3_allow_http,
        request_timeout_ms: s.s3_request_timeout_ms,
        retry_timeout_ms: s.s3_retry_timeout_ms,
        object_lock_days: s.object_lock_days,
    };
    let bucket =
        Bucket::open(&url, &opts).with_context(|| format!("opening the store at {url}"))?;
    Ok(Some(Arc::new(bucket)))
}

/// The directory a reading command (query, verify, proof, alerts) reads: `data_dir` (the
/// flag, or `store.data_dir`), first made an exact copy of the bucket when the store is in one.
pub fn reading_dir(cfg: &Config, data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let mut cfg = cfg.clone();
    let bucket = open(&mut cfg)?;
    if let Some(d) = data_dir {
        cfg.store.data_dir = d;
    }
    if let Some(bucket) = bucket {
        copy(&bucket, &cfg.store.data_dir, CopyFor::Reader)?;
    }
    Ok(cfg.store.data_dir)
}

/// Whose local copy of the bucket [`copy`] brings up to date.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CopyFor {
    /// `serve`'s working copy ([`Bucket::pull`]: fetched, never removed).
    Writer,
    /// A reading command's ([`Bucket::pull_for_reading`]: exactly the bucket's).
    Reader,
}

/// Bring `dir`, a local copy of `bucket`, up to date, and say what it took.
pub fn copy(bucket: &Bucket, dir: &std::path::Path, whose: CopyFor) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let r = match whose {
        CopyFor::Writer => bucket.pull(dir),
        CopyFor::Reader => bucket.pull_for_reading(dir),
    }
    .with_context(|| format!("copying {} into {}", bucket.url(), dir.display()))?;
    tracing::info!(store = %bucket.url(), local_copy = %dir.display(), objects = r.objects,
        fetched = r.fetched, removed = r.removed, ms = start.elapsed().as_millis() as u64,
        "local copy of the bucket up to date");
    Ok(())
}

/// `serve`'s follower (none without a bucket, or with `store.follow_interval_ms = 0`): every
/// interval, the files other instances' writers named are fetched into this instance's
/// directory ([`vigil_store::Store::follow`]), so that its SQL and its detection see every partition. A
/// failed round is logged (every minute at most) and tried again at the next.
pub fn start_follower(
    cfg: &Config,
    store: vigil_store::Store,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    if store.bucket().is_none() || cfg.store.follow_interval_ms == 0 {
        return Ok(None);
    }
    let every = Duration::from_millis(cfg.store.follow_interval_ms);
    let handle = std::thread::Builder::new()
        .name("vigil-follow".into())
        .spawn(move || {
            let mut seen = std::collections::HashMap::new();
            let (mut last, mut said): (Option<Instant>, Option<Instant>) = (None, None);
            while !stop.load(Ordering::Relaxed) {
                if last.is_none_or(|t| t.elapsed() >= every) {
                    last = Some(Instant::now());
                    match store.follow(&mut seen) {
                        Ok(r) if r.fetched > 0 => tracing::debug!(logs = r.logs_changed,
                            fetched = r.fetched, copied = r.copied,
                            "followed other instances' logs"),
                        Ok(_) => {}
                        Err(e) if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) => {
                            said = Some(Instant::now());
                            tracing::error!(error = %e,
                                "following other instances' logs failed (tried again at the next interval)");
                        }
                        Err(_) => {}
                    }
                }
                std::thread::sleep(every.min(Duration::from_millis(200)));
            }
        })?;
    Ok(Some(handle))
}
