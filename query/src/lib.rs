//! Vigil's query stage: SQL (DataFusion) over the store.
//!
//! **For:** registering the store's files as tables and running read-only SQL over them.
//! Tables: `stored` (every stored row, decoded or rejected, with its Kafka position and chain
//! hashes), `events` (the decoded events: `stored` without rejected rows) and `rejected`
//! (records that failed to decode, with `store_error`), `alerts` (the newest revision of every
//! stored alert), `alert_revisions` and `alert_history` (all of them), `checkpoints` (every
//! stored signed checkpoint).
//! The analyst HTTP API ([`api`]): authenticated and role-checked routes over the same tables,
//! SQL in a sandbox (read-only, time, row and memory caps), alerts and their lifecycle, every
//! call handed to an audit sink.
//! **Not for:** writing data (lifecycle changes and the audit records go through callbacks the
//! binary provides), deciding who is who (the identity provider signs tokens; keys come from
//! the configuration).

pub mod api;
pub mod export;
mod guard;
pub mod recent;

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    #[error("data directory {0} has no store (expected an events/ directory)")]
    NoStore(String),
}

/// A session with the store's tables registered.
pub async fn session(data_dir: &Path) -> Result<SessionContext, QueryError> {
    session_with(data_dir, None).await
}

/// [`session`], its memory bounded to `memory_limit_bytes` when given (queries over it fail
/// with "Resources exhausted" past it).
pub(crate) async fn session_with(
    data_dir: &Path,
    memory_limit_bytes: Option<usize>,
) -> Result<SessionContext, QueryError> {
    Catalog::open(data_dir)?.session(memory_limit_bytes).await
}

/// The store's tables, made once and shared by the sessions made from them: the files' list is
/// read at each query, their footers, page indexes and statistics (what prunes files and row
/// groups by `event_time` and the other columns) only once per file.
#[derive(Clone)]
pub struct Catalog {
    data_dir: std::path::PathBuf,
    stored: Arc<dyn datafusion::catalog::TableProvider>,
    alert_revisions: Arc<dyn datafusion::catalog::TableProvider>,
    /// The views over the shared tables, planned once (planning them took most of a
    /// session's set-up).
    views: Arc<tokio::sync::OnceCell<Views>>,
    live: Option<Live>,
    /// Every session's caches of file statistics and Parquet metadata (footers, page
    /// indexes): files never change once written, so each is read once.
    caches: datafusion::execution::cache::cache_manager::CacheManagerConfig,
}

/// Rows not yet in a file ([`recent::Recent`]) and where each log is durable up to.
#[derive(Clone)]
pub struct Live {
    pub recent: Arc<recent::Recent>,
    pub durable: Arc<dyn Fn() -> std::collections::HashMap<recent::Log, i64> + Send + Sync>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// `stored`: the files, and (when live) the rows not in a file yet — per log, files up to
    /// the durable offset taken once for the query, the buffer after it. True when `stored`
    /// is that per-query union rather than the shared table.
    async fn register_stored(&self, ctx: &SessionContext) -> Result<bool, QueryError> {
        let Some(live) = &self.live else {
            ctx.register_table("stored", self.stored.clone())?;
            return Ok(false);
        };
        let (rows, cutoffs) = live.recent.snapshot(&(live.durable)());
        if rows.is_empty() {
            ctx.register_table("stored", self.stored.clone())?;
            return Ok(false);
        }
        ctx.register_table("stored_files", self.stored.clone())?;
        let schema = self.stored.schema();
        let rows = rows
            .iter()
            .map(|b| to_schema(b, &schema))
            .collect::<Result<Vec<_>, _>>()
            .map_err(DataFusionError::from)?;
        let mem = datafusion::datasource::MemTable::try_new(schema, vec![rows])?;
        ctx.register_table("stored_recent", Arc::new(mem))?;
        // Topic names are Kafka's ([a-zA-Z0-9._-]): safe inside quotes.
        let cases: Vec<String> = cutoffs
            .iter()
            .map(|(log, cut)| {
                format!(
                    "WHEN kafka_topic = '{}' AND kafka_partition = {} THEN {cut}",
                    log.topic, log.partition
                )
            })
            .collect();
        ctx.sql(&format!(
            "CREATE VIEW stored AS SELECT * FROM stored_files WHERE kafka_offset <= \
             CASE {} ELSE 9223372036854775807 END UNION ALL SELECT * FROM stored_recent",
            cases.join(" ")
        ))
        .await?;
        Ok(true)
    }

    /// The views, planned on first use against the shared tables.
    async fn views(&self) -> Result<&Views, QueryError> {
        self.views
            .get_or_try_init(|| async {
                let ctx = SessionContext::new();
                ctx.register_table("stored", self.stored.clone())?;
                ctx.register_table("alert_revisions", self.alert_revisions.clone())?;
                let (events, rejected) = event_views(&ctx).await?;
                let cols: Vec<String> = self
                    .alert_revisions
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| format!("\"{}\"", f.name()))
                    .collect();
                let alerts = ctx
                    .sql(&format!(
                        "SELECT {} FROM (SELECT *, row_number() OVER (PARTITION BY alert_id \
                         ORDER BY revision DESC) AS vigil_rn FROM alert_revisions) WHERE vigil_rn = 1",
                        cols.join(", ")
                    ))
                    .await?
                    .logical_plan()
                    .clone();
                let alert_history = ctx.table("alert_revisions").await?.logical_plan().clone();
                ctx.register_table("alerts", view(&alerts))?;
                let incidents = ctx.sql(INCIDENTS).await?.logical_plan().clone();
                Ok::<_, QueryError>(Views {
                    events,
                    rejected,
                    alerts,
                    alert_history,
                    incidents,
                })
            })
            .await
    }
}

/// Views planned once: their plans hold the tables themselves, not their names.
struct Views {
    events: LogicalPlan,
    rejected: LogicalPlan,
    alerts: LogicalPlan,
    alert_history: LogicalPlan,
    incidents: LogicalPlan,
}

/// `incidents`: the alerts (newest revisions) of each incident together — who it is about,
/// when, how many alerts from how many rules, and a combined severity: the highest of its
/// alerts, one level higher (up to critical) when three or more rules saw the subject.
const INCIDENTS: &str = "SELECT incident_id, \
     min(incident_subject) AS subject, \
     CASE least(4, max(CASE severity WHEN 'info' THEN 0 WHEN 'low' THEN 1 WHEN 'medium' THEN 2 \
       WHEN 'high' THEN 3 ELSE 4 END) + CASE WHEN count(DISTINCT rule_id) >= 3 THEN 1 ELSE 0 END) \
       WHEN 0 THEN 'info' WHEN 1 THEN 'low' WHEN 2 THEN 'medium' WHEN 3 THEN 'high' \
       ELSE 'critical' END AS severity, \
     count(*) AS alerts, \
     count(DISTINCT rule_id) AS rules, \
     array_agg(DISTINCT rule_id) AS rule_ids, \
     min(first_event_time) AS first_event_time, \
     max(last_event_time) AS last_event_time, \
     max(detected_at) AS updated_at, \
     sum(CASE WHEN status IN ('open', 'acknowledged') THEN 1 ELSE 0 END) AS alerts_unresolved \
     FROM alerts WHERE incident_id IS NOT NULL GROUP BY incident_id";

/// `events` (decoded rows) and `rejected` (rows that failed to decode) over `ctx`'s `stored`.
async fn event_views(ctx: &SessionContext) -> Result<(LogicalPlan, LogicalPlan), QueryError> {
    use datafusion::prelude::col;
    let stored = ctx.table("stored").await?;
    let events = stored.clone().filter(col("store_error").is_null())?;
    let rejected = stored.filter(col("store_error").is_not_null())?;
    Ok((
        events.logical_plan().clone(),
        rejected.logical_plan().clone(),
    ))
}

fn view(plan: &LogicalPlan) -> Arc<datafusion::catalog::view::ViewTable> {
    Arc::new(datafusion::catalog::view::ViewTable::new(
        plan.clone(),
        None,
    ))
}

/// The store's schema as queries see it: strings as `Utf8View` (cheaper to read from Parquet,
/// hash and compare than `Utf8`; DataFusion's own default when it infers a schema).
fn query_schema(stored: &SchemaRef) -> SchemaRef {
    retype(stored, |t| {
        (t == &DataType::Utf8).then_some(DataType::Utf8View)
    })
}

/// `schema` with `Utf8View`/`BinaryView` columns as `Utf8`/`Binary`, the types every Arrow
/// reader knows.
pub(crate) fn plain_schema(schema: &SchemaRef) -> SchemaRef {
    retype(schema, |t| match t {
        DataType::Utf8View => Some(DataType::Utf8),
        DataType::BinaryView => Some(DataType::Binary),
        _ => None,
    })
}

/// `schema` with each column's type replaced where `to` gives one.
fn retype(schema: &SchemaRef, to: impl Fn(&DataType) -> Option<DataType>) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match to(f.data_type()) {
            Some(t) => f.as_ref().clone().with_data_type(t),
            None => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` cast to `schema` (the same columns, other string or binary types).
pub(crate) fn to_schema(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let cols = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), cols)
}

/// A listing table over a directory's Parquet files, of a known schema (an empty directory is
/// still queryable; a file of another schema is an error rather than a silent widening), its
/// files' statistics kept in `statistics` (a table made by hand does not use the session's
/// cache: without one, every query works them out again from every footer).
fn listing(
    dir: &Path,
    schema: SchemaRef,
    statistics: Option<Arc<datafusion::execution::cache::cache_manager::FileStatisticsCache>>,
) -> Result<Arc<ListingTable>, QueryError> {
    let abs = dir
        .canonicalize()
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let url = ListingTableUrl::parse(format!("{}/", abs.display()))?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(
        ListingTable::try_new(config)?.with_cache(statistics),
    ))
}

impl Catalog {
    /// The tables of the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Catalog, QueryError> {
        let events_dir = vigil_store::layout::events(data_dir);
        if !events_dir.is_dir() {
            return Err(QueryError::NoStore(data_dir.display().to_string()));
        }
        // Made once and shared; the list of files is never cached (a new file must show at once:
        // rows leave the in-memory buffer when their file is durable).
        use datafusion::execution::cache::cache_manager::CacheManagerConfig;
        let no_listing = CacheManagerConfig::default().with_list_files_cache_limit(0);
        let rt = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_cache_manager(no_listing.clone())
            .build()?;
        let statistics = rt.cache_manager.get_file_statistic_cache();
        let caches = no_listing
            .with_file_statistics_cache(statistics.clone())
            .with_file_metadata_cache(Some(rt.cache_manager.get_file_metadata_cache()));
        let stored = listing(
            &events_dir,
            query_schema(&vigil_store::store_schema()),
            statistics.clone(),
        )?;
        let schema = vigil_detect::alerts::alert_schema();
        let dir = vigil_store::layout::alerts(data_dir);
        let alert_revisions: Arc<dyn datafusion::catalog::TableProvider> = if dir.is_dir() {
            listing(&dir, schema, statistics)?
        } else {
            Arc::new(datafusion::datasource::MemTable::try_new(
                schema,
                vec![vec![]],
            )?)
        };
        Ok(Catalog {
            data_dir: data_dir.to_owned(),
            stored,
            alert_revisions,
            views: Arc::default(),
            live: None,
            caches,
        })
    }

    /// Queries see the rows not yet in a file too.
    pub fn with_live(mut self, live: Live) -> Catalog {
        self.live = Some(live);
        self
    }

    /// A session over the tables, its memory bounded to `memory_limit_bytes` when given.
    pub async fn session(
        &self,
        memory_limit_bytes: Option<usize>,
    ) -> Result<SessionContext, QueryError> {
        let mut rt = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_cache_manager(self.caches.clone());
        if let Some(limit) = memory_limit_bytes {
            rt = rt.with_memory_limit(limit, 1.0);
        }
        self.session_on(rt).await
    }

    /// A session over the tables whose memory is reserved from `pool`.
    pub(crate) async fn session_in(
        &self,
        pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    ) -> Result<SessionContext, QueryError> {
        let rt = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_cache_manager(self.caches.clone())
            .with_memory_pool(pool);
        self.session_on(rt).await
    }

    async fn session_on(
        &self,
        rt: datafusion::execution::runtime_env::RuntimeEnvBuilder,
    ) -> Result<SessionContext, QueryError> {
        let mut config = SessionConfig::new().with_information_schema(true);
        // Filters evaluated while decoding (only matching rows' other columns are read), the
        // cheapest first: analyst queries are mostly selective (one caller, one id, an hour).
        let opts = config.options_mut();
        opts.execution.parquet.pushdown_filters = true;
        opts.execution.parquet.reorder_filters = true;
        let ctx = SessionContext::new_with_config_rt(config, rt.build_arc()?);
        guard::install(&ctx);
        let views = self.views().await?;
        if self.register_stored(&ctx).await? {
            let (events, rejected) = event_views(&ctx).await?;
            ctx.register_table("events", view(&events))?;
            ctx.register_table("rejected", view(&rejected))?;
        } else {
            ctx.register_table("events", view(&views.events))?;
            ctx.register_table("rejected", view(&views.rejected))?;
        }
        ctx.register_table("alert_revisions", self.alert_revisions.clone())?;
        ctx.register_table("alerts", view(&views.alerts))?;
        ctx.register_table("alert_history", view(&views.alert_history))?;
        ctx.register_table("incidents", view(&views.incidents))?;
        ctx.register_table(
            "checkpoints",
            Arc::new(Checkpoints {
                data_dir: self.data_dir.clone(),
            }),
        )?;
        Ok(ctx)
    }
}

/// `checkpoints`: every stored signed checkpoint (one row per note: log, tree size, root,
/// chain head, time, the note itself), read when a query scans it. Signatures are not checked
/// here; `vigil verify` does.
#[derive(Debug)]
struct Checkpoints {
    data_dir: std::path::PathBuf,
}

fn checkpoints_schema() -> SchemaRef {
    use datafusion::arrow::datatypes::TimeUnit;
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("tree_size", DataType::Int64, false),
        Field::new("root", DataType::Utf8, false),
        Field::new("chain_head", DataType::Utf8, false),
        Field::new("chain_offset", DataType::Int64, false),
        Field::new(
            "signed_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("note", DataType::Utf8, false),
    ]))
}

#[async_trait::async_trait]
impl datafusion::catalog::TableProvider for Checkpoints {
    fn schema(&self) -> SchemaRef {
        checkpoints_schema()
    }

    fn table_type(&self) -> datafusion::logical_expr::TableType {
        datafusion::logical_expr::TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::prelude::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let batch = read_checkpoints(&self.data_dir)?;
        datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

fn read_checkpoints(data_dir: &Path) -> Result<RecordBatch, DataFusionError> {
    use datafusion::arrow::array::{
        ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
    };
    use vigil_store::checkpoint::{Checkpointer, list_notes, parse_note};
    let hex = |h: &[u8]| hex::encode(h);
    let ext = |e: String| DataFusionError::External(e.into());
    let root = vigil_store::layout::checkpoints(data_dir);
    let (
        mut topic,
        mut partition,
        mut size,
        mut tree_root,
        mut head,
        mut offset,
        mut time,
        mut note,
    ) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for vigil_store::LogId {
        topic: t,
        partition: p,
    } in vigil_store::files::partitions_under(&root).map_err(|e| ext(e.to_string()))?
    {
        let dir = Checkpointer::log_dir(&root, &t, p).map_err(|e| ext(e.to_string()))?;
        for (_, path) in list_notes(&dir).map_err(|e| ext(e.to_string()))? {
            let bytes =
                std::fs::read(&path).map_err(|e| ext(format!("{}: {e}", path.display())))?;
            let cp = parse_note(&bytes).map_err(|e| ext(format!("{}: {e}", path.display())))?;
            topic.push(t.clone());
            partition.push(p);
            size.push(i64::try_from(cp.size).unwrap_or(i64::MAX));
            tree_root.push(hex(&cp.root));
            head.push(hex(&cp.chain.hash));
            offset.push(cp.chain.offset);
            time.push(cp.time_ms);
            note.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(topic)),
        Arc::new(Int32Array::from(partition)),
        Arc::new(Int64Array::from(size)),
        Arc::new(StringArray::from(tree_root)),
        Arc::new(StringArray::from(head)),
        Arc::new(Int64Array::from(offset)),
        Arc::new(TimestampMillisecondArray::from(time).with_timezone("UTC")),
        Arc::new(StringArray::from(note)),
    ];
    Ok(RecordBatch::try_new(checkpoints_schema(), cols)?)
}

/// Run one SQL statement over the store and collect the result, strings as plain `Utf8`.
pub async fn query(data_dir: &Path, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = session(data_dir).await?;
    let batches = ctx.sql(sql).await?.collect().await?;
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    let plain = plain_schema(&first.schema());
    Ok(batches
        .iter()
        .map(|b| to_schema(b, &plain))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DataFusionError::from)?)
}
