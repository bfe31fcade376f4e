//! The tamper suite: each test takes a real store written by the pipeline (`vigil serve`
//! against the Tansu broker, several files per partition, a key rotation between two runs,
//! checkpoints mirrored to an anchor directory), tampers with a copy of it, runs the real
//! `vigil verify --json`, and asserts the verdict (exit code) and a finding that names the
//! place.
//!
//! The fixture is built once per `vigil` binary and cached under the target directory; every
//! test works on its own copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, FixedSizeBinaryArray, Int64Array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use vigil_store::checkpoint::{Checkpoint, Checkpointer, KeyRing, Registry, list_notes};

const TOPIC: &str = "audit";
const FIRST_RUN: usize = 240;
const SECOND_RUN: usize = 120;

fn opa_line() -> String {
    data_text("opa/opa_decision_logs.jsonl")
        .lines()
        .nth(1)
        .unwrap()
        .to_owned()
}

fn records(from: usize, n: usize) -> Vec<Rec> {
    let line = opa_line();
    (from..from + n)
        .map(|i| Rec {
            partition: (i % 3) as i32,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(
                line.replace(
                    "1df154b5-658a-47bf-ac18-be52998605da",
                    &format!("id-{i:06}"),
                )
                .into_bytes(),
            ),
            headers: vec![("seq".into(), i.to_string().into_bytes())],
        })
        .collect()
}

/// The fixture: `store/` (the live store), `snapshot/` (a copy taken after the first run),
/// `mirror/` (anchored checkpoints), `keys` (the public key registry, pinned after the
/// rotation).
fn fixture() -> PathBuf {
    let bin = std::fs::metadata(env!("CARGO_BIN_EXE_vigil")).unwrap();
    let stamp = format!(
        "{}-{}",
        bin.len(),
        bin.modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tamper-fixture-{stamp}"));
    if root.join("ready").exists() {
        return root;
    }
    let building = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let b = building.path();
    let (store, mirror) = (b.join("store"), b.join("mirror"));
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    broker.create_topic("vigil.checkpoints", 1);
    let env = [
        ("VIGIL_STORE__MAX_BATCH_EVENTS", "25"),
        ("VIGIL_CHECKPOINT__MIRROR_DIR", mirror.to_str().unwrap()),
    ];
    produce(&broker.producer(), TOPIC, &records(0, FIRST_RUN));
    let s = serve(&broker, TOPIC, &store, "tamper", &env, None);
    wait_stored(&[&s], &store, FIRST_RUN as u64, Duration::from_secs(60));
    assert!(s.terminate());
    copy_dir(&store, &b.join("snapshot"));
    // The first key as someone who copied the data directory before the rotation holds it.
    let first_key = KeyRing::open(&store, None).unwrap().registry.keys[0].id();
    std::fs::copy(
        vigil_store::layout::keys(&store).join(format!("{first_key:08x}.key")),
        b.join("stolen-old.key"),
    )
    .unwrap();
    // Rotate the signing key with no overlap: the second run signs with the new key only.
    KeyRing::open(&store, None).unwrap().rotate(0).unwrap();
    produce(&broker.producer(), TOPIC, &records(FIRST_RUN, SECOND_RUN));
    let s = serve(&broker, TOPIC, &store, "tamper", &env, None);
    wait_stored(
        &[&s],
        &store,
        (FIRST_RUN + SECOND_RUN) as u64,
        Duration::from_secs(60),
    );
    assert!(s.terminate());
    std::fs::copy(vigil_store::layout::registry(&store), b.join("keys")).unwrap();
    std::fs::write(b.join("ready"), "").unwrap();
    let built = building.keep();
    // Another test process may have won the race; either copy is a valid fixture.
    if std::fs::rename(&built, &root).is_err() {
        let _ = std::fs::remove_dir_all(&built);
    }
    root
}

/// A private copy of the fixture.
struct Case {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("case");
        copy_dir(&fixture(), &root);
        Case { _dir: dir, root }
    }

    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// `vigil verify --json` with the pinned keys and the anchor directory, plus `extra`.
    fn verify(&self, extra: &[&str]) -> (i32, Value) {
        let keys = self.root.join("keys");
        let mirror = self.root.join("mirror");
        let mut args: Vec<&str> = vec![
            "--keys",
            keys.to_str().unwrap(),
            "--anchor-dir",
            mirror.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        verify_raw(&self.store(), &args)
    }

    /// Partition `p`'s data files, in offset order.
    /// `vigil verify --json` with the pinned keys, making (or updating) the trusted state
    /// `trusted`.
    fn trust(&self, trusted: &Path) -> (i32, Value) {
        let keys = self.root.join("keys");
        verify_raw(
            &self.store(),
            &[
                "--keys",
                keys.to_str().unwrap(),
                "--trusted",
                trusted.to_str().unwrap(),
                "--update-trusted",
            ],
        )
    }

    fn files(&self, p: i32) -> Vec<PathBuf> {
        let store = vigil_store::Store::open_existing(self.store()).unwrap();
        store
            .list(TOPIC, p)
            .unwrap()
            .0
            .into_iter()
            .map(|f| f.path)
            .collect()
    }

    fn notes(&self, p: i32) -> Vec<PathBuf> {
        let dir = Checkpointer::log_dir(&vigil_store::layout::checkpoints(&self.store()), TOPIC, p)
            .unwrap();
        list_notes(&dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }
}

fn verify_raw(data_dir: &Path, args: &[&str]) -> (i32, Value) {
    let ran = run(vigil_command()
        .args(["verify", "--json", "--data-dir"])
        .arg(data_dir)
        .args(args));
    let report: Value = serde_json::from_slice(&ran.stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}); stderr: {}", ran.stderr));
    (ran.code, report)
}

/// Assert a verdict and a finding whose place contains `place` and text contains `what`.
#[track_caller]
fn assert_finding(got: &(i32, Value), code: i32, verdict: &str, place: &str, what: &str) {
    let (exit, report) = got;
    let findings = report["findings"].as_array().unwrap();
    let found = findings.iter().any(|f| {
        f["verdict"] == verdict
            && f["place"].as_str().unwrap().contains(place)
            && f["what"].as_str().unwrap().contains(what)
    });
    assert!(
        *exit == code && found,
        "expected exit {code} and a {verdict} finding at {place:?} saying {what:?}; got exit {exit}: {}",
        serde_json::to_string_pretty(report).unwrap()
    );
}

#[track_caller]
fn assert_tampered(got: &(i32, Value), place: &str, what: &str) {
    assert_finding(got, 1, "tampered", place, what);
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Read a data file whole, with its footer metadata.
fn read_file(path: &Path) -> (RecordBatch, Vec<KeyValue>) {
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let kv = b
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let schema = b.schema().clone();
    let batches: Vec<RecordBatch> = b.build().unwrap().map(|b| b.unwrap()).collect();
    (concat_batches(&schema, &batches).unwrap(), kv)
}

fn write_file(path: &Path, batch: &RecordBatch, kv: Vec<KeyValue>) {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
        .set_key_value_metadata(Some(kv))
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// Rewrite a data file's rows (same footer metadata).
fn edit_rows(path: &Path, f: impl FnOnce(RecordBatch) -> RecordBatch) {
    let (batch, kv) = read_file(path);
    write_file(path, &f(batch), kv);
}

/// Rewrite one footer value.
fn edit_footer(path: &Path, key: &str, value: String) {
    let (batch, mut kv) = read_file(path);
    let e = kv.iter_mut().find(|e| e.key == key).unwrap();
    e.value = Some(value);
    write_file(path, &batch, kv);
}

fn replace_column(b: &RecordBatch, name: &str, col: ArrayRef) -> RecordBatch {
    let i = b.schema().index_of(name).unwrap();
    let mut cols = b.columns().to_vec();
    cols[i] = col;
    RecordBatch::try_new(b.schema(), cols).unwrap()
}

fn rows(b: &RecordBatch, idx: &[u64]) -> RecordBatch {
    let idx = arrow::array::UInt64Array::from(idx.to_vec());
    let cols = b
        .columns()
        .iter()
        .map(|c| take(c, &idx, None).unwrap())
        .collect();
    RecordBatch::try_new(b.schema(), cols).unwrap()
}

fn flip_binary(b: &RecordBatch, col: &str, row: usize) -> RecordBatch {
    let a: &BinaryArray = b.column_by_name(col).unwrap().as_binary::<i32>();
    let mut vals: Vec<Option<Vec<u8>>> = (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i).to_vec()))
        .collect();
    let v = vals[row].as_mut().unwrap();
    let mid = v.len() / 2;
    v[mid] ^= 0x01;
    let arr = BinaryArray::from_iter(vals.iter().map(|v| v.as_deref()));
    replace_column(b, col, Arc::new(arr))
}

fn flip_hash(b: &RecordBatch, col: &str, row: usize) -> RecordBatch {
    let a: &FixedSizeBinaryArray = b.column_by_name(col).unwrap().as_fixed_size_binary();
    let mut vals: Vec<Vec<u8>> = (0..a.len()).map(|i| a.value(i).to_vec()).collect();
    vals[row][0] ^= 0x80;
    let arr = FixedSizeBinaryArray::try_from_iter(vals.into_iter()).unwrap();
    replace_column(b, col, Arc::new(arr))
}

/// Records of the Kafka topic's logs in a verify report (Vigil's own log left out).
fn kafka_records(r: &Value) -> u64 {
    r["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["topic"] == TOPIC)
        .map(|l| l["records"].as_u64().unwrap())
        .sum()
}

fn row_count(b: &RecordBatch) -> u64 {
    b.num_rows() as u64
}

// ---------------------------------------------------------------------------------------
// Baselines

#[test]
fn an_untouched_store_verifies_with_pinned_keys_and_anchors_after_a_key_rotation() {
    let c = Case::new();
    let (exit, r) = c.verify(&[]);
    assert_eq!(exit, 0, "{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r["verdict"], "valid");
    // Every record from Kafka; Vigil's own log (the alerts its traffic raised) verifies too.
    assert_eq!(kafka_records(&r), (FIRST_RUN + SECOND_RUN) as u64);
    let logs = r["logs"].as_array().unwrap();
    assert!(
        logs.iter()
            .all(|l| l["topic"] == TOPIC || l["topic"] == "vigil.audit")
    );
    // The rotation happened: both keys are in the registry, with the first one closed.
    let keys = Registry::parse(&std::fs::read_to_string(c.root.join("keys")).unwrap()).unwrap();
    assert_eq!(keys.keys.len(), 2);
    assert!(keys.keys[0].valid_until_ms.is_some());
}

#[test]
fn without_pinned_keys_or_anchors_the_verdict_is_incomplete_never_valid() {
    let c = Case::new();
    let got = verify_raw(&c.store(), &[]);
    assert_finding(&got, 2, "incomplete", "keys", "not pinned");
    assert_finding(&got, 2, "incomplete", "audit/0", "unanchored");
}

#[test]
fn a_trusted_state_is_created_on_first_use_and_then_pins_keys_and_checkpoints() {
    let c = Case::new();
    let trusted = c.root.join("trusted.json");
    let t = trusted.to_str().unwrap();
    let first = c.trust(&trusted);
    assert_finding(&first, 2, "incomplete", "audit/1", "unanchored");
    let (exit, r) = verify_raw(&c.store(), &["--trusted", t]);
    assert_eq!(exit, 0, "{}", serde_json::to_string_pretty(&r).unwrap());
}

// ---------------------------------------------------------------------------------------
// Records and files

#[test]
fn t01_one_bit_of_one_records_raw_bytes_flipped() {
    let c = Case::new();
    let f = &c.files(0)[1];
    edit_rows(f, |b| flip_binary(&b, "raw", 3));
    assert_tampered(&c.verify(&[]), &name(f), "leaf hash does not match");
}

#[test]
fn t02_a_stored_leaf_or_chain_hash_flipped() {
    let c = Case::new();
    let f = &c.files(1)[0];
    edit_rows(f, |b| flip_hash(&b, "leaf_hash", 5));
    assert_tampered(&c.verify(&[]), &name(f), "leaf hash does not match");
    let c = Case::new();
    let f = &c.files(1)[0];
    edit_rows(f, |b| flip_hash(&b, "chain_hash", 5));
    assert_tampered(&c.verify(&[]), &name(f), "chain hash does not match");
}

#[test]
fn t03_a_parquet_page_corrupted() {
    let c = Case::new();
    let f = &c.files(2)[1];
    // Corrupt the middle of the `raw` column chunk (its compressed pages).
    let meta = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
        .unwrap()
        .metadata()
        .clone();
    let rg = meta.row_group(0);
    let chunk = (0..rg.num_columns())
        .map(|i| rg.column(i))
        .find(|c| c.column_path().string() == "raw")
        .unwrap();
    let (start, len) = chunk.byte_range();
    let mut bytes = std::fs::read(f).unwrap();
    let mid = (start + len / 2) as usize;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(f, bytes).unwrap();
    assert_tampered(&c.verify(&[]), &name(f), "");
}

#[test]
fn t04_a_row_deleted_with_and_without_renumbering() {
    let c = Case::new();
    let f = &c.files(0)[1];
    edit_rows(f, |b| {
        let keep: Vec<u64> = (0..row_count(&b)).filter(|&i| i != 4).collect();
        rows(&b, &keep)
    });
    assert_tampered(&c.verify(&[]), &name(f), "unlinked");

    // Renumbered: later offsets shifted down to hide the hole; the leaves commit to them.
    let c = Case::new();
    let f = &c.files(0)[1];
    edit_rows(f, |b| {
        let keep: Vec<u64> = (0..row_count(&b)).filter(|&i| i != 4).collect();
        let b = rows(&b, &keep);
        let o = b
            .column_by_name("kafka_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        let shifted: Int64Array = (0..o.len())
            .map(|i| if i >= 4 { o.value(i) - 3 } else { o.value(i) })
            .collect();
        replace_column(&b, "kafka_offset", Arc::new(shifted))
    });
    assert_tampered(&c.verify(&[]), &name(f), "");
}

#[test]
fn t05_a_forged_row_inserted() {
    let c = Case::new();
    let f = &c.files(1)[1];
    edit_rows(f, |b| {
        let n = row_count(&b);
        let mut idx: Vec<u64> = (0..n).collect();
        idx.insert(3, 2);
        flip_binary(&rows(&b, &idx), "raw", 3)
    });
    assert_tampered(&c.verify(&[]), &name(f), "offset");
}

#[test]
fn t06_two_rows_swapped() {
    let c = Case::new();
    let f = &c.files(2)[0];
    edit_rows(f, |b| {
        let mut idx: Vec<u64> = (0..row_count(&b)).collect();
        idx.swap(6, 7);
        rows(&b, &idx)
    });
    assert_tampered(&c.verify(&[]), &name(f), "out of order or unlinked");
}

#[test]
fn t07_two_files_swapped_or_a_footers_range_edited() {
    let c = Case::new();
    let files = c.files(0);
    let (a, b) = (&files[1], &files[2]);
    let tmp = a.with_extension("swap");
    std::fs::rename(a, &tmp).unwrap();
    std::fs::rename(b, a).unwrap();
    std::fs::rename(&tmp, b).unwrap();
    assert_tampered(&c.verify(&[]), &name(a), "");

    let c = Case::new();
    let f = &c.files(0)[1];
    let (_, kv) = read_file(f);
    let last: i64 = kv
        .iter()
        .find(|e| e.key == "vigil.last_offset")
        .and_then(|e| e.value.as_ref())
        .unwrap()
        .parse()
        .unwrap();
    edit_footer(f, "vigil.last_offset", (last + 1).to_string());
    assert_tampered(&c.verify(&[]), &name(f), "footer says offset");
}

#[test]
fn t08_a_middle_file_deleted() {
    let c = Case::new();
    let files = c.files(1);
    std::fs::remove_file(&files[1]).unwrap();
    assert_tampered(
        &c.verify(&[]),
        &name(&files[2]),
        "does not continue the chain",
    );
}

#[test]
fn t19_a_duplicated_kafka_offset() {
    let c = Case::new();
    let f = &c.files(0)[0];
    edit_rows(f, |b| {
        let mut idx: Vec<u64> = (0..row_count(&b)).collect();
        idx.insert(8, 7);
        rows(&b, &idx)
    });
    assert_tampered(&c.verify(&[]), &name(f), "out of order or unlinked");
}

#[test]
fn t20_a_file_copied_into_another_partitions_place() {
    let c = Case::new();
    let (p0, p1) = (c.files(0), c.files(1));
    std::fs::copy(&p1[0], &p0[0]).unwrap();
    assert_tampered(&c.verify(&[]), &name(&p0[0]), "names another partition");
}

// ---------------------------------------------------------------------------------------
// Rebuilt logs, deleted tails, rollbacks, forks

/// Rewrite partition 0 as someone without the key would: one record's value changed, every
/// leaf, chain hash, tree and footer recomputed consistently.
fn rebuild_partition_0(c: &Case) {
    let store = c.store();
    let (mut recs, mut heads) = (Vec::new(), Vec::new());
    for f in c.files(0) {
        let (b, _) = read_file(&f);
        heads.push(b.num_rows());
        recs.push(b);
        std::fs::remove_file(&f).unwrap();
    }
    let all = concat_batches(&recs[0].schema(), &recs).unwrap();
    let all = flip_binary(&all, "raw", 10);
    let s = vigil_store::Store::open(&store, Default::default()).unwrap();
    let mut batch = vigil_store::PartitionBatch::new(TOPIC, 0, Default::default(), 64);
    let decoder = vigil_schemas::Decoder::default();
    let offs = all
        .column_by_name("kafka_offset")
        .unwrap()
        .as_primitive::<Int64Type>();
    let ts = all
        .column_by_name("kafka_timestamp")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    let keys = all.column_by_name("kafka_key").unwrap().as_binary::<i32>();
    let raws = all.column_by_name("raw").unwrap().as_binary::<i32>();
    let mut start = 0;
    for n in heads {
        for i in start..start + n {
            let hs = [("seq", Some(&b"x"[..]))];
            let rec = vigil_store::RecordRef {
                topic: TOPIC,
                partition: 0,
                offset: offs.value(i),
                timestamp_ms: Some(ts.value(i)),
                key: Some(keys.value(i)),
                value: Some(raws.value(i)),
                headers: &hs,
            };
            batch.append(&rec, &decoder, 0).unwrap();
        }
        start += n;
        s.write(&batch.seal().unwrap().unwrap()).unwrap();
    }
}

#[test]
fn t09_a_log_rebuilt_without_the_key_with_and_without_re_signed_checkpoints() {
    let c = Case::new();
    rebuild_partition_0(&c);
    // The hashes agree with themselves, but not with what was signed.
    assert_tampered(
        &c.verify(&[]),
        "partition=0",
        "differs from this checkpoint",
    );

    // Re-signed with the forger's own key (same name, their registry): the pinned keys
    // do not know it.
    let c = Case::new();
    rebuild_partition_0(&c);
    let store = c.store();
    let name =
        Registry::parse(&std::fs::read_to_string(vigil_store::layout::registry(&store)).unwrap())
            .unwrap()
            .name()
            .unwrap()
            .to_owned();
    std::fs::remove_dir_all(vigil_store::layout::keys(&store)).unwrap();
    std::fs::remove_dir_all(
        vigil_store::layout::checkpoints(&store)
            .join("topic=audit")
            .join("partition=0"),
    )
    .unwrap();
    let (skey, _) = signed_note::generate_key(&mut rand_core::OsRng, &name);
    let forged_key = c.root.join("forger.key");
    std::fs::write(&forged_key, skey).unwrap();
    let ring = KeyRing::open(&store, Some(&forged_key)).unwrap();
    let cps = Checkpointer::new(&store, ring, None);
    let s = vigil_store::Store::open(&store, Default::default()).unwrap();
    let head = s.head(TOPIC, 0).unwrap();
    cps.checkpoint(TOPIC, 0, head.chain, &head.tree, None)
        .unwrap()
        .unwrap();
    let got = c.verify(&[]);
    assert_tampered(&got, "partition=0", "not signed by a trusted key");
}

/// Delete partition 0's newest file and every checkpoint beyond what remains.
fn truncate_partition_0(c: &Case) {
    let files = c.files(0);
    let last = files.last().unwrap();
    let (b, _) = read_file(last);
    std::fs::remove_file(last).unwrap();
    let store = vigil_store::Store::open_existing(c.store()).unwrap();
    let kept: u64 = store
        .list(TOPIC, 0)
        .unwrap()
        .0
        .iter()
        .map(|f| vigil_store::files::read_footer(&f.path).unwrap().records)
        .sum();
    assert!(b.num_rows() > 0);
    for n in c.notes(0) {
        let size: u64 = name(&n).trim_end_matches(".note").parse().unwrap();
        if size > kept {
            std::fs::remove_file(n).unwrap();
        }
    }
}

#[test]
fn t10_the_newest_files_and_checkpoints_deleted() {
    let c = Case::new();
    truncate_partition_0(&c);
    assert_tampered(&c.verify(&[]), "mirror", "newest records were deleted");
    // With neither anchors nor trusted state, it cannot be told: incomplete, unanchored.
    let keys = c.root.join("keys");
    let got = verify_raw(&c.store(), &["--keys", keys.to_str().unwrap()]);
    assert_finding(&got, 2, "incomplete", "audit/0", "unanchored");
}

#[test]
fn t11_the_whole_store_rolled_back_to_an_older_copy() {
    let c = Case::new();
    let trusted = c.root.join("trusted.json");
    let t = trusted.to_str().unwrap();
    let keys = c.root.join("keys");
    let (exit, _) = verify_raw(
        &c.store(),
        &[
            "--keys",
            keys.to_str().unwrap(),
            "--trusted",
            t,
            "--update-trusted",
        ],
    );
    assert_eq!(exit, 2, "first use: keys pinned, but nothing anchored yet");
    let got = verify_raw(&c.root.join("snapshot"), &["--trusted", t]);
    assert_tampered(&got, "trusted checkpoint", "rolled back");
}

#[test]
fn t12_a_fork_two_different_checkpoints_of_the_same_size() {
    let c = Case::new();
    // The signer itself is made to sign another tree of the same size (its key leaked, or
    // it was fooled): the anchor holds that checkpoint too.
    let store = c.store();
    let newest = c.notes(1).last().unwrap().clone();
    let note = signed_note::Note::from_bytes(&std::fs::read(&newest).unwrap()).unwrap();
    let cp = Checkpoint::parse(note.text()).unwrap();
    let ring = KeyRing::open(&store, None).unwrap();
    let forked = ring
        .sign(&Checkpoint {
            root: [0x42; 32],
            ..cp.clone()
        })
        .unwrap();
    let extra = c.root.join("other-anchor");
    let dir = Checkpointer::log_dir(&extra, TOPIC, 1).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name(&newest)), forked).unwrap();
    let got = c.verify(&["--anchor-dir", extra.to_str().unwrap()]);
    assert_tampered(&got, "audit/1", "fork");
}

// ---------------------------------------------------------------------------------------
// Checkpoints and keys

fn edit_note(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

#[test]
fn t13_a_checkpoints_signature_or_size_or_root_line_edited() {
    let c = Case::new();
    let n = c.notes(2)[1].clone();
    edit_note(&n, |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        lines[1] = (lines[1].parse::<u64>().unwrap() + 1).to_string();
        lines.join("\n") + "\n"
    });
    assert_tampered(&c.verify(&[]), &name(&n), "bad signature");

    let c = Case::new();
    let n = c.notes(2)[1].clone();
    edit_note(&n, |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        lines[2] = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=".into();
        lines.join("\n") + "\n"
    });
    assert_tampered(&c.verify(&[]), &name(&n), "bad signature");

    let c = Case::new();
    let n = c.notes(2)[1].clone();
    edit_note(&n, |t| {
        let (text, sig) = t.rsplit_once(' ').unwrap();
        let mut sig = sig.trim_end().as_bytes().to_vec();
        let i = sig.len() / 2;
        sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
        format!("{text} {}\n", String::from_utf8(sig).unwrap())
    });
    assert_tampered(&c.verify(&[]), &name(&n), "");
}

#[test]
fn t14_signatures_only_from_an_unknown_or_expired_key() {
    // Unknown: the store's notes re-signed by a key nobody pinned.
    let c = Case::new();
    let other = tempfile::tempdir().unwrap();
    let stranger = KeyRing::open(other.path(), None).unwrap();
    let n = c.notes(0).last().unwrap().clone();
    let note = signed_note::Note::from_bytes(&std::fs::read(&n).unwrap()).unwrap();
    let mut cp = Checkpoint::parse(note.text()).unwrap();
    cp.time_ms = vigil_store::clock::now_ms();
    std::fs::write(&n, stranger.sign(&cp).unwrap()).unwrap();
    assert_tampered(&c.verify(&[]), &name(&n), "not signed by a trusted key");

    // Expired: the pinned registry says the second key stopped before it signed.
    let c = Case::new();
    let keys_path = c.root.join("keys");
    let mut keys = Registry::parse(&std::fs::read_to_string(&keys_path).unwrap()).unwrap();
    keys.keys[1].valid_until_ms = Some(keys.keys[1].valid_from_ms);
    std::fs::write(&keys_path, keys.format()).unwrap();
    assert_tampered(&c.verify(&[]), "partition=0", "outside its validity range");
}

#[test]
fn t15_a_malformed_checkpoint_note() {
    for (what, f) in [
        (
            "an extra line",
            Box::new(|t: String| t.replacen("\nvigil-time", "\nvigil-extra 1\nvigil-time", 1))
                as Box<dyn Fn(String) -> String>,
        ),
        (
            "bad UTF-8",
            Box::new(|t: String| t.replacen("vigil", "vig\u{fffd}l", 1)),
        ),
        (
            "too many signatures",
            Box::new(|t: String| {
                let sig = t.lines().last().unwrap().to_owned();
                format!("{t}{}", format!("{sig}\n").repeat(12))
            }),
        ),
    ] {
        let c = Case::new();
        let n = c.notes(1)[0].clone();
        edit_note(&n, f);
        if what == "bad UTF-8" {
            let mut b = std::fs::read(&n).unwrap();
            let i = b.iter().position(|&x| x == 0xef).unwrap();
            b[i] = 0xff;
            std::fs::write(&n, b).unwrap();
        }
        let got = c.verify(&[]);
        assert_tampered(&got, &name(&n), "");
    }
}

#[test]
fn t21_an_old_key_used_after_its_range() {
    let c = Case::new();
    let store = c.store();
    let keys = Registry::parse(&std::fs::read_to_string(c.root.join("keys")).unwrap()).unwrap();
    let old_id = keys.keys[0].id();
    // Its validity over, the old key's private half is gone from the store...
    assert!(
        !vigil_store::layout::keys(&store)
            .join(format!("{old_id:08x}.key"))
            .exists()
    );
    // ...but a copy taken before then signs as well as it ever did: a ring holding only it.
    let old_key = c.root.join("stolen-old.key");
    let other = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(other.path(), Some(&old_key)).unwrap();
    let n = c.notes(2).last().unwrap().clone();
    let note = signed_note::Note::from_bytes(&std::fs::read(&n).unwrap()).unwrap();
    let mut cp = Checkpoint::parse(note.text()).unwrap();
    cp.time_ms = vigil_store::clock::now_ms();
    std::fs::write(&n, ring.sign(&cp).unwrap()).unwrap();
    assert_tampered(&c.verify(&[]), &name(&n), "outside its validity range");
}

// ---------------------------------------------------------------------------------------
// Proofs

type Mutation = Box<dyn Fn(&mut Value)>;

/// The first hash of a bundle's proof with its first hex digit changed.
fn flip_first(b: &mut Value) {
    let h = b["proof"][0].as_str().unwrap().to_owned();
    let digit = if h.starts_with('0') { '1' } else { '0' };
    b["proof"][0] = format!("{digit}{}", &h[1..]).into();
}

/// Write `bundle` to a file and check it with the pinned keys.
fn check_bundle(c: &Case, bundle: &Value) -> (i32, String) {
    let path = c.root.join(format!(
        "bundle-{}.json",
        rand_core::RngCore::next_u32(&mut rand_core::OsRng)
    ));
    std::fs::write(&path, serde_json::to_string(bundle).unwrap()).unwrap();
    let keys = c.root.join("keys");
    let ran = vigil(&[
        "verify-proof",
        path.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
    ]);
    (ran.code, ran.out)
}

fn proof(c: &Case, args: &[&str]) -> Value {
    let store = c.store();
    let mut all = vec!["proof", "--data-dir", store.to_str().unwrap()];
    all.extend_from_slice(args);
    let Ran { code, out, .. } = vigil(&all);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn t16_an_event_is_proven_with_the_public_key_alone_and_every_mutation_fails() {
    let c = Case::new();
    let by_event = proof(&c, &["--event", "id-000007"]);
    assert_eq!(by_event["record"]["partition"], 1);
    let (code, out) = check_bundle(&c, &by_event);
    assert_eq!(code, 0, "{out}");
    // With the bare public key of the signer (no registry ranges) as well.
    let keys = Registry::parse(&std::fs::read_to_string(c.root.join("keys")).unwrap()).unwrap();
    let path = c.root.join("event.json");
    std::fs::write(&path, serde_json::to_string(&by_event).unwrap()).unwrap();
    let vkey = &keys.keys[1].vkey;
    let Ran { code, out, .. } =
        vigil(&["verify-proof", path.to_str().unwrap(), "--public-key", vkey]);
    assert_eq!(code, 0, "{out}");

    let good = proof(&c, &["--log", "audit/0", "--index", "9"]);
    assert_eq!(check_bundle(&c, &good).0, 0);
    let mutations: Vec<(&str, Mutation)> = vec![
        ("flipped hash", Box::new(flip_first)),
        (
            "extra hash",
            Box::new(|b: &mut Value| {
                let h = b["proof"][0].clone();
                b["proof"].as_array_mut().unwrap().push(h);
            }),
        ),
        (
            "missing hash",
            Box::new(|b: &mut Value| {
                b["proof"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "index + 1",
            Box::new(|b: &mut Value| {
                b["leaf_index"] = (b["leaf_index"].as_u64().unwrap() + 1).into();
            }),
        ),
        (
            "index - 1",
            Box::new(|b: &mut Value| {
                b["leaf_index"] = (b["leaf_index"].as_u64().unwrap() - 1).into();
            }),
        ),
        (
            "wrong size",
            Box::new(|b: &mut Value| {
                let note = b["checkpoint"].as_str().unwrap().to_owned();
                let mut lines: Vec<String> = note.split('\n').map(str::to_owned).collect();
                lines[1] = (lines[1].parse::<u64>().unwrap() + 1).to_string();
                b["checkpoint"] = lines.join("\n").into();
            }),
        ),
        (
            "record edited",
            Box::new(|b: &mut Value| {
                b["record"]["offset"] = (b["record"]["offset"].as_i64().unwrap() + 1).into();
            }),
        ),
        (
            "another log",
            Box::new(|b: &mut Value| {
                b["record"]["partition"] = 2.into();
            }),
        ),
    ];
    for (what, m) in mutations {
        let mut b = good.clone();
        m(&mut b);
        let (code, out) = check_bundle(&c, &b);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains("INVALID"), "{what}: {out}");
    }
}

#[test]
fn t17_consistency_between_two_signed_sizes_and_its_mutations() {
    let c = Case::new();
    let good = proof(&c, &["--log", "audit/1", "--from", "25"]);
    let (code, out) = check_bundle(&c, &good);
    assert_eq!(code, 0, "{out}");
    assert!(!good["proof"].as_array().unwrap().is_empty());
    let mutations: Vec<(&str, Mutation)> = vec![
        ("flipped hash", Box::new(flip_first)),
        (
            "missing hash",
            Box::new(|b: &mut Value| {
                b["proof"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "extra hash",
            Box::new(|b: &mut Value| {
                let h = b["proof"][0].clone();
                b["proof"].as_array_mut().unwrap().push(h);
            }),
        ),
        (
            "swapped checkpoints",
            Box::new(|b: &mut Value| {
                let old = b["old_checkpoint"].clone();
                b["old_checkpoint"] = b["new_checkpoint"].clone();
                b["new_checkpoint"] = old;
            }),
        ),
    ];
    for (what, m) in mutations {
        let mut b = good.clone();
        m(&mut b);
        let (code, out) = check_bundle(&c, &b);
        assert_eq!(code, 1, "{what}: {out}");
    }
    // A checkpoint of another log is refused.
    let other = proof(&c, &["--log", "audit/2", "--from", "25"]);
    let mut b = good.clone();
    b["new_checkpoint"] = other["new_checkpoint"].clone();
    assert_eq!(check_bundle(&c, &b).0, 1);
}

#[test]
fn t22_a_legitimate_compaction_verifies_even_when_interrupted() {
    let c = Case::new();
    let store = c.store();
    let before = c.files(0).len();
    assert!(before > 3);
    // An interrupted compaction: the compacted file is written, the old ones not yet removed.
    let saved = c.root.join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    let old: Vec<PathBuf> = c.files(0);
    for f in &old {
        std::fs::copy(f, saved.join(name(f))).unwrap();
    }
    let Ran { code, out, .. } = vigil(&[
        "compact",
        "--data-dir",
        store.to_str().unwrap(),
        "--target-records",
        "50",
        "--zstd-level",
        "9",
        "--row-group-rows",
        "7",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(c.files(0).len() < before, "{out}");
    let compacted = &c.files(0)[0];
    let groups = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(compacted).unwrap())
        .unwrap()
        .metadata()
        .num_row_groups();
    assert!(groups > 1, "rewritten with other row groups: {groups}");
    for f in &old {
        if !f.exists() {
            std::fs::copy(saved.join(name(f)), f).unwrap();
        }
    }
    // The next run (serve or compact) removes what the compaction replaced; then everything
    // verifies as before, checkpoints included.
    let Ran { code, out, .. } = vigil(&[
        "compact",
        "--data-dir",
        store.to_str().unwrap(),
        "--target-records",
        "1000",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(c.files(0).len(), 1);
    let (exit, r) = c.verify(&[]);
    assert_eq!(exit, 0, "{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(kafka_records(&r), (FIRST_RUN + SECOND_RUN) as u64);
}

#[test]
fn t18_a_node_presented_as_a_leaf() {
    use vigil_store::merkle::{interior, leaf_node, verify_inclusion};
    let c = Case::new();
    // A real proof of leaf 0 against the newest signed checkpoint of audit/0.
    let b = proof(&c, &["--log", "audit/0", "--index", "0"]);
    assert_eq!(check_bundle(&c, &b).0, 0);
    let hashes: Vec<[u8; 32]> = b["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| vigil_store::chain::from_hex(h.as_str().unwrap()).unwrap())
        .collect();
    let note = signed_note::Note::from_bytes(b["checkpoint"].as_str().unwrap().as_bytes()).unwrap();
    let cp = Checkpoint::parse(note.text()).unwrap();
    let rec = &b["record"];
    let leaf0 = vigil_store::proof::StoredRecord {
        topic: TOPIC.into(),
        partition: 0,
        offset: rec["offset"].as_i64().unwrap(),
        timestamp_ms: rec["timestamp_ms"].as_i64(),
        key: Some(
            base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                rec["key"].as_str().unwrap(),
            )
            .unwrap(),
        ),
        value: Some(
            base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                rec["value"].as_str().unwrap(),
            )
            .unwrap(),
        ),
        headers: rec["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["key"].as_str().unwrap().to_owned(),
                    h["value"].as_str().map(|v| {
                        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v)
                            .unwrap()
                    }),
                )
            })
            .collect(),
    }
    .leaf_hash();
    assert!(verify_inclusion(0, cp.size, &leaf0, &hashes, &cp.root));
    // The interior node over leaves 0 and 1, claimed as leaf 0 of the tree one level up.
    let node = interior(&leaf_node(&leaf0), &hashes[0]);
    assert!(!verify_inclusion(
        0,
        cp.size.div_ceil(2),
        &node,
        &hashes[1..],
        &cp.root
    ));
    assert!(!verify_inclusion(0, cp.size, &node, &hashes[1..], &cp.root));
}

#[test]
fn a_decoded_column_edited_alone_is_caught_by_verify_decoded() {
    let c = Case::new();
    let (exit, r) = c.verify(&["--decoded"]);
    assert_eq!(exit, 0, "{}", serde_json::to_string_pretty(&r).unwrap());
    let f = &c.files(1)[2];
    edit_rows(f, |b| {
        let d = b.column_by_name("decision").unwrap().as_string::<i32>();
        let edited: arrow::array::StringArray = (0..d.len())
            .map(|i| {
                d.is_valid(i)
                    .then(|| if i == 4 { "allow" } else { d.value(i) })
                    .map(str::to_owned)
            })
            .collect();
        assert_ne!(d.value(4), "allow", "the fixture's events are denials");
        replace_column(&b, "decision", Arc::new(edited))
    });
    // The hashes cover the Kafka record, not what was decoded from it…
    assert_eq!(c.verify(&[]).0, 0);
    // …which --decoded derives again.
    assert_tampered(
        &c.verify(&["--decoded"]),
        &name(f),
        "row 4: decoded column decision",
    );
}

#[test]
fn t23_stray_files_directories_and_links_are_findings_and_the_rest_is_still_reported() {
    let c = Case::new();
    let ev = vigil_store::layout::events(&c.store());
    std::fs::create_dir_all(ev.join("topic=..")).unwrap();
    std::fs::create_dir_all(ev.join("topic=evil/partition=x")).unwrap();
    std::fs::write(ev.join("README.txt"), "hello").unwrap();
    let hour_dir = c.files(0)[0].parent().unwrap().to_owned();
    std::fs::write(hour_dir.join("notes.parquet.bak"), "x").unwrap();
    std::os::unix::fs::symlink(
        "/etc/hostname",
        hour_dir.join("00000000000000999990-00000000000000999999.parquet"),
    )
    .unwrap();
    // A real edit elsewhere is still found and named.
    let f = &c.files(1)[0];
    edit_rows(f, |b| flip_binary(&b, "raw", 0));
    let got = c.verify(&[]);
    assert_tampered(&got, "topic=..", "not a topic=… directory");
    assert_tampered(&got, "partition=x", "not a partition=… directory");
    assert_tampered(&got, "README.txt", "not a topic=… directory");
    assert_tampered(&got, "notes.parquet.bak", "not a data file");
    assert_tampered(&got, "999999.parquet", "symbolic link");
    assert_tampered(&got, &name(f), "leaf hash does not match");
}

#[test]
fn t24_a_trusted_state_is_recorded_only_from_a_valid_store_or_on_first_use() {
    let c = Case::new();
    let trusted = c.root.join("trusted.json");
    let t = trusted.to_str().unwrap();
    // First use: only unanchored, which the trusted state will vouch for: recorded.
    assert_eq!(c.trust(&trusted).0, 2);
    let recorded = std::fs::read(&trusted).unwrap();
    // An edited store: found, and the trusted state is left as it was.
    let f = &c.files(0)[0];
    edit_rows(f, |b| flip_binary(&b, "raw", 1));
    let got = verify_raw(&c.store(), &["--trusted", t, "--update-trusted"]);
    assert_tampered(&got, &name(f), "leaf hash does not match");
    assert_eq!(std::fs::read(&trusted).unwrap(), recorded);
    // A first use on a store with anything more than that: nothing recorded.
    let fresh = c.root.join("fresh.json");
    assert_eq!(c.trust(&fresh).0, 1);
    assert!(!fresh.exists(), "a trusted state made from an edited store");
}

#[test]
fn t25_a_checkpoint_re_dated_before_the_one_it_follows_with_the_stores_own_key() {
    let c = Case::new();
    let notes = c.notes(0);
    let (prev, newest) = (&notes[notes.len() - 2], &notes[notes.len() - 1]);
    let text_of = |p: &Path| {
        let note = std::fs::read_to_string(p).unwrap();
        let (text, _) = note.split_once("\n\n").unwrap();
        Checkpoint::parse(format!("{text}\n").as_bytes()).unwrap()
    };
    let before = text_of(prev);
    let mut cp = text_of(newest);
    assert!(cp.time_ms >= before.time_ms, "the signer dates forwards");
    // Whoever holds the data directory holds its signing key: a validly signed note, dated
    // before the checkpoint it follows.
    cp.time_ms = before.time_ms - 1;
    let ring = KeyRing::open(&c.store(), None).unwrap();
    std::fs::write(newest, ring.sign(&cp).unwrap()).unwrap();
    assert_tampered(
        &c.verify(&[]),
        &name(newest),
        "checkpoint times go backwards",
    );
}
