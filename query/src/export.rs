//! `vigil export`: stored events in a time range written out in the SOC's formats — OCSF
//! Parquet laid out as Amazon Security Lake expects of a custom source, or ECS JSON lines.
//!
//! OCSF ([`ExportFormat::Ocsf`]): one custom source per event class (Security Lake takes one
//! class per source): `ext/vigil-authentication`, `ext/vigil-api-activity`,
//! `ext/vigil-network-activity`, each `region=<region>/accountId=<account>/eventDay=YYYYMMDD/`,
//! Parquet files of at most `max_rows_per_file` events sorted by time (the events read in
//! `event_time` order), their columns the OCSF attributes (nested structs and lists, as
//! `vigil_schemas::out::ocsf_event` writes them).
//! ECS ([`ExportFormat::Ecs`]): `ecs/eventDay=YYYYMMDD/part-NNNNN.ndjson`, one event a line.
//!
//! Reading is one SQL scan of the `events` table in time order (rejected records have no event
//! and are not written), batch by batch: memory holds at most one file's worth of rows per
//! class, each day written as soon as the next begins.
//! Files are written beside their final name and renamed once complete: a crash leaves no
//! partial file under a name a lake would load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::json::reader::{ReaderBuilder, infer_json_schema_from_iterator};
use datafusion::parquet::arrow::ArrowWriter;
use futures::StreamExt;
use serde_json::Value;
use vigil_schemas::out::{BatchEvent, OcsfClass, ecs_event, ocsf_event};

/// What `vigil export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Ocsf,
    Ecs,
}

/// An export: the events with `from_ns <= event_time < to_ns`.
#[derive(Clone, Debug)]
pub struct Export {
    pub from_ns: i64,
    pub to_ns: i64,
    pub format: ExportFormat,
    /// Security Lake partition values (OCSF).
    pub region: String,
    pub account_id: String,
    pub max_rows_per_file: usize,
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub events: u64,
    /// Every file written, relative to the output directory.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Query(#[from] crate::QueryError),
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("{0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A Security Lake source name for an OCSF class.
pub(crate) fn source_name(class: OcsfClass) -> &'static str {
    match class {
        OcsfClass::Authentication => "vigil-authentication",
        OcsfClass::ApiActivity => "vigil-api-activity",
        OcsfClass::NetworkActivity => "vigil-network-activity",
    }
}

/// A partition value as Security Lake has it: letters, digits, `-` and `_` only.
fn checked(what: &str, v: &str) -> Result<(), ExportError> {
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ExportError::Invalid(format!(
            "{what} {v:?}: use letters, digits, - and _"
        )));
    }
    Ok(())
}

/// Rows waiting to be written, per output directory.
struct Pending {
    rows: BTreeMap<PathBuf, Vec<Value>>,
    seq: BTreeMap<PathBuf, usize>,
}

/// Export the stored events of `data_dir` in the range into `out` (a directory, created).
pub async fn export(
    data_dir: &Path,
    out: &Path,
    spec: &Export,
) -> Result<ExportReport, ExportError> {
    if spec.from_ns >= spec.to_ns {
        return Err(ExportError::Invalid("--from must be before --to".into()));
    }
    if spec.max_rows_per_file == 0 {
        return Err(ExportError::Invalid("max_rows_per_file must be ≥ 1".into()));
    }
    checked("region", &spec.region)?;
    checked("account id", &spec.account_id)?;
    let ctx = crate::session(data_dir).await?;
    let at = |ns: i64| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    };
    let sql = format!(
        "SELECT * FROM events WHERE event_time >= to_timestamp('{}') AND event_time < to_timestamp('{}') \
         ORDER BY event_time, kafka_topic, kafka_partition, kafka_offset, record_index",
        at(spec.from_ns),
        at(spec.to_ns)
    );
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let mut report = ExportReport::default();
    let mut pending = Pending {
        rows: BTreeMap::new(),
        seq: BTreeMap::new(),
    };
    let mut current_day = String::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        for row in 0..batch.num_rows() {
            let e = BatchEvent { batch: &batch, row };
            let day =
                chrono::DateTime::from_timestamp_nanos(vigil_schemas::out::EventView::time_ns(&e))
                    .format("%Y%m%d")
                    .to_string();
            // Events come in time order: a day behind is complete. Writing it now holds at
            // most one day's rows per class, however many days (forged times included) the
            // range spans.
            if day != current_day {
                let done = std::mem::take(&mut pending.rows);
                for (dir, rows) in done {
                    if !rows.is_empty() {
                        flush(out, &dir, rows, spec.format, &mut pending.seq, &mut report)?;
                    }
                }
                current_day = day.clone();
            }
            let (dir, value) = match spec.format {
                ExportFormat::Ocsf => {
                    let Some((class, v)) = ocsf_event(&e) else {
                        continue;
                    };
                    let dir = PathBuf::from("ext")
                        .join(source_name(class))
                        .join(format!("region={}", spec.region))
                        .join(format!("accountId={}", spec.account_id))
                        .join(format!("eventDay={day}"));
                    (dir, v)
                }
                ExportFormat::Ecs => {
                    let Some(v) = ecs_event(&e) else {
                        continue;
                    };
                    (PathBuf::from("ecs").join(format!("eventDay={day}")), v)
                }
            };
            report.events += 1;
            let rows = pending.rows.entry(dir.clone()).or_default();
            rows.push(value);
            if rows.len() >= spec.max_rows_per_file {
                let rows = std::mem::take(rows);
                flush(out, &dir, rows, spec.format, &mut pending.seq, &mut report)?;
            }
        }
    }
    let left = std::mem::take(&mut pending.rows);
    for (dir, rows) in left {
        if !rows.is_empty() {
            flush(out, &dir, rows, spec.format, &mut pending.seq, &mut report)?;
        }
    }
    Ok(report)
}

/// Write one file of rows into `out/dir`.
fn flush(
    out: &Path,
    dir: &Path,
    rows: Vec<Value>,
    format: ExportFormat,
    seq: &mut BTreeMap<PathBuf, usize>,
    report: &mut ExportReport,
) -> Result<(), ExportError> {
    let full = out.join(dir);
    std::fs::create_dir_all(&full).map_err(io(&full))?;
    let n = seq.entry(dir.to_owned()).or_insert(0);
    // Never over a file an earlier export left: the next free number.
    let (name, ext) = match format {
        ExportFormat::Ocsf => ("part", "parquet"),
        ExportFormat::Ecs => ("part", "ndjson"),
    };
    let mut path;
    loop {
        path = full.join(format!("{name}-{:05}.{ext}", *n));
        *n += 1;
        if !path.exists() {
            break;
        }
    }
    let tmp = path.with_extension(format!("{ext}.partial"));
    match format {
        ExportFormat::Ocsf => {
            let schema = infer_json_schema_from_iterator(rows.iter().map(Ok::<_, _>))?;
            let schema = Arc::new(schema);
            let mut decoder = ReaderBuilder::new(schema.clone())
                .with_batch_size(rows.len().max(1))
                .build_decoder()?;
            decoder.serialize(&rows)?;
            let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            let mut w = ArrowWriter::try_new(file, schema, None)?;
            while let Some(b) = decoder.flush()? {
                w.write(&b)?;
            }
            w.close()?;
        }
        ExportFormat::Ecs => {
            let mut text = String::new();
            for r in &rows {
                text.push_str(&r.to_string());
                text.push('\n');
            }
            std::fs::write(&tmp, text).map_err(io(&tmp))?;
        }
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    report
        .files
        .push(path.strip_prefix(out).unwrap_or(&path).to_owned());
    Ok(())
}
