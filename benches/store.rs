//! Chain + write throughput: `cargo bench --bench store`.
//!
//! One partition log's pipeline after Kafka, on one core: each record decoded, hash-chained
//! and added to the Merkle tree (`PartitionBatch::append`), batches sealed every
//! `FILE_RECORDS` (`seal`: the Arrow batch and the file's tree state), and — in
//! `store/decode_chain_write` — written as a durable zstd Parquet file (`Store::write`: temp
//! file, fsync, rename, directory fsync). `store/decode_chain` stops before the write, so the
//! two show what the chain and the Parquet file each cost; the decode bench gives decoding
//! alone. Records: the ~600 B OPA decisions of the other benches.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use vigil_schemas::Decoder;
use vigil_store::{PartitionBatch, RecordRef, Store, WriteOptions};

#[path = "support/opa.rs"]
mod opa;

const RECORDS: usize = 100_000;
const FILE_RECORDS: usize = 50_000;

/// Append every record (sealing a batch every FILE_RECORDS); `write` each sealed batch.
fn pipeline(
    values: &[Vec<u8>],
    decoder: &Decoder,
    mut write: impl FnMut(&vigil_store::SealedBatch),
) {
    let mut batch = PartitionBatch::new("bench", 0, Default::default(), FILE_RECORDS);
    for (i, v) in values.iter().enumerate() {
        let rec = RecordRef {
            topic: "bench",
            partition: 0,
            offset: i as i64,
            timestamp_ms: Some(1_763_800_000_000 + i as i64),
            key: None,
            value: Some(v),
            headers: &[],
        };
        batch.append(&rec, decoder, 0).unwrap();
        if batch.records() as usize == FILE_RECORDS || i + 1 == values.len() {
            let sealed = batch.seal().unwrap().unwrap();
            write(&sealed);
        }
    }
}

fn bench(c: &mut Criterion) {
    let values: Vec<Vec<u8>> = (0..RECORDS)
        .map(|i| opa::opa_event(i).into_bytes())
        .collect();
    let bytes: u64 = values.iter().map(|v| v.len() as u64).sum();
    let decoder = Decoder::default();
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    g.throughput(Throughput::ElementsAndBytes {
        elements: RECORDS as u64,
        bytes,
    });
    g.bench_function("decode_chain", |b| {
        b.iter(|| {
            pipeline(&values, &decoder, |s| {
                black_box(s);
            })
        })
    });
    g.bench_function("decode_chain_write", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
                pipeline(&values, &decoder, |s| {
                    store.write(s).unwrap();
                });
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
