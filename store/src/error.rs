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
