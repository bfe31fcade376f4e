//! The analyst API inside `vigil serve`: its settings from the configuration, the HTTP server
//! on its own runtime, and the writer that records every call in Vigil's own log
//! (`vigil.api/<n>`, a partition per process: chained, signed, anchored).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use vigil_query::api::auth::{ApiKey, Auth, JwtConfig, Role};
use vigil_query::api::{self, ApiConfig as Settings, AppState, Audited, sql::Limits};
use vigil_store::checkpoint::Checkpointer;
use vigil_store::{API_TOPIC, Store, WriteOptions};

use crate::config::Config;

/// The running API: stop it with [`Api::stop`].
pub struct Api {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: JoinHandle<anyhow::Result<()>>,
    writer: JoinHandle<anyhow::Result<()>>,
}

/// Calls waiting to be recorded at most (a full queue slows the API down).
const AUDIT_QUEUE: usize = 1024;
/// Calls recorded in one file at most.
const AUDIT_BATCH: usize = 256;

/// The authenticator the configuration describes.
pub fn auth(cfg: &Config) -> anyhow::Result<Auth> {
    let a = &cfg.api;
    let mut keys = Vec::new();
    for k in &a.keys {
        let hash = hex::decode(&k.sha256)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .with_context(|| format!("api.keys {}: sha256 is not 64 hex digits", k.name))?;
        let roles = k
            .roles
            .iter()
            .map(|r| {
                Role::parse(r).with_context(|| format!("api.keys {}: unknown role {r:?}", k.name))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        keys.push(ApiKey {
            name: k.name.clone(),
            sha256: hash,
            roles,
        });
    }
    let jwt = if a.jwt_issuer.is_empty() && a.jwt_audience.is_empty() {
        None
    } else {
        let secret = if a.jwt_hs256_secret_env.is_empty() {
            None
        } else {
            Some(
                std::env::var(&a.jwt_hs256_secret_env)
                    .with_context(|| {
                        format!(
                            "api.jwt_hs256_secret_env: {} is not set",
                            a.jwt_hs256_secret_env
                        )
                    })?
                    .into_bytes(),
            )
        };
        let jwks = if a.jwt_jwks_file.as_os_str().is_empty() {
            None
        } else {
            let text = std::fs::read_to_string(&a.jwt_jwks_file)
                .with_context(|| format!("api.jwt_jwks_file {}", a.jwt_jwks_file.display()))?;
            Some(vigil_query::api::auth::read_jwks(&text).map_err(anyhow::Error::msg)?)
        };
        Some(JwtConfig {
            hs256_secret: secret,
            jwks,
            issuer: a.jwt_issuer.clone(),
            audience: a.jwt_audience.clone(),
            roles_claim: a.jwt_roles_claim.clone(),
            leeway_s: a.jwt_leeway_s,
        })
    };
    Auth::new(keys, jwt).map_err(|e| anyhow::anyhow!("api: {e}"))
}

/// Start the API: bind (so a busy address fails `serve` at once), record calls, serve.
pub fn start(
    cfg: &Config,
    checkpoints: Arc<Checkpointer>,
    anchor: Option<Arc<vigil_ingest::AnchorPublisher>>,
    ready: Arc<AtomicBool>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
) -> anyhow::Result<Api> {
    let auth = auth(cfg)?;
    if !auth.configured() {
        tracing::warn!(
            "the API has no API keys or JWT settings: every route but /healthz and /readyz answers 401 (see api.keys, `vigil api-key`)"
        );
    }
    let listener = std::net::TcpListener::bind(&cfg.api.listen)
        .with_context(|| format!("api.listen {}", cfg.api.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;

    let store = Store::open(&cfg.store.data_dir, WriteOptions::default())?;
    let (log, lock) = vigil_store::claim(&store, API_TOPIC)?;
    // Records stored but not signed (a crash between file and checkpoint) are signed first.
    let head = log.head().clone();
    if head.tree.size() > 0
        && let Some(note) =
            checkpoints.checkpoint(API_TOPIC, log.partition(), head.chain, &head.tree, None)?
        && let Some(a) = &anchor
    {
        let origin =
            vigil_store::checkpoint::origin(&checkpoints.store_name(), API_TOPIC, log.partition());
        a.publish(&origin, &note);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Audited>(AUDIT_QUEUE);
    let writer = std::thread::Builder::new()
        .name("vigil-api-audit".into())
        .spawn(move || {
            let _lock = lock;
            record(log, rx, &checkpoints, anchor.as_deref())
        })?;

    let data_dir = cfg.store.data_dir.clone();
    let lifecycle_cfg = cfg.clone();
    let lifecycle: Arc<api::LifecycleFn> = Arc::new(move |cmd| {
        crate::alerts_cmd::apply_or_queue(&lifecycle_cfg, &data_dir, &cmd, Duration::from_secs(10))
            .map_err(|e| format!("{e:#}"))
    });
    let state = AppState {
        cfg: Arc::new(Settings {
            data_dir: cfg.store.data_dir.clone(),
            limits: Limits {
                max_rows: cfg.api.max_rows,
                timeout_ms: cfg.api.query_timeout_ms,
                memory_bytes: cfg.api.query_memory_bytes,
            },
            max_body_bytes: cfg.api.max_body_bytes,
        }),
        auth: Arc::new(auth),
        lifecycle: Some(lifecycle),
        audit: tx,
        ready,
        metrics,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new().name("vigil-api".into()).spawn(
        move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("vigil-api-worker")
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await?;
                anyhow::Ok(())
            })
        },
    )?;
    tracing::info!(%addr, "analyst API listening");
    Ok(Api {
        stop: Some(stop),
        server,
        writer,
    })
}

impl Api {
    /// Stop serving (requests in flight finish), then record what is left.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let served = self
            .server
            .join()
            .map_err(|_| anyhow::anyhow!("API thread panicked"))?;
        let recorded = self
            .writer
            .join()
            .map_err(|_| anyhow::anyhow!("API audit thread panicked"))?;
        served.context("API server")?;
        recorded.context("API audit log")
    }
}

/// Record calls in batches: one durable file per batch, signed and anchored, then each call's
/// response is let go.
fn record(
    mut log: vigil_store::OwnLog,
    mut rx: tokio::sync::mpsc::Receiver<Audited>,
    checkpoints: &Checkpointer,
    anchor: Option<&vigil_ingest::AnchorPublisher>,
) -> anyhow::Result<()> {
    let mut seq = 0u64;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < AUDIT_BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let values: Vec<Vec<u8>> = batch
            .iter()
            .map(|a| {
                seq += 1;
                api::audit_event(&a.call, seq)
            })
            .collect();
        let written = log
            .append(&values, vigil_detect::engine::now_ns() / 1_000_000)
            .map_err(anyhow::Error::from)
            .and_then(|w| {
                if let Some(w) = &w {
                    let (topic, partition) = (API_TOPIC, w.span.partition);
                    if let Some(note) =
                        checkpoints.checkpoint(topic, partition, w.chain(), &w.span.tree, None)?
                        && let Some(a) = anchor
                    {
                        let origin = vigil_store::checkpoint::origin(
                            &checkpoints.store_name(),
                            topic,
                            partition,
                        );
                        a.publish(&origin, &note);
                    }
                }
                Ok(())
            });
        let ok = written.is_ok();
        for a in batch {
            let _ = a.done.send(ok);
        }
        if let Err(e) = written {
            tracing::error!(error = %format!("{e:#}"), "recording API calls failed: the API answers 503 until it works again");
        }
    }
    Ok(())
}

/// `vigil api-key`: a new random API key, printed once, and the configuration entry holding
/// its hash.
#[derive(clap::Args)]
pub struct ApiKeyArgs {
    /// The key's name (it is who the audit log says called).
    #[arg(long)]
    name: String,
    /// A role: reader, analyst, ingestor or admin (repeat for several).
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
}

pub fn api_key(args: ApiKeyArgs) -> anyhow::Result<std::process::ExitCode> {
    for r in &args.roles {
        Role::parse(r)
            .with_context(|| format!("unknown role {r:?} (reader, analyst, ingestor, admin)"))?;
    }
    anyhow::ensure!(
        !args.name.is_empty()
            && args
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "the name: letters, digits, - _ ."
    );
    let mut raw = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
    let key = format!("vk_{}", hex::encode(raw));
    let hash = hex::encode(vigil_query::api::auth::hash_key(&key));
    println!("{key}");
    eprintln!(
        "Keep the key (shown once). Add to the configuration:\n\n[[api.keys]]\nname = {:?}\nsha256 = \"{hash}\"\nroles = {:?}\n\nThen: curl -H \"Authorization: Bearer <key>\" http://127.0.0.1:8080/v1/alerts",
        args.name, args.roles
    );
    Ok(std::process::ExitCode::SUCCESS)
}
