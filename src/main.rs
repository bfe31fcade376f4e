//! `vigil`: the one entry point. Parses arguments and configuration, sets up logging, and
//! hands off to a command (`*_cmd.rs`). Commands open what they need from `services/` and
//! the stage crates, and never call one another.

mod alerts_cmd;
mod api_key_cmd;
mod compact_cmd;
mod config;
mod decode_cmd;
mod export_cmd;
mod keys_cmd;
mod policy_cmd;
mod produce_cmd;
mod proof_cmd;
mod prune_cmd;
mod query_cmd;
mod rules_cmd;
mod serve_cmd;
mod services;
mod simulate_cmd;
mod verify_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// jemalloc: its size classes and its return of freed pages keep the resident set near the
/// live heap (with glibc's allocator, freed batch buffers stayed resident: BENCHMARKS.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (`_RJEM_MALLOC_CONF` in the environment still overrides them): freed
/// pages are returned within a second by a background thread, not kept ten seconds — at full
/// speed the batches freed meanwhile were 100 MiB of resident set.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Audit-log pipeline and anomaly detector for zero-trust backends"
)]
struct Cli {
    /// TOML configuration file (see the README's configuration reference).
    #[arg(long, global = true, env = "VIGIL_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: overrides `log.format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter (`info`, `debug`, …): overrides `log.level`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Where the store is (`s3://bucket/prefix`, or a directory): overrides `store.url`.
    /// Reading commands copy a bucket into `--data-dir` (the local copy) first.
    #[arg(long, global = true)]
    store: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what Vigil sees in a file of records: one canonical event per line as JSON on
    /// stdout, each record that fails with its line number on stderr. Exit code 0 when every
    /// record decoded, 1 when any failed.
    Decode(decode_cmd::DecodeArgs),
    /// Run the pipeline: consume the topics, store every record hash-chained in Parquet.
    /// Stops cleanly (flush, commit) on SIGINT or SIGTERM.
    Serve(serve_cmd::ServeArgs),
    /// Run SQL over the store (tables `events`, `rejected`, `stored`).
    Query(query_cmd::QueryArgs),
    /// Verify a store offline: recompute every hash and Merkle root from the raw bytes, check
    /// every signed checkpoint, compare with a trusted state and anchors. Exit 0 = valid,
    /// 1 = tampering found, 2 = incomplete or unanchored.
    Verify(verify_cmd::VerifyArgs),
    /// Rewrite each partition log's small files into larger ones (same rows and hashes; still
    /// verifies). Run while `vigil serve` is stopped.
    Compact(compact_cmd::CompactArgs),
    /// Stored events in a time range in the SOC's formats: OCSF Parquet as Amazon Security
    /// Lake takes a custom source, or ECS JSON lines; into a directory or `s3://…`.
    Export(export_cmd::ExportArgs),
    /// Retention: remove the files of each log older than its topic's
    /// `retention.max_age_days` (by when they were written), signing where the log now starts.
    Prune(prune_cmd::PruneArgs),
    /// Detection rules: list them, run the tests rule files carry, backtest them on stored
    /// events.
    Rules(rules_cmd::RulesArgs),
    /// The declared call graph from the policies the mesh enforces (`policy import`).
    Policy(policy_cmd::PolicyArgs),
    /// List stored alerts (the newest revision of each), newest first; `ack|resolve|suppress ID`
    /// changes one.
    Alerts(alerts_cmd::AlertsArgs),
    /// Make an API key for the analyst API (printed once) and its configuration entry.
    ApiKey(api_key_cmd::ApiKeyArgs),
    /// Show or rotate the checkpoint signing keys.
    Keys(keys_cmd::KeysArgs),
    /// Write a proof bundle: one event's inclusion in its signed log (`--event ID`, or `--log
    /// T/P --index I|--offset O`), or a log's consistency between two signed sizes (`--log
    /// T/P --from N [--to M]`).
    Proof(proof_cmd::ProofArgs),
    /// Check a proof bundle with nothing but the signer's public key. Exit 0 = valid,
    /// 1 = invalid.
    VerifyProof(proof_cmd::VerifyProofArgs),
    /// Send a file of records (one per line, or `--whole`) to a Kafka topic.
    Produce(produce_cmd::ProduceArgs),
    /// Produce traffic from a simulated zero-trust mesh (OPA, Hubble, Kubernetes audit) with
    /// named attacks on top; prints what it injected and when, and the rules that should fire.
    Simulate(simulate_cmd::SimulateArgs),
    /// Print the canonical event schema, column by column.
    Schema {
        /// Print the Arrow schema as JSON instead of a Markdown table.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (defaults, file, environment) as TOML.
    Config,
}

fn main() -> ExitCode {
    // Everything Vigil creates (the data directory, its files, exports) is readable and
    // writable by its own user only: directories 0700, files 0600.
    // SAFETY: umask(2) only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(f) = cli.log_format {
        cfg.log.format = f;
    }
    if let Some(l) = cli.log_level {
        cfg.log.level = l;
    }
    if let Some(s) = cli.store {
        cfg.store.url = s;
    }
    init_logging(&cfg.log)?;
    match cli.command {
        Command::Decode(args) => decode_cmd::run(&cfg, args),
        Command::Serve(args) => serve_cmd::run(&mut cfg, args),
        Command::Query(args) => query_cmd::run(&cfg, args),
        Command::Produce(args) => produce_cmd::run(&cfg, args),
        Command::Simulate(args) => simulate_cmd::run(&cfg, args),
        Command::Verify(args) => verify_cmd::run(&cfg, args),
        Command::Proof(args) => proof_cmd::run_proof(&cfg, args),
        Command::Keys(args) => keys_cmd::run(&cfg, args),
        Command::Rules(args) => rules_cmd::run(&cfg, args),
        Command::Policy(args) => policy_cmd::run(&cfg, args),
        Command::Alerts(args) => alerts_cmd::run(&cfg, args),
        Command::ApiKey(args) => api_key_cmd::api_key(args),
        Command::Compact(args) => compact_cmd::run(&cfg, args),
        Command::Export(args) => export_cmd::run(&cfg, args),
        Command::Prune(args) => prune_cmd::run(&cfg, args),
        Command::VerifyProof(args) => proof_cmd::run_verify_proof(args),
        Command::Schema { json } => {
            if json {
                let schema = vigil_schemas::canonical_schema();
                println!("{}", serde_json_schema(&schema)?);
            } else {
                print!("{}", vigil_schemas::schema::markdown_reference());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config => {
            print!("{}", cfg.to_toml()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serde_json_schema(schema: &arrow::datatypes::Schema) -> anyhow::Result<String> {
    let cols: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name(),
                "type": f.data_type().to_string(),
                "nullable": f.is_nullable(),
                "doc": f.metadata().get("doc"),
            })
        })
        .collect();
    Ok(serde_json::to_string_pretty(&cols)?)
}

fn init_logging(cfg: &config::LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => EnvFilter::try_new(&cfg.level)?,
    };
    // A log that cannot be written (its volume full) must not stop Vigil: tracing's own
    // report of the failure would go to stderr with eprintln!, which panics when that fails.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))
}
