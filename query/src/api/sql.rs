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
    /// One query's memory (DataFusion's pool).
    pub memory_bytes: usize,
    /// The answer, encoded.
    pub max_result_bytes: usize,
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
    #[error("the result is more than {0} bytes encoded: select fewer columns or rows")]
    TooLarge(usize),
    #[error("the query needs more than its memory limit ({0} bytes): {1}")]
    Memory(usize, String),
    /// A function asked, from its arguments, for more than one call may do.
    #[error("{0}")]
    Costly(String),
    #[error("the query ran longer than {0} ms")]
    Timeout(u64),
    /// As many queries as allowed are running.
    #[error("{0} queries are running, as many as may at once: try again shortly")]
    Busy(usize),
    #[error("{0}")]
    Store(String),
}

impl QueryFail {
    /// The HTTP status for it.
    pub fn status(&self) -> u16 {
        match self {
            QueryFail::Invalid(_) | QueryFail::Refused(_) => 400,
            QueryFail::Timeout(_) => 408,
            QueryFail::TooManyRows(_)
            | QueryFail::TooLarge(_)
            | QueryFail::Memory(..)
            | QueryFail::Costly(_) => 422,
            QueryFail::Busy(_) => 429,
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

/// An answer, encoded whole (within [`Limits::max_result_bytes`]) before anything is sent: a
/// client gets all of it or an error, never a cut-off body that looks complete.
#[derive(Debug)]
pub struct Answer {
    pub rows: usize,
    pub chunks: Vec<Vec<u8>>,
}

pub(super) fn classify(e: DataFusionError, limits: &Limits) -> QueryFail {
    let e = e.find_root().to_string();
    // The planner's own words for what SQLOptions refused.
    if e.contains("not supported")
        && (e.contains("DDL") || e.contains("DML") || e.contains("Statement"))
    {
        return QueryFail::Refused(e);
    }
    if let Some(at) = e.find(crate::guard::REFUSED) {
        return QueryFail::Costly(e[at..].to_owned());
    }
    if e.contains("Resources exhausted") {
        return QueryFail::Memory(limits.memory_bytes, e);
    }
    QueryFail::Invalid(e)
}

/// Why a session could not be made.
pub(super) fn session_fail(e: crate::QueryError, limits: &Limits) -> QueryFail {
    match e {
        crate::QueryError::DataFusion(d) => classify(d, limits),
        other => QueryFail::Store(other.to_string()),
    }
}

/// Plan and run one statement, its batches gathered within the row and byte caps.
pub(super) async fn execute(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
    limits: &Limits,
) -> Result<Output, QueryFail> {
    let opts = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(sql, opts)
        .await
        .map_err(|e| classify(e, limits))?;
    let schema: SchemaRef = df.schema().inner().clone();
    // Optimized (constants folded) and checked before it runs.
    let plan = df.into_optimized_plan().map_err(|e| classify(e, limits))?;
    crate::guard::check_plan(&plan).map_err(|e| classify(e, limits))?;
    let mut stream = datafusion::dataframe::DataFrame::new(ctx.state(), plan)
        .execute_stream()
        .await
        .map_err(|e| classify(e, limits))?;
    let (mut batches, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| classify(e, limits))?;
        rows += b.num_rows();
        if rows > limits.max_rows {
            return Err(QueryFail::TooManyRows(limits.max_rows));
        }
        // What the rows hold (buffers shared with the scan are counted in full: an upper
        // bound); the encoded answer is capped again below.
        bytes += b.get_array_memory_size();
        if bytes > limits.max_result_bytes.saturating_mul(4) {
            return Err(QueryFail::TooLarge(limits.max_result_bytes));
        }
        batches.push(b);
    }
    Ok(Output {
        schema,
        batches,
        rows,
    })
}

/// Run one statement under `limits` on the calling runtime, its answer not encoded (for the
/// CLI and tests; the API uses a `Runner`).
pub async fn run(catalog: &crate::Catalog, sql: &str, limits: Limits) -> Result<Output, QueryFail> {
    let work = async {
        let ctx = catalog
            .session(Some(limits.memory_bytes))
            .await
            .map_err(|e| session_fail(e, &limits))?;
        execute(&ctx, sql, &limits).await
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
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    /// From an `Accept` header, if it names one.
    pub(crate) fn from_accept(accept: &str) -> Option<Format> {
        [Format::Arrow, Format::Ndjson, Format::Csv, Format::Json]
            .into_iter()
            .find(|f| accept.contains(f.content_type().split(';').next().unwrap_or_default()))
    }
}

/// Encode a result, one chunk per batch (plus opening and closing chunks), each batch
/// dropped once encoded; more than `max_bytes` in all is [`QueryFail::TooLarge`].
pub fn encode(out: Output, format: Format, max_bytes: usize) -> Result<Answer, QueryFail> {
    use datafusion::arrow::{csv, ipc, json};
    let io = |e: datafusion::arrow::error::ArrowError| QueryFail::Store(e.to_string());
    let Output {
        schema,
        batches,
        rows,
    } = out;
    let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(batches.len() + 2);
    let mut total = 0usize;
    let mut push = |chunks: &mut Vec<Vec<u8>>, c: Vec<u8>| -> Result<(), QueryFail> {
        total += c.len();
        if total > max_bytes {
            return Err(QueryFail::TooLarge(max_bytes));
        }
        chunks.push(c);
        Ok(())
    };
    match format {
        Format::Json | Format::Ndjson => {
            let array = format == Format::Json;
            if array {
                push(&mut chunks, b"[".to_vec())?;
            }
            let mut first = true;
            for b in batches {
                let mut buf = Vec::new();
                let mut w = json::LineDelimitedWriter::new(&mut buf);
                w.write(&b).and_then(|()| w.finish()).map_err(io)?;
                drop(w);
                drop(b);
                if array {
                    let mut out = Vec::with_capacity(buf.len() + 16);
                    for line in buf.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        out.extend_from_slice(line);
                    }
                    push(&mut chunks, out)?;
                } else {
                    push(&mut chunks, buf)?;
                }
            }
            if array {
                push(&mut chunks, b"]".to_vec())?;
            }
        }
        Format::Csv => {
            let mut header = true;
            for b in batches {
                let mut buf = Vec::new();
                csv::WriterBuilder::new()
                    .with_header(header)
                    .build(&mut buf)
                    .write(&b)
                    .map_err(io)?;
                header = false;
                push(&mut chunks, buf)?;
            }
            if header {
                // No rows: still the header line.
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                push(&mut chunks, format!("{}\n", names.join(",")).into_bytes())?;
            }
        }
        Format::Arrow => {
            // Strings as plain Utf8, which every Arrow reader knows (queries run on views).
            let plain = crate::plain_schema(&schema);
            let mut w = ipc::writer::StreamWriter::try_new(Vec::new(), &plain).map_err(io)?;
            for b in batches {
                w.write(&crate::to_schema(&b, &plain).map_err(io)?)
                    .map_err(io)?;
                if w.get_ref().len() > max_bytes {
                    return Err(QueryFail::TooLarge(max_bytes));
                }
            }
            w.finish().map_err(io)?;
            let buf = w.into_inner().map_err(io)?;
            push(&mut chunks, buf)?;
        }
    }
    Ok(Answer { rows, chunks })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The caps the query tests run under (the runner's tests too).
    pub(in crate::api) fn limits() -> Limits {
        Limits {
            max_rows: 1000,
            timeout_ms: 3000,
            memory_bytes: 64 << 20,
            max_result_bytes: 1 << 20,
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
        std::fs::create_dir_all(vigil_store::layout::events(dir.path())).unwrap();
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
        let output = || Output {
            schema: schema.clone(),
            batches: batches.clone(),
            rows: 2,
        };
        let body = |f: Format| encode(output(), f, 1 << 20).unwrap().chunks.concat();
        // Past the byte cap, in any format: refused, not cut off.
        for f in [Format::Json, Format::Ndjson, Format::Csv, Format::Arrow] {
            let e = encode(output(), f, 8).unwrap_err();
            assert!(matches!(e, QueryFail::TooLarge(8)), "{f:?}: {e}");
        }
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
        // The timeout far away, so that only the memory cap can stop it.
        let small = Limits {
            memory_bytes: 8 << 20,
            timeout_ms: 300_000,
            ..limits()
        };
        let started = std::time::Instant::now();
        let e = run(d.path(), q, small).await.unwrap_err();
        assert!(matches!(e, QueryFail::Memory(8_388_608, _)), "{e}");
        assert_eq!(e.status(), 422, "{e}");
        assert!(started.elapsed() < Duration::from_secs(120));
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

    /// A reader's hostile queries: each refused at once for what its functions would
    /// allocate or compute, before a core or the process's memory is spent on it.
    #[tokio::test]
    async fn functions_that_allocate_or_compute_from_their_arguments_are_capped() {
        let d = store().await;
        for q in [
            "SELECT repeat('x', 20000) FROM generate_series(1, 100000)",
            "SELECT repeat('x', 60000000) FROM generate_series(1, 8192)",
            "SELECT cardinality(range(0, 4000000000))",
            "SELECT levenshtein(repeat('a', 300000), repeat('b', 300000))",
            "SELECT lpad('x', 2000000000)",
            "SELECT replace(repeat('a', 100000), 'a', repeat('b', 100000))",
            "SELECT regexp_replace(repeat('a', 100000), 'a', repeat('b', 100000), 'g')",
            "SELECT cardinality(array_repeat(1, 1000000000))",
            "SELECT cardinality(array_resize([1], 1000000000))",
            "SELECT cardinality(range(TIMESTAMP '1970-01-01T00:00:00Z', TIMESTAMP '2200-01-01T00:00:00Z', INTERVAL '1 millisecond'))",
        ] {
            let started = std::time::Instant::now();
            let e = run(d.path(), q, limits()).await.unwrap_err();
            assert!(matches!(e, QueryFail::Costly(_)), "{q}: {e}");
            assert_eq!(e.status(), 422, "{q}");
            assert!(e.to_string().starts_with("function cap: "), "{q}: {e}");
            assert!(started.elapsed() < Duration::from_secs(5), "{q}");
        }
        // Within the caps they work as ever.
        let out = run(
            d.path(),
            "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, levenshtein('kitten', 'sitting') AS l, \
             cardinality(range(0, 10)) AS n, cardinality(generate_series(DATE '2026-01-01', DATE '2026-01-31', INTERVAL '1 day')) AS days, \
             replace('a.b.c', '.', '::') AS s",
            limits(),
        )
        .await
        .unwrap();
        let b = &out.batches[0];
        let col = |n: &str| {
            datafusion::arrow::util::display::array_value_to_string(b.column_by_name(n).unwrap(), 0)
                .unwrap()
        };
        assert_eq!(
            ["r", "p", "l", "n", "days", "s"].map(col),
            ["ababab", "007", "3", "10", "31", "a::b::c"]
        );
    }
}
