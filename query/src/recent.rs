//! Rows chained but not yet in a durable file, so that SQL sees an event within a second of
//! its arrival rather than when its batch is sealed (up to `store.max_batch_wait_ms` later).
//!
//! The pipeline's pieces (shared Arrow buffers: no copy of the rows) are kept per partition
//! log until a file holds them. A query takes, per log, the last durable offset — the cutoff
//! — once: stored files give the rows at or before it, this buffer the rows after it, so a file
//! written while the query runs counts nothing twice and loses nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use vigil_store::Piece;

/// A partition log: (topic, partition).
pub type Log = vigil_store::LogId;

/// The pieces of each log not yet known durable.
#[derive(Debug, Default)]
pub struct Recent {
    logs: Mutex<HashMap<Log, Vec<Piece>>>,
}

/// The offsets of a batch of the store schema.
fn offsets(b: &RecordBatch) -> Option<&datafusion::arrow::array::PrimitiveArray<Int64Type>> {
    b.column_by_name("kafka_offset")?
        .as_primitive_opt::<Int64Type>()
}

fn last_offset(p: &Piece) -> i64 {
    offsets(&p.batch)
        .and_then(|o| (!o.is_empty()).then(|| o.value(o.len() - 1)))
        .unwrap_or(i64::MIN)
}

impl Recent {
    pub fn push(&self, p: Piece) {
        if let Ok(mut m) = self.logs.lock() {
            m.entry(p.log()).or_default().push(p);
        }
    }

    /// Forget pieces wholly at or before their log's durable offset.
    pub fn trim(&self, durable: &HashMap<Log, i64>) {
        if let Ok(mut m) = self.logs.lock() {
            for (log, pieces) in m.iter_mut() {
                let cut = durable.get(log).copied().unwrap_or(i64::MIN);
                pieces.retain(|p| last_offset(p) > cut);
            }
            m.retain(|_, v| !v.is_empty());
        }
    }

    /// The rows after each log's durable offset, and the cutoff used per log that has any.
    pub fn snapshot(&self, durable: &HashMap<Log, i64>) -> (Vec<RecordBatch>, Vec<(Log, i64)>) {
        self.trim(durable);
        let Ok(m) = self.logs.lock() else {
            return (Vec::new(), Vec::new());
        };
        let (mut rows, mut cutoffs) = (Vec::new(), Vec::new());
        for (log, pieces) in m.iter() {
            let cut = durable.get(log).copied().unwrap_or(i64::MIN);
            for p in pieces {
                let Some(o) = offsets(&p.batch) else { continue };
                let keep: BooleanArray =
                    o.iter().map(|x| Some(x.is_some_and(|x| x > cut))).collect();
                if let Ok(b) = filter_record_batch(&p.batch, &keep)
                    && b.num_rows() > 0
                {
                    rows.push(b);
                }
            }
            cutoffs.push((log.clone(), cut));
        }
        (rows, cutoffs)
    }
}

impl crate::Live {
    /// Feed the buffer from the pipeline: a thread (`vigil-tee`) keeps each piece and hands it
    /// on to `next` (detection), in the order they came, and forgets what became durable about
    /// once a second. Returns the pieces' sender (a queue of `depth` pieces; a full one slows
    /// the pipeline threads, as detection's own does) and the thread, which ends once every
    /// sender is dropped, or `next` is (detection stopped).
    pub fn tee(
        &self,
        depth: usize,
        next: Option<Sender<Piece>>,
    ) -> std::io::Result<(Sender<Piece>, JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::bounded::<Piece>(depth.max(1));
        let live = self.clone();
        let tee = std::thread::Builder::new()
            .name("vigil-tee".into())
            .spawn(move || {
                let mut trimmed = Instant::now();
                for p in rx {
                    live.recent.push(p.clone());
                    if trimmed.elapsed() >= Duration::from_secs(1) {
                        live.recent.trim(&(live.durable)());
                        trimmed = Instant::now();
                    }
                    if let Some(d) = &next
                        && d.send(p).is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok((tx, tee))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schemas::Decoder;
    use vigil_store::{PartitionBatch, RecordRef};

    fn pieces(n: i64, per: i64) -> Vec<Piece> {
        let mut b = PartitionBatch::new("t", 0, Default::default(), 16);
        let mut out = Vec::new();
        for i in 0..n {
            let v = format!(r#"{{"decision_id":"d{i}","result":true,"input":{{}}}}"#);
            let rec = RecordRef {
                topic: "t",
                partition: 0,
                offset: i,
                timestamp_ms: Some(1),
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            };
            b.append(&rec, &Decoder::default(), 0).unwrap();
            if (i + 1) % per == 0 {
                out.push(b.cut().unwrap().unwrap());
            }
        }
        out
    }

    #[test]
    fn the_tee_keeps_every_piece_and_hands_each_on_in_order_then_ends_with_its_senders() {
        let live = crate::Live {
            recent: std::sync::Arc::default(),
            durable: std::sync::Arc::new(HashMap::new),
        };
        let (next_tx, next_rx) = crossbeam_channel::bounded(16);
        let (tx, tee) = live.tee(2, Some(next_tx)).unwrap();
        for p in pieces(12, 3) {
            tx.send(p).unwrap();
        }
        drop(tx);
        tee.join().unwrap();
        let handed: Vec<i64> = next_rx.iter().map(|p| last_offset(&p)).collect();
        assert_eq!(handed, [2, 5, 8, 11]);
        let (rows, _) = live.recent.snapshot(&HashMap::new());
        assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 12);
    }

    #[test]
    fn rows_after_the_cutoff_are_kept_once_and_durable_pieces_dropped() {
        let r = Recent::default();
        for p in pieces(10, 4) {
            r.push(p); // offsets 0-3, 4-7
        }
        let log = vigil_store::LogId::new("t", 0);
        let rows = |d: i64| {
            let (b, cuts) = r.snapshot(&[(log.clone(), d)].into());
            (b.iter().map(RecordBatch::num_rows).sum::<usize>(), cuts)
        };
        assert_eq!(rows(-1), (8, vec![(log.clone(), -1)]));
        // Durable through offset 5: the first piece goes, two rows of the second stay.
        assert_eq!(rows(5), (2, vec![(log.clone(), 5)]));
        assert_eq!(r.logs.lock().unwrap()[&log].len(), 1);
        assert_eq!(rows(7), (0, vec![]));
        assert!(r.logs.lock().unwrap().is_empty());
    }
}
