//! `vigil export`: stored events in a time range as OCSF Parquet (Amazon Security Lake's
//! custom-source layout) or ECS JSON lines, into a directory or a bucket.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vigil_query::export::{Export, ExportFormat};

use crate::config::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// OCSF 1.8.0 Parquet, one Security Lake custom source per event class.
    Ocsf,
    /// Elastic Common Schema JSON, one event a line.
    Ecs,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Store directory (overrides `store.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Format,
    /// Events at or after this time (RFC 3339).
    #[arg(long)]
    from: String,
    /// Events before this time (RFC 3339).
    #[arg(long)]
    to: String,
    /// A directory (created; files already there are never overwritten: the next number is
    /// taken), or `s3://bucket/prefix` (files put create-only with the `store.s3_*` settings and
    /// the `AWS_*` variables: the same bytes again count as put, other bytes under a name
    /// already there are refused).
    #[arg(long)]
    out: String,
    /// Security Lake's `region=` partition (OCSF).
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Security Lake's `accountId=` partition (OCSF).
    #[arg(long, default_value = "000000000000")]
    account_id: String,
    /// Events per file, at most.
    #[arg(long, default_value_t = 100_000)]
    max_rows_per_file: usize,
}

fn parse_time(s: &str) -> anyhow::Result<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 time (2026-11-22T10:00:00Z)"))?;
    t.timestamp_nanos_opt()
        .ok_or_else(|| anyhow::anyhow!("{s:?} is out of range"))
}

pub fn run(cfg: &Config, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let dir = crate::services::bucket::reading_dir(cfg, args.data_dir)?;
    let spec = Export {
        from_ns: parse_time(&args.from)?,
        to_ns: parse_time(&args.to)?,
        format: match args.format {
            Format::Ocsf => ExportFormat::Ocsf,
            Format::Ecs => ExportFormat::Ecs,
        },
        region: args.region,
        account_id: args.account_id,
        max_rows_per_file: args.max_rows_per_file,
    };
    // A bucket is written from a staging directory (one file at a time, create-only).
    let (out, bucket, _staging) = if args.out.starts_with("s3://") {
        let mut bcfg = cfg.clone();
        bcfg.store.url = args.out.clone();
        let bucket = crate::services::bucket::open(&mut bcfg)?
            .ok_or_else(|| anyhow::anyhow!("--out {}: not a bucket", args.out))?;
        let staging = tempfile::tempdir().context("a staging directory")?;
        (staging.path().to_owned(), Some(bucket), Some(staging))
    } else {
        (PathBuf::from(&args.out), None, None)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt
        .block_on(vigil_query::export::export(&dir, &out, &spec))
        .context("export failed")?;
    if let Some(b) = &bucket {
        for f in &report.files {
            let rel = f.to_string_lossy().replace('\\', "/");
            let bytes = std::fs::read(out.join(f)).with_context(|| format!("reading {rel}"))?;
            anyhow::ensure!(
                b.create_object(&rel, bytes)
                    .with_context(|| format!("putting {rel}"))?,
                "{rel} is already in the bucket: nothing is overwritten (export to another prefix)"
            );
        }
    }
    for f in &report.files {
        println!("{}", f.display());
    }
    eprintln!(
        "{} events in {} file(s) written to {}",
        report.events,
        report.files.len(),
        args.out
    );
    Ok(ExitCode::SUCCESS)
}
