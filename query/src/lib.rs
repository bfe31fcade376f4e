//! Vigil's query stage: SQL (DataFusion) over the store.
//!
//! **For:** registering the store's files as tables and running read-only SQL over them.
//! Tables: `stored` (every stored row, decoded or rejected, with its Kafka position and chain
//! hashes), `events` (the decoded events: `stored` without rejected rows) and `rejected`
//! (records that failed to decode, with `store_error`), `alerts` (the newest revision of every
//! stored alert) and `alert_revisions` (all of them).
//! The analyst HTTP API ([`api`]): authenticated and role-checked routes over the same tables,
//! SQL in a sandbox (read-only, time, row and memory caps), alerts and their lifecycle, every
//! call handed to an audit sink.
//! **Not for:** writing data (lifecycle changes and the audit records go through callbacks the
//! binary provides), deciding who is who (the identity provider signs tokens; keys come from
//! the configuration).

pub mod api;

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
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
pub async fn session_with(
    data_dir: &Path,
    memory_limit_bytes: Option<usize>,
) -> Result<SessionContext, QueryError> {
    let events_dir = data_dir.join("events");
    if !events_dir.is_dir() {
        return Err(QueryError::NoStore(data_dir.display().to_string()));
    }
    let mut rt = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
    if let Some(limit) = memory_limit_bytes {
        rt = rt.with_memory_limit(limit, 1.0);
    }
    let ctx = SessionContext::new_with_config_rt(
        SessionConfig::new().with_information_schema(true),
        rt.build_arc()?,
    );
    let abs = events_dir
        .canonicalize()
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let url = ListingTableUrl::parse(format!("{}/", abs.display()))?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    // The schema is known: an empty store is still queryable, and a file of another schema
    // is an error rather than a silent widening.
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(vigil_store::store_schema());
    ctx.register_table("stored", Arc::new(ListingTable::try_new(config)?))?;
    ctx.sql("CREATE VIEW events AS SELECT * FROM stored WHERE store_error IS NULL")
        .await?;
    ctx.sql("CREATE VIEW rejected AS SELECT * FROM stored WHERE store_error IS NOT NULL")
        .await?;
    register_alerts(&ctx, data_dir).await?;
    Ok(ctx)
}

/// `alert_revisions` (every stored revision) and `alerts` (the newest revision of each).
async fn register_alerts(ctx: &SessionContext, data_dir: &Path) -> Result<(), QueryError> {
    let schema = vigil_detect::alerts::alert_schema();
    let dir = vigil_detect::alerts::alerts_dir(data_dir);
    if dir.is_dir() {
        let abs = dir
            .canonicalize()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let url = ListingTableUrl::parse(format!("{}/", abs.display()))?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema.clone());
        ctx.register_table("alert_revisions", Arc::new(ListingTable::try_new(config)?))?;
    } else {
        let empty = datafusion::datasource::MemTable::try_new(schema.clone(), vec![vec![]])?;
        ctx.register_table("alert_revisions", Arc::new(empty))?;
    }
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect();
    let cols = cols.join(", ");
    ctx.sql(&format!(
        "CREATE VIEW alerts AS SELECT {cols} FROM (SELECT *, row_number() OVER \
         (PARTITION BY alert_id ORDER BY revision DESC) AS vigil_rn FROM alert_revisions) \
         WHERE vigil_rn = 1"
    ))
    .await?;
    Ok(())
}

/// Run one SQL statement over the store and collect the result.
pub async fn query(data_dir: &Path, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = session(data_dir).await?;
    Ok(ctx.sql(sql).await?.collect().await?)
}
