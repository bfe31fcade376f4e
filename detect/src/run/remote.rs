//! Alert lifecycle changes across instances sharing a bucket: an instance whose detection
//! stands by relays each change it is sent (its API, `vigil alerts` on its directory) to the
//! holder of the detection lease through the bucket, and relays the answer back.
//!
//! ```text
//! detect/commands/<name>.cmd.json       the change, put by the relaying instance
//! detect/commands/<name>.decision.json  "claimed" (by the holder) or "withdrawn" (by the relay)
//! detect/commands/<name>.reply.json     the holder's answer
//! ```
//!
//! The decision object is made create-only: whoever makes it first decides whether the change
//! is applied, so a change withdrawn after a timeout is never applied later, and one claimed is
//! answered. The relay removes the objects once it has the answer (or withdrew).

use std::time::{Duration, Instant};

use vigil_store::Bucket;

use crate::lifecycle::{Command, Refusal, Reply};

const DIR: &str = "detect/commands";
const CMD: &str = ".cmd.json";

fn rel(name: &str, what: &str) -> String {
    format!("{DIR}/{name}{what}")
}

/// Relay `cmd` to the detection holder and wait (up to `timeout` to be claimed, as long again
/// to be answered). Not claimed in time: withdrawn, and refused as running elsewhere.
pub(crate) fn relay(bucket: &Bucket, cmd: &Command, timeout: Duration) -> Reply {
    match try_relay(bucket, cmd, timeout) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "a lifecycle change could not be relayed to the detection holder");
            Reply::Refused {
                refusal: Refusal::Elsewhere,
            }
        }
    }
}

fn try_relay(
    bucket: &Bucket,
    cmd: &Command,
    timeout: Duration,
) -> Result<Reply, vigil_store::StoreError> {
    // Unique enough: the time, this process, a count, and who asks, hashed.
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&vigil_store::clock::now_ns().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &COUNT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    h.update(cmd.by.as_bytes());
    let name = format!("{:020}-{}", cmd.at_ns, &h.finalize().to_hex()[..16]);
    let body =
        serde_json::to_vec(cmd).map_err(|e| vigil_store::StoreError::Invalid(e.to_string()))?;
    bucket.create_object(&rel(&name, CMD), body)?;
    let started = Instant::now();
    let mut claimed = false;
    let reply = loop {
        if let Some(bytes) = bucket.get_object(&rel(&name, ".reply.json"))? {
            break serde_json::from_slice(&bytes).unwrap_or(Reply::Refused {
                refusal: Refusal::Invalid("an unreadable reply from the detection holder".into()),
            });
        }
        if !claimed && started.elapsed() >= timeout {
            // Withdraw, unless the holder claimed it meanwhile (then wait for its answer).
            if bucket.create_object(&rel(&name, ".decision.json"), b"withdrawn".to_vec())? {
                break Reply::Refused {
                    refusal: Refusal::Elsewhere,
                };
            }
            claimed = true;
        }
        if started.elapsed() >= timeout * 2 {
            break Reply::Refused {
                refusal: Refusal::Elsewhere,
            };
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for what in [CMD, ".decision.json", ".reply.json"] {
        bucket.delete_object(&rel(&name, what))?;
    }
    Ok(reply)
}

/// The holder's side: the changes relayed to it, each claimed (create-only decision), oldest
/// first.
pub(crate) fn claim(bucket: &Bucket) -> Result<Vec<(String, Command)>, vigil_store::StoreError> {
    let mut names: Vec<String> = bucket
        .list_objects(DIR)?
        .into_iter()
        .filter_map(|r| {
            r.strip_prefix(&format!("{DIR}/"))
                .and_then(|n| n.strip_suffix(CMD))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        if !bucket.create_object(&rel(&name, ".decision.json"), b"claimed".to_vec())? {
            continue; // withdrawn, or claimed before (and answered, or its holder died)
        }
        let Some(bytes) = bucket.get_object(&rel(&name, CMD))? else {
            continue;
        };
        match serde_json::from_slice::<Command>(&bytes) {
            Ok(cmd) => out.push((name, cmd)),
            Err(e) => answer(
                bucket,
                &name,
                &Reply::Refused {
                    refusal: Refusal::Invalid(e.to_string()),
                },
            )?,
        }
    }
    Ok(out)
}

/// The holder's answer to a claimed change.
pub(crate) fn answer(
    bucket: &Bucket,
    name: &str,
    r: &Reply,
) -> Result<(), vigil_store::StoreError> {
    let body =
        serde_json::to_vec(r).map_err(|e| vigil_store::StoreError::Invalid(e.to_string()))?;
    bucket.create_object(&rel(name, ".reply.json"), body)?;
    Ok(())
}
