//! Replaying stored events through an engine, across partition logs in event-time order
//! (catch-up after a restart, rebuilding state, backtests).
//!
//! Pieces are read from each log in log order and merged by their earliest (effective) event
//! time; the engine orders their events one by one: after each piece it evaluates every event
//! earlier than the earliest time any log still has to give (no event to come can precede
//! them), so the merge is per event, not per piece or per file.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{TimestampMillisecondType, TimestampNanosecondType};
use vigil_store::read::LogReader;
use vigil_store::{Piece, Store, StoreError};

use crate::engine::Engine;
use crate::time::{TimeConfig, judge};
use vigil_store::clock::now_ns;

/// The earliest effective event time in a piece (times held against receive time, as the
/// engine holds them).
fn min_time(p: &Piece, now_ns: i64, cfg: &TimeConfig) -> i64 {
    let b = &p.batch;
    let Some(times) = b.column(0).as_primitive_opt::<TimestampNanosecondType>() else {
        return i64::MIN;
    };
    let kafka = b
        .column_by_name("kafka_timestamp")
        .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>());
    (0..b.num_rows())
        .map(|i| {
            let k = kafka.and_then(|c| c.is_valid(i).then(|| c.value(i)));
            judge(times.value(i), k, now_ns, cfg).time_ns
        })
        .min()
        .unwrap_or(i64::MAX)
}

/// Feed `each` every stored piece the engine has not evaluated, merging the partition logs so
/// that pieces come in order of their earliest event time (each log stays in log order), and
/// have the engine evaluate their events in event-time order across logs.
pub fn replay<E: From<StoreError>>(
    engine: &mut Engine,
    store: &Store,
    mut each: impl FnMut(&mut Engine, Piece) -> Result<(), E>,
) -> Result<(), E> {
    let now = now_ns();
    let cfg = *engine.time_config();
    let mut readers = Vec::new();
    for id in store.partitions()? {
        let log = id.to_string();
        let from = engine.position(&log).unwrap_or(0);
        readers.push(LogReader::new(store, &id.topic, id.partition, from)?);
    }
    let mut heads: Vec<Option<(i64, Piece)>> = Vec::with_capacity(readers.len());
    for r in &mut readers {
        heads.push(r.next().transpose()?.map(|p| (min_time(&p, now, &cfg), p)));
    }
    engine.begin_replay();
    let result = (|| loop {
        let pick = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|(t, _)| (*t, i)))
            .min();
        let Some((_, i)) = pick else {
            return Ok(());
        };
        let next = readers[i]
            .next()
            .transpose()?
            .map(|p| (min_time(&p, now, &cfg), p));
        if let Some((_, piece)) = std::mem::replace(&mut heads[i], next) {
            each(engine, piece)?;
        }
        if let Some(bound) = heads.iter().flatten().map(|(t, _)| *t).min() {
            engine.release_until(bound, now_ns());
        }
    })();
    engine.end_replay(now_ns());
    result
}
