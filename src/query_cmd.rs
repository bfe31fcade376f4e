//! `vigil query`: SQL over the store, printed as a table, JSON lines or CSV.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use datafusion::arrow;

use crate::config::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(clap::Args)]
pub struct QueryArgs {
    /// Store directory (overrides `store.data_dir`).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// The SQL; tables: `events`, `rejected`, `stored`.
    sql: String,
}

pub fn run(cfg: &Config, args: QueryArgs) -> anyhow::Result<ExitCode> {
    let dir = crate::services::bucket::reading_dir(cfg, args.data_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let batches = rt
        .block_on(vigil_query::query(&dir, &args.sql))
        .context("query failed")?;
    let mut out = std::io::stdout().lock();
    match args.format {
        OutputFormat::Table => writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(&batches)?
        )?,
        OutputFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            w.write_batches(&batches.iter().collect::<Vec<_>>())?;
            w.finish()?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::Writer::new(&mut out);
            for b in &batches {
                w.write(b)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
