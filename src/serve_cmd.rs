//! `vigil serve`: the pipeline, until SIGINT/SIGTERM, then a clean flush and commit.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use vigil_detect::run::{DetectMetrics, RunConfig};
use vigil_ingest::IngestMetrics;
use vigil_store::{Store, WriteOptions};

use crate::config::Config;
use crate::services::pipeline::{checkpointer, ingest_config};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Kafka bootstrap brokers (overrides `kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// Topics to consume, comma-separated; `^regex` for a pattern (overrides `kafka.topics`).
    #[arg(long, value_delimiter = ',')]
    topics: Option<Vec<String>>,
    /// Store directory (overrides `store.data_dir`).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Consumer group id (overrides `kafka.group_id`).
    #[arg(long)]
    group_id: Option<String>,
    /// Deliver alerts to this URL as signed JSON webhooks (a `[[deliver.targets]]` of kind
    /// `webhook` named `webhook`); the HMAC key comes from `VIGIL_WEBHOOK_SECRET`.
    #[arg(long)]
    webhook: Option<String>,
    /// The analyst API's address (overrides `api.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Seconds between progress lines in the log (0: none).
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
}

impl ServeArgs {
    /// The flags that override the configuration.
    fn apply(&mut self, cfg: &mut Config) {
        if let Some(b) = self.brokers.take() {
            cfg.kafka.brokers = b;
        }
        if let Some(t) = self.topics.take() {
            cfg.kafka.topics = t;
        }
        if let Some(d) = self.data_dir.take() {
            cfg.store.data_dir = d;
        }
        if let Some(g) = self.group_id.take() {
            cfg.kafka.group_id = g;
        }
        if let Some(l) = self.listen.take() {
            cfg.api.listen = l;
        }
    }
}

/// Open everything, start the threads (detection, delivery, the API, ingest), wait for a
/// signal, then stop them in order: the API, ingest (flushed and committed), detection (its
/// state saved), the anchors, delivery.
pub fn run(cfg: &mut Config, mut args: ServeArgs) -> anyhow::Result<ExitCode> {
    args.apply(cfg);
    anyhow::ensure!(
        !cfg.kafka.topics.is_empty(),
        "no topics: pass --topics or set kafka.topics"
    );
    let icfg = ingest_config(cfg)?;
    let bucket = crate::services::bucket::open(cfg)?;
    if let Some(b) = &bucket {
        // The bucket is the store of record: what this directory lacks is fetched first (a
        // new machine, a file put just before a crash); one it holds that the bucket lacks
        // refuses the start.
        use crate::services::bucket::{CopyFor, copy};
        copy(b, &cfg.store.data_dir, CopyFor::Writer)?;
    }
    let mut store = Store::open(
        &cfg.store.data_dir,
        WriteOptions {
            zstd_level: cfg.store.zstd_level,
            max_row_group_rows: None,
        },
    )
    .with_context(|| format!("opening the store at {}", cfg.store.data_dir.display()))?;
    if let Some(b) = &bucket {
        store = store.with_bucket(b.clone());
    }
    let checkpoints = checkpointer(cfg, bucket.as_ref())?;
    tracing::info!(brokers = %icfg.brokers, topics = ?icfg.topics, group = %icfg.group_id,
        data_dir = %cfg.store.data_dir.display(), log_name = %checkpoints.store_name(),
        "vigil serve starting");

    // Delivery targets: checked (and their secrets read) before anything starts.
    let targets = delivery_targets(cfg, args.webhook.as_deref())?;
    let delivery_metrics = Arc::new(vigil_detect::deliver::DeliverMetrics::default());

    // Detection: its own thread, fed the chained rows by the pipeline threads.
    let metrics = Arc::new(IngestMetrics::default());
    let dmetrics = Arc::new(DetectMetrics::default());
    // Vigil's own log (written by detection) is anchored like the partitions' logs.
    // One anchor and one signer for every log this process signs: the partitions' logs
    // (ingest), Vigil's own log (detection), the API's logs.
    let anchor = vigil_ingest::AnchorPublisher::new(&icfg, metrics.clone(), false)?.map(Arc::new);
    let signer = vigil_store::LogSigner::new(
        checkpoints.clone(),
        anchor.clone().map(|p| p as Arc<dyn vigil_store::Anchor>),
    );
    // Workloads from the Kubernetes audit stream, for the policy graph's selectors.
    let feed = crate::services::policy::PolicyFeed::from_config(cfg);
    let detection = start_detection(
        cfg,
        targets,
        OwnWrites {
            signer: &signer,
            bucket: bucket.clone(),
            instance_id: match &bucket {
                Some(_) => store.instance_id()?,
                None => String::new(),
            },
        },
        &metrics,
        &dmetrics,
        &delivery_metrics,
        feed.clone(),
    )?;
    let (reloader, outbox) = (detection.reloader.clone(), detection.outbox.clone());
    let reload = crate::services::api::reload_fn(cfg, reloader.clone(), feed.clone());
    let rules = crate::services::api::rules_fn(cfg, feed.clone());
    // Rule and policy files reloaded when they change on disk (as `POST /v1/rules/reload`),
    // and when the audit stream's workloads change.
    let _rules_watch = match &reloader {
        Some(_) => crate::services::rules_watch::start(&cfg.detect, reload.clone(), feed.clone())?,
        None => None,
    };

    // Delivery drains the outbox (including what earlier runs left) on its own thread.
    let deliver_stop = Arc::new(AtomicBool::new(false));
    let deliver = match &outbox {
        Some(o) => Some(vigil_detect::deliver::start(
            o.clone(),
            deliver_stop.clone(),
        )?),
        None => None,
    };

    // The analyst API: ready once partitions are assigned.
    let ready = Arc::new(AtomicBool::new(false));
    let live = cfg.api.enabled.then(|| {
        let durable = metrics.clone();
        vigil_query::Live {
            recent: Arc::default(),
            durable: Arc::new(move || durable.durable()),
        }
    });
    let api = match &live {
        Some(live) => {
            let text = metrics_text(
                cfg.store.data_dir.clone(),
                metrics.clone(),
                dmetrics.clone(),
                delivery_metrics.clone(),
            );
            Some(crate::services::api::start(
                cfg,
                bucket.clone(),
                signer.clone(),
                ready.clone(),
                text,
                live.clone(),
                crate::services::api::RuleHooks {
                    reload,
                    list: rules,
                },
            )?)
        }
        None => None,
    };

    // The pipeline's pieces: to the API's buffer of rows not yet in a file, and on to detection.
    let (pieces_tx, tee) = match &live {
        None => (detection.tx, None),
        Some(live) => {
            let (tx, tee) = live.tee(cfg.detect.queue_depth, detection.tx)?;
            (Some(tx), Some(tee))
        }
    };

    let shutdown = Arc::new(AtomicBool::new(false));
    // Retention: old files pruned (signed) at start and every hour.
    let retention = crate::services::retention::start(
        cfg,
        store.clone(),
        checkpoints.clone(),
        shutdown.clone(),
    )?;
    // Other instances' logs, followed into this directory.
    let follower = crate::services::bucket::start_follower(cfg, store.clone(), shutdown.clone())?;
    let ingest = {
        let (shutdown, metrics) = (shutdown.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("vigil-ingest".into())
            .spawn(move || vigil_ingest::run(icfg, store, signer, shutdown, metrics, pieces_tx))?
    };

    wait_for_stop(
        args.progress_secs,
        &ready,
        &ingest,
        detection.handle.as_ref(),
        &metrics,
        &dmetrics,
        &delivery_metrics,
    )?;
    ready.store(false, Ordering::Relaxed);
    let api_stopped = api.map(crate::services::api::Api::stop).transpose();
    shutdown.store(true, Ordering::Relaxed);
    let result = ingest
        .join()
        .map_err(|_| anyhow::anyhow!("ingest thread panicked"))?;
    if let Some(r) = retention {
        r.join()
            .map_err(|_| anyhow::anyhow!("retention thread panicked"))?;
    }
    if let Some(f) = follower {
        f.join()
            .map_err(|_| anyhow::anyhow!("follower thread panicked"))?;
    }
    // The pipeline threads are gone, and with them the pieces' senders.
    if let Some(t) = tee {
        t.join()
            .map_err(|_| anyhow::anyhow!("tee thread panicked"))?;
    }
    let detected = match detection.handle {
        Some(d) => d
            .join()
            .map_err(|_| anyhow::anyhow!("detection thread panicked"))?
            .map_err(anyhow::Error::from),
        None => Ok(()),
    };
    // Said here too: only one error is what `serve` exits with, and ingest's comes first.
    if let (Err(e), Err(_)) = (&detected, &result) {
        tracing::error!(error = format!("{e:#}"), "detection failed");
    }
    if let Some(p) = &anchor
        && let Err(e) = p.flush(Duration::from_secs(10))
    {
        tracing::error!(error = %e, "checkpoint anchors not all delivered (they are in the store)");
    }
    // Then delivery: what is in flight finishes, the rest stays queued for the next run.
    deliver_stop.store(true, Ordering::Relaxed);
    if let Some(d) = deliver {
        d.join()
            .map_err(|_| anyhow::anyhow!("delivery thread panicked"))?;
    }
    log_summaries(&metrics, &dmetrics, &delivery_metrics);
    result.context("ingest failed")?;
    detected.context("detection failed")?;
    api_stopped.context("API failed")?;
    Ok(ExitCode::SUCCESS)
}

/// What `serve` did, logged as it stops: delivery, detection, ingest.
fn log_summaries(
    metrics: &IngestMetrics,
    dmetrics: &DetectMetrics,
    delivery_metrics: &vigil_detect::deliver::DeliverMetrics,
) {
    tracing::info!(
        queued = delivery_metrics.queued.load(Ordering::Relaxed),
        delivered = delivery_metrics.delivered.load(Ordering::Relaxed),
        failed_attempts = delivery_metrics.failed_attempts.load(Ordering::Relaxed),
        undeliverable = delivery_metrics.undeliverable.load(Ordering::Relaxed),
        "alert delivery stopped"
    );
    let m = metrics.snapshot();
    tracing::info!(
        events_evaluated = dmetrics.rows.load(Ordering::Relaxed),
        alerts_fired = dmetrics.alerts_fired.load(Ordering::Relaxed),
        alert_revisions = dmetrics.alert_revisions.load(Ordering::Relaxed),
        late = dmetrics.late.load(Ordering::Relaxed),
        skewed = dmetrics.skewed.load(Ordering::Relaxed),
        late_by_log = %per_log(dmetrics, |s| s.late),
        skewed_by_log = %per_log(dmetrics, |s| s.skewed),
        evicted = dmetrics.evicted.load(Ordering::Relaxed),
        state_bytes = dmetrics.state_bytes.load(Ordering::Relaxed),
        state_shed = dmetrics.state_shed.load(Ordering::Relaxed),
        lifecycle_applied = dmetrics.commands_applied.load(Ordering::Relaxed),
        lifecycle_refused = dmetrics.commands_refused.load(Ordering::Relaxed),
        "detection stopped"
    );
    tracing::info!(
        records = m.records_received,
        decoded = m.records_decoded,
        rejected = m.records_rejected,
        already_stored = m.records_already_stored,
        files = m.files_written,
        rows_stored = m.rows_stored,
        dlq_sent = m.dlq_sent,
        dlq_failed = m.dlq_failed,
        dlq_skipped = m.dlq_skipped,
        checkpoints_signed = m.checkpoints_signed,
        anchors_sent = m.anchors_sent,
        anchors_failed = m.anchors_failed,
        "vigil serve stopped"
    );
}

/// Until SIGTERM or SIGINT, or ingest or detection stops: readiness (partitions assigned) and
/// the progress line every `progress_secs` (0: none).
fn wait_for_stop(
    progress_secs: u64,
    ready: &AtomicBool,
    ingest: &std::thread::JoinHandle<Result<(), vigil_ingest::IngestError>>,
    detect: Option<&std::thread::JoinHandle<Result<(), vigil_detect::run::DetectError>>>,
    metrics: &IngestMetrics,
    dmetrics: &DetectMetrics,
    delivery_metrics: &vigil_detect::deliver::DeliverMetrics,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let every = Duration::from_secs(progress_secs.max(1));
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let (mut last, mut last_at) = (metrics.snapshot(), Instant::now());
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: flushing and committing"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: flushing and committing"); break; }
                _ = tick.tick() => {
                    ready.store(metrics.partitions_assigned.load(Ordering::Relaxed) > 0, Ordering::Relaxed);
                    if ingest.is_finished() { break; }
                    if detect.is_some_and(|d| d.is_finished()) {
                        tracing::error!("detection stopped: stopping");
                        break;
                    }
                    if progress_secs > 0 && last_at.elapsed() >= every {
                        let now = metrics.snapshot();
                        let secs = last_at.elapsed().as_secs_f64();
                        tracing::info!(
                            records_per_s = ((now.records_received - last.records_received) as f64 / secs).round(),
                            records = now.records_received, decoded = now.records_decoded,
                            rejected = now.records_rejected, already_stored = now.records_already_stored,
                            lag_records = metrics.lag().iter().map(|l| l.lag_records).sum::<i64>(),
                            files = now.files_written, rows_stored = now.rows_stored,
                            detected = dmetrics.rows.load(Ordering::Relaxed),
                            alerts = dmetrics.alerts_fired.load(Ordering::Relaxed),
                            late = dmetrics.late.load(Ordering::Relaxed),
                            skewed = dmetrics.skewed.load(Ordering::Relaxed),
                            late_by_log = %per_log(dmetrics, |s| s.late),
                            skewed_by_log = %per_log(dmetrics, |s| s.skewed),
                            delivered = delivery_metrics.delivered.load(Ordering::Relaxed),
                            delivery_failures = delivery_metrics.failed_attempts.load(Ordering::Relaxed),
                            undeliverable = delivery_metrics.undeliverable.load(Ordering::Relaxed),
                            "progress");
                        (last, last_at) = (now, Instant::now());
                    }
                }
            }
        }
        anyhow::Ok(())
    })
}

/// The configured delivery targets, and `--webhook`'s, their secrets read now.
fn delivery_targets(
    cfg: &Config,
    webhook: Option<&str>,
) -> anyhow::Result<Vec<vigil_detect::deliver::Target>> {
    let mut target_cfgs = cfg.deliver.targets.clone();
    if let Some(url) = webhook {
        let secret = std::env::var("VIGIL_WEBHOOK_SECRET")
            .map_err(|_| anyhow::anyhow!("--webhook needs the HMAC key in VIGIL_WEBHOOK_SECRET"))?;
        target_cfgs.push(vigil_detect::deliver::TargetConfig::webhook(
            "webhook", url, secret,
        ));
    }
    Ok(target_cfgs
        .into_iter()
        .map(|c| vigil_detect::deliver::Target::new(c, |k| std::env::var(k).ok()))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Detection and delivery as `serve` starts them: the pieces' sender, the thread, what reloads
/// its rules, the outbox delivery drains. All `None` when detection is off or runs in another
/// process (it holds the data directory's detection lock).
struct Detection {
    tx: Option<crossbeam_channel::Sender<vigil_store::Piece>>,
    handle: Option<std::thread::JoinHandle<Result<(), vigil_detect::run::DetectError>>>,
    reloader: Option<vigil_detect::run::Reloader>,
    outbox: Option<vigil_detect::deliver::Outbox>,
}

/// What this process's own writes go through: the one signer, and the store's bucket (and
/// this instance's name as a writer there).
struct OwnWrites<'a> {
    signer: &'a vigil_store::LogSigner,
    bucket: Option<Arc<vigil_store::Bucket>>,
    instance_id: String,
}

/// Load the rules and start the detection thread, fed the chained rows by the pipeline threads.
fn start_detection(
    cfg: &Config,
    targets: Vec<vigil_detect::deliver::Target>,
    own: OwnWrites<'_>,
    metrics: &Arc<IngestMetrics>,
    dmetrics: &Arc<DetectMetrics>,
    delivery_metrics: &Arc<vigil_detect::deliver::DeliverMetrics>,
    feed: Option<Arc<crate::services::policy::PolicyFeed>>,
) -> anyhow::Result<Detection> {
    let off = Detection {
        tx: None,
        handle: None,
        reloader: None,
        outbox: None,
    };
    if !cfg.detect.enabled {
        tracing::warn!(
            "detection is off (detect.enabled = false): events are stored, no rules run"
        );
        return Ok(off);
    }
    let loaded = crate::services::rules::load(&cfg.detect, feed.as_deref())?;
    tracing::info!(
        rules = loaded.all().count(),
        sigma = loaded.sigma.len(),
        failed = loaded.errors.len(),
        inactive = loaded.inactive.len(),
        "detection rules loaded"
    );
    let rules: Vec<_> = loaded.into_rules();
    let (tx, rx) = crossbeam_channel::bounded(cfg.detect.queue_depth.max(1));
    let mut outbox = None;
    if !targets.is_empty() {
        for t in &targets {
            tracing::info!(target_name = %t.cfg.name, kind = ?t.cfg.kind, url = %vigil_detect::deliver::redacted_url(&t.cfg.url),
                "alert delivery target");
        }
        let o = vigil_detect::deliver::Outbox::open(
            &cfg.store.data_dir,
            targets,
            delivery_metrics.clone(),
        )?;
        // In the bucket too: the next detection holder carries it on.
        outbox = Some(match &own.bucket {
            Some(b) => o.with_bucket(b.clone(), &cfg.store.data_dir),
            None => o,
        });
    }
    let m = metrics.clone();
    let run_cfg = RunConfig {
        data_dir: cfg.store.data_dir.clone(),
        bucket: own.bucket.clone(),
        alert_flush_ms: cfg.detect.alert_flush_ms,
        state_interval_ms: cfg.detect.state_interval_ms,
        outbox: outbox.clone(),
        signer: Some(own.signer.clone()),
        time: crate::services::rules::time_config(&cfg.detect)?,
        incident_window_ns: crate::services::rules::incident_window_ns(&cfg.detect)?,
        max_state_bytes: cfg.detect.max_state_bytes,
        silent_source_ns: i64::try_from(cfg.detect.silent_source_ms)?.saturating_mul(1_000_000),
        assigned: Some(vigil_detect::run::Assigned(Arc::new(move || {
            m.held()
                .into_iter()
                .map(|(log, busy)| (log.to_string(), busy))
                .collect()
        }))),
        // Several instances may share the bucket: detection runs where its lease is.
        lease: match &own.bucket {
            Some(_) => {
                let d = cfg.detect.clone();
                Some(vigil_detect::run::LeaseConfig {
                    me: own.instance_id.clone(),
                    ttl_ms: cfg.detect.lease_ttl_ms,
                    rules: Arc::new(move || {
                        match crate::services::rules::load(&d, feed.as_deref()) {
                            Ok(l) => l.into_rules(),
                            Err(e) => {
                                tracing::error!(
                                    error = format!("{e:#}"),
                                    "detection rules could not be loaded again: none run"
                                );
                                Vec::new()
                            }
                        }
                    }),
                })
            }
            None => None,
        },
    };
    match vigil_detect::run::start(run_cfg, rules, rx, dmetrics.clone()) {
        Ok((handle, reloader)) => Ok(Detection {
            tx: Some(tx),
            handle: Some(handle),
            reloader: Some(reloader),
            outbox,
        }),
        // Another process of the group runs detection on this data directory; it reads this
        // process's files from the store.
        Err(e @ vigil_detect::run::DetectError::Locked(_)) => {
            tracing::warn!(reason = %e, "detection and alert delivery run in another process");
            Ok(off)
        }
        Err(e) => Err(anyhow::Error::from(e).context("starting detection")),
    }
}

/// `log=count` for every partition log whose figure is not zero (`-` for none): the progress
/// line's per-log late and skewed counts.
fn per_log(d: &DetectMetrics, f: fn(&vigil_detect::time::SourceTime) -> u64) -> String {
    let t = d.time.lock().map(|t| t.clone()).unwrap_or_default();
    let parts: Vec<String> = t
        .sources
        .iter()
        .filter(|(_, s)| f(s) > 0)
        .map(|(log, s)| format!("{log}={}", f(s)))
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(",")
    }
}

/// The process's metrics in OpenMetrics text: each crate encodes its own (a `Collector`).
fn metrics_text(
    data_dir: std::path::PathBuf,
    ingest: Arc<IngestMetrics>,
    detect: Arc<DetectMetrics>,
    deliver: Arc<vigil_detect::deliver::DeliverMetrics>,
) -> Arc<dyn Fn() -> String + Send + Sync> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(ingest));
    registry.register_collector(Box::new(detect));
    registry.register_collector(Box::new(deliver));
    registry.register_collector(Box::new(vigil_detect::OutboxDepth { data_dir }));
    Arc::new(move || {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    })
}
