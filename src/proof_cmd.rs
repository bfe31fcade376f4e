//! `vigil proof` writes a self-contained proof bundle — one event's inclusion in its signed
//! log, or the consistency of a log between two signed sizes — and `vigil verify-proof`
//! checks one with nothing but the signer's public key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use vigil_store::checkpoint::Registry;
use vigil_store::merkle::Hash;
use vigil_store::proof::{
    ConsistencyBundle, InclusionBundle, StoredRecord, Target, check_consistency, check_inclusion,
    prove_consistency, prove_inclusion,
};

use crate::config::Config;

use vigil_store::proof::FORMAT;

#[derive(clap::Args)]
pub struct ProofArgs {
    /// Store directory (overrides `store.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The event's id (`event_id`); its record is looked up with SQL.
    #[arg(long, conflicts_with = "log")]
    event: Option<String>,
    /// The log, `TOPIC/PARTITION`.
    #[arg(long)]
    log: Option<vigil_store::LogId>,
    /// The record's leaf index in the log.
    #[arg(long, requires = "log", conflicts_with_all = ["offset", "from"])]
    index: Option<u64>,
    /// The record's Kafka offset.
    #[arg(long, requires = "log", conflicts_with = "from")]
    offset: Option<i64>,
    /// A consistency proof from the checkpoint of this tree size…
    #[arg(long, requires = "log")]
    from: Option<u64>,
    /// …to the checkpoint of this size (default: the newest).
    #[arg(long, requires = "from")]
    to: Option<u64>,
    /// Write the bundle here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct VerifyProofArgs {
    /// The bundle (`vigil proof` output).
    bundle: PathBuf,
    /// The signer's public key (`<name>+<key id>+<base64>`), trusted at any time.
    #[arg(long, required_unless_present = "keys")]
    public_key: Option<String>,
    /// A key registry file (`<verifier key> <valid from ms> <valid until ms|->` per line).
    #[arg(long)]
    keys: Option<PathBuf>,
}

pub fn run_proof(cfg: &Config, args: ProofArgs) -> anyhow::Result<ExitCode> {
    let dir = crate::services::bucket::reading_dir(cfg, args.data_dir.clone())?;
    let bundle = if let Some(id) = &args.event {
        let (topic, partition, offset) = find_event(&dir, id)?;
        vigil_store::proof::inclusion_json(&prove_inclusion(
            &dir,
            &topic,
            partition,
            Target::Offset(offset),
        )?)
    } else {
        let vigil_store::LogId { topic, partition } = args.log.clone().context(
            "pass --event ID, or --log TOPIC/PARTITION with --index, --offset or --from",
        )?;
        if let Some(from) = args.from {
            vigil_store::proof::consistency_json(&prove_consistency(
                &dir, &topic, partition, from, args.to,
            )?)
        } else {
            let target = match (args.index, args.offset) {
                (Some(i), _) => Target::Index(i),
                (_, Some(o)) => Target::Offset(o),
                _ => anyhow::bail!("--log needs --index, --offset or --from"),
            };
            vigil_store::proof::inclusion_json(&prove_inclusion(&dir, &topic, partition, target)?)
        }
    };
    let text = serde_json::to_string_pretty(&bundle)? + "\n";
    match &args.out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The (topic, partition, offset) of the record holding an event id.
fn find_event(dir: &std::path::Path, id: &str) -> anyhow::Result<(String, i32, i64)> {
    let escaped = id.replace('\'', "''");
    let sql = format!(
        "SELECT DISTINCT kafka_topic, kafka_partition, kafka_offset FROM events WHERE event_id = '{escaped}'"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let batches = rt
        .block_on(vigil_query::query(dir, &sql))
        .context("looking up the event")?;
    let mut found = Vec::new();
    for b in &batches {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{Int32Type, Int64Type};
        let (t, p, o) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_primitive::<Int32Type>(),
            b.column(2).as_primitive::<Int64Type>(),
        );
        for r in 0..b.num_rows() {
            found.push((t.value(r).to_owned(), p.value(r), o.value(r)));
        }
    }
    match found.len() {
        0 => anyhow::bail!("no event with id {id:?}"),
        1 => Ok(found.remove(0)),
        n => anyhow::bail!(
            "{n} records hold an event with id {id:?}: {found:?}; pass --log TOPIC/PARTITION --offset O"
        ),
    }
}

fn get<'a>(v: &'a Value, k: &str) -> anyhow::Result<&'a Value> {
    v.get(k).with_context(|| format!("bundle lacks {k:?}"))
}

fn bytes_field(v: &Value) -> anyhow::Result<Option<Vec<u8>>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(B64.decode(s).context("base64")?)),
        _ => anyhow::bail!("expected base64 or null"),
    }
}

fn proof_field(v: &Value) -> anyhow::Result<Vec<Hash>> {
    get(v, "proof")?
        .as_array()
        .context("proof: expected a list")?
        .iter()
        .map(|h| {
            let s = h.as_str().context("proof: expected hex strings")?;
            vigil_store::chain::from_hex(s).with_context(|| format!("proof hash {s:?}"))
        })
        .collect()
}

fn str_field<'a>(v: &'a Value, k: &str) -> anyhow::Result<&'a str> {
    get(v, k)?
        .as_str()
        .with_context(|| format!("{k}: expected a string"))
}

pub fn run_verify_proof(args: VerifyProofArgs) -> anyhow::Result<ExitCode> {
    let keys = match (&args.public_key, &args.keys) {
        (_, Some(path)) => Registry::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        (Some(k), None) => {
            let line = format!("{k} 0 -");
            Registry::parse(&line).context("--public-key")?
        }
        (None, None) => anyhow::bail!("pass --public-key or --keys"),
    };
    let text = std::fs::read_to_string(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    let v: Value = serde_json::from_str(&text).context("bundle is not JSON")?;
    anyhow::ensure!(
        str_field(&v, "format")? == FORMAT,
        "bundle format is not {FORMAT}"
    );
    let result = match str_field(&v, "kind")? {
        "inclusion" => {
            let r = get(&v, "record")?;
            let headers = get(r, "headers")?
                .as_array()
                .context("headers: expected a list")?
                .iter()
                .map(|h| {
                    Ok((
                        str_field(h, "key")?.to_owned(),
                        bytes_field(get(h, "value")?)?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let b = InclusionBundle {
                record: StoredRecord {
                    topic: str_field(r, "topic")?.to_owned(),
                    partition: get(r, "partition")?
                        .as_i64()
                        .and_then(|p| i32::try_from(p).ok())
                        .context("partition")?,
                    offset: get(r, "offset")?.as_i64().context("offset")?,
                    timestamp_ms: get(r, "timestamp_ms")?.as_i64(),
                    key: bytes_field(get(r, "key")?)?,
                    value: bytes_field(get(r, "value")?)?,
                    headers,
                },
                leaf_index: get(&v, "leaf_index")?.as_u64().context("leaf_index")?,
                proof: proof_field(&v)?,
                checkpoint: str_field(&v, "checkpoint")?.as_bytes().to_vec(),
            };
            check_inclusion(&b, &keys).map(|cp| {
                format!(
                    "VALID: record {}/{} offset {} is leaf {} of {} (tree size {})",
                    b.record.topic,
                    b.record.partition,
                    b.record.offset,
                    b.leaf_index,
                    cp.origin,
                    cp.size
                )
            })
        }
        "consistency" => {
            let b = ConsistencyBundle {
                old_checkpoint: str_field(&v, "old_checkpoint")?.as_bytes().to_vec(),
                new_checkpoint: str_field(&v, "new_checkpoint")?.as_bytes().to_vec(),
                proof: proof_field(&v)?,
            };
            check_consistency(&b, &keys).map(|(o, n)| {
                format!(
                    "VALID: {} at tree size {} is a prefix of itself at tree size {}",
                    n.origin, o.size, n.size
                )
            })
        }
        k => anyhow::bail!("unknown bundle kind {k:?}"),
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("INVALID: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
