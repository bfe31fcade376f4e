//! The store's signing keys: the private key files under `keys/`, and the public registry of
//! every key with its validity range (rotation, retirement).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use signed_note::{Note, Signer, StandardSigner, StandardVerifier};

use crate::clock::now_ms;
use crate::error::StoreError;
use crate::files::{fsync_dir, write_durably};

use crate::layout::REGISTRY_FILE;

use super::{Checkpoint, CheckpointError};

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

    pub(crate) fn valid_at(&self, t_ms: i64) -> bool {
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

/// The private keys of a store and their registry.
pub struct KeyRing {
    pub(super) dir: PathBuf,
    pub registry: Registry,
    pub(super) signers: Vec<(KeyEntry, StandardSigner)>,
}

pub(super) fn key_file_name(id: u32) -> String {
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
    pub(crate) fn retire_expired(&mut self) -> Result<(), StoreError> {
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
