//! Logs Vigil writes itself: records it creates (native `vigil.event/v1` JSON: its alerts'
//! revisions, alert lifecycle changes) chained, treed and stored exactly like a Kafka
//! partition's, so `vigil verify`, proofs and SQL cover them like any other log.
//!
//! One writer per log: the caller must hold whatever lock makes it the only one (the detection
//! lock for [`AUDIT_TOPIC`]). The log's topic is reserved: ingest refuses to consume a Kafka
//! topic of the same name.

use vigil_schemas::{Decoder, DecoderConfig, SourceFormat};

use crate::anchor::LogSigner;
use crate::batch::{LogHead, PartitionBatch, Piece};
use crate::chain::RecordRef;
use crate::error::StoreError;
use crate::files::{FileInfo, Store};
use crate::{BatchSpan, ChainHead};

/// The log of what Vigil itself did: alert revisions and lifecycle changes, one partition.
pub const AUDIT_TOPIC: &str = "vigil.audit";
pub const AUDIT_PARTITION: i32 = 0;

/// The log of calls to Vigil's HTTP API: one partition per `serve` process ([`claim`]).
pub const API_TOPIC: &str = "vigil.api";

/// The log of OPA decision-log uploads received over HTTP (`POST /logs`): one partition per
/// `serve` process.
pub const OPA_TOPIC: &str = "vigil.opa";

/// Topic names no Kafka topic may be stored under (Vigil writes these logs itself).
pub fn is_reserved_topic(topic: &str) -> bool {
    topic == AUDIT_TOPIC || topic == API_TOPIC || topic == OPA_TOPIC
}

/// Most partitions of a claimed log (processes writing it at once).
pub(crate) const MAX_CLAIMED_PARTITIONS: i32 = 64;

/// Open the first partition of `topic` no other process writes: a lock file per partition
/// (`DIR/own/<topic>-<partition>.lock`), held while the returned file stays open, and with a
/// bucket the partition's head there ([`Store::claim_log`]: no other instance's).
pub fn claim(store: &Store, topic: &str) -> Result<(OwnLog, std::fs::File), StoreError> {
    let native = Decoder::new(DecoderConfig::default(), Some(SourceFormat::Native));
    claim_with(store, topic, native, true)
}

/// [`claim`] with the log's decoder and strictness (`OwnLog::open_with`).
pub fn claim_with(
    store: &Store,
    topic: &str,
    decoder: Decoder,
    strict: bool,
) -> Result<(OwnLog, std::fs::File), StoreError> {
    let dir = store.data_dir().join("own");
    crate::files::create_dirs_durably(&dir)?;
    for p in 0..MAX_CLAIMED_PARTITIONS {
        let path = dir.join(format!("{topic}-{p}.lock"));
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(&path))?;
        if f.try_lock().is_err() {
            continue;
        }
        // With a bucket, a partition another instance holds (its head names it) is not ours
        // either: each instance's own logs are its own partitions.
        match store.claim_log(topic, p, false) {
            Ok(()) => return Ok((OwnLog::open_with(store, topic, p, decoder, strict)?, f)),
            Err(StoreError::Fenced { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Invalid(format!(
        "{topic}: all {MAX_CLAIMED_PARTITIONS} partitions are held by other processes"
    )))
}

/// An appended run of records: its file, where the log now stands, its rows as a piece, and
/// what became of each record (decoded into so many events, or rejected).
#[derive(Debug)]
pub struct Written {
    pub info: FileInfo,
    pub span: BatchSpan,
    pub piece: Piece,
    pub outcomes: Vec<crate::Appended>,
}

impl Written {
    /// The chain head after the run.
    pub fn chain(&self) -> ChainHead {
        ChainHead {
            offset: self.span.last_offset,
            hash: self.span.last_chain_hash,
        }
    }
}

/// A record's headers: (name, value).
pub type Headers = Vec<(String, Vec<u8>)>;

/// A log this process writes: appends go straight to a durable file each, signed and anchored
/// when the log has a signer ([`OwnLog::signed`]). The one writer of Vigil's own logs.
pub struct OwnLog {
    store: Store,
    topic: String,
    partition: i32,
    head: LogHead,
    decoder: Decoder,
    /// Refuse a record that does not decode (Vigil's own records) rather than store it as a
    /// rejected row (records received from outside).
    strict: bool,
    signer: Option<LogSigner>,
}

impl OwnLog {
    /// Open the log of Vigil's own native records where the store's files leave it.
    pub fn open(store: &Store, topic: &str, partition: i32) -> Result<OwnLog, StoreError> {
        let native = Decoder::new(DecoderConfig::default(), Some(SourceFormat::Native));
        Self::open_with(store, topic, partition, native, true)
    }

    /// Open a log with its decoder; `strict`: refuse records that do not decode.
    pub(crate) fn open_with(
        store: &Store,
        topic: &str,
        partition: i32,
        decoder: Decoder,
        strict: bool,
    ) -> Result<OwnLog, StoreError> {
        let head = store.head(topic, partition)?;
        Ok(OwnLog {
            store: store.clone(),
            topic: topic.to_owned(),
            partition,
            head,
            decoder,
            strict,
            signer: None,
        })
    }

    /// Sign the log after every append from now on (and anchor each note). What the store
    /// already holds is signed now: a crash between a file and its checkpoint left it unsigned.
    pub fn signed(mut self, signer: LogSigner) -> Result<OwnLog, StoreError> {
        signer.sign(&self.log(), self.head.chain, &self.head.tree)?;
        self.signer = Some(signer);
        Ok(self)
    }

    pub fn head(&self) -> &LogHead {
        &self.head
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn log(&self) -> crate::LogId {
        crate::LogId::new(self.topic.clone(), self.partition)
    }

    /// Chain `values` (each one record at the next offset, timestamped `time_ms`), write them
    /// as one durable file, and sign the log (when it has a signer). In a strict log every
    /// value must decode: one that does not is refused before anything is chained; otherwise
    /// it is stored as a rejected row. `Ok(None)` for no values. An error from signing comes
    /// after the file is durable (the log stands after it; the next append signs it).
    pub fn append(
        &mut self,
        values: &[Vec<u8>],
        time_ms: i64,
    ) -> Result<Option<Written>, StoreError> {
        let none: Vec<Headers> = vec![Vec::new(); values.len()];
        self.append_with_headers(values, &none, time_ms)
    }

    /// [`OwnLog::append`] with each record's headers (chained with it, like a Kafka record's):
    /// who a record came from, when the value is someone else's (an OPA upload's uploader).
    pub fn append_with_headers(
        &mut self,
        values: &[Vec<u8>],
        headers: &[Headers],
        time_ms: i64,
    ) -> Result<Option<Written>, StoreError> {
        assert_eq!(values.len(), headers.len(), "one set of headers per value");
        if values.is_empty() {
            return Ok(None);
        }
        for v in values.iter().filter(|_| self.strict) {
            self.decoder.decode_with(v, |_| {}).map_err(|e| {
                StoreError::Invalid(format!(
                    "{}: a record Vigil wrote does not decode: {e}",
                    self.log()
                ))
            })?;
        }
        let mut batch =
            PartitionBatch::new(&self.topic, self.partition, self.head.clone(), values.len());
        let mut outcomes = Vec::with_capacity(values.len());
        for ((offset, v), hs) in (self.head.chain.offset + 1..).zip(values).zip(headers) {
            let hs: Vec<(&str, Option<&[u8]>)> = hs
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
                .collect();
            let rec = RecordRef {
                topic: &self.topic,
                partition: self.partition,
                offset,
                timestamp_ms: Some(time_ms),
                key: None,
                value: Some(v),
                headers: &hs,
            };
            outcomes.push(batch.append(&rec, &self.decoder, time_ms.saturating_mul(1_000_000))?);
        }
        let piece = batch
            .cut()?
            .ok_or(StoreError::Internal("own log: appended rows missing"))?;
        let sealed = batch
            .seal()?
            .ok_or(StoreError::Internal("own log: appended batch missing"))?;
        let info = self.store.write(&sealed)?;
        self.head = LogHead {
            chain: ChainHead {
                offset: sealed.span.last_offset,
                hash: sealed.span.last_chain_hash,
            },
            tree: sealed.span.tree.clone(),
        };
        if let Some(signer) = &self.signer {
            signer.sign(&self.log(), self.head.chain, &self.head.tree)?;
        }
        Ok(Some(Written {
            info,
            span: sealed.span,
            piece,
            outcomes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriteOptions;

    fn event(i: usize) -> Vec<u8> {
        format!(
            r#"{{"schema":"vigil.event/v1","id":"a{i}","time":"2026-11-22T10:00:00Z","kind":"admin_audit","decision":"allow","caller":{{"principal":"local:ana"}},"action":"alert.acknowledge","resource":"alert/x"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn appends_continue_the_chain_across_reopens_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
        let mut log = OwnLog::open(&store, AUDIT_TOPIC, AUDIT_PARTITION).unwrap();
        let w = log.append(&[event(0), event(1)], 1_000).unwrap().unwrap();
        assert_eq!((w.span.first_offset, w.span.last_offset), (0, 1));
        assert_eq!(w.piece.first_leaf_index, 0);
        assert_eq!(w.piece.batch.num_rows(), 2);
        assert!(log.append(&[], 1_000).unwrap().is_none());

        let mut again = OwnLog::open(&store, AUDIT_TOPIC, AUDIT_PARTITION).unwrap();
        assert_eq!(again.head(), log.head());
        let w = again.append(&[event(2)], 2_000).unwrap().unwrap();
        assert_eq!((w.span.first_offset, w.piece.first_leaf_index), (2, 2));
        assert_eq!(w.span.tree.size(), 3);

        let report = crate::check_chain(&store).unwrap();
        assert!(report.ok(), "{:?}", report.problems());
        assert_eq!(report.partitions[0].records, 3);
        assert_eq!(report.partitions[0].topic, AUDIT_TOPIC);
    }

    #[test]
    fn a_signed_log_signs_what_a_crash_left_unsigned_and_every_append() {
        use crate::checkpoint::{Checkpointer, KeyRing, list_notes, parse_note};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
        // Written, then a crash before its checkpoint.
        let mut log = OwnLog::open(&store, AUDIT_TOPIC, AUDIT_PARTITION).unwrap();
        log.append(&[event(0), event(1)], 1_000).unwrap().unwrap();
        let keys = KeyRing::open(dir.path(), None).unwrap();
        let cps = std::sync::Arc::new(Checkpointer::new(dir.path(), keys, None));
        let notes = || {
            let d = Checkpointer::log_dir(
                &crate::layout::checkpoints(dir.path()),
                AUDIT_TOPIC,
                AUDIT_PARTITION,
            )
            .unwrap();
            list_notes(&d)
                .unwrap()
                .iter()
                .map(|(_, p)| parse_note(&std::fs::read(p).unwrap()).unwrap().size)
                .collect::<Vec<_>>()
        };
        assert!(notes().is_empty());
        let mut log = OwnLog::open(&store, AUDIT_TOPIC, AUDIT_PARTITION)
            .unwrap()
            .signed(crate::LogSigner::new(cps, None))
            .unwrap();
        assert_eq!(notes(), [2], "signed at open");
        log.append(&[event(2)], 2_000).unwrap().unwrap();
        assert_eq!(notes(), [2, 3], "signed after the append");
    }

    #[test]
    fn claims_take_the_first_free_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
        let (a, _la) = claim(&store, API_TOPIC).unwrap();
        let (b, lb) = claim(&store, API_TOPIC).unwrap();
        assert_eq!(
            (a.log().to_string(), b.log().to_string()),
            ("vigil.api/0".into(), "vigil.api/1".into())
        );
        drop(lb);
        let (c, _lc) = claim(&store, API_TOPIC).unwrap();
        assert_eq!(c.log(), crate::LogId::new(API_TOPIC, 1));
    }

    #[test]
    fn a_record_that_does_not_decode_is_refused_before_anything_is_chained() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
        let mut log = OwnLog::open(&store, AUDIT_TOPIC, AUDIT_PARTITION).unwrap();
        let err = log
            .append(
                &[event(0), b"{\"schema\":\"vigil.event/v1\"}".to_vec()],
                1_000,
            )
            .unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
        assert_eq!(log.head().tree.size(), 0);
        assert!(
            store
                .list(AUDIT_TOPIC, AUDIT_PARTITION)
                .unwrap()
                .0
                .is_empty()
        );
    }
}
