//! The store end to end without Kafka: records in, durable files out, the chain checked, and
//! tampering or crash leftovers caught.

use std::fs;

use arrow::array::Array;
use vigil_schemas::Decoder;
use vigil_store::files::read_footer;
use vigil_store::{Appended, PartitionBatch, RecordRef, Store, WriteOptions, check_chain};

const OPA: &str = r#"{"decision_id":"d","result":false,"timestamp":"2026-01-01T10:00:00Z","input":{"method":"GET","path":"/x"}}"#;

fn rec<'a>(
    offset: i64,
    value: Option<&'a [u8]>,
    headers: &'a [(&'a str, Option<&'a [u8]>)],
) -> RecordRef<'a> {
    RecordRef {
        topic: "audit",
        partition: 2,
        offset,
        timestamp_ms: Some(1_767_261_600_000),
        key: Some(b"k"),
        value,
        headers,
    }
}

fn fill(store: &Store, offsets: &[i64]) -> PartitionBatch {
    let head = store.head("audit", 2).unwrap();
    let mut b = PartitionBatch::new("audit", 2, head, 16);
    let d = Decoder::default();
    let hs = [("trace", Some(&b"t1"[..])), ("empty", None)];
    for &o in offsets {
        let out = b.append(&rec(o, Some(OPA.as_bytes()), &hs), &d, 0).unwrap();
        assert_eq!(out, Appended::Decoded(1));
    }
    b
}

#[test]
fn files_chain_across_seals_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
    let mut b = fill(&store, &[0, 1, 2]);
    let f1 = store.write(&b.seal().unwrap().unwrap()).unwrap();
    assert!(
        b.seal().unwrap().is_none(),
        "an empty batch seals to nothing"
    );
    let d = Decoder::default();
    // A gzip upload of two events, a rejected record and a tombstone, after a gap.
    let upload = {
        use std::io::Write;
        let mut gz = flate2_gz();
        gz.write_all(format!("[{OPA},{OPA}]").as_bytes()).unwrap();
        gz.finish().unwrap()
    };
    assert_eq!(
        b.append(&rec(5, Some(&upload), &[]), &d, 0).unwrap(),
        Appended::Decoded(2)
    );
    assert!(matches!(
        b.append(&rec(6, Some(b"not json"), &[]), &d, 0).unwrap(),
        Appended::Rejected(_)
    ));
    assert!(matches!(
        b.append(&rec(7, None, &[]), &d, 0).unwrap(),
        Appended::Rejected(_)
    ));
    let f2 = store.write(&b.seal().unwrap().unwrap()).unwrap();
    assert_eq!(
        (
            f1.first_offset,
            f1.last_offset,
            f2.first_offset,
            f2.last_offset
        ),
        (0, 2, 5, 7)
    );
    assert!(
        f1.path
            .to_string_lossy()
            .contains("topic=audit/partition=2/date=2026-01-01/hour=10/")
    );

    // A restart finds the head in the store itself.
    let reopened = Store::open(dir.path(), WriteOptions::default()).unwrap();
    let head = reopened.head("audit", 2).unwrap();
    assert_eq!(head.chain.offset, 7);
    assert_eq!(
        head.chain.hash,
        read_footer(&f2.path).unwrap().last_chain_hash
    );
    // The Merkle tree resumes too: six records so far, the root in the last footer.
    assert_eq!(head.tree.size(), 6);
    assert_eq!(head.tree.root(), read_footer(&f2.path).unwrap().merkle_root);

    let report = check_chain(&reopened).unwrap();
    assert!(report.ok(), "{:?}", report.problems());
    let p = &report.partitions[0];
    assert_eq!((p.files, p.records, p.rows), (2, 6, 7));
    assert_eq!((p.tree_size, p.merkle_root), (6, head.tree.root()));
    assert_eq!(p.gaps, vec![(2, 5)], "the gap is recorded, not hidden");

    // Records at or before the head are refused.
    let mut again = PartitionBatch::new("audit", 2, head, 4);
    assert!(
        again
            .append(&rec(7, Some(OPA.as_bytes()), &[]), &d, 0)
            .is_err()
    );
}

fn flate2_gz() -> flate2::write::GzEncoder<Vec<u8>> {
    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default())
}

#[test]
fn rewritten_bytes_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
    let mut b = fill(&store, &[0, 1, 2, 3]);
    let sealed = b.seal().unwrap().unwrap();
    assert_eq!(sealed.batches.len(), 1, "never cut: one piece");
    let batch = &sealed.batches[0];
    // Tamper: flip the decision in one row's raw bytes, keep everything else.
    let mut cols = batch.columns().to_vec();
    let raw_idx = batch.schema().index_of("raw").unwrap();
    let raw = arrow::array::AsArray::as_binary::<i32>(cols[raw_idx].as_ref()).clone();
    let tampered: arrow::array::BinaryArray = (0..raw.len())
        .map(|i| {
            let v = raw.value(i).to_vec();
            Some(if i == 2 {
                String::from_utf8(v)
                    .unwrap()
                    .replace("false", "true ")
                    .into_bytes()
            } else {
                v
            })
        })
        .collect();
    cols[raw_idx] = std::sync::Arc::new(tampered);
    let forged = vigil_store::SealedBatch {
        batches: vec![arrow::record_batch::RecordBatch::try_new(batch.schema(), cols).unwrap()],
        span: sealed.span.clone(),
    };
    store.write(&forged).unwrap();
    let report = check_chain(&store).unwrap();
    assert_eq!(report.problems().len(), 1);
    assert!(
        report.problems()[0].contains("offset 2: leaf hash does not match"),
        "{:?}",
        report.problems()
    );
}

#[test]
fn a_missing_file_breaks_the_chain_and_temp_leftovers_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
    let mut b = fill(&store, &[0, 1]);
    let f1 = store.write(&b.seal().unwrap().unwrap()).unwrap();
    let d = Decoder::default();
    b.append(&rec(2, Some(OPA.as_bytes()), &[]), &d, 0).unwrap();
    store.write(&b.seal().unwrap().unwrap()).unwrap();
    // A crash mid-write leaves a temp file: not part of the store, removed on open.
    let leftover = f1.path.parent().unwrap().join(".tmp-999-x.parquet");
    fs::write(&leftover, b"partial").unwrap();
    assert_eq!(store.head("audit", 2).unwrap().chain.offset, 2);
    assert!(!leftover.exists());
    assert!(check_chain(&store).unwrap().ok());

    fs::remove_file(&f1.path).unwrap();
    let report = check_chain(&store).unwrap();
    assert!(
        report.problems()[0].contains("does not continue the chain"),
        "{:?}",
        report.problems()
    );
}

#[test]
fn pieces_cut_before_sealing_make_one_file_and_say_where_they_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
    let mut b = fill(&store, &[0, 1, 2]);
    let p1 = b.cut().unwrap().unwrap();
    assert!(b.cut().unwrap().is_none(), "nothing new to cut");
    let hs = [];
    let d = Decoder::default();
    // An OPA upload array: one record, two events (rows), one leaf.
    let arr = format!("[{OPA},{OPA}]");
    b.append(&rec(5, Some(arr.as_bytes()), &hs), &d, 0).unwrap();
    b.append(&rec(6, Some(OPA.as_bytes()), &hs), &d, 0).unwrap();
    let p2 = b.cut().unwrap().unwrap();
    assert_eq!((p1.first_leaf_index, p1.batch.num_rows()), (0, 3));
    assert_eq!((p2.first_leaf_index, p2.batch.num_rows()), (3, 3));
    let (idx, next) = vigil_store::leaf_indexes(&p2.batch, p2.first_leaf_index).unwrap();
    assert_eq!((idx, next), (vec![3, 3, 4], 5));
    assert_eq!(b.rows(), 6);
    let sealed = b.seal().unwrap().unwrap();
    assert_eq!(sealed.batches.len(), 2);
    assert_eq!(sealed.rows(), 6);
    store.write(&sealed).unwrap();
    assert!(check_chain(&store).unwrap().ok());
    // Read back as pieces: the same rows, the same leaf indexes.
    let pieces: Vec<_> = vigil_store::read::LogReader::new(&store, "audit", 2, 0)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(pieces.iter().map(|p| p.batch.num_rows()).sum::<usize>(), 6);
    assert_eq!(pieces[0].first_leaf_index, 0);
    // From leaf 5 on there is nothing: the file ends at 5.
    assert_eq!(
        vigil_store::read::LogReader::new(&store, "audit", 2, 5)
            .unwrap()
            .count(),
        0
    );
}

/// One record of 3 000 events (an OPA upload) between two single-event ones: read back as
/// pieces, its rows span reader batches and are still one leaf.
#[test]
fn a_record_whose_rows_span_reader_batches_reads_back_as_one_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
    let head = store.head("audit", 2).unwrap();
    let mut b = PartitionBatch::new("audit", 2, head, 16);
    let d = Decoder::default();
    let upload = format!("[{}]", vec![OPA; 3000].join(","));
    b.append(&rec(0, Some(OPA.as_bytes()), &[]), &d, 0).unwrap();
    assert_eq!(
        b.append(&rec(1, Some(upload.as_bytes()), &[]), &d, 0)
            .unwrap(),
        Appended::Decoded(3000)
    );
    b.append(&rec(2, Some(OPA.as_bytes()), &[]), &d, 0).unwrap();
    store.write(&b.seal().unwrap().unwrap()).unwrap();
    let pieces: Vec<_> = vigil_store::read::LogReader::new(&store, "audit", 2, 0)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(pieces.len() > 1, "the reader's batches split the upload");
    let mut leaves = Vec::new();
    for p in &pieces {
        let (idx, _) = vigil_store::leaf_indexes(&p.batch, p.first_leaf_index).unwrap();
        leaves.extend(idx);
    }
    assert_eq!(leaves.len(), 3002);
    assert_eq!(
        (leaves[0], leaves[1], leaves[3000], leaves[3001]),
        (0, 1, 1, 2)
    );
}
