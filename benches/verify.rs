//! Verification and proof throughput: `cargo bench --bench verify`.
//!
//! - `verify/store`: the full `vigil verify` path (every leaf, chain hash and Merkle root
//!   recomputed from the raw bytes, every checkpoint checked) over a store of
//!   `VIGIL_BENCH_VERIFY_RECORDS` (default 400 000) ~600 B OPA records in 4 partition logs,
//!   written by the store's own writer with a checkpoint per file. Target: ≥ 1 000 000
//!   records/s. `verify/store_decoded`: the same with `--decoded` (every record decoded again
//!   and compared with the stored event columns).
//! - `proof/*`: inclusion and consistency proofs generated from a log's leaves and verified.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigil_schemas::Decoder;
use vigil_store::audit::{Trusted, audit};
use vigil_store::checkpoint::{Checkpointer, KeyRing};
use vigil_store::merkle::{
    consistency_proof, inclusion_proof, leaf_node, root_of, verify_consistency, verify_inclusion,
};
use vigil_store::{PartitionBatch, RecordRef, Store, WriteOptions};

#[path = "support/opa.rs"]
mod opa;

const PARTITIONS: i32 = 4;
const FILE_RECORDS: usize = 50_000;

fn build_store(dir: &Path, records: usize) -> KeyRing {
    let store = Store::open(dir, WriteOptions::default()).unwrap();
    let cps = Checkpointer::new(dir, KeyRing::open(dir, None).unwrap(), None);
    let decoder = Decoder::default();
    for p in 0..PARTITIONS {
        let mut batch = PartitionBatch::new("bench", p, Default::default(), FILE_RECORDS);
        let n = records / PARTITIONS as usize;
        for i in 0..n {
            let v = opa::opa_event(i * PARTITIONS as usize + p as usize);
            let rec = RecordRef {
                topic: "bench",
                partition: p,
                offset: i as i64,
                timestamp_ms: Some(1_763_800_000_000 + i as i64),
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            };
            batch.append(&rec, &decoder, 0).unwrap();
            if batch.records() as usize == FILE_RECORDS || i + 1 == n {
                let sealed = batch.seal().unwrap().unwrap();
                store.write(&sealed).unwrap();
                let head = vigil_store::ChainHead {
                    offset: sealed.span.last_offset,
                    hash: sealed.span.last_chain_hash,
                };
                cps.checkpoint("bench", p, head, &sealed.span.tree, None)
                    .unwrap();
            }
        }
    }
    KeyRing::open(dir, None).unwrap()
}

fn bench(c: &mut Criterion) {
    let records: usize = std::env::var("VIGIL_BENCH_VERIFY_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let ring = build_store(dir.path(), records);
    eprintln!(
        "built a store of {records} records in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let trusted = Trusted {
        keys: Some(ring.registry.clone()),
        checkpoints: Vec::new(),
    };
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);
    g.throughput(Throughput::Elements(records as u64));
    g.bench_function("store", |b| {
        b.iter(|| {
            let r = audit(dir.path(), &trusted, None).unwrap();
            assert_eq!(r.records(), records as u64);
            black_box(r)
        })
    });
    let config = vigil_schemas::DecoderConfig::default();
    g.bench_function("store_decoded", |b| {
        b.iter(|| {
            let r = audit(dir.path(), &trusted, Some(&config)).unwrap();
            assert_eq!(r.records(), records as u64);
            black_box(r)
        })
    });
    g.finish();

    // Proofs over one log of 1M leaves.
    let leaves: Vec<[u8; 32]> = (0..1_000_000u64)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();
    let nodes: Vec<[u8; 32]> = leaves.iter().map(leaf_node).collect();
    let root = root_of(&nodes);
    let mut g = c.benchmark_group("proof");
    g.sample_size(10);
    g.bench_function("inclusion_generate_1M", |b| {
        b.iter(|| black_box(inclusion_proof(&nodes, 777_777).unwrap()))
    });
    let p = inclusion_proof(&nodes, 777_777).unwrap();
    g.bench_function("inclusion_verify_1M", |b| {
        b.iter(|| {
            assert!(verify_inclusion(
                777_777,
                1_000_000,
                &leaves[777_777],
                black_box(&p),
                &root
            ))
        })
    });
    let old = root_of(&nodes[..600_000]);
    let cp = consistency_proof(&nodes, 600_000).unwrap();
    g.bench_function("consistency_generate_600k_1M", |b| {
        b.iter(|| black_box(consistency_proof(&nodes, 600_000).unwrap()))
    });
    g.bench_function("consistency_verify_600k_1M", |b| {
        b.iter(|| {
            assert!(verify_consistency(
                600_000,
                1_000_000,
                black_box(&cp),
                &old,
                &root
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
