//! Signed checkpoints: a partition log's tree size and Merkle root, signed with Ed25519 in the
//! C2SP signed-note format (c2sp.org/signed-note, c2sp.org/tlog-checkpoint), so that anyone
//! holding the public key can check, offline, that the log they are shown is the one that was
//! signed — and that a later one extends it.
//!
//! ```text
//! <origin>                      vigil-5f0c…/<topic>/<partition>: one per log, never reused
//! <tree size>
//! <root, base64>
//! vigil-chain <offset> <hex>    the chain head at that size
//! vigil-prev <base64|->         blake3 of the previous checkpoint's note (of a smaller size)
//! vigil-time <unix ms>          when it was signed: which keys were valid then
//!
//! — <key name> <base64(key ID ‖ Ed25519 signature)>
//! ```
//!
//! Keys live in the data directory: `keys/<key ID>.key` (the private key, mode 0600, in the
//! `PRIVATE+KEY+…` encoding) and `keys/registry` (public: one line per key, `<verifier key>
//! <valid from ms> <valid until ms|->`). A key signs only inside its validity range; during a
//! rotation's overlap both keys sign. The store's own registry is only a convenience: an
//! auditor pins the public keys they trust (`vigil verify --trusted`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use signed_note::{Note, Signer, StandardSigner, StandardVerifier, VerifierList};

use crate::batch::ChainHead;
use crate::chain::{from_hex, to_hex};
use crate::clock::now_ms;
use crate::error::StoreError;
use crate::files::{fsync_dir, validate_topic, write_durably};
use crate::merkle::{Frontier, Hash};

use crate::layout::REGISTRY_FILE;

/// Most signatures a checkpoint may carry (signed_note's own cap is 100).
pub const MAX_SIGNATURES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("malformed key registry line {line}: {reason}")]
    Registry { line: usize, reason: String },
    #[error("key: {0}")]
    Key(String),
}

/// A checkpoint's text, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub chain: ChainHead,
    /// blake3 of the previous checkpoint's signed note (the last one of a smaller size).
    pub prev: Option<Hash>,
    pub time_ms: i64,
}

impl Checkpoint {
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\nvigil-chain {} {}\nvigil-prev {}\nvigil-time {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.chain.offset,
            to_hex(&self.chain.hash),
            self.prev.map_or("-".to_owned(), |h| B64.encode(h)),
            self.time_ms
        )
    }

    /// Parse a checkpoint's text: exactly the lines [`Checkpoint::text`] writes.
    pub fn parse(text: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let bad = |why: &str| CheckpointError::Malformed(why.to_owned());
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root, chain, prev, time] = lines[..] else {
            return Err(bad(&format!("{} lines, expected 6", lines.len())));
        };
        let hash64 = |s: &str| -> Option<Hash> { B64.decode(s).ok()?.try_into().ok() };
        if origin.is_empty() || origin.contains(char::is_whitespace) {
            return Err(bad("origin"));
        }
        let (offset, hash) = field("vigil-chain", chain)?
            .split_once(' ')
            .ok_or_else(|| bad("vigil-chain"))?;
        let prev = match field("vigil-prev", prev)? {
            "-" => None,
            p => Some(hash64(p).ok_or_else(|| bad("vigil-prev"))?),
        };
        let cp = Checkpoint {
            origin: origin.to_owned(),
            size: canonical_num(size).ok_or_else(|| bad("tree size"))?,
            root: hash64(root).ok_or_else(|| bad("root"))?,
            chain: ChainHead {
                offset: offset.parse().map_err(|_| bad("chain offset"))?,
                hash: from_hex(hash).ok_or_else(|| bad("chain hash"))?,
            },
            prev,
            time_ms: field("vigil-time", time)?
                .parse()
                .map_err(|_| bad("vigil-time"))?,
        };
        // One text per checkpoint: anything that parses must print back identically.
        if cp.text() != text {
            return Err(bad("not in canonical form"));
        }
        Ok(cp)
    }
}

/// The value of an extension line `<name> <value>`.
fn field<'a>(name: &str, line: &'a str) -> Result<&'a str, CheckpointError> {
    line.strip_prefix(name)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| CheckpointError::Malformed(format!("expected a {name} line")))
}

/// A decimal number without sign, leading zeros or spaces.
fn canonical_num(s: &str) -> Option<u64> {
    let n: u64 = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

/// The origin of a partition log.
pub fn origin(store_name: &str, topic: &str, partition: i32) -> String {
    format!("{store_name}/{topic}/{partition}")
}

/// blake3 of a signed note's bytes: what the next checkpoint's `vigil-prev` commits to.
pub fn note_hash(note: &[u8]) -> Hash {
    *blake3::hash(note).as_bytes()
}

/// One public key and when it may sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// `<name>+<key ID hex>+<base64 key>` (signed-note verifier key).
    pub vkey: String,
    pub valid_from_ms: i64,
    pub valid_until_ms: Option<i64>,
}

impl KeyEntry {
    pub fn name(&self) -> &str {
        self.vkey.split('+').next().unwrap_or_default()
    }

    pub fn id(&self) -> u32 {
        self.vkey
            .split('+')
            .nth(1)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .unwrap_or_default()
    }

    pub fn valid_at(&self, t_ms: i64) -> bool {
        t_ms >= self.valid_from_ms && self.valid_until_ms.is_none_or(|u| t_ms < u)
    }
}

/// Public keys with their validity ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    pub keys: Vec<KeyEntry>,
}

impl Registry {
    pub fn parse(text: &str) -> Result<Registry, CheckpointError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| CheckpointError::Registry {
                line: i + 1,
                reason: reason.to_owned(),
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            let [vkey, from, until] = f[..] else {
                return Err(err(
                    "expected: <verifier key> <valid from ms> <valid until ms|->",
                ));
            };
            StandardVerifier::new(vkey).map_err(|e| err(&format!("verifier key: {e}")))?;
            keys.push(KeyEntry {
                vkey: vkey.to_owned(),
                valid_from_ms: from.parse().map_err(|_| err("valid from"))?,
                valid_until_ms: match until {
                    "-" => None,
                    u => Some(u.parse().map_err(|_| err("valid until"))?),
                },
            });
        }
        Ok(Registry { keys })
    }

    pub fn format(&self) -> String {
        let mut s = String::from(
            "# Vigil checkpoint keys: <verifier key> <valid from, unix ms> <valid until, unix ms or ->\n",
        );
        for k in &self.keys {
            let until = k.valid_until_ms.map_or("-".to_owned(), |u| u.to_string());
            s.push_str(&format!("{} {} {}\n", k.vkey, k.valid_from_ms, until));
        }
        s
    }

    /// The store name all keys share (the signer name of every checkpoint).
    pub fn name(&self) -> Option<&str> {
        self.keys.first().map(KeyEntry::name)
    }
}

/// What checking a signed checkpoint found.
#[derive(Debug, PartialEq, Eq)]
pub enum NoteVerdict {
    /// Signed by at least one key valid at the checkpoint's time, and by no key outside its
    /// range; the parsed checkpoint.
    Valid(Checkpoint),
    /// Could not be checked as a note or checkpoint at all.
    Malformed(String),
    /// A signature by a known key does not verify: forged or edited.
    BadSignature(String),
    /// Signed only by keys the verifier does not trust (unknown, or outside their range).
    Untrusted(String),
}

/// Check a signed checkpoint against trusted keys.
pub fn verify_note(bytes: &[u8], keys: &Registry) -> NoteVerdict {
    let note = match Note::from_bytes(bytes) {
        Ok(n) => n,
        Err(e) => return NoteVerdict::Malformed(e.to_string()),
    };
    let cp = match Checkpoint::parse(note.text()) {
        Ok(cp) => cp,
        Err(e) => return NoteVerdict::Malformed(e.to_string()),
    };
    // Signature lines beyond a sane count are refused before any is checked.
    let sig_lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with("—".as_bytes()))
        .count();
    if sig_lines > MAX_SIGNATURES {
        return NoteVerdict::Malformed(format!(
            "{sig_lines} signatures (at most {MAX_SIGNATURES})"
        ));
    }
    let mut verifiers: Vec<Box<dyn signed_note::Verifier>> = Vec::new();
    for k in &keys.keys {
        match StandardVerifier::new(&k.vkey) {
            Ok(v) => verifiers.push(Box::new(v)),
            Err(e) => return NoteVerdict::Malformed(format!("trusted key {}: {e}", k.vkey)),
        }
    }
    let (verified, _unknown) = match note.verify(&VerifierList::new(verifiers)) {
        Ok(v) => v,
        Err(signed_note::NoteError::UnverifiedNote) => {
            return NoteVerdict::Untrusted("signed by no trusted key".to_owned());
        }
        Err(e) => return NoteVerdict::BadSignature(e.to_string()),
    };
    let mut in_range = 0;
    for sig in &verified {
        let entry = keys
            .keys
            .iter()
            .find(|k| k.name() == sig.name() && k.id() == sig.id());
        match entry {
            Some(k) if k.valid_at(cp.time_ms) => in_range += 1,
            _ => {
                return NoteVerdict::Untrusted(format!(
                    "signed by key {}+{:08x} outside its validity range (checkpoint time {})",
                    sig.name(),
                    sig.id(),
                    cp.time_ms
                ));
            }
        }
    }
    if in_range == 0 {
        return NoteVerdict::Untrusted("no signature by a key valid at its time".to_owned());
    }
    NoteVerdict::Valid(cp)
}

/// The private keys of a store and their registry.
pub struct KeyRing {
    dir: PathBuf,
    pub registry: Registry,
    signers: Vec<(KeyEntry, StandardSigner)>,
}

fn key_file_name(id: u32) -> String {
    format!("{id:08x}.key")
}

impl KeyRing {
    /// Open the keys under `data_dir/keys`, generating the first one (and the store's name)
    /// if there are none. `configured`: a private key file to use instead of a generated one
    /// (added to the registry, valid from now, if it is not there yet).
    pub fn open(data_dir: &Path, configured: Option<&Path>) -> Result<KeyRing, StoreError> {
        let dir = crate::layout::keys(data_dir);
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(StoreError::io(&dir))?;
        }
        let reg_path = dir.join(REGISTRY_FILE);
        let mut registry = match fs::read_to_string(&reg_path) {
            Ok(t) => {
                Registry::parse(&t).map_err(|e| StoreError::corrupt(&reg_path, e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::default(),
            Err(e) => return Err(StoreError::io(&reg_path)(e)),
        };
        let mut extra = Vec::new();
        if let Some(path) = configured {
            let skey = fs::read_to_string(path).map_err(StoreError::io(path))?;
            let signer = StandardSigner::new(skey.trim())
                .map_err(|e| StoreError::corrupt(path, format!("signing key: {e}")))?;
            extra.push((skey.trim().to_owned(), signer));
        } else if registry.keys.is_empty() {
            let mut rnd = [0u8; 8];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut rnd);
            let name = format!("vigil-{}", hex8(&rnd));
            let (skey, _) = signed_note::generate_key(&mut rand_core::OsRng, &name);
            let signer = StandardSigner::new(&skey)
                .map_err(|e| StoreError::Key(format!("generated key: {e}")))?;
            let key_path = dir.join(key_file_name(signer.key_id()));
            write_private_key(&key_path, &skey)?;
            // Two processes starting on a fresh store at once: the first registry written wins
            // (created exclusively); the other drops its key and takes the winner's.
            let entry = KeyEntry {
                vkey: vkey_of(&skey)?,
                valid_from_ms: now_ms(),
                valid_until_ms: None,
            };
            let first = Registry { keys: vec![entry] };
            if !create_exclusive(&reg_path, first.format().as_bytes())? {
                fs::remove_file(&key_path).map_err(StoreError::io(&key_path))?;
                return KeyRing::open(data_dir, None);
            }
            registry = first;
            extra.push((skey, signer));
        }
        for (skey, signer) in &extra {
            if let Some(name) = registry.name()
                && name != signer.name()
            {
                return Err(StoreError::Key(format!(
                    "key {} is named {}, the store's keys are named {name}",
                    key_file_name(signer.key_id()),
                    signer.name()
                )));
            }
            if !registry.keys.iter().any(|k| k.id() == signer.key_id()) {
                registry.keys.push(KeyEntry {
                    vkey: vkey_of(skey)?,
                    valid_from_ms: now_ms(),
                    valid_until_ms: None,
                });
                write_durably(&reg_path, registry.format().as_bytes())?;
            }
        }
        let mut ring = KeyRing {
            dir,
            registry,
            signers: Vec::new(),
        };
        ring.load_signers(extra)?;
        Ok(ring)
    }

    fn load_signers(&mut self, extra: Vec<(String, StandardSigner)>) -> Result<(), StoreError> {
        self.signers.clear();
        let now = now_ms();
        for k in &self.registry.keys {
            // A key whose validity has ended never signs again: its private half is destroyed.
            if k.valid_until_ms.is_some_and(|until| until <= now) {
                let path = self.dir.join(key_file_name(k.id()));
                if path.exists() {
                    destroy_private_key(&path)?;
                    tracing::info!(key = %key_file_name(k.id()), "retired signing key destroyed");
                }
                continue;
            }
            let signer = match extra.iter().find(|(_, s)| s.key_id() == k.id()) {
                Some((_, s)) => Some(s.clone()),
                None => {
                    let path = self.dir.join(key_file_name(k.id()));
                    match fs::read_to_string(&path) {
                        Ok(skey) => Some(StandardSigner::new(skey.trim()).map_err(|e| {
                            StoreError::corrupt(&path, format!("signing key: {e}"))
                        })?),
                        // A retired key may have been removed; a public entry stays.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => return Err(StoreError::io(&path)(e)),
                    }
                }
            };
            if let Some(s) = signer {
                self.signers.push((k.clone(), s));
            }
        }
        Ok(())
    }

    /// Destroy the private halves of keys whose validity has ended since they were loaded.
    pub fn retire_expired(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        if self
            .signers
            .iter()
            .any(|(k, _)| k.valid_until_ms.is_some_and(|u| u <= now))
        {
            self.load_signers(Vec::new())?;
        }
        Ok(())
    }

    /// Fail unless some key with its private half here is valid now (checked at start, so a
    /// store whose keys all expired does not fail at its first file instead).
    pub fn check_can_sign(&self) -> Result<(), StoreError> {
        let now = now_ms();
        if self.signers.iter().any(|(k, _)| k.valid_at(now)) {
            Ok(())
        } else {
            Err(StoreError::Key(format!(
                "no private key in {} is valid now: rotate to a new key (vigil keys rotate) or \
                 configure checkpoint.signing_key_file",
                self.dir.display()
            )))
        }
    }

    /// The store's name: the signer name of its checkpoints, the prefix of its origins.
    pub fn name(&self) -> &str {
        self.registry.name().unwrap_or_default()
    }

    /// Sign a checkpoint with every key valid at its time.
    pub fn sign(&self, cp: &Checkpoint) -> Result<Vec<u8>, StoreError> {
        let signers: Vec<&dyn Signer> = self
            .signers
            .iter()
            .filter(|(k, _)| k.valid_at(cp.time_ms))
            .map(|(_, s)| s as &dyn Signer)
            .collect();
        if signers.is_empty() {
            return Err(StoreError::Key(format!(
                "no signing key is valid at {} (see {})",
                cp.time_ms,
                self.dir.join(REGISTRY_FILE).display()
            )));
        }
        let text = cp.text();
        let mut note = Note::new(text.as_bytes(), &[])
            .map_err(|e| StoreError::Key(format!("checkpoint note: {e}")))?;
        note.add_sigs(&signers)
            .map_err(|e| StoreError::Key(format!("signing: {e}")))?;
        Ok(note.to_bytes())
    }

    /// Start a new key: it signs from now on; the keys valid now stop signing after
    /// `overlap_ms` (both sign meanwhile). Returns the new verifier key.
    pub fn rotate(&mut self, overlap_ms: i64) -> Result<String, StoreError> {
        let now = now_ms();
        let name = self.name().to_owned();
        if name.is_empty() {
            return Err(StoreError::Key("no key to rotate".into()));
        }
        let (skey, vkey) = signed_note::generate_key(&mut rand_core::OsRng, &name);
        let signer = StandardSigner::new(&skey)
            .map_err(|e| StoreError::Key(format!("generated key: {e}")))?;
        write_private_key(&self.dir.join(key_file_name(signer.key_id())), &skey)?;
        for k in &mut self.registry.keys {
            if k.valid_at(now) {
                k.valid_until_ms = Some(now + overlap_ms.max(0));
            }
        }
        self.registry.keys.push(KeyEntry {
            vkey: vkey.clone(),
            valid_from_ms: now,
            valid_until_ms: None,
        });
        write_durably(
            &self.dir.join(REGISTRY_FILE),
            self.registry.format().as_bytes(),
        )?;
        self.load_signers(vec![(skey, signer)])?;
        Ok(vkey)
    }
}

fn hex8(b: &[u8; 8]) -> String {
    hex::encode(b)
}

/// The verifier key of an encoded signer key.
fn vkey_of(skey: &str) -> Result<String, StoreError> {
    let fields: Vec<&str> = skey.splitn(5, '+').collect();
    let [_, _, name, _, key64] = fields[..] else {
        return Err(StoreError::Key("malformed signing key".into()));
    };
    let raw = B64
        .decode(key64)
        .map_err(|_| StoreError::Key("malformed signing key".into()))?;
    let seed: [u8; 32] = raw
        .get(1..)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| StoreError::Key("signing key is not Ed25519".into()))?;
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    Ok(signed_note::new_ed25519_verifier_key(
        name,
        &sk.verifying_key(),
    ))
}

/// Create `path` with `bytes` unless it exists (then `false`), atomically (a complete file
/// or none: written aside, then hard-linked into place, which fails if the name exists) and
/// durably.
fn create_exclusive(path: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
    let dir = path
        .parent()
        .ok_or(StoreError::Internal("file without a directory"))?;
    let unique = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    let tmp = dir.join(format!(
        ".tmp-{}-{unique:016x}-registry",
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp).map_err(StoreError::io(&tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(StoreError::io(&tmp))?;
    }
    let linked = fs::hard_link(&tmp, path);
    fs::remove_file(&tmp).map_err(StoreError::io(&tmp))?;
    match linked {
        Ok(()) => {
            fsync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(StoreError::io(path)(e)),
    }
}

/// Overwrite a private key file with zeros, durably, then remove it (and make the removal
/// durable): what is left on the volume is not the key.
fn destroy_private_key(path: &Path) -> Result<(), StoreError> {
    use std::io::Write;
    let len = fs::metadata(path).map_err(StoreError::io(path))?.len();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(StoreError::io(path))?;
    f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])
        .and_then(|()| f.sync_all())
        .map_err(StoreError::io(path))?;
    drop(f);
    fs::remove_file(path).map_err(StoreError::io(path))?;
    match path.parent() {
        Some(dir) => crate::files::fsync_dir(dir),
        None => Ok(()),
    }
}

/// Write a private key file readable by its owner only.
fn write_private_key(path: &Path, skey: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(StoreError::io(path))?;
    f.write_all(format!("{skey}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(StoreError::io(path))?;
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// The latest checkpoint of one log, as the signer knows it.
#[derive(Clone, Debug)]
struct Latest {
    cp: Checkpoint,
    note_hash: Hash,
}

/// Signs and stores checkpoints: after every sealed file, and again when the newest is older
/// than the refresh interval. Shared by the writer threads.
pub struct Checkpointer {
    root: PathBuf,
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
            root: crate::layout::checkpoints(data_dir),
            mirror,
            keys: Mutex::new(keys),
            latest: Mutex::new(HashMap::new()),
        }
    }

    pub fn store_name(&self) -> String {
        lock(&self.keys).name().to_owned()
    }

    /// Start signing with a new key ([`KeyRing::rotate`]) while running; the registry after.
    pub fn rotate(&self, overlap_ms: i64) -> Result<(String, String), StoreError> {
        let mut keys = lock(&self.keys);
        let vkey = keys.rotate(overlap_ms)?;
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
        let note = {
            let mut keys = lock(&self.keys);
            keys.retire_expired()?;
            keys.sign(&cp)?
        };
        let name = format!("{:020}.note", cp.size);
        for root_dir in std::iter::once(&self.root).chain(self.mirror.as_ref()) {
            let dir = Self::log_dir(root_dir, topic, partition)?;
            crate::files::create_dirs_durably(&dir)?;
            write_durably(&dir.join(&name), &note)?;
        }
        latest.insert(
            key,
            Latest {
                note_hash: note_hash(&note),
                cp,
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
            if let Some(n) = self.sign_log(
                &topic,
                partition,
                cp.chain,
                cp.size,
                cp.root,
                Some(max_age_ms),
            )? {
                notes.push((cp.origin, n));
            }
        }
        Ok(notes)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stored checkpoint note's checkpoint (the signatures are not checked here: `vigil verify`
/// does that).
pub fn parse_note(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let note =
        Note::from_bytes(bytes).map_err(|e| CheckpointError::Malformed(format!("note: {e}")))?;
    Checkpoint::parse(note.text())
}

/// A log's checkpoint files, by tree size.
pub fn list_notes(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out: Vec<(u64, PathBuf)> = crate::files::read_dir_names(dir)?
        .into_iter()
        .filter_map(|name| {
            let size = name.strip_suffix(".note")?.parse().ok()?;
            Some((size, dir.join(name)))
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint {
            origin: "vigil-0011223344556677/audit/0".into(),
            size: 12,
            root: [7; 32],
            chain: ChainHead {
                offset: 41,
                hash: [9; 32],
            },
            prev: Some([1; 32]),
            time_ms: 1_763_800_000_000,
        }
    }

    #[test]
    fn checkpoint_text_round_trips_and_only_its_canonical_form_parses() {
        let c = cp();
        assert_eq!(Checkpoint::parse(c.text().as_bytes()).unwrap(), c);
        let first = Checkpoint { prev: None, ..cp() };
        assert_eq!(Checkpoint::parse(first.text().as_bytes()).unwrap(), first);
        let t = c.text();
        for bad in [
            t.replace("\n12\n", "\n012\n"),
            t.replace("\n12\n", "\n+12\n"),
            t.replace("vigil-time", "vigil-tme"),
            format!("{t}extra\n"),
            t.trim_end().to_owned(),
            t.replace("vigil-chain 41", "vigil-chain  41"),
            t.replacen("vigil-0011223344556677/audit/0", "", 1),
        ] {
            assert!(Checkpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_sign_within_their_range_and_rotation_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::open(dir.path(), None).unwrap();
        assert!(ring.name().starts_with("vigil-"));
        let key_file =
            crate::layout::keys(dir.path()).join(key_file_name(ring.registry.keys[0].id()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut c = cp();
        c.origin = origin(ring.name(), "audit", 0);
        c.time_ms = now_ms();
        let note = ring.sign(&c).unwrap();
        let trusted = ring.registry.clone();
        assert_eq!(verify_note(&note, &trusted), NoteVerdict::Valid(c.clone()));

        // Reopening finds the same key; an empty registry trusts nothing.
        let again = KeyRing::open(dir.path(), None).unwrap();
        assert_eq!(again.registry, trusted);
        assert!(matches!(
            verify_note(&note, &Registry::default()),
            NoteVerdict::Untrusted(_)
        ));

        // Rotation with an overlap: both keys sign now; the old one stops after the overlap.
        ring.rotate(60_000).unwrap();
        assert_eq!(ring.registry.keys.len(), 2);
        c.time_ms = now_ms();
        let both = ring.sign(&c).unwrap();
        let sigs = std::str::from_utf8(&both).unwrap().matches('—').count();
        assert_eq!(sigs, 2);
        assert!(matches!(
            verify_note(&both, &ring.registry),
            NoteVerdict::Valid(_)
        ));
        ring.check_can_sign().unwrap();
        c.time_ms = now_ms() + 120_000;
        let later = ring.sign(&c).unwrap();
        assert_eq!(std::str::from_utf8(&later).unwrap().matches('—').count(), 1);
        // The old key used after its range (a note signed by it alone, dated later) is refused.
        let old_only = Registry {
            keys: vec![ring.registry.keys[0].clone()],
        };
        let old_ring = KeyRing {
            dir: crate::layout::keys(dir.path()),
            registry: Registry {
                keys: vec![KeyEntry {
                    valid_until_ms: None,
                    ..ring.registry.keys[0].clone()
                }],
            },
            signers: vec![(
                KeyEntry {
                    valid_until_ms: None,
                    ..ring.registry.keys[0].clone()
                },
                ring.signers[0].1.clone(),
            )],
        };
        let late = old_ring.sign(&c).unwrap();
        // A ring whose only key has expired refuses to start signing.
        let past = KeyEntry {
            valid_until_ms: Some(now_ms() - 1),
            ..ring.registry.keys[0].clone()
        };
        let expired = KeyRing {
            dir: crate::layout::keys(dir.path()),
            registry: Registry {
                keys: vec![past.clone()],
            },
            signers: vec![(past, ring.signers[0].1.clone())],
        };
        assert!(expired.check_can_sign().is_err());
        assert!(matches!(
            verify_note(&late, &old_only),
            NoteVerdict::Untrusted(_)
        ));
        assert!(matches!(
            verify_note(&late, &ring.registry),
            NoteVerdict::Untrusted(_)
        ));
    }

    #[test]
    fn edited_and_malformed_notes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), None).unwrap();
        let mut c = cp();
        c.time_ms = now_ms();
        let note = String::from_utf8(ring.sign(&c).unwrap()).unwrap();
        let keys = &ring.registry;
        let edited = note.replacen("\n12\n", "\n13\n", 1);
        assert!(matches!(
            verify_note(edited.as_bytes(), keys),
            NoteVerdict::BadSignature(_)
        ));
        let root = B64.encode([7u8; 32]);
        let other = B64.encode([8u8; 32]);
        assert!(matches!(
            verify_note(note.replace(&root, &other).as_bytes(), keys),
            NoteVerdict::BadSignature(_)
        ));
        // Extra text line, bad UTF-8, too many signatures, no signature.
        let (text, sig) = note.rsplit_once("\n\n").unwrap();
        let extra = format!("{text}\nvigil-extra 1\n\n{sig}");
        assert!(!matches!(
            verify_note(extra.as_bytes(), keys),
            NoteVerdict::Valid(_)
        ));
        let mut bad_utf8 = note.clone().into_bytes();
        bad_utf8[3] = 0xff;
        assert!(matches!(
            verify_note(&bad_utf8, keys),
            NoteVerdict::Malformed(_)
        ));
        let many = format!("{text}\n\n{}", sig.repeat(MAX_SIGNATURES + 1));
        assert!(matches!(
            verify_note(many.as_bytes(), keys),
            NoteVerdict::Malformed(_)
        ));
        assert!(matches!(
            verify_note(format!("{text}\n").as_bytes(), keys),
            NoteVerdict::Malformed(_)
        ));
    }

    #[test]
    fn checkpoints_link_to_the_previous_size_and_refresh_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = dir.path().join("mirror");
        let ring = KeyRing::open(dir.path(), None).unwrap();
        let keys = ring.registry.clone();
        let cps = Checkpointer::new(dir.path(), ring, Some(mirror.clone()));
        let mut tree = Frontier::default();
        tree.append(&[1; 32]);
        let head = ChainHead {
            offset: 0,
            hash: [5; 32],
        };
        let first = cps.checkpoint("t", 0, head, &tree, None).unwrap().unwrap();
        assert_eq!(cps.checkpoint("t", 0, head, &tree, None).unwrap(), None);
        tree.append(&[2; 32]);
        let second = cps.checkpoint("t", 0, head, &tree, None).unwrap().unwrap();
        let NoteVerdict::Valid(c2) = verify_note(&second, &keys) else {
            panic!("second checkpoint does not verify")
        };
        assert_eq!(c2.prev, Some(note_hash(&first)));
        assert_eq!((c2.size, c2.root), (2, tree.root()));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let fresh = cps.refresh(1).unwrap();
        assert_eq!(fresh.len(), 1);
        let NoteVerdict::Valid(c3) = verify_note(&fresh[0].1, &keys) else {
            panic!("refreshed checkpoint does not verify")
        };
        assert_eq!((c3.size, c3.prev), (2, c2.prev));
        assert!(c3.time_ms > c2.time_ms);
        // Stored, mirrored, and found again by a new checkpointer (after a restart).
        let log = Checkpointer::log_dir(&crate::layout::checkpoints(dir.path()), "t", 0).unwrap();
        let mirrored = Checkpointer::log_dir(&mirror, "t", 0).unwrap();
        assert_eq!(list_notes(&log).unwrap().len(), 2);
        assert_eq!(
            fs::read(&list_notes(&mirrored).unwrap()[1].1).unwrap(),
            fresh[0].1
        );
        let again = Checkpointer::new(dir.path(), KeyRing::open(dir.path(), None).unwrap(), None);
        assert_eq!(again.checkpoint("t", 0, head, &tree, None).unwrap(), None);
        let mut shorter = Frontier::default();
        shorter.append(&[1; 32]);
        assert!(
            again.checkpoint("t", 0, head, &shorter, None).is_err(),
            "never signs a rollback"
        );
        let mut forked = Frontier::default();
        forked.append(&[1; 32]);
        forked.append(&[3; 32]);
        assert!(
            again.checkpoint("t", 0, head, &forked, None).is_err(),
            "never signs a fork"
        );
    }

    #[test]
    fn processes_starting_on_a_fresh_store_at_once_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| KeyRing::open(dir.path(), None).unwrap().name().to_owned()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(names.windows(2).all(|w| w[0] == w[1]), "{names:?}");
        let ring = KeyRing::open(dir.path(), None).unwrap();
        assert_eq!(ring.registry.keys.len(), 1);
        let keys: Vec<_> = fs::read_dir(crate::layout::keys(dir.path()))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".key"))
            .collect();
        assert_eq!(keys.len(), 1, "the losers' keys are removed");
    }
}
