//! The trusted state file (`vigil verify --trusted FILE`): the public keys pinned and the newest
//! signed checkpoint of every log, from the last verification that could be trusted. A later
//! verification holds the store against it, so a store rolled back past it, or re-signed with
//! other keys, is caught even when the store's own registry agrees with itself.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::audit::{AuditReport, Trusted};
use crate::checkpoint::Registry;
use crate::files::write_durably;

/// The format tag of a trusted state file.
pub(crate) const TRUSTED_FORMAT: &str = "vigil-trusted-v1";

/// A trusted state file's contents.
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustedFile {
    format: String,
    /// A key registry, as [`Registry::format`] writes it.
    keys: String,
    /// Signed checkpoint notes, the newest per log.
    checkpoints: Vec<String>,
}

impl TrustedFile {
    /// Read and check the file at `path`.
    pub fn read(path: &Path) -> Result<TrustedFile, StoreError> {
        let text = std::fs::read_to_string(path).map_err(StoreError::io(path))?;
        let t: TrustedFile = serde_json::from_str(&text)
            .map_err(|e| StoreError::corrupt(path, format!("trusted state: {e}")))?;
        if t.format != TRUSTED_FORMAT {
            return Err(StoreError::corrupt(
                path,
                format!(
                    "trusted state format {:?}, expected {TRUSTED_FORMAT:?}",
                    t.format
                ),
            ));
        }
        Ok(t)
    }

    /// What a verifier trusts from it: its keys, and its checkpoints (named by their place).
    pub fn trusted(&self) -> Result<Trusted, StoreError> {
        let keys = Registry::parse(&self.keys)
            .map_err(|e| StoreError::Key(format!("trusted keys: {e}")))?;
        let checkpoints = self
            .checkpoints
            .iter()
            .enumerate()
            .map(|(i, note)| {
                (
                    format!("trusted checkpoint #{}", i + 1),
                    note.clone().into_bytes(),
                )
            })
            .collect();
        Ok(Trusted {
            keys: Some(keys),
            checkpoints,
        })
    }

    /// The state after `report`: the newest checkpoint of each log, and the keys pinned before
    /// (`existing`), or the store's own the first time (trust on first use).
    pub fn after(existing: Option<&TrustedFile>, report: &AuditReport) -> TrustedFile {
        TrustedFile {
            format: TRUSTED_FORMAT.to_owned(),
            keys: match existing {
                Some(t) => t.keys.clone(),
                None => report.keys.format(),
            },
            checkpoints: report
                .logs
                .iter()
                .filter_map(|l| l.newest_note.as_ref())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect(),
        }
    }

    /// Replace the file at `path` atomically and durably.
    pub fn write(&self, path: &Path) -> Result<(), StoreError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| StoreError::Invalid(format!("trusted state: {e}")))?;
        write_durably(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_state_reads_back_and_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted.json");
        let t = TrustedFile {
            format: TRUSTED_FORMAT.to_owned(),
            keys: String::new(),
            checkpoints: vec!["note".to_owned()],
        };
        t.write(&path).unwrap();
        assert_eq!(TrustedFile::read(&path).unwrap(), t);
        let trusted = t.trusted().unwrap();
        assert_eq!(
            trusted.checkpoints,
            [("trusted checkpoint #1".to_owned(), b"note".to_vec())]
        );

        std::fs::write(
            &path,
            r#"{"format":"vigil-trusted-v0","keys":"","checkpoints":[]}"#,
        )
        .unwrap();
        let e = TrustedFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("expected \"vigil-trusted-v1\""), "{e}");
        std::fs::write(
            &path,
            r#"{"format":"vigil-trusted-v1","keys":"","checkpoints":[],"x":1}"#,
        )
        .unwrap();
        assert!(
            TrustedFile::read(&path).is_err(),
            "unknown fields are refused"
        );
    }
}
