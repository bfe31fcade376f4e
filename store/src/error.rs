//! Store errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(arrow::error::ArrowError),
    #[error("offset {offset} is not after the chain head at offset {head}")]
    OffsetNotAfterHead { offset: i64, head: i64 },
    #[error("invalid topic name {0:?} (Kafka allows [a-zA-Z0-9._-], 1 to 249 characters)")]
    InvalidTopic(String),
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("checkpoint keys: {0}")]
    Key(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("object store, {key}: {message}")]
    Bucket { key: String, message: String },
    #[error(
        "{0} exists with other content: another writer has this log (this one stops writing it)"
    )]
    Conflict(String),
    #[error("{log}: another instance writes this log now ({why}); this one gave it up")]
    Fenced { log: String, why: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }
}

/// Whether an error (anywhere in its chain) is the volume being full: no space left, or the
/// quota reached. Such a write is worth retrying once there is room; every other is not.
pub fn is_volume_full(e: &(dyn std::error::Error + 'static)) -> bool {
    in_chain(e, |err| {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded)
        {
            return true;
        }
        // Parquet and Arrow carry an I/O error as text.
        let text = err.to_string();
        text.contains("No space left on device") || text.contains("Disk quota exceeded")
    })
}

/// Whether `e` or any error in its chain of sources is one `is` says yes to.
fn in_chain(
    e: &(dyn std::error::Error + 'static),
    is: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if is(err) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether an error (anywhere in its chain) is the store's bucket failing a request after its
/// retries (unreachable, timing out, refusing): worth writing again later, as a full volume.
/// A conflict (another writer's object under the name) is not.
pub fn is_bucket_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    in_chain(e, |err| {
        matches!(
            err.downcast_ref::<StoreError>(),
            Some(StoreError::Bucket { .. })
        )
    })
}

/// Whether an error (anywhere in its chain) is the bucket fencing this writer off a log:
/// another instance writes it now ([`StoreError::Fenced`]). The log is to be given up, not
/// retried.
pub fn is_fenced(e: &(dyn std::error::Error + 'static)) -> bool {
    in_chain(e, |err| {
        matches!(
            err.downcast_ref::<StoreError>(),
            Some(StoreError::Fenced { .. })
        )
    })
}

/// Whether a write that failed is worth trying again later rather than a reason to stop: the
/// volume is full ([`is_volume_full`]) or the bucket does not answer ([`is_bucket_unavailable`]).
pub fn is_retryable(e: &(dyn std::error::Error + 'static)) -> bool {
    is_volume_full(e) || is_bucket_unavailable(e)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_full_volume_is_told_from_other_errors_through_the_chain() {
        let full = super::StoreError::Io {
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert!(super::is_volume_full(&full));
        let parquet = super::StoreError::Parquet(parquet::errors::ParquetError::External(
            Box::new(std::io::Error::from_raw_os_error(28)),
        ));
        assert!(super::is_volume_full(&parquet));
        let other = super::StoreError::Io {
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(13),
        };
        assert!(!super::is_volume_full(&other));
        assert!(!super::is_retryable(&other));
        assert!(super::is_retryable(&full));
        let away = super::StoreError::Bucket {
            key: "s3://b/k".into(),
            message: "error sending request".into(),
        };
        assert!(super::is_bucket_unavailable(&away) && super::is_retryable(&away));
        assert!(!super::is_volume_full(&away));
        // Another writer's object under the name is not waited out.
        let conflict = super::StoreError::Conflict("s3://b/k".into());
        assert!(!super::is_retryable(&conflict));
        let fenced = super::StoreError::Fenced {
            log: "t/0".into(),
            why: "x".into(),
        };
        assert!(super::is_fenced(&fenced) && !super::is_retryable(&fenced));
        assert!(!super::is_fenced(&conflict));
    }
}
