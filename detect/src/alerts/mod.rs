//! Alerts: the record every rule kind produces, and the durable alert log in the data
//! directory (`alerts/`, Parquet, one revision per row) that the `alerts` SQL table reads.
//!
//! An alert is written (file durable, directory fsynced) before it is reported as fired.
//! Updates of an open alert (more events in its suppression window) are new revisions of the
//! same alert id; readers keep the highest revision per id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow::datatypes::TimestampNanosecondType;
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

mod ocsf;
mod values;
pub(crate) use ocsf::formatted;
pub use ocsf::{AlertFormat, OCSF_VERSION, detection_finding};
pub use values::UnknownName;
pub use values::{Severity, Status};

/// One event an alert rests on: enough to prove it from the store
/// (`vigil proof --log <log> --index <index>`) and to check the proof is about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Evidence {
    /// `<topic>/<partition>`.
    pub log: String,
    pub index: u64,
    /// The record's leaf hash (hex).
    pub leaf_hash: String,
    pub event_time_ns: i64,
    /// The source's own event id, where the engine saw it with the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// An alert revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Alert {
    pub alert_id: String,
    pub revision: i64,
    pub rule_id: String,
    pub rule_version: i32,
    pub rule_kind: String,
    pub title: String,
    pub severity: Severity,
    pub status: Status,
    /// Who made the last lifecycle change (`None` while open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_by: Option<String>,
    /// When the last lifecycle change was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_at_ns: Option<i64>,
    /// The note given with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_note: Option<String>,
    /// Group-by field → value (`null` when the events lacked it).
    pub group_key: BTreeMap<String, Option<String>>,
    pub first_event_ns: i64,
    pub last_event_ns: i64,
    pub detected_ns: i64,
    pub event_count: i64,
    pub detail: Vec<String>,
    pub evidence: Vec<Evidence>,
    /// The incident it belongs to: alerts about the same subject within the incident window
    /// (`detect.incident_window_ms`) share one (the `incidents` SQL view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<String>,
    /// Who the incident is about: `principal:…`, `ip:…` or `log:topic/partition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_subject: Option<String>,
}

/// The `alerts` table's columns.
pub fn alert_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("revision", DataType::Int64, false),
        Field::new("rule_id", DataType::Utf8, false),
        Field::new("rule_version", DataType::Int32, false),
        Field::new("rule_kind", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("status_by", DataType::Utf8, true),
        Field::new("status_changed_at", ts(), true),
        Field::new("status_note", DataType::Utf8, true),
        Field::new("group_key", DataType::Utf8, false),
        Field::new("first_event_time", ts(), false),
        Field::new("last_event_time", ts(), false),
        Field::new("detected_at", ts(), false),
        Field::new("event_count", DataType::Int64, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("incident_id", DataType::Utf8, true),
        Field::new("incident_subject", DataType::Utf8, true),
    ]))
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("alert log {path}: {message}")]
    Io { path: PathBuf, message: String },
    /// A write through the store (its bucket among it), kept whole so that callers can tell a
    /// full volume or an absent bucket (worth trying again) from the rest.
    #[error("alert log {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: vigil_store::StoreError,
    },
    #[error("alert log: {0}")]
    Format(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AlertError + '_ {
    move |e| AlertError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn fmt(e: impl std::fmt::Display) -> AlertError {
    AlertError::Format(e.to_string())
}

/// Alerts as a batch of the `alerts` schema.
pub(crate) fn to_batch(alerts: &[Alert]) -> Result<RecordBatch, AlertError> {
    let s = |f: fn(&Alert) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(alerts.iter().map(f)))
    };
    let t = |f: fn(&Alert) -> i64| -> ArrayRef {
        Arc::new(
            TimestampNanosecondArray::from_iter_values(alerts.iter().map(f)).with_timezone("UTC"),
        )
    };
    let json = |v: &dyn erased::Json| v.json();
    let cols: Vec<ArrayRef> = vec![
        s(|a| a.alert_id.clone()),
        Arc::new(Int64Array::from_iter_values(
            alerts.iter().map(|a| a.revision),
        )),
        s(|a| a.rule_id.clone()),
        Arc::new(Int32Array::from_iter_values(
            alerts.iter().map(|a| a.rule_version),
        )),
        s(|a| a.rule_kind.clone()),
        s(|a| a.title.clone()),
        s(|a| a.severity.as_str().to_owned()),
        s(|a| a.status.as_str().to_owned()),
        Arc::new(StringArray::from_iter(
            alerts.iter().map(|a| a.status_by.as_deref()),
        )),
        Arc::new(
            TimestampNanosecondArray::from_iter(alerts.iter().map(|a| a.status_at_ns))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(
            alerts.iter().map(|a| a.status_note.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            alerts.iter().map(|a| json(&a.group_key)),
        )),
        t(|a| a.first_event_ns),
        t(|a| a.last_event_ns),
        t(|a| a.detected_ns),
        Arc::new(Int64Array::from_iter_values(
            alerts.iter().map(|a| a.event_count),
        )),
        Arc::new(StringArray::from_iter_values(
            alerts.iter().map(|a| json(&a.detail)),
        )),
        Arc::new(StringArray::from_iter_values(
            alerts.iter().map(|a| json(&a.evidence)),
        )),
        Arc::new(StringArray::from_iter(
            alerts.iter().map(|a| a.incident_id.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            alerts.iter().map(|a| a.incident_subject.as_deref()),
        )),
    ];
    RecordBatch::try_new(alert_schema(), cols).map_err(fmt)
}

mod erased {
    pub(super) trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "null".into())
        }
    }
}

/// Alerts back from a batch of the `alerts` schema.
pub(crate) fn from_batch(b: &RecordBatch) -> Result<Vec<Alert>, AlertError> {
    let col = |name: &str| {
        b.column_by_name(name)
            .ok_or_else(|| AlertError::Format(format!("no column {name}")))
    };
    let s = |name: &str| -> Result<&StringArray, AlertError> {
        col(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| AlertError::Format(format!("{name} is not text")))
    };
    let i = |name: &str| -> Result<&Int64Array, AlertError> {
        col(name)?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| AlertError::Format(format!("{name} is not Int64")))
    };
    let t = |name: &str| -> Result<&TimestampNanosecondArray, AlertError> {
        col(name)?
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or_else(|| AlertError::Format(format!("{name} is not a timestamp")))
    };
    let (id, rev, rule, ver) = (
        s("alert_id")?,
        i("revision")?,
        s("rule_id")?,
        col("rule_version")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| fmt("rule_version is not Int32"))?,
    );
    let (kind, title, sev, status, key) = (
        s("rule_kind")?,
        s("title")?,
        s("severity")?,
        s("status")?,
        s("group_key")?,
    );
    let (first, last, det, count, detail, ev) = (
        t("first_event_time")?,
        t("last_event_time")?,
        t("detected_at")?,
        i("event_count")?,
        s("detail")?,
        s("evidence")?,
    );
    // Written before lifecycle changes existed: no such columns, every alert open.
    let opt_s = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
    };
    let (by, at, note) = (
        opt_s("status_by"),
        b.column_by_name("status_changed_at")
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>()),
        opt_s("status_note"),
    );
    // Written before incidents existed: none.
    let (inc, subj) = (opt_s("incident_id"), opt_s("incident_subject"));
    let get_s = |c: Option<&StringArray>, r: usize| {
        c.filter(|c| c.is_valid(r)).map(|c| c.value(r).to_owned())
    };
    (0..b.num_rows())
        .map(|r| {
            if id.is_null(r) {
                return Err(fmt("null alert_id"));
            }
            Ok(Alert {
                alert_id: id.value(r).to_owned(),
                revision: rev.value(r),
                rule_id: rule.value(r).to_owned(),
                rule_version: ver.value(r),
                rule_kind: kind.value(r).to_owned(),
                title: title.value(r).to_owned(),
                severity: sev.value(r).parse().map_err(fmt)?,
                status: status.value(r).parse().map_err(fmt)?,
                status_by: get_s(by, r),
                status_at_ns: at.filter(|c| c.is_valid(r)).map(|c| c.value(r)),
                status_note: get_s(note, r),
                group_key: serde_json::from_str(key.value(r)).map_err(fmt)?,
                first_event_ns: first.value(r),
                last_event_ns: last.value(r),
                detected_ns: det.value(r),
                event_count: count.value(r),
                detail: serde_json::from_str(detail.value(r)).map_err(fmt)?,
                evidence: serde_json::from_str(ev.value(r)).map_err(fmt)?,
                incident_id: get_s(inc, r),
                incident_subject: get_s(subj, r),
            })
        })
        .collect()
}

/// The alert log: `<data_dir>/alerts/alerts-<ns>-<pid>-<seq>.parquet`. Small files are merged
/// as they pile up: every `MERGE_FILES` appends into one file, and everything into one when a
/// log with more than `MERGE_FILES` files is opened.
#[derive(Debug)]
pub(crate) struct AlertLog {
    data_dir: PathBuf,
    dir: PathBuf,
    /// Every file is put into the store's bucket too (and a merge's inputs removed there).
    bucket: Option<std::sync::Arc<vigil_store::Bucket>>,
    seq: u64,
    /// Files this log appended since the last merge.
    small: Vec<PathBuf>,
}

/// How many alert files are merged at a time.
pub(crate) const MERGE_FILES: usize = 256;

impl AlertLog {
    /// Open (creating) the log; merge its files into one if there are many. Only one process
    /// may append at a time (the detection lock).
    pub(crate) fn open(
        data_dir: &Path,
        bucket: Option<std::sync::Arc<vigil_store::Bucket>>,
    ) -> Result<AlertLog, AlertError> {
        let dir = vigil_store::layout::alerts(data_dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut log = AlertLog {
            data_dir: data_dir.to_owned(),
            dir,
            bucket,
            seq: 0,
            small: Vec::new(),
        };
        let files = alert_files(&log.dir)?;
        if files.len() > MERGE_FILES && log.merges() {
            log.merge(files, vigil_store::clock::now_ns())?;
        }
        Ok(log)
    }

    /// Replace `files` by one file holding their rows in order: durable before they are
    /// removed (a crash in between leaves revisions twice, which readers keep once).
    fn merge(&mut self, files: Vec<PathBuf>, now_ns: i64) -> Result<(), AlertError> {
        let mut rows = Vec::new();
        for p in &files {
            rows.extend(read_file(p)?);
        }
        if !rows.is_empty() {
            self.write(&rows, now_ns)?;
        }
        // Removed here first, then from the bucket: a crash in between leaves the bucket with
        // files the merged one repeats (fetched back at the next start, kept once by readers),
        // never a local file the bucket lacks (which a writer's start refuses).
        for p in &files {
            std::fs::remove_file(p).map_err(io(p))?;
            if let Some(b) = &self.bucket {
                b.unpublish(&self.data_dir, p)
                    .map_err(|source| AlertError::Store {
                        path: p.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Whether small files are merged: not in a bucket under Object Lock, where the files a
    /// merge replaces cannot be removed (the log keeps them all; readers read them all).
    fn merges(&self) -> bool {
        self.bucket
            .as_ref()
            .is_none_or(|b| b.object_lock_days() == 0)
    }

    /// Write revisions durably (one file). Returns once the file and its name are on disk.
    pub(crate) fn append(&mut self, alerts: &[Alert], now_ns: i64) -> Result<PathBuf, AlertError> {
        let path = self.write(alerts, now_ns)?;
        self.small.push(path.clone());
        if self.small.len() >= MERGE_FILES && self.merges() {
            let small = std::mem::take(&mut self.small);
            self.merge(small, now_ns)?;
        }
        Ok(path)
    }

    fn write(&mut self, alerts: &[Alert], now_ns: i64) -> Result<PathBuf, AlertError> {
        assert!(!alerts.is_empty(), "an alert file holds at least one alert");
        let batch = to_batch(alerts)?;
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, alert_schema(), None).map_err(fmt)?;
        w.write(&batch).map_err(fmt)?;
        w.close().map_err(fmt)?;
        self.seq += 1;
        let path = self.dir.join(format!(
            "alerts-{now_ns:020}-{}-{:06}.parquet",
            std::process::id(),
            self.seq
        ));
        let failed = |source: vigil_store::StoreError| AlertError::Store {
            path: path.clone(),
            source,
        };
        // In the bucket before it has its name here (as every file of the store).
        if let Some(b) = &self.bucket {
            b.put(&self.data_dir, &path, bytes.clone(), true)
                .map_err(failed)?;
        }
        vigil_store::write_durably(&path, &bytes).map_err(failed)?;
        Ok(path)
    }
}

fn read_file(p: &Path) -> Result<Vec<Alert>, AlertError> {
    let f = std::fs::File::open(p).map_err(io(p))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| AlertError::Format(format!("{}: {e}", p.display())))?;
    let mut out = Vec::new();
    for b in reader {
        out.extend(from_batch(&b.map_err(fmt)?)?);
    }
    Ok(out)
}

/// The newest stored revision of one alert.
pub fn find(data_dir: &Path, alert_id: &str) -> Result<Option<Alert>, AlertError> {
    Ok(read_revisions(data_dir)?
        .into_iter()
        .filter(|a| a.alert_id == alert_id)
        .max_by_key(|a| a.revision))
}

/// Every alert revision stored under `data_dir`, in file order. A revision found twice (a
/// merge interrupted by a crash) is kept once.
pub fn read_revisions(data_dir: &Path) -> Result<Vec<Alert>, AlertError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in alert_files(&vigil_store::layout::alerts(data_dir))? {
        for a in read_file(&p)? {
            if seen.insert((a.alert_id.clone(), a.revision)) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// The alert log's files, in name (time) order.
pub(crate) fn alert_files(dir: &Path) -> Result<Vec<PathBuf>, AlertError> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "parquet")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("alerts-"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    names.sort();
    Ok(names)
}

/// The newest revision of every alert, newest detection first.
pub fn latest(revisions: Vec<Alert>) -> Vec<Alert> {
    let mut by_id: BTreeMap<String, Alert> = BTreeMap::new();
    for a in revisions {
        match by_id.get(&a.alert_id) {
            Some(b) if b.revision >= a.revision => {}
            _ => {
                by_id.insert(a.alert_id.clone(), a);
            }
        }
    }
    let mut v: Vec<Alert> = by_id.into_values().collect();
    v.sort_by(|a, b| {
        b.detected_ns
            .cmp(&a.detected_ns)
            .then(a.alert_id.cmp(&b.alert_id))
    });
    v
}

/// A sample alert for tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub(crate) fn alert(id: &str, rev: i64) -> Alert {
        Alert {
            alert_id: id.into(),
            revision: rev,
            rule_id: "r".into(),
            rule_version: 1,
            rule_kind: "threshold".into(),
            title: "t".into(),
            severity: Severity::High,
            status: Status::Open,
            status_by: None,
            status_at_ns: None,
            status_note: None,
            group_key: [("caller_ip".to_string(), Some("1.2.3.4".to_string()))].into(),
            first_event_ns: 1,
            last_event_ns: 2,
            detected_ns: 3,
            event_count: 10 * rev,
            detail: vec!["x".into()],
            evidence: vec![Evidence {
                log: "t/0".into(),
                index: 7,
                leaf_hash: "00".repeat(32),
                event_time_ns: 1,
                event_id: Some("e".into()),
            }],
            incident_id: Some("i1".into()),
            incident_subject: Some("ip:1.2.3.4".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::alert;
    use super::*;

    #[test]
    fn revisions_round_trip_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AlertLog::open(dir.path(), None).unwrap();
        log.append(&[alert("a", 1), alert("b", 1)], 10).unwrap();
        log.append(&[alert("a", 2)], 11).unwrap();
        let revs = read_revisions(dir.path()).unwrap();
        assert_eq!(revs.len(), 3);
        assert_eq!(revs[0], alert("a", 1));
        let latest = latest(revs);
        assert_eq!(latest.len(), 2);
        assert_eq!(
            latest
                .iter()
                .find(|a| a.alert_id == "a")
                .unwrap()
                .event_count,
            20
        );
        assert!(
            read_revisions(&dir.path().join("nothing"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn severity_and_status_are_the_names_they_were_stored_as_and_nothing_else() {
        for sev in Severity::ALL {
            assert_eq!(sev.as_str().parse::<Severity>(), Ok(sev));
            assert_eq!(serde_json::to_value(sev).unwrap(), sev.as_str());
        }
        for st in Status::ALL {
            assert_eq!(st.as_str().parse::<Status>(), Ok(st));
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        assert!(Severity::Info < Severity::Low && Severity::High < Severity::Critical);
        // Not quietly `info` (delivery filtered on it): an error that names the value.
        let e = "severe".parse::<Severity>().unwrap_err();
        assert!(
            e.to_string().contains("\"severe\" is not a severity"),
            "{e}"
        );
        assert!("Open".parse::<Status>().is_err());

        // A stored revision with an unknown severity is an error, not an alert of another one.
        let mut b = to_batch(&[alert("a", 1)]).unwrap();
        let i = b.schema().index_of("severity").unwrap();
        let mut cols = b.columns().to_vec();
        cols[i] = Arc::new(StringArray::from(vec!["apocalyptic"]));
        b = RecordBatch::try_new(b.schema(), cols).unwrap();
        let e = from_batch(&b).unwrap_err();
        assert!(e.to_string().contains("apocalyptic"), "{e}");
    }
}
