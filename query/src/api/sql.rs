//! SQL in a sandbox: one read-only statement (no DDL, DML, COPY, SET or other statements; no
//! URL or file tables), within a time limit, a row cap and a memory cap; the result encoded as
//! JSON, NDJSON, CSV or Arrow IPC.

use std::time::Duration;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
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

/// How queries share the process: their threads, how many run at once, their memory together.
#[derive(Clone, Copy, Debug)]
pub struct Sharing {
    /// Worker threads of the query runtime (none of ingest's, detection's or the API's own).
    pub threads: usize,
    /// Queries running at once; one more is refused (429).
    pub max_concurrent: usize,
    /// Memory of all running queries together.
    pub memory_total_bytes: usize,
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

fn classify(e: DataFusionError, limits: &Limits) -> QueryFail {
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
fn session_fail(e: crate::QueryError, limits: &Limits) -> QueryFail {
    match e {
        crate::QueryError::DataFusion(d) => classify(d, limits),
        other => QueryFail::Store(other.to_string()),
    }
}

/// One query's share of the memory all queries share: its own cap and the common one, both
/// held for every byte it reserves.
#[derive(Debug)]
struct QueryPool {
    own: TrackConsumersPool<GreedyMemoryPool>,
    shared: Arc<GreedyMemoryPool>,
    total: usize,
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a query's memory, within {} bytes for all", self.total)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "vigil-query"
    }
    fn register(&self, c: &MemoryConsumer) {
        self.own.register(c)
    }
    fn unregister(&self, c: &MemoryConsumer) {
        self.own.unregister(c)
    }
    fn grow(&self, r: &MemoryReservation, additional: usize) {
        self.own.grow(r, additional);
        self.shared.grow(r, additional);
    }
    fn shrink(&self, r: &MemoryReservation, shrink: usize) {
        self.own.shrink(r, shrink);
        self.shared.shrink(r, shrink);
    }
    fn try_grow(&self, r: &MemoryReservation, additional: usize) -> datafusion::error::Result<()> {
        self.own.try_grow(r, additional)?;
        if self.shared.try_grow(r, additional).is_err() {
            self.own.shrink(r, additional);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "all running queries together may use {} bytes, and the others hold the rest",
                self.total
            )));
        }
        Ok(())
    }
    fn reserved(&self) -> usize {
        self.own.reserved()
    }
    fn memory_limit(&self) -> MemoryLimit {
        self.own.memory_limit()
    }
}

/// A runtime that is shut down without waiting (a query that never yields must not hold up
/// the process's exit; a runtime dropped inside another would panic).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs queries on their own threads, so many at once, in memory they share.
#[derive(Clone)]
pub struct Runner {
    /// Held for `handle`: the runtime lives as long as a clone of the runner.
    _rt: Arc<OwnRuntime>,
    handle: tokio::runtime::Handle,
    permits: Arc<tokio::sync::Semaphore>,
    shared: Arc<GreedyMemoryPool>,
    pub limits: Limits,
    pub sharing: Sharing,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("limits", &self.limits)
            .field("sharing", &self.sharing)
            .finish_non_exhaustive()
    }
}

impl Runner {
    pub fn new(limits: Limits, sharing: Sharing) -> std::io::Result<Runner> {
        assert!(sharing.threads > 0 && sharing.max_concurrent > 0);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(sharing.threads)
            .max_blocking_threads(sharing.threads.max(2) * 2)
            .thread_name("vigil-query")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        Ok(Runner {
            _rt: Arc::new(OwnRuntime(Some(rt))),
            handle,
            permits: Arc::new(tokio::sync::Semaphore::new(sharing.max_concurrent)),
            shared: Arc::new(GreedyMemoryPool::new(sharing.memory_total_bytes)),
            limits,
            sharing,
        })
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.sharing.max_concurrent - self.permits.available_permits()
    }

    /// Run one statement over the store's tables, its answer encoded as `format`. Refused at
    /// once when as many queries as may are running; stopped at the timeout (its threads are
    /// freed at its next step: a single step is bounded by the function caps).
    pub async fn run(
        &self,
        catalog: Arc<crate::Catalog>,
        sql: String,
        format: Format,
    ) -> Result<Answer, QueryFail> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| QueryFail::Busy(self.sharing.max_concurrent))?;
        let limits = self.limits;
        let pool: Arc<dyn MemoryPool> = Arc::new(QueryPool {
            own: TrackConsumersPool::new(
                GreedyMemoryPool::new(limits.memory_bytes),
                std::num::NonZeroUsize::new(3).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
            shared: self.shared.clone(),
            total: self.sharing.memory_total_bytes,
        });
        let task = self.handle.spawn(async move {
            // Held until the query really ends, timed out or not.
            let _permit = permit;
            let ctx = catalog
                .session_in(pool)
                .await
                .map_err(|e| session_fail(e, &limits))?;
            let out = execute(&ctx, &sql, &limits).await?;
            encode(out, format, limits.max_result_bytes)
        });
        let abort = task.abort_handle();
        match tokio::time::timeout(Duration::from_millis(limits.timeout_ms), task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(QueryFail::Store(format!("the query stopped: {e}"))),
            Err(_) => {
                abort.abort();
                Err(QueryFail::Timeout(limits.timeout_ms))
            }
        }
    }
}

/// Plan and run one statement, its batches gathered within the row and byte caps.
async fn execute(
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
/// CLI and tests; the API uses a [`Runner`]).
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
mod tests {
    use super::*;

    fn limits() -> Limits {
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

    fn runner(threads: usize, max_concurrent: usize, memory_total_bytes: usize) -> Runner {
        let sharing = Sharing {
            threads,
            max_concurrent,
            memory_total_bytes,
        };
        Runner::new(limits(), sharing).unwrap()
    }

    const FOREVER: &str = "SELECT count(*) FROM (SELECT unnest(range(0, 100000)) AS x) a \
                           CROSS JOIN (SELECT unnest(range(0, 100000)) AS x) b \
                           CROSS JOIN (SELECT unnest(range(0, 100000)) AS x) c";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_over_the_cap_are_refused_and_a_stopped_one_frees_its_place() {
        let d = store().await;
        let catalog = Arc::new(d.catalog.clone());
        let mut r = runner(1, 2, 256 << 20);
        r.limits.timeout_ms = 1500;
        // Two that run for ever hold both places: a third is refused at once.
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let (r, c) = (r.clone(), catalog.clone());
                tokio::spawn(async move { r.run(c, FOREVER.into(), Format::Json).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(r.running(), 2);
        let e = r
            .run(catalog.clone(), "SELECT 1".into(), Format::Json)
            .await
            .unwrap_err();
        assert!(matches!(e, QueryFail::Busy(2)), "{e}");
        assert_eq!(e.status(), 429);
        // They end at their timeout, on time, and their places are free again.
        let started = std::time::Instant::now();
        for h in slow {
            let e = h.await.unwrap().unwrap_err();
            assert!(matches!(e, QueryFail::Timeout(1500)), "{e}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let freed = std::time::Instant::now();
        while r.running() > 0 {
            assert!(
                freed.elapsed() < Duration::from_secs(10),
                "places not freed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ok = r
            .run(catalog.clone(), "SELECT 1 AS one".into(), Format::Csv)
            .await
            .unwrap();
        assert_eq!(ok.chunks.concat(), b"one\n1\n");
    }

    /// The memory all queries share: a query within its own cap is refused when the others
    /// hold the rest, and gets it once they let go.
    #[test]
    fn memory_is_shared_by_all_queries_together() {
        let shared = Arc::new(GreedyMemoryPool::new(100));
        let pool = || -> Arc<dyn MemoryPool> {
            Arc::new(QueryPool {
                own: TrackConsumersPool::new(
                    GreedyMemoryPool::new(80),
                    std::num::NonZeroUsize::MIN,
                ),
                shared: shared.clone(),
                total: 100,
            })
        };
        let (p, q) = (pool(), pool());
        let a = MemoryConsumer::new("a").register(&p);
        let b = MemoryConsumer::new("b").register(&q);
        a.try_grow(60).unwrap();
        // Its own cap first.
        let e = b.try_grow(90).unwrap_err().to_string();
        assert!(!e.contains("all running queries"), "{e}");
        let e = b.try_grow(60).unwrap_err().to_string();
        assert!(
            e.contains("all running queries together may use 100 bytes"),
            "{e}"
        );
        assert_eq!((q.reserved(), shared.reserved()), (0, 60));
        a.free();
        b.try_grow(60).unwrap();
        assert_eq!((p.reserved(), q.reserved(), shared.reserved()), (0, 60, 60));
        drop(b);
        assert_eq!(shared.reserved(), 0);
    }
}
