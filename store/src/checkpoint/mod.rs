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

//!
//! The note's format and its check are here; the keys and their registry in `keys.rs`; the
//! signer that stores a checkpoint after every file in `signer.rs`.

mod keys;
mod signer;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use signed_note::{Note, StandardVerifier, VerifierList};

use crate::batch::ChainHead;
use crate::chain::{from_hex, to_hex};
use crate::error::StoreError;
use crate::merkle::Hash;

pub use keys::{KeyEntry, KeyRing, Registry};
pub use signer::Checkpointer;

/// Most signatures a checkpoint may carry (signed_note's own cap is 100).
pub(crate) const MAX_SIGNATURES: usize = 8;

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
pub(crate) fn note_hash(note: &[u8]) -> Hash {
    *blake3::hash(note).as_bytes()
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
