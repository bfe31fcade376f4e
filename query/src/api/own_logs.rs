//! The two of Vigil's own logs the API writes: every call (`vigil.api`) and OPA uploads
//! (`POST /logs`, `vigil.opa`). Each is claimed once ([`vigil_store::claim`]: one writer per
//! log) and appended by a thread of its own, in batches: one durable, signed, anchored file per
//! batch, then every item of the batch is answered with what became of its record. A call's
//! response waits for that answer, so nothing the API does goes unrecorded.
//!
//! Both queues are bounded ([`AUDIT_QUEUE`], [`UPLOAD_QUEUE`]); a batch holds at most
//! [`MAX_BATCH_ITEMS`] items, and uploads at most `upload_batch_bytes` of what they inflate to.

use std::thread::JoinHandle;

use tokio::sync::mpsc::{Receiver, Sender, channel};
use vigil_store::{API_TOPIC, Appended, LogSigner, OPA_TOPIC, OwnLog, RecordHeaders, Store};

use super::{Audited, Upload, Uploaded, audit_event};

/// Calls waiting to be recorded.
pub(crate) const AUDIT_QUEUE: usize = 1024;
/// Uploads waiting to be stored (each up to `api.max_body_bytes`).
pub(crate) const UPLOAD_QUEUE: usize = 64;
/// Items in one appended batch, at most.
pub(crate) const MAX_BATCH_ITEMS: usize = 256;

/// Why the API's own logs could not be opened or stopped.
#[derive(Debug, thiserror::Error)]
pub enum OwnLogsError {
    #[error(transparent)]
    Store(#[from] vigil_store::StoreError),
    #[error("starting the writer of {log}: {source}")]
    Spawn {
        log: &'static str,
        source: std::io::Error,
    },
    #[error("the writer of {0} panicked")]
    Panicked(&'static str),
}

/// The writers of `vigil.api` and `vigil.opa`, and where to send them what to record.
pub struct OwnLogs {
    /// Where calls go ([`super::AppState::audit`]).
    pub audit: Sender<Audited>,
    /// Where uploads go ([`super::AppState::uploads`]).
    pub uploads: Sender<Upload>,
    writers: Vec<(&'static str, JoinHandle<()>)>,
}

impl OwnLogs {
    /// Claim both logs in `store` (signing what a crash left unsigned) and start their writers.
    /// Uploads are decoded with `opa` (OPA's upload format) as they are stored.
    pub fn start(
        store: &Store,
        signer: &LogSigner,
        opa: vigil_schemas::Decoder,
        upload_batch_bytes: usize,
    ) -> Result<OwnLogs, OwnLogsError> {
        let (log, lock) = vigil_store::claim(store, API_TOPIC)?;
        let log = log.signed(signer.clone())?;
        let (audit, rx) = channel::<Audited>(AUDIT_QUEUE);
        let calls = spawn("vigil-api-audit", API_TOPIC, move || {
            let _lock = lock;
            write_batches(
                log,
                rx,
                |a: &Audited, seq| (audit_event(&a.call, seq), Vec::new()),
                (|_: &Audited| 0, usize::MAX),
                |a, r| {
                    let _ = a.done.send(r.map(|_| ()));
                },
            );
        })?;

        let (log, lock) = vigil_store::claim_with(store, OPA_TOPIC, opa, false)?;
        let log = log.signed(signer.clone())?;
        let (uploads, rx) = channel::<Upload>(UPLOAD_QUEUE);
        let max_bytes = upload_batch_bytes.max(1);
        let stored = spawn("vigil-api-uploads", OPA_TOPIC, move || {
            let _lock = lock;
            write_batches(
                log,
                rx,
                |u: &Upload, _| (u.body.clone(), upload_headers(u)),
                (|u: &Upload| u.inflated_bytes, max_bytes),
                |u, r| {
                    let _ = u.done.send(r.map(uploaded));
                },
            );
        })?;
        Ok(OwnLogs {
            audit,
            uploads,
            writers: vec![(API_TOPIC, calls), (OPA_TOPIC, stored)],
        })
    }

    /// Wait for both writers to record what is queued. They stop once every sender is gone:
    /// drop the API's state (stop the server) first.
    pub fn join(self) -> Result<(), OwnLogsError> {
        let OwnLogs {
            audit,
            uploads,
            writers,
        } = self;
        drop((audit, uploads));
        for (log, w) in writers {
            w.join().map_err(|_| OwnLogsError::Panicked(log))?;
        }
        Ok(())
    }
}

fn spawn(
    thread: &str,
    log: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, OwnLogsError> {
    std::thread::Builder::new()
        .name(thread.to_owned())
        .spawn(f)
        .map_err(|source| OwnLogsError::Spawn { log, source })
}

/// Who uploaded it, and from where, as its record's headers.
fn upload_headers(u: &Upload) -> RecordHeaders {
    let mut headers = vec![(
        "vigil-uploader".to_owned(),
        u.principal.clone().into_bytes(),
    )];
    if let Some(p) = u.peer {
        headers.push(("vigil-peer".to_owned(), p.to_string().into_bytes()));
    }
    headers
}

fn uploaded(o: &Appended) -> Uploaded {
    match o {
        Appended::Decoded(n) => Uploaded {
            events: *n,
            rejected: None,
        },
        Appended::Rejected(e) => Uploaded {
            events: 0,
            rejected: Some(e.to_string()),
        },
    }
}

/// Append what arrives in batches (one durable file per batch, signed and anchored by the
/// log), then answer each item with what became of its record; until every sender is gone.
/// A batch that cannot be written is answered with the error (the API says 503) and the
/// writer carries on: the next batch may succeed (a volume that had filled up, say).
fn write_batches<T>(
    mut log: OwnLog,
    mut rx: Receiver<T>,
    value: impl Fn(&T, u64) -> (Vec<u8>, RecordHeaders),
    batch_bytes: (impl Fn(&T) -> usize, usize),
    answer: impl Fn(T, Result<&Appended, String>),
) {
    let mut seq = 0u64;
    let (weight, max_weight) = batch_bytes;
    // An item that did not fit the last batch starts the next one.
    let mut carried: Option<T> = None;
    while let Some(first) = carried.take().or_else(|| rx.blocking_recv()) {
        let mut total = weight(&first);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_ITEMS {
            let Ok(a) = rx.try_recv() else { break };
            let w = weight(&a);
            if total.saturating_add(w) > max_weight {
                carried = Some(a);
                break;
            }
            total += w;
            batch.push(a);
        }
        let (values, headers): (Vec<Vec<u8>>, Vec<RecordHeaders>) = batch
            .iter()
            .map(|a| {
                seq += 1;
                value(a, seq)
            })
            .unzip();
        let written = log
            .append_with_headers(&values, &headers, vigil_store::clock::now_ns() / 1_000_000)
            .map_err(|e| e.to_string())
            .and_then(|w| {
                w.map(|w| w.outcomes)
                    .ok_or_else(|| "no record written".to_owned())
            });
        match written {
            Ok(outcomes) => {
                debug_assert_eq!(outcomes.len(), batch.len(), "one outcome per record");
                for (item, o) in batch.into_iter().zip(&outcomes) {
                    answer(item, Ok(o));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, log = %log.log(), "writing to Vigil's own log failed: the API answers 503 until it works again");
                for item in batch {
                    answer(item, Err(e.clone()));
                }
            }
        }
    }
}
