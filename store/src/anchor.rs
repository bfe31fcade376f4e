//! Signing a log's checkpoints and anchoring them outside the store: one [`LogSigner`] for
//! every log Vigil signs (Kafka partitions' logs written by ingest, Vigil's own logs written by
//! detection and the API), one [`Anchor`] abstraction for where the notes go.

use std::sync::Arc;

use crate::LogId;
use crate::batch::ChainHead;
use crate::checkpoint::{Checkpointer, origin};
use crate::error::StoreError;
use crate::merkle::Frontier;

/// Somewhere outside the store a signed checkpoint note is published (the Kafka anchor topic),
/// so that a rolled-back store is caught by comparing. Publishing is best effort: a failure is
/// the anchor's to report and count; the note is in the store either way.
pub trait Anchor: Send + Sync {
    /// Publish `note`, the newest signed checkpoint of the log named `origin`.
    fn publish(&self, origin: &str, note: &[u8]);
}

/// Signs logs' checkpoints and hands each new note to the anchor.
#[derive(Clone)]
pub struct LogSigner {
    checkpoints: Arc<Checkpointer>,
    anchor: Option<Arc<dyn Anchor>>,
}

impl std::fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSigner")
            .field("store_name", &self.checkpoints.store_name())
            .field("anchored", &self.anchor.is_some())
            .finish()
    }
}

impl LogSigner {
    /// `anchor`: `None` keeps the notes in the store only.
    pub fn new(checkpoints: Arc<Checkpointer>, anchor: Option<Arc<dyn Anchor>>) -> LogSigner {
        LogSigner {
            checkpoints,
            anchor,
        }
    }

    pub fn checkpoints(&self) -> &Arc<Checkpointer> {
        &self.checkpoints
    }

    /// Sign `log` at (`chain`, `tree`) if its tree grew since its newest checkpoint, and anchor
    /// the new note. True when a note was signed; nothing for an empty tree.
    pub fn sign(&self, log: &LogId, chain: ChainHead, tree: &Frontier) -> Result<bool, StoreError> {
        if tree.size() == 0 {
            return Ok(false);
        }
        let Some(note) =
            self.checkpoints
                .checkpoint(&log.topic, log.partition, chain, tree, None)?
        else {
            return Ok(false);
        };
        self.publish(
            &origin(&self.checkpoints.store_name(), &log.topic, log.partition),
            &note,
        );
        Ok(true)
    }

    /// Sign again, and anchor, every log whose newest checkpoint is older than `max_age_ms`
    /// (same tree, fresh time: a store that stops growing still shows it is alive). How many
    /// notes were signed.
    pub fn refresh(&self, max_age_ms: i64) -> Result<usize, StoreError> {
        let notes = self.checkpoints.refresh(max_age_ms)?;
        for (origin, note) in &notes {
            self.publish(origin, note);
        }
        Ok(notes.len())
    }

    fn publish(&self, origin: &str, note: &[u8]) {
        if let Some(a) = &self.anchor {
            a.publish(origin, note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{KeyRing, parse_note};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Kept(Mutex<Vec<(String, Vec<u8>)>>);

    impl Anchor for Kept {
        fn publish(&self, origin: &str, note: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push((origin.to_owned(), note.to_vec()));
        }
    }

    #[test]
    fn a_grown_tree_is_signed_once_and_anchored_and_an_empty_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyRing::open(dir.path(), None).unwrap();
        let cps = Arc::new(Checkpointer::new(dir.path(), keys, None));
        let kept = Arc::new(Kept::default());
        let signer = LogSigner::new(cps.clone(), Some(kept.clone()));
        let log = LogId::new("mesh", 3);
        let empty = Frontier::default();
        let chain = ChainHead {
            offset: -1,
            hash: [0; 32],
        };
        assert!(!signer.sign(&log, chain, &empty).unwrap());
        let mut tree = Frontier::default();
        tree.append(&[7; 32]);
        let chain = ChainHead {
            offset: 0,
            hash: [1; 32],
        };
        assert!(signer.sign(&log, chain, &tree).unwrap());
        assert!(
            !signer.sign(&log, chain, &tree).unwrap(),
            "same tree: no new note"
        );
        let kept = kept.0.lock().unwrap();
        assert_eq!(kept.len(), 1);
        let (origin, note) = &kept[0];
        assert!(origin.ends_with("/mesh/3"), "{origin}");
        let cp = parse_note(note).unwrap();
        assert_eq!((cp.size, cp.chain.offset), (1, 0));
    }
}
