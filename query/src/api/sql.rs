//! SQL in a sandbox: one read-only statement (no DDL, DML, COPY, SET or other statements; no
//! URL or file tables), within a time limit, a row cap and a memory cap; the result encoded as
//! JSON, NDJSON, CSV or Arrow IPC.

use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use futures::StreamExt;

/// The limits every query runs under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_rows: usize,
    pub timeout_ms: u64,
    pub memory_bytes: usize,
}

/// Why a query gave no result.
#[derive(Debug, thiserror::Error)]
pub enum QueryFail {
    /// Not valid SQL, an unknown table or column, a type error: DataFusion's message.
    #[error("{0}")]
    Invalid(String),
    /// Valid, but not allowed here (it would write, or change the session).
    #[error("not allowed: {0} (queries are read-only: one SELECT, WITH, EXPLAIN or SHOW)")]
    Refused(String),
    #[error("the result has more than {0} rows: narrow the query or add LIMIT")]
    TooManyRows(usize),
    #[error("the query needs more than its memory limit ({0} bytes): {1}")]
    Memory(usize, String),
    #[error("the query ran longer than {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Store(String),
}

impl QueryFail {
    /// The HTTP status for it.
    pub fn status(&self) -> u16 {
        match self {
            QueryFail::Invalid(_) | QueryFail::Refused(_) => 400,
            QueryFail::Timeout(_) => 408,
            QueryFail::TooManyRows(_) | QueryFail::Memory(..) => 422,
            QueryFail::Store(_) => 500,
        }
    }
}

/// A result: its schema and batches.
#[derive(Debug)]
pub struct Output {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
}

fn classify(e: DataFusionError, limits: &Limits) -> QueryFail {
    let e = e.find_root().to_string();
    // The planner's own words for what SQLOptions refused.
    if e.contains("not supported")
        && (e.contains("DDL") || e.contains("DML") || e.contains("Statement"))
    {
        return QueryFail::Refused(e);
    }
    if e.contains("Resources exhausted") {
        return QueryFail::Memory(limits.memory_bytes, e);
    }
    QueryFail::Invalid(e)
}

/// Run one statement over the store's tables under `limits`.
pub async fn run(catalog: &crate::Catalog, sql: &str, limits: Limits) -> Result<Output, QueryFail> {
    let work = async {
        let ctx = catalog
            .session(Some(limits.memory_bytes))
            .await
            .map_err(|e| match e {
                crate::QueryError::DataFusion(d) => classify(d, &limits),
                other => QueryFail::Store(other.to_string()),
            })?;
        let opts = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = ctx
            .sql_with_options(sql, opts)
            .await
            .map_err(|e| classify(e, &limits))?;
        let schema: SchemaRef = df.schema().inner().clone();
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| classify(e, &limits))?;
        let (mut batches, mut rows) = (Vec::new(), 0usize);
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| classify(e, &limits))?;
            rows += b.num_rows();
            if rows > limits.max_rows {
                return Err(QueryFail::TooManyRows(limits.max_rows));
            }
            batches.push(b);
        }
        Ok(Output {
            schema,
            batches,
            rows,
        })
    };
    tokio::time::timeout(Duration::from_millis(limits.timeout_ms), work)
        .await
        .map_err(|_| QueryFail::Timeout(limits.timeout_ms))?
}

/// A result format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// CSV with a header line.
    Csv,
    /// Arrow IPC stream.
    Arrow,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    /// From an `Accept` header, if it names one.
    pub fn from_accept(accept: &str) -> Option<Format> {
        [Format::Arrow, Format::Ndjson, Format::Csv, Format::Json]
            .into_iter()
            .find(|f| accept.contains(f.content_type().split(';').next().unwrap_or_default()))
    }
}

/// Encode a result piece by piece: one chunk per batch (plus opening and closing chunks), so
/// the body streams out as it is encoded.
pub fn encode(
    out: Output,
    format: Format,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    use datafusion::arrow::{csv, ipc, json};
    let io = |e: datafusion::arrow::error::ArrowError| std::io::Error::other(e.to_string());
    let Output {
        schema, batches, ..
    } = out;
    let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> = Vec::with_capacity(batches.len() + 2);
    match format {
        Format::Json | Format::Ndjson => {
            let array = format == Format::Json;
            if array {
                chunks.push(Ok(b"[".to_vec()));
            }
            let mut first = true;
            for b in &batches {
                let mut buf = Vec::new();
                let mut w = json::LineDelimitedWriter::new(&mut buf);
                let r = w.write(b).and_then(|()| w.finish()).map_err(io);
                drop(w);
                if let Err(e) = r {
                    chunks.push(Err(e));
                    break;
                }
                if array {
                    let mut out = Vec::with_capacity(buf.len() + 16);
                    for line in buf.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        out.extend_from_slice(line);
                    }
                    chunks.push(Ok(out));
                } else {
                    chunks.push(Ok(buf));
                }
            }
            if array {
                chunks.push(Ok(b"]".to_vec()));
            }
        }
        Format::Csv => {
            let mut header = true;
            for b in &batches {
                let mut buf = Vec::new();
                let r = csv::WriterBuilder::new()
                    .with_header(header)
                    .build(&mut buf)
                    .write(b)
                    .map_err(io);
                header = false;
                chunks.push(r.map(|()| buf));
            }
            if header {
                // No rows: still the header line.
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                chunks.push(Ok(format!("{}\n", names.join(",")).into_bytes()));
            }
        }
        Format::Arrow => {
            let mut buf = Vec::new();
            let r = (|| {
                // Strings as plain Utf8, which every Arrow reader knows (queries run on views).
                let plain = crate::plain_schema(&schema);
                let mut w = ipc::writer::StreamWriter::try_new(&mut buf, &plain)?;
                for b in &batches {
                    w.write(&crate::to_schema(b, &plain)?)?;
                }
                w.finish()
            })()
            .map_err(io);
            chunks.push(r.map(|()| buf));
        }
    }
    futures::stream::iter(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_rows: 1000,
            timeout_ms: 3000,
            memory_bytes: 64 << 20,
        }
    }

    struct Store {
        _dir: tempfile::TempDir,
        catalog: crate::Catalog,
    }

    impl Store {
        fn path(&self) -> &crate::Catalog {
            &self.catalog
        }
    }

    async fn store() -> Store {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("events")).unwrap();
        let catalog = crate::Catalog::open(dir.path()).unwrap();
        Store { _dir: dir, catalog }
    }

    #[tokio::test]
    async fn a_select_runs_and_every_format_encodes() {
        let d = store().await;
        let out = run(
            d.path(),
            "SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, 'y'",
            limits(),
        )
        .await
        .unwrap();
        assert_eq!(out.rows, 2);
        let schema = out.schema.clone();
        let batches = out.batches.clone();
        let body = |f: Format| {
            let o = Output {
                schema: schema.clone(),
                batches: batches.clone(),
                rows: 2,
            };
            let chunks: Vec<_> = futures::executor::block_on(encode(o, f).collect());
            chunks
                .into_iter()
                .flat_map(|c| c.unwrap())
                .collect::<Vec<u8>>()
        };
        let json: serde_json::Value = serde_json::from_slice(&body(Format::Json)).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 2);
        assert_eq!(json[1]["b"], "y");
        let nd = String::from_utf8(body(Format::Ndjson)).unwrap();
        assert_eq!(nd.lines().count(), 2);
        let csv = String::from_utf8(body(Format::Csv)).unwrap();
        assert_eq!(csv.lines().collect::<Vec<_>>(), ["a,b", "1,x", "2,y"]);
        let ipc = body(Format::Arrow);
        let r = datafusion::arrow::ipc::reader::StreamReader::try_new(&ipc[..], None).unwrap();
        assert_eq!(r.map(|b| b.unwrap().num_rows()).sum::<usize>(), 2);
        // The store's tables are there, empty.
        let out = run(d.path(), "SELECT count(*) FROM events", limits())
            .await
            .unwrap();
        assert_eq!(out.rows, 1);
    }

    #[tokio::test]
    async fn writes_session_changes_and_file_access_are_refused() {
        let d = store().await;
        for q in [
            "CREATE TABLE t (a INT)",
            "CREATE TABLE t AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "DROP VIEW events",
            "DROP TABLE stored",
            "INSERT INTO stored SELECT * FROM stored",
            "COPY (SELECT 1) TO '/tmp/vigil-escape.csv'",
            "SET datafusion.runtime.memory_limit = '100G'",
            "SET datafusion.execution.target_partitions = 64",
        ] {
            let e = run(d.path(), q, limits()).await.unwrap_err();
            assert!(matches!(e, QueryFail::Refused(_)), "{q}: {e}");
            assert_eq!(e.status(), 400);
        }
        assert!(!std::path::Path::new("/tmp/vigil-escape.csv").exists());
        for q in [
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM 'file:///etc/passwd'",
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT * FROM read_parquet('/etc/passwd')",
            "SELECT 1; DROP VIEW events",
            "DELETE FROM stored",
            "UPDATE stored SET key = 'x'",
            "SELEC nonsense",
        ] {
            let e = run(d.path(), q, limits()).await.unwrap_err();
            assert!(
                matches!(e, QueryFail::Invalid(_) | QueryFail::Refused(_)),
                "{q}: {e}"
            );
            assert_eq!(e.status(), 400, "{q}: {e}");
        }
    }

    #[tokio::test]
    async fn row_memory_and_time_caps_hold() {
        let d = store().await;
        let e = run(d.path(), "SELECT * FROM unnest(range(0, 5000))", limits())
            .await
            .unwrap_err();
        assert!(matches!(e, QueryFail::TooManyRows(1000)), "{e}");
        // A cartesian product gathered into one value: more memory than the cap.
        let q = "SELECT array_agg(a.x * b.x) AS p FROM (SELECT unnest(range(0, 5000)) AS x) a \
                 CROSS JOIN (SELECT unnest(range(0, 5000)) AS x) b";
        let small = Limits {
            memory_bytes: 8 << 20,
            ..limits()
        };
        let e = run(d.path(), q, small).await.unwrap_err();
        assert!(
            matches!(e, QueryFail::Memory(..) | QueryFail::Timeout(_)),
            "{e}"
        );
        assert_eq!(e.status() / 100, 4);
        // One that would run for ever.
        let forever = "SELECT count(*) FROM (SELECT unnest(range(0, 100000)) AS x) a \
                       CROSS JOIN (SELECT unnest(range(0, 100000)) AS x) b \
                       CROSS JOIN (SELECT unnest(range(0, 100000)) AS x) c";
        let quick = Limits {
            timeout_ms: 500,
            ..limits()
        };
        let started = std::time::Instant::now();
        let e = run(d.path(), forever, quick).await.unwrap_err();
        assert!(matches!(e, QueryFail::Timeout(500)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
