//! The durable outbox: one file per (target, alert, revision), written before the alert log
//! is appended; what was given up on, and the alert about it.

use super::*;

/// One queued delivery, as stored in the outbox.
#[derive(Debug, Serialize, Deserialize)]
pub struct Queued {
    pub alert: Alert,
    pub queued_ns: i64,
    pub attempts: u32,
    pub next_ns: i64,
    #[serde(default)]
    pub last_error: String,
}

/// The idempotency key of an alert revision.
pub fn idempotency_key(a: &Alert) -> String {
    format!("{}:{}", a.alert_id, a.revision)
}

/// Deliveries waiting in the outbox, per target (entries being written excluded).
pub(crate) fn outbox_depth(data_dir: &Path) -> Vec<(String, u64)> {
    let dir = vigil_store::layout::outbox(data_dir);
    let Ok(targets) = vigil_store::files::read_dir_names(&dir) else {
        return Vec::new();
    };
    targets
        .into_iter()
        .map(|t| {
            let n = vigil_store::files::read_dir_names(&dir.join(&t))
                .unwrap_or_default()
                .iter()
                .filter(|n| n.ends_with(".json") && !vigil_store::files::is_temp_name(n))
                .count() as u64;
            (t, n)
        })
        .collect()
}

/// A delivery given up on (past the target's `max_age_ms`).
#[derive(Clone, Debug)]
pub struct GaveUp {
    pub target: String,
    pub alert: Alert,
    pub attempts: u32,
    pub last_error: String,
}

/// The queueing side, used by the detection thread.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub(super) dir: PathBuf,
    pub(super) targets: Arc<Vec<Target>>,
    pub(super) wake: Arc<tokio::sync::Notify>,
    pub(super) metrics: Arc<DeliverMetrics>,
    pub(super) gave_up: (
        crossbeam_channel::Sender<GaveUp>,
        crossbeam_channel::Receiver<GaveUp>,
    ),
    /// With a bucket shared by several instances: every entry is put there too (and removed
    /// once delivered), so that the instance taking detection over carries the outbox on.
    pub(super) bucket: Option<(Arc<vigil_store::Bucket>, PathBuf)>,
}

/// The alert Vigil raises about an alert it could not deliver: stored like any alert and sent
/// to every other target.
pub fn undeliverable_alert(g: &GaveUp, now_ns: i64) -> Alert {
    let mut h = blake3::Hasher::new_derive_key("vigil 2026 undeliverable alert id v1");
    h.update(g.target.as_bytes());
    h.update(&[0]);
    h.update(idempotency_key(&g.alert).as_bytes());
    Alert {
        alert_id: h.finalize().to_hex()[..32].to_owned(),
        revision: 1,
        rule_id: "vigil.delivery.undeliverable".into(),
        rule_version: 1,
        rule_kind: "system".into(),
        title: "An alert could not be delivered".into(),
        severity: Severity::High,
        status: Status::Open,
        status_by: None,
        status_at_ns: None,
        status_note: None,
        group_key: [
            ("target".to_owned(), Some(g.target.clone())),
            ("alert_id".to_owned(), Some(g.alert.alert_id.clone())),
        ]
        .into(),
        first_event_ns: g.alert.first_event_ns,
        last_event_ns: g.alert.last_event_ns,
        detected_ns: now_ns,
        event_count: 1,
        detail: vec![
            format!(
                "undelivered: {} ({})",
                idempotency_key(&g.alert),
                g.alert.rule_id
            ),
            format!("attempts={}", g.attempts),
            format!("last_error={}", g.last_error),
        ],
        evidence: g.alert.evidence.clone(),
        incident_id: None,
        incident_subject: None,
    }
}

impl Outbox {
    pub fn open(
        data_dir: &Path,
        targets: Vec<Target>,
        metrics: Arc<DeliverMetrics>,
    ) -> Result<Outbox, DeliverError> {
        let dir = vigil_store::layout::outbox(data_dir);
        for t in &targets {
            let d = dir.join(&t.cfg.name);
            std::fs::create_dir_all(d.join("undeliverable")).map_err(|e| DeliverError::Io {
                path: d.clone(),
                message: e.to_string(),
            })?;
        }
        Ok(Outbox {
            dir,
            targets: Arc::new(targets),
            wake: Arc::new(tokio::sync::Notify::new()),
            metrics,
            gave_up: crossbeam_channel::bounded(1024),
            bucket: None,
        })
    }

    /// Keep the outbox in `bucket` too (the store's, under `data_dir`'s layout).
    pub fn with_bucket(mut self, bucket: Arc<vigil_store::Bucket>, data_dir: &Path) -> Outbox {
        self.bucket = Some((bucket, data_dir.to_owned()));
        self
    }

    /// Put an entry written locally into the bucket, if the outbox is kept there.
    pub(super) fn publish(&self, path: &Path) -> Result<(), DeliverError> {
        if let Some((b, data_dir)) = &self.bucket {
            b.publish(data_dir, path)?;
        }
        Ok(())
    }

    /// Remove an entry from the bucket (delivered, or given up on); said, not fatal: an entry
    /// left there is delivered again by a next holder, with the same idempotency key.
    pub(super) fn unpublish(&self, path: &Path) {
        if let Some((b, data_dir)) = &self.bucket
            && let Err(e) = b.unpublish(data_dir, path)
        {
            tracing::warn!(path = %path.display(), error = %e,
                "an outbox entry stays in the bucket: a next detection holder sends it again (same idempotency key)");
        }
    }

    /// Deliveries given up on since the last call (the detection thread raises an alert for
    /// each).
    pub fn take_gave_up(&self) -> Vec<GaveUp> {
        self.gave_up.1.try_iter().collect()
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Queue each revision for each target that routes it; durable when this returns.
    pub fn enqueue(&self, alerts: &[Alert]) -> Result<usize, DeliverError> {
        self.enqueue_except(alerts, None)
    }

    /// [`Outbox::enqueue`], skipping one target (the one an undeliverable alert was for).
    pub fn enqueue_except(
        &self,
        alerts: &[Alert],
        skip: Option<&str>,
    ) -> Result<usize, DeliverError> {
        let now = now_ns();
        let mut n = 0;
        for t in self
            .targets
            .iter()
            .filter(|t| Some(t.cfg.name.as_str()) != skip)
        {
            for a in alerts.iter().filter(|a| t.routes(a)) {
                let q = Queued {
                    alert: a.clone(),
                    queued_ns: now,
                    attempts: 0,
                    next_ns: now,
                    last_error: String::new(),
                };
                let path = self
                    .dir
                    .join(&t.cfg.name)
                    .join(format!("{}-{:010}.json", a.alert_id, a.revision));
                write(&path, &q)?;
                self.publish(&path)?;
                n += 1;
            }
        }
        if n > 0 {
            self.metrics.queued.fetch_add(n as u64, Ordering::Relaxed);
            self.wake.notify_one();
        }
        Ok(n)
    }
}

pub(super) fn write(path: &Path, q: &Queued) -> Result<(), DeliverError> {
    let bytes = serde_json::to_vec(q).map_err(|e| DeliverError::Io {
        path: path.into(),
        message: e.to_string(),
    })?;
    vigil_store::write_durably(path, &bytes).map_err(|e| DeliverError::Io {
        path: path.into(),
        message: e.to_string(),
    })
}
