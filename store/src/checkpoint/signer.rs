//! `Checkpointer`: signs and stores a checkpoint after every file, again when the newest is old,
//! and mirrors each one.

use std::collections::HashMap;
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use signed_note::Note;

use crate::batch::ChainHead;
use crate::clock::now_ms;
use crate::error::StoreError;
use crate::files::{validate_topic, write_durably};
use crate::merkle::{Frontier, Hash};

use super::{Checkpoint, KeyRing, list_notes, note_hash, origin};

/// The latest checkpoint of one log, as the signer knows it.
#[derive(Clone, Debug)]
struct Latest {
    cp: Checkpoint,
    note_hash: Hash,
    /// The note's ETag in the bucket, once known (a same-size note replaces only that one).
    etag: Option<String>,
}

/// Signs and stores checkpoints: after every sealed file, and again when the newest is older
/// than the refresh interval. Shared by the writer threads.
pub struct Checkpointer {
    data_dir: PathBuf,
    root: PathBuf,
    /// The bucket every checkpoint and the registry are put into too.
    bucket: Option<std::sync::Arc<crate::Bucket>>,
    /// A second directory every checkpoint is also written to (an anchor outside the store).
    mirror: Option<PathBuf>,
    keys: Mutex<KeyRing>,
    latest: Mutex<HashMap<crate::LogId, Latest>>,
}

/// Names its directories only: never the keys.
impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("root", &self.root)
            .field("mirror", &self.mirror)
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    pub fn new(data_dir: &Path, keys: KeyRing, mirror: Option<PathBuf>) -> Checkpointer {
        Checkpointer {
            data_dir: data_dir.to_owned(),
            root: crate::layout::checkpoints(data_dir),
            bucket: None,
            mirror,
            keys: Mutex::new(keys),
            latest: Mutex::new(HashMap::new()),
        }
    }

    /// Put every checkpoint (and the key registry, now and after each rotation) into
    /// `bucket` too, acknowledged before the checkpoint is handed on.
    pub fn with_bucket(
        mut self,
        bucket: std::sync::Arc<crate::Bucket>,
    ) -> Result<Self, StoreError> {
        // The registry a verifier pins: the bucket's must not lose a key by this put (another
        // instance's, or this store's from before its machine was lost).
        let ours = lock(&self.keys).registry.clone();
        if let Some(theirs) = bucket.get(&crate::layout::registry_rel())? {
            let theirs = super::Registry::parse(&String::from_utf8_lossy(&theirs))
                .map_err(|e| StoreError::Key(format!("the bucket's key registry: {e}")))?;
            if let Some(k) = theirs
                .keys
                .iter()
                .find(|k| !ours.keys.iter().any(|o| o.vkey == k.vkey))
            {
                return Err(StoreError::Key(format!(
                    "the bucket's key registry has a key this data directory's lacks ({}): \
                     copy the bucket's keys/registry here first, or use another store.url prefix",
                    k.vkey
                )));
            }
        }
        let registry = crate::layout::registry(&self.data_dir);
        if registry.exists() {
            bucket.publish(&self.data_dir, &registry)?;
        }
        self.bucket = Some(bucket);
        Ok(self)
    }

    /// Sign `cp` with every key valid at its time (keys past their validity retired first): a
    /// log's checkpoints, and other notes such as a signed prune.
    pub fn sign(&self, cp: &super::Checkpoint) -> Result<Vec<u8>, StoreError> {
        let mut keys = lock(&self.keys);
        keys.retire_expired()?;
        keys.sign(cp)
    }

    pub fn store_name(&self) -> String {
        lock(&self.keys).name().to_owned()
    }

    /// Start signing with a new key ([`KeyRing::rotate`]) while running; the registry after.
    pub fn rotate(&self, overlap_ms: i64) -> Result<(String, String), StoreError> {
        let mut keys = lock(&self.keys);
        let vkey = keys.rotate(overlap_ms)?;
        if let Some(b) = &self.bucket {
            b.publish(&self.data_dir, &crate::layout::registry(&self.data_dir))?;
        }
        Ok((vkey, keys.registry.format()))
    }

    /// The directory of one log's checkpoints.
    pub fn log_dir(root: &Path, topic: &str, partition: i32) -> Result<PathBuf, StoreError> {
        validate_topic(topic)?;
        Ok(root
            .join(format!("topic={topic}"))
            .join(format!("partition={partition}")))
    }

    /// The log's newest stored checkpoint (by tree size, then time).
    fn load_latest(&self, topic: &str, partition: i32) -> Result<Option<Latest>, StoreError> {
        let dir = Self::log_dir(&self.root, topic, partition)?;
        let notes = list_notes(&dir)?;
        let Some((_, path)) = notes.last() else {
            return Ok(None);
        };
        let bytes = fs::read(path).map_err(StoreError::io(path))?;
        let note = Note::from_bytes(&bytes)
            .map_err(|e| StoreError::corrupt(path, format!("checkpoint note: {e}")))?;
        let cp =
            Checkpoint::parse(note.text()).map_err(|e| StoreError::corrupt(path, e.to_string()))?;
        Ok(Some(Latest {
            cp,
            note_hash: note_hash(&bytes),
            etag: None,
        }))
    }

    /// Sign and store a checkpoint of the log at (`chain`, `tree`), unless the newest one
    /// already covers that size and is younger than `max_age_ms` (`None`: only a new size
    /// makes a new checkpoint). Returns the signed note if one was made.
    pub fn checkpoint(
        &self,
        topic: &str,
        partition: i32,
        chain: ChainHead,
        tree: &Frontier,
        max_age_ms: Option<i64>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.sign_log(
            topic,
            partition,
            chain,
            tree.size(),
            tree.root(),
            max_age_ms,
        )
    }

    fn sign_log(
        &self,
        topic: &str,
        partition: i32,
        chain: ChainHead,
        size: u64,
        root: Hash,
        max_age_ms: Option<i64>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = crate::LogId::new(topic, partition);
        let mut latest = lock(&self.latest);
        if !latest.contains_key(&key)
            && let Some(l) = self.load_latest(topic, partition)?
        {
            latest.insert(key.clone(), l);
        }
        // Never dated before the log's last checkpoint (a clock stepped back): times along a
        // log only go forwards, which the verifier checks.
        let now = now_ms().max(latest.get(&key).map_or(i64::MIN, |l| l.cp.time_ms));
        // What a note of this size replaces in the bucket: the version this signer knows.
        let replaces = latest
            .get(&key)
            .filter(|l| l.cp.size == size)
            .map(|l| l.etag.clone());
        let prev = match latest.get(&key) {
            Some(l) if l.cp.size > size => {
                return Err(StoreError::Key(format!(
                    "{topic}/{partition}: the newest checkpoint has tree size {}, the store only {size}",
                    l.cp.size
                )));
            }
            Some(l) if l.cp.size == size => {
                if l.cp.root != root {
                    return Err(StoreError::Key(format!(
                        "{topic}/{partition}: the store's tree of size {size} has another root than its checkpoint"
                    )));
                }
                if max_age_ms.is_none_or(|age| now - l.cp.time_ms < age) {
                    return Ok(None);
                }
                // A fresher signature on the same tree: it links where the old one did.
                l.cp.prev
            }
            Some(l) => Some(l.note_hash),
            None => None,
        };
        let cp = Checkpoint {
            origin: origin(&self.store_name(), topic, partition),
            size,
            root,
            chain,
            prev,
            time_ms: now,
        };
        let note = self.sign(&cp)?;
        let name = format!("{:020}.note", cp.size);
        let mut etag = None;
        for root_dir in std::iter::once(&self.root).chain(self.mirror.as_ref()) {
            let dir = Self::log_dir(root_dir, topic, partition)?;
            crate::files::create_dirs_durably(&dir)?;
            // In the bucket before it has its name here (as every file of the store): a new
            // size only if no other writer signed it, the same size only over the version
            // this signer knows — a writer that lost the log replaces nothing.
            if root_dir == &self.root
                && let Some(b) = &self.bucket
            {
                let path = dir.join(&name);
                let expected = match &replaces {
                    None => None,
                    Some(Some(e)) => Some(e.clone()),
                    Some(None) => b.etag_of(&self.data_dir, &path)?,
                };
                match b.put_versioned(&self.data_dir, &path, note.clone(), expected.as_deref()) {
                    Ok(e) => etag = Some(e),
                    Err(StoreError::Conflict(what)) => {
                        latest.remove(&key);
                        return Err(StoreError::Fenced {
                            log: key.to_string(),
                            why: format!("its checkpoint {what} was signed by another writer"),
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            write_durably(&dir.join(&name), &note)?;
        }
        latest.insert(
            key,
            Latest {
                note_hash: note_hash(&note),
                cp,
                etag,
            },
        );
        Ok(Some(note))
    }

    /// Stop refreshing a log this process no longer writes (its partition was revoked): the
    /// new owner signs it from now on, and a refresh from here would replace a note its newer
    /// checkpoints link to.
    pub fn forget(&self, topic: &str, partition: i32) {
        lock(&self.latest).remove(&crate::LogId::new(topic, partition));
    }

    /// Sign again every log whose newest checkpoint is at least `max_age_ms` old (same tree,
    /// a fresh time): a reader can tell a quiet log from a stalled signer. Returns the notes.
    pub fn refresh(&self, max_age_ms: i64) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let now = now_ms();
        let stale: Vec<(crate::LogId, Checkpoint)> = lock(&self.latest)
            .iter()
            .filter(|(_, l)| now - l.cp.time_ms >= max_age_ms)
            .map(|(k, l)| (k.clone(), l.cp.clone()))
            .collect();
        let mut notes = Vec::new();
        for (crate::LogId { topic, partition }, cp) in stale {
            match self.sign_log(
                &topic,
                partition,
                cp.chain,
                cp.size,
                cp.root,
                Some(max_age_ms),
            ) {
                Ok(Some(n)) => notes.push((cp.origin, n)),
                Ok(None) => {}
                // Another writer signs this log now: it is forgotten here, and its writer
                // fenced at its next file.
                Err(e @ StoreError::Fenced { .. }) => {
                    tracing::warn!(error = %e, "a checkpoint not refreshed");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(notes)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
