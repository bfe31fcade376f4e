//! The data directory's layout, in one place: every path Vigil keeps under `store.data_dir`,
//! whichever crate reads or writes it. Nothing else spells a name under the data directory.
//!
//! ```text
//! DIR/
//!   events/topic=T/partition=P/*.parquet   the store: every record, chained (files.rs)
//!   checkpoints/T/P/                       signed checkpoints of each partition log, and
//!                                          its signed prunes (pruned-<size>.note, .frontier)
//!   keys/registry, keys/*.key              the public key registry, the signing keys
//!   alerts/*.parquet                       the alert log: one row per revision (detect)
//!   outbox/                                deliveries not yet acknowledged (detect)
//!   detect/state.json                      detection's saved state (positions, groups)
//!   detect/state.lock                      held by the one process running detection
//!   detect/commands/                       lifecycle changes queued for that process
//!   bucket-index.json                      ETags of the files fetched from the bucket
//!   instance-id                            this instance's name as a log's writer
//!   heads/topic=T/partition=P.json         (bucket only) who writes each log, its newest file
//! ```
//!
//! With `store.url = "s3://…"`, `events/`, `checkpoints/`, `alerts/`, `keys/registry`,
//! `detect/state.json` and `outbox/` are also in the bucket, under the same names below its
//! prefix ([`crate::bucket`]), and `heads/` and `leases/` are only there (each log's head and
//! the detection lease, changed by conditional writes); the rest is the instance's own.

use std::path::{Path, PathBuf};

/// The store's event files, under the data directory.
pub(crate) const EVENTS_DIR: &str = "events";
/// Signed checkpoints, under the data directory.
pub(crate) const CHECKPOINTS_DIR: &str = "checkpoints";
/// Signing keys and the registry, under the data directory.
pub(crate) const KEYS_DIR: &str = "keys";
/// The public key registry's file name (in [`KEYS_DIR`]).
pub(crate) const REGISTRY_FILE: &str = "registry";
/// The alert log, under the data directory.
pub(crate) const ALERTS_DIR: &str = "alerts";

/// Each log's head object, in the bucket only.
pub(crate) const HEADS_DIR: &str = "heads";

/// `heads/topic=T/partition=P.json`: a log's head object, relative to the store.
pub(crate) fn head_rel(topic: &str, partition: i32) -> Result<String, crate::StoreError> {
    crate::files::validate_topic(topic)?;
    Ok(format!(
        "{HEADS_DIR}/topic={topic}/partition={partition}.json"
    ))
}

/// `events/topic=T/partition=P`: a log's event files, relative to the store.
pub(crate) fn log_events_rel(topic: &str, partition: i32) -> Result<String, crate::StoreError> {
    crate::files::validate_topic(topic)?;
    Ok(format!("{EVENTS_DIR}/topic={topic}/partition={partition}"))
}

/// `checkpoints/topic=T/partition=P`: a log's checkpoints, relative to the store.
pub(crate) fn log_checkpoints_rel(
    topic: &str,
    partition: i32,
) -> Result<String, crate::StoreError> {
    crate::files::validate_topic(topic)?;
    Ok(format!(
        "{CHECKPOINTS_DIR}/topic={topic}/partition={partition}"
    ))
}

/// `DIR/instance-id`: this instance's name as the writer of its logs (in their heads).
pub(crate) fn instance_id(data_dir: &Path) -> PathBuf {
    data_dir.join("instance-id")
}

/// `keys/registry`: the registry relative to the data directory (its object key in a bucket).
pub(crate) fn registry_rel() -> String {
    format!("{KEYS_DIR}/{REGISTRY_FILE}")
}

/// `DIR/bucket-index.json`: the ETags of the files fetched from the bucket.
pub(crate) fn bucket_index(data_dir: &Path) -> PathBuf {
    data_dir.join("bucket-index.json")
}

/// `DIR/events`.
pub fn events(data_dir: &Path) -> PathBuf {
    data_dir.join(EVENTS_DIR)
}

/// `DIR/checkpoints`.
pub fn checkpoints(data_dir: &Path) -> PathBuf {
    data_dir.join(CHECKPOINTS_DIR)
}

/// `DIR/keys`.
pub fn keys(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_DIR)
}

/// `DIR/keys/registry`: the public keys a verifier pins.
pub fn registry(data_dir: &Path) -> PathBuf {
    keys(data_dir).join(REGISTRY_FILE)
}

/// `DIR/alerts`.
pub fn alerts(data_dir: &Path) -> PathBuf {
    data_dir.join(ALERTS_DIR)
}

/// `DIR/outbox`.
pub fn outbox(data_dir: &Path) -> PathBuf {
    data_dir.join(OUTBOX_DIR)
}

/// The delivery outbox, under the data directory.
pub(crate) const OUTBOX_DIR: &str = "outbox";

/// `DIR/detect`.
pub fn detect(data_dir: &Path) -> PathBuf {
    data_dir.join("detect")
}

/// `DIR/detect/state.json`.
pub fn detect_state(data_dir: &Path) -> PathBuf {
    detect(data_dir).join("state.json")
}

/// `DIR/detect/state.lock`.
pub fn detect_lock(data_dir: &Path) -> PathBuf {
    detect(data_dir).join("state.lock")
}

/// `DIR/detect/commands`.
pub fn detect_commands(data_dir: &Path) -> PathBuf {
    detect(data_dir).join("commands")
}
