//! Alerts as commands show them, and lifecycle changes applied directly or queued for the
//! `serve` that runs detection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vigil_detect::alerts::Alert;
use vigil_detect::lifecycle::{Command, Queue, Reply};
use vigil_detect::run::{DetectError, RunConfig};

use crate::config::Config;

pub fn time_text(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// One alert as a line of text.
pub fn line(a: &Alert) -> String {
    let group: Vec<String> = a
        .group_key
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("-")))
        .collect();
    format!(
        "{}  {:<8} {:<12} {:<36} events={:<6} first={} last={}  {}  [{}]",
        &a.alert_id[..16.min(a.alert_id.len())],
        a.severity,
        a.status,
        a.rule_id,
        a.event_count,
        time_text(a.first_event_ns),
        time_text(a.last_event_ns),
        group.join(" "),
        a.title
    )
}

/// Apply a change here when no process holds the detection lock; otherwise queue it for the
/// one that does (it alone writes alert revisions: a `vigil serve`) and wait up to `wait` for
/// its answer.
pub fn apply_or_queue(
    cfg: &Config,
    dir: &Path,
    cmd: &Command,
    wait: Duration,
) -> anyhow::Result<Reply> {
    // Held (a `serve` runs detection): no need to set up signing and delivery here first.
    let here = if vigil_detect::run::lock_held(dir) {
        Err(anyhow::Error::from(DetectError::Locked(
            dir.display().to_string(),
        )))
    } else {
        apply_here(cfg, dir, cmd)
    };
    match here {
        Ok(r) => Ok(r),
        Err(e)
            if e.downcast_ref::<DetectError>()
                .is_some_and(|d| matches!(d, DetectError::Locked(_))) =>
        {
            let q = Queue::new(dir);
            let ticket = q.submit(cmd)?;
            Ok(q.wait(&ticket, wait)?)
        }
        Err(e) => Err(e),
    }
}

/// Apply the change in this process (no `serve` holds the detection lock): the same steps the
/// detection thread takes, signed with the store's keys, anchored if Kafka is reachable.
fn apply_here(cfg: &Config, dir: &Path, cmd: &Command) -> anyhow::Result<Reply> {
    let mut cfg = cfg.clone();
    cfg.store.data_dir = dir.to_path_buf();
    let targets = cfg
        .deliver
        .targets
        .iter()
        .cloned()
        .map(|c| vigil_detect::deliver::Target::new(c, |k| std::env::var(k).ok()))
        .collect::<Result<Vec<_>, _>>()?;
    let bucket = crate::services::bucket::open(&mut cfg.clone())?;
    let outbox = (!targets.is_empty())
        .then(|| vigil_detect::deliver::Outbox::open(dir, targets, Arc::default()))
        .transpose()?
        .map(|o| match &bucket {
            Some(b) => o.with_bucket(b.clone(), dir),
            None => o,
        });
    let icfg = crate::services::pipeline::ingest_config(&cfg)?;
    let anchor_metrics = Arc::new(vigil_ingest::IngestMetrics::default());
    // Quiet: one warning below says whether the anchor got out, not librdkafka's retries.
    let publisher =
        vigil_ingest::AnchorPublisher::new(&icfg, anchor_metrics.clone(), true)?.map(Arc::new);
    let reply = vigil_detect::run::apply_direct(
        RunConfig {
            data_dir: dir.to_path_buf(),
            bucket: bucket.clone(),
            alert_flush_ms: cfg.detect.alert_flush_ms,
            state_interval_ms: cfg.detect.state_interval_ms,
            outbox,
            signer: Some(vigil_store::LogSigner::new(
                crate::services::pipeline::checkpointer(&cfg, bucket.as_ref())?,
                publisher.clone().map(|p| p as Arc<dyn vigil_store::Anchor>),
            )),
            time: crate::services::rules::time_config(&cfg.detect)?,
            incident_window_ns: crate::services::rules::incident_window_ns(&cfg.detect)?,
            max_state_bytes: cfg.detect.max_state_bytes,
            silent_source_ns: i64::try_from(cfg.detect.silent_source_ms)?.saturating_mul(1_000_000),
            assigned: None,
            // With a bucket: only while no instance runs detection (the lease taken for it).
            lease: match &bucket {
                Some(_) => Some(vigil_detect::run::LeaseConfig {
                    me: vigil_store::Store::open(dir, Default::default())?.instance_id()?,
                    ttl_ms: cfg.detect.lease_ttl_ms,
                    rules: Arc::new(Vec::new),
                }),
                None => None,
            },
        },
        cmd,
    )?;
    if let Some(p) = publisher
        && let Err(e) = p
            .flush(Duration::from_secs(5))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let failed = anchor_metrics.snapshot().anchors_failed;
                if failed == 0 {
                    Ok(())
                } else {
                    Err(format!("{failed} failed"))
                }
            })
    {
        eprintln!(
            "warning: the change is stored and signed, but its checkpoint did not reach the \
             Kafka anchor topic ({e}); the next `vigil serve` publishes a fresh one"
        );
    }
    Ok(reply)
}
