//! Chain + write throughput: `cargo bench --bench store`.
//!
//! One partition log's pipeline after Kafka, on one core: each record decoded, hash-chained
//! and added to the Merkle tree (`PartitionBatch::append`), batches sealed every
//! `FILE_RECORDS` (`seal`: the Arrow batch and the file's tree state), and — in
//! `store/decode_chain_write` — written as a durable zstd Parquet file (`Store::write`: temp
//! file, fsync, rename, directory fsync). `store/decode_chain` stops before the write, so the
//! two show what the chain and the Parquet file each cost, against `store/decode`: the same
//! records decoded alone, in this process, into Arrow batches of the same size (the reference
//! both are divided by). `store/decode_chain_write_bucket` writes the same files into a store kept in an
//! S3-compatible bucket (each file put, and acknowledged, before its local rename) — moto in
//! server mode on loopback, started by the bench (scripts/install.sh installs it): a Python
//! server holding objects in memory, so the figure says what Vigil's side of a put costs
//! beside a local write, not what a real S3 endpoint would take. `store/bucket_copy` makes a
//! new local copy of that bucket (what a reading command does first: `--store s3://…`).
//! Records: the ~600 B OPA decisions of the other benches.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use vigil_schemas::{Decoder, EventBatchBuilder};
use vigil_store::{PartitionBatch, RecordRef, Store, WriteOptions};

#[path = "support/opa.rs"]
mod opa;

#[path = "../tests/support/mod.rs"]
#[allow(dead_code)] // each bench uses part of the tests' support
mod test_support;

const RECORDS: usize = 100_000;
const FILE_RECORDS: usize = 50_000;
/// Record `i`'s Kafka timestamp is this plus `i`, ms.
const FIRST_TIMESTAMP_MS: i64 = 1_763_800_000_000;

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
            timestamp_ms: Some(FIRST_TIMESTAMP_MS + i as i64),
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

/// Decoding alone, as `pipeline` decodes: every record into an Arrow batch (the stand-in event
/// time its Kafka timestamp), a batch finished every FILE_RECORDS.
fn decode_only(values: &[Vec<u8>], decoder: &Decoder) {
    let mut batch = EventBatchBuilder::with_capacity(FILE_RECORDS);
    for (i, v) in values.iter().enumerate() {
        let time_ns = (FIRST_TIMESTAMP_MS + i as i64) * 1_000_000;
        decoder.decode_into(v, time_ns, &mut batch).unwrap();
        if (i + 1) % FILE_RECORDS == 0 || i + 1 == values.len() {
            black_box(batch.finish().unwrap());
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
    g.bench_function("decode", |b| b.iter(|| decode_only(&values, &decoder)));
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

    let s3 = test_support::S3Server::start();
    s3.create_bucket("vigil-bench", false);
    let prefixes = AtomicUsize::new(0);
    let last = std::sync::Mutex::new(String::new());
    g.bench_function("decode_chain_write_bucket", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                // A new prefix each time: every put creates (as ingest's do).
                let url = format!(
                    "s3://vigil-bench/w{}",
                    prefixes.fetch_add(1, Ordering::Relaxed)
                );
                let bucket = Arc::new(s3.client(&url));
                let store = Store::open(dir.path(), WriteOptions::default())
                    .unwrap()
                    .with_bucket(bucket);
                pipeline(&values, &decoder, |s| {
                    store.write(s).unwrap();
                });
                *last.lock().unwrap() = url;
                dir
            },
            BatchSize::PerIteration,
        )
    });
    let url = last.lock().unwrap().clone();
    let bucket = s3.client(&url);
    g.bench_function("bucket_copy", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let r = bucket.pull_for_reading(dir.path()).unwrap();
                assert_eq!(r.fetched, RECORDS / FILE_RECORDS);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
