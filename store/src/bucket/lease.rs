//! A lease in the bucket: one instance at a time does a job (detection), and another takes it
//! over when the holder stops renewing. Every change is a conditional put, as a log's head.
//!
//! ```text
//! leases/<name>.json   {"owner", "seq", "ttl_ms"}   owner "" = released
//! ```
//!
//! The holder renews every third of `ttl_ms`. Another instance takes the lease only when it
//! has seen the same version of the object (the same ETag) for the holder's whole `ttl_ms`
//! on its own monotonic clock — no two machines' clocks are compared. A holder that has not
//! renewed within half its `ttl_ms` (it was paused, or cut off) renews before doing anything
//! the lease guards ([`Lease::ensure`]), and learns then that it lost the lease.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Bucket;
use crate::error::StoreError;

/// The lease object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseObject {
    owner: String,
    seq: u64,
    ttl_ms: u64,
}

/// Where this instance stands with one lease.
#[derive(Debug)]
enum Standing {
    /// Held: the version last put, and when.
    Held { etag: String, renewed: Instant },
    /// Another's (or nobody's yet): the version seen, and since when it has not changed.
    Waiting { seen: Option<(String, Instant)> },
}

/// One lease, as this instance holds it or waits for it.
#[derive(Debug)]
pub struct Lease {
    bucket: std::sync::Arc<Bucket>,
    rel: String,
    me: String,
    ttl: Duration,
    standing: Standing,
    seq: u64,
}

impl Lease {
    /// The lease `name` for this instance (`me`), held for `ttl_ms` per renewal.
    pub fn new(
        bucket: std::sync::Arc<Bucket>,
        name: &str,
        me: &str,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(StoreError::Invalid(format!("lease name {name:?}")));
        }
        Ok(Lease {
            bucket,
            rel: format!("leases/{name}.json"),
            me: me.to_owned(),
            ttl: Duration::from_millis(ttl_ms.max(1000)),
            standing: Standing::Waiting { seen: None },
            seq: 0,
        })
    }

    /// Whether this instance holds the lease (as of its last renewal).
    pub fn held(&self) -> bool {
        matches!(self.standing, Standing::Held { .. })
    }

    /// How often [`Lease::tick`] should run: a third of the lease's time.
    pub fn tick_every(&self) -> Duration {
        self.ttl / 3
    }

    fn read(&self) -> Result<Option<(LeaseObject, String)>, StoreError> {
        let Some((bytes, etag)) = self.bucket.get_with_etag(&self.rel)? else {
            return Ok(None);
        };
        let obj: LeaseObject = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Invalid(format!(
                "{}/{}: not a lease: {e}",
                self.bucket.url(),
                self.rel
            ))
        })?;
        Ok(Some((obj, etag)))
    }

    fn put(&mut self, owner: &str, expected: Option<&str>) -> Result<Option<String>, StoreError> {
        let obj = LeaseObject {
            owner: owner.to_owned(),
            seq: self.seq + 1,
            ttl_ms: self.ttl.as_millis() as u64,
        };
        let body = serde_json::to_vec(&obj).map_err(|e| StoreError::Invalid(e.to_string()))?;
        match self.bucket.put_rel_versioned(&self.rel, body, expected) {
            Ok(etag) => {
                self.seq = obj.seq;
                Ok(Some(etag))
            }
            Err(StoreError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Renew the lease if held, or take it if it is free, released, this instance's own
    /// (a restart), or its holder has not renewed it for its whole time. Returns whether it
    /// is held now. Run every [`Lease::tick_every`].
    pub fn tick(&mut self) -> Result<bool, StoreError> {
        if let Standing::Held { etag, .. } = &self.standing {
            let etag = etag.clone();
            return match self.put(&self.me.clone(), Some(&etag))? {
                Some(etag) => {
                    self.standing = Standing::Held {
                        etag,
                        renewed: Instant::now(),
                    };
                    Ok(true)
                }
                None => {
                    tracing::warn!(lease = %self.rel, "lease lost: another instance took it");
                    self.standing = Standing::Waiting { seen: None };
                    Ok(false)
                }
            };
        }
        let now = Instant::now();
        let current = self.read()?;
        let take = match &current {
            None => true,
            Some((obj, etag)) => {
                self.seq = obj.seq;
                let expired = match &self.standing {
                    Standing::Waiting {
                        seen: Some((seen, since)),
                    } if seen == etag => {
                        since.elapsed() >= Duration::from_millis(obj.ttl_ms.max(1000))
                    }
                    _ => {
                        self.standing = Standing::Waiting {
                            seen: Some((etag.clone(), now)),
                        };
                        false
                    }
                };
                obj.owner.is_empty() || obj.owner == self.me || expired
            }
        };
        if !take {
            return Ok(false);
        }
        let expected = current.as_ref().map(|(_, e)| e.clone());
        match self.put(&self.me.clone(), expected.as_deref())? {
            Some(etag) => {
                tracing::info!(lease = %self.rel, owner = %self.me,
                    from = current.as_ref().map_or("", |(o, _)| o.owner.as_str()), "lease taken");
                self.standing = Standing::Held {
                    etag,
                    renewed: Instant::now(),
                };
                Ok(true)
            }
            None => {
                self.standing = Standing::Waiting { seen: None };
                Ok(false)
            }
        }
    }

    /// Before doing what the lease guards: still held? Renewed first if the last renewal is
    /// older than half the lease's time (this process may have been paused past it).
    pub fn ensure(&mut self) -> Result<bool, StoreError> {
        match &self.standing {
            Standing::Held { renewed, .. } if renewed.elapsed() < self.ttl / 2 => Ok(true),
            Standing::Held { .. } => self.tick(),
            Standing::Waiting { .. } => Ok(false),
        }
    }

    /// Give the lease up (a clean stop), so that another instance takes it at once.
    pub fn release(&mut self) -> Result<(), StoreError> {
        if let Standing::Held { etag, .. } = &self.standing {
            let etag = etag.clone();
            self.put("", Some(&etag))?;
            self.standing = Standing::Waiting { seen: None };
        }
        Ok(())
    }
}
