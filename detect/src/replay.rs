//! Replaying stored events through an engine, across partition logs in event-time order
//! (catch-up after a restart, rebuilding state, backtests).

use arrow::array::AsArray;
use arrow::datatypes::TimestampNanosecondType;
use vigil_store::read::LogReader;
use vigil_store::{Piece, Store, StoreError};

use crate::engine::Engine;

fn min_time(p: &Piece) -> i64 {
    p.batch
        .column(0)
        .as_primitive_opt::<TimestampNanosecondType>()
        .and_then(arrow::compute::min)
        .unwrap_or(i64::MIN)
}

/// Feed `each` every stored piece the engine has not evaluated, merging the partition logs so
/// that pieces come in order of their earliest event time (each log stays in log order).
pub fn replay<E: From<StoreError>>(
    engine: &mut Engine,
    store: &Store,
    mut each: impl FnMut(&mut Engine, Piece) -> Result<(), E>,
) -> Result<(), E> {
    let mut readers = Vec::new();
    for (topic, partition) in store.partitions()? {
        let log = format!("{topic}/{partition}");
        let from = engine.position(&log).unwrap_or(0);
        readers.push(LogReader::new(store, &topic, partition, from)?);
    }
    let mut heads: Vec<Option<(i64, Piece)>> = Vec::with_capacity(readers.len());
    for r in &mut readers {
        heads.push(r.next().transpose()?.map(|p| (min_time(&p), p)));
    }
    loop {
        let pick = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|(t, _)| (*t, i)))
            .min();
        let Some((_, i)) = pick else {
            return Ok(());
        };
        let next = readers[i].next().transpose()?.map(|p| (min_time(&p), p));
        if let Some((_, piece)) = std::mem::replace(&mut heads[i], next) {
            each(engine, piece)?;
        }
    }
}
