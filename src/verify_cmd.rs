//! `vigil verify`: check a store offline — every leaf, chain hash and Merkle root recomputed
//! from the raw bytes, every signed checkpoint against pinned keys and against the store, and
//! the store against a trusted state and anchors. Exit 0 = valid, 1 = tampering found,
//! 2 = incomplete or unanchored (never "valid" when it could not tell).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use vigil_store::audit::{AuditReport, Trusted, Verdict, audit, read_anchor_dir};
use vigil_store::checkpoint::Registry;
use vigil_store::trusted::TrustedFile;

use crate::config::Config;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Store directory (overrides `store.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Trusted state: pinned public keys and the checkpoints seen last time (JSON; written by
    /// `--update-trusted`).
    #[arg(long)]
    trusted: Option<PathBuf>,
    /// When nothing was found tampered, record the store's newest checkpoints in the trusted
    /// file (and, if it does not exist yet, the store's public keys: trust on first use).
    #[arg(long, requires = "trusted")]
    update_trusted: bool,
    /// Public keys to pin (a key registry: `<verifier key> <valid from ms> <valid until
    /// ms|->` per line), e.g. a copy of `<data_dir>/keys/registry` taken when it was set up.
    #[arg(long)]
    keys: Option<PathBuf>,
    /// A directory of anchored checkpoints (a `checkpoint.mirror_dir`); repeatable.
    #[arg(long)]
    anchor_dir: Vec<PathBuf>,
    /// Read anchored checkpoints from this Kafka cluster (`host:port,…`), topic
    /// `--anchor-topic`. Security settings come from `kafka.properties`.
    #[arg(long)]
    anchor_kafka: Option<String>,
    /// The anchor topic (default `checkpoint.kafka_topic`).
    #[arg(long, requires = "anchor_kafka")]
    anchor_topic: Option<String>,
    /// Also decode every record's bytes again and compare the stored event columns (decision,
    /// principals, …), which the hashes do not cover: slower (about 2 µs per record), and it
    /// catches an edit to a decoded column alone. Uses the `[decode]` limits of the config.
    #[arg(long)]
    decoded: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cfg: &Config, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let data_dir = crate::services::bucket::reading_dir(cfg, args.data_dir)?;
    let mut trusted = Trusted::default();
    let existing = match &args.trusted {
        Some(path) if path.exists() => Some(
            TrustedFile::read(path)
                .with_context(|| format!("reading trusted state {}", path.display()))?,
        ),
        Some(path) if !args.update_trusted => {
            anyhow::bail!(
                "no trusted state at {} (create it with --update-trusted)",
                path.display()
            )
        }
        _ => None,
    };
    if let Some(t) = &existing {
        trusted = t.trusted()?;
    }
    if let Some(path) = &args.keys {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading keys {}", path.display()))?;
        let mut keys = trusted.keys.take().unwrap_or_default();
        // A key the trusted state already holds, with the same validity, is the same key (two
        // entries for one key id would make every signature by it ambiguous).
        for k in Registry::parse(&text)
            .with_context(|| format!("keys {}", path.display()))?
            .keys
        {
            if !keys.keys.contains(&k) {
                keys.keys.push(k);
            }
        }
        trusted.keys = Some(keys);
    }
    for dir in &args.anchor_dir {
        trusted.checkpoints.extend(
            read_anchor_dir(dir).with_context(|| format!("anchor directory {}", dir.display()))?,
        );
    }

    if let Some(brokers) = &args.anchor_kafka {
        let topic = args
            .anchor_topic
            .clone()
            .unwrap_or_else(|| cfg.checkpoint.kafka_topic.clone());
        trusted.checkpoints.extend(
            vigil_ingest::read_anchor_topic(brokers, &topic, &cfg.kafka.properties)
                .with_context(|| format!("anchor topic {topic}"))?,
        );
    }

    let start = Instant::now();
    let redecode = if args.decoded {
        Some(cfg.decode.decoder_config()?)
    } else {
        None
    };
    let mut report = audit(&data_dir, &trusted, redecode.as_ref())
        .with_context(|| format!("verifying {}", data_dir.display()))?;
    // The alert log against Vigil's own (verified) log: every revision recorded there, alike.
    for (tampered, place, what) in vigil_detect::lifecycle::check_alert_log(&data_dir)
        .with_context(|| format!("checking the alert log of {}", data_dir.display()))?
    {
        let v = if tampered {
            Verdict::Tampered
        } else {
            Verdict::Incomplete
        };
        report.find(v, place, what);
    }
    let secs = start.elapsed().as_secs_f64();
    let verdict = report.verdict();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report(&report, secs))?
        );
    } else {
        print_report(&data_dir, &report, secs);
    }
    if args.update_trusted
        && let Some(path) = &args.trusted
    {
        if report.may_be_trusted(existing.is_none()) {
            TrustedFile::after(existing.as_ref(), &report)
                .write(path)
                .with_context(|| format!("writing trusted state {}", path.display()))?;
            tracing::info!(trusted = %path.display(), "trusted state updated");
        } else {
            tracing::warn!(trusted = %path.display(), verdict = verdict.as_str(),
                "the trusted state was not updated: only a valid store (or, the first time, one                  that only lacks what the trusted state will vouch for) is recorded");
        }
    }
    Ok(ExitCode::from(verdict.exit_code()))
}

fn hex(h: &[u8; 32]) -> String {
    hex::encode(h)
}

fn print_report(data_dir: &Path, r: &AuditReport, secs: f64) {
    println!("vigil verify {}", data_dir.display());
    for l in &r.logs {
        println!(
            "  {}/{}: {} files, {} records, tree {}{} root {}…, {} checkpoints (newest {}), anchored at {}",
            l.topic,
            l.partition,
            l.files,
            l.records,
            l.tree_size,
            if l.pruned > 0 {
                format!(" (the first {} pruned, signed)", l.pruned)
            } else {
                String::new()
            },
            &hex(&l.root)[..16],
            l.checkpoints,
            l.newest_checkpoint.map_or("none".into(), |s| s.to_string()),
            l.anchored.map_or("none".into(), |s| s.to_string()),
        );
    }
    for f in &r.findings {
        println!(
            "  {:<10} {}: {}",
            f.verdict.as_str().to_uppercase(),
            f.place,
            f.what
        );
    }
    let records = r.records();
    println!(
        "{}: {} records ({} events) in {} logs checked in {:.2} s ({:.0} records/s)",
        r.verdict().as_str().to_uppercase(),
        records,
        r.rows(),
        r.logs.len(),
        secs,
        records as f64 / secs.max(1e-9)
    );
}

fn json_report(r: &AuditReport, secs: f64) -> serde_json::Value {
    serde_json::json!({
        "verdict": r.verdict().as_str(),
        "records": r.records(),
        "events": r.rows(),
        "seconds": secs,
        "logs": r.logs.iter().map(|l| serde_json::json!({
            "topic": l.topic,
            "partition": l.partition,
            "origin": l.origin,
            "files": l.files,
            "records": l.records,
            "tree_size": l.tree_size,
            "pruned": l.pruned,
            "root": hex(&l.root),
            "checkpoints": l.checkpoints,
            "newest_checkpoint": l.newest_checkpoint,
            "anchored": l.anchored,
        })).collect::<Vec<_>>(),
        "findings": r.findings.iter().map(|f| serde_json::json!({
            "verdict": f.verdict.as_str(),
            "place": f.place,
            "what": f.what,
        })).collect::<Vec<_>>(),
    })
}
