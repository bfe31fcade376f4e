//! The delivery thread: the outbox drained into every target with bounded concurrency,
//! exponential backoff with jitter, and a give-up age.

use super::*;

/// Backoff before attempt `attempts + 1`: initial · 2^attempts, capped, ±50% jitter.
pub(crate) fn backoff_ms(cfg: &TargetConfig, attempts: u32, jitter: f64) -> u64 {
    let base = cfg
        .backoff_initial_ms
        .saturating_mul(1u64 << attempts.min(30))
        .min(cfg.backoff_max_ms);
    (base as f64 * (0.5 + jitter.clamp(0.0, 1.0))) as u64
}

/// Start the delivery thread: it drains every target's outbox (what earlier runs left too)
/// until `shutdown`, then returns (undelivered entries stay queued for the next run).
pub fn start(
    outbox: Outbox,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vigil-deliver".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "delivery: no runtime");
                    return;
                }
            };
            rt.block_on(run(outbox, shutdown));
        })
}

pub(super) async fn run(outbox: Outbox, shutdown: Arc<AtomicBool>) {
    // No redirects: a 3xx is a failed attempt (followed, a 302 turns the POST into a bodiless
    // GET whose 200 would count as delivered; a 307 re-posts the signed body elsewhere).
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "delivery: no HTTP client");
            return;
        }
    };
    // Per target: the entries being attempted, and when each entry seen is next due (so a
    // queued entry's file is read once, not on every pass).
    let mut in_flight: Vec<HashSet<PathBuf>> =
        outbox.targets.iter().map(|_| HashSet::new()).collect();
    let mut due_at: Vec<HashMap<PathBuf, i64>> =
        outbox.targets.iter().map(|_| HashMap::new()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if shutdown.load(Ordering::Relaxed) {
            break;
        }
        let now = now_ns();
        for (i, t) in outbox.targets.iter().enumerate() {
            let dir = outbox.dir.join(&t.cfg.name);
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut queued: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    // An entry being written is a temp file until it is renamed in place.
                    p.extension().is_some_and(|x| x == "json")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| !vigil_store::files::is_temp_name(n))
                })
                .collect();
            queued.sort();
            for path in queued {
                if in_flight[i].len() >= t.cfg.concurrency {
                    break;
                }
                if in_flight[i].contains(&path) || due_at[i].get(&path).is_some_and(|&n| n > now) {
                    continue;
                }
                let q: Queued = match std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                {
                    Some(q) => q,
                    // Complete entries only are listed, so this is damage: said once, left in place.
                    None => {
                        tracing::error!(path = %path.display(), "outbox entry unreadable; left in place");
                        due_at[i].insert(path, i64::MAX);
                        continue;
                    }
                };
                if q.next_ns > now {
                    due_at[i].insert(path, q.next_ns);
                    continue;
                }
                in_flight[i].insert(path.clone());
                let (t, client, dir, ob) = (t.clone(), client.clone(), dir.clone(), outbox.clone());
                tasks.spawn(async move {
                    let next = attempt(&t, &client, &dir, &path, q, &ob).await;
                    (i, path, next)
                });
            }
        }
        while let Some(r) = tasks.try_join_next() {
            match r {
                Ok((i, path, next)) => {
                    in_flight[i].remove(&path);
                    match next {
                        Some(n) => due_at[i].insert(path, n),
                        None => due_at[i].remove(&path),
                    };
                }
                Err(e) => tracing::error!(error = %e, "delivery task failed"),
            }
        }
        tokio::select! {
            _ = outbox.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    // Let deliveries in flight finish (each is bounded by its timeout).
    while tasks.join_next().await.is_some() {}
}

/// One delivery attempt; when the entry is next due, or `None` once it left the outbox.
pub(super) async fn attempt(
    t: &Target,
    client: &reqwest::Client,
    dir: &Path,
    path: &Path,
    mut q: Queued,
    outbox: &Outbox,
) -> Option<i64> {
    let (metrics, gave_up) = (&outbox.metrics, &outbox.gave_up.0);
    let (body, headers) = request(t, &q.alert, now_ns() / 1_000_000_000);
    let result: Result<(), String> = if t.cfg.kind == TargetKind::File {
        append_line(&t.cfg.url, &body).map_err(|e| e.to_string())
    } else {
        let mut req = client
            .post(endpoint(t))
            .timeout(Duration::from_millis(t.cfg.timeout_ms))
            .body(body);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) if r.status().is_redirection() => Err(format!(
                "HTTP {} (redirects are not followed: a target's URL must be where it receives)",
                r.status()
            )),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(e) => Err(error_text(e)),
        }
    };
    match result {
        Ok(()) => {
            metrics.delivered.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = std::fs::remove_file(path) {
                tracing::error!(path = %path.display(), error = %e, "delivered, but the outbox entry stays: it will be sent again (same idempotency key)");
            }
            outbox.unpublish(path);
            None
        }
        Err(why) => {
            metrics.failed_attempts.fetch_add(1, Ordering::Relaxed);
            q.attempts += 1;
            q.last_error = why.clone();
            let now = now_ns();
            let age_ms = (now - q.queued_ns) / 1_000_000;
            if age_ms >= i64::try_from(t.cfg.max_age_ms).unwrap_or(i64::MAX) {
                metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target_name = %t.cfg.name, alert_id = %q.alert.alert_id,
                    revision = q.alert.revision, attempts = q.attempts, last_error = %why,
                    "alert undeliverable: gave up after max_age_ms");
                let dest = dir
                    .join("undeliverable")
                    .join(path.file_name().unwrap_or_default());
                if write(&dest, &q).is_ok() && outbox.publish(&dest).is_ok() {
                    let _ = std::fs::remove_file(path);
                    outbox.unpublish(path);
                }
                let notice = GaveUp {
                    target: t.cfg.name.clone(),
                    alert: q.alert,
                    attempts: q.attempts,
                    last_error: why,
                };
                if gave_up.try_send(notice).is_err() {
                    tracing::error!("too many undeliverable alerts to raise an alert for each");
                }
                return None;
            }
            let jitter = (now as u64 % 1000) as f64 / 1000.0;
            let wait = backoff_ms(&t.cfg, q.attempts - 1, jitter);
            q.next_ns = now + i64::try_from(wait).unwrap_or(i64::MAX / 2) * 1_000_000;
            tracing::warn!(target_name = %t.cfg.name, alert_id = %q.alert.alert_id,
                attempts = q.attempts, retry_in_ms = wait, error = %why, "alert delivery failed");
            if let Err(e) = write(path, &q) {
                tracing::error!(error = %e, "outbox entry not updated");
            }
            Some(q.next_ns)
        }
    }
}

pub(super) fn append_line(path: &str, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if path == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(body)?;
        out.write_all(b"\n")?;
        return out.flush();
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut line = body.to_vec();
    line.push(b'\n');
    f.write_all(&line)?;
    f.sync_data()
}
