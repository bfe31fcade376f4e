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

mod checkpoints;
mod files;
mod proofs;

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
