//! The analyst API inside `vigil serve`: its settings from the configuration, the HTTP server
//! on its own runtime, and the writers of Vigil's own logs it feeds ([`api::OwnLogs`]: every
//! call in `vigil.api/<n>`, OPA uploads in `vigil.opa/<n>`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use vigil_query::api::auth::{ApiKey, Auth, JwtConfig, Role};
use vigil_query::api::{
    self, ApiConfig as Settings, AppState,
    runner::{Runner, Sharing},
    sql::Limits,
};
use vigil_store::{LogSigner, Store, WriteOptions};

use crate::config::Config;

/// The running API: stop it with [`Api::stop`].
pub struct Api {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: JoinHandle<anyhow::Result<()>>,
    own_logs: api::OwnLogs,
}

/// The authenticator the configuration describes.
pub fn auth(cfg: &Config) -> anyhow::Result<Auth> {
    let a = &cfg.api;
    let mut keys = Vec::new();
    for k in &a.keys {
        keys.push(entry("api.keys", k)?);
    }
    let mut certs = Vec::new();
    for c in &a.clients {
        certs.push(entry("api.clients", c)?);
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
            Some(
                vigil_query::api::auth::read_jwks(&text)
                    .with_context(|| format!("api.jwt_jwks_file {}", a.jwt_jwks_file.display()))?,
            )
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
    Auth::new(keys, certs, jwt).context("api")
}

/// An `[[api.keys]]` or `[[api.clients]]` entry: its hash and roles checked.
fn entry(section: &str, k: &crate::config::ApiKeyConfig) -> anyhow::Result<ApiKey> {
    let hash = hex::decode(&k.sha256)
        .ok()
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
        .with_context(|| format!("{section} {}: sha256 is not 64 hex digits", k.name))?;
    let roles = k
        .roles
        .iter()
        .map(|r| {
            Role::parse(r).with_context(|| format!("{section} {}: unknown role {r:?}", k.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ApiKey {
        name: k.name.clone(),
        sha256: hash,
        roles,
    })
}

/// The TLS settings, if HTTPS is configured: certificate, key, and (mTLS) the client CA.
fn tls_config(cfg: &Config) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let a = &cfg.api;
    let (cert, key) = (&a.tls_cert_file, &a.tls_key_file);
    match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
        (true, true) => {
            anyhow::ensure!(
                a.tls_client_ca_file.as_os_str().is_empty(),
                "api.tls_client_ca_file needs api.tls_cert_file and api.tls_key_file"
            );
            return Ok(None);
        }
        (false, false) => {}
        _ => anyhow::bail!("api.tls_cert_file and api.tls_key_file go together"),
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("api.tls_cert_file {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("api.tls_key_file {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if a.tls_client_ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&a.tls_client_ca_file)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .with_context(|| {
                format!("api.tls_client_ca_file {}", a.tls_client_ca_file.display())
            })?;
        for c in cas {
            roots.add(c)?;
        }
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let v = if a.tls_client_required {
            v
        } else {
            v.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(v.build()?)
    };
    let mut c = builder
        .with_single_cert(chain, key)
        .context("api.tls_cert_file and api.tls_key_file do not make a certificate")?;
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(c)))
}

/// Where the API's queries run, from `[api]`.
fn query_runner(api: &crate::config::ApiConfig) -> anyhow::Result<Runner> {
    anyhow::ensure!(
        api.max_concurrent_queries > 0,
        "api.max_concurrent_queries must be at least 1"
    );
    anyhow::ensure!(
        api.query_memory_total_bytes >= api.query_memory_bytes,
        "api.query_memory_total_bytes ({}) must be at least api.query_memory_bytes ({})",
        api.query_memory_total_bytes,
        api.query_memory_bytes
    );
    let threads = match api.query_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => n,
    };
    let limits = Limits {
        max_rows: api.max_rows,
        timeout_ms: api.query_timeout_ms,
        memory_bytes: api.query_memory_bytes,
        max_result_bytes: api.max_result_bytes,
    };
    let sharing = Sharing {
        threads,
        max_concurrent: api.max_concurrent_queries,
        memory_total_bytes: api.query_memory_total_bytes,
    };
    Ok(Runner::new(limits, sharing)?)
}

/// `POST /v1/rules/reload` (and the file watch, `crate::rules_watch`): the rules directory and
/// policies read again (the configuration file is not);
/// any rule that fails to load refuses the whole reload, so a typo never drops a rule.
pub fn reload_fn(
    cfg: &Config,
    reloader: Option<vigil_detect::run::Reloader>,
    feed: Option<Arc<crate::services::policy::PolicyFeed>>,
) -> Arc<api::ReloadFn> {
    let detect = cfg.detect.clone();
    Arc::new(move |by: &str| {
        let Some(reloader) = &reloader else {
            return Err(api::ReloadFail::Unavailable(
                "detection does not run in this process (detect.enabled = false, or another process holds the data directory's detection lock)".into(),
            ));
        };
        let mut loaded = crate::services::rules::load(&detect, feed.as_deref())
            .map_err(|e| api::ReloadFail::Invalid(vec![format!("{e:#}")]))?;
        if !loaded.errors.is_empty() {
            return Err(api::ReloadFail::Invalid(
                loaded
                    .errors
                    .iter()
                    .map(|e| format!("{}:{}: {}", e.file, e.line, e.message))
                    .collect(),
            ));
        }
        let inactive = std::mem::take(&mut loaded.inactive);
        let rules = loaded.into_rules();
        let reloaded = reloader
            .reload(rules, by, Duration::from_secs(30))
            .map_err(|e| api::ReloadFail::Unavailable(e.to_string()))?;
        Ok(api::RulesReloaded {
            reloaded,
            inactive: inactive
                .into_iter()
                .map(|(id, reason)| api::InactiveRule { id, reason })
                .collect(),
        })
    })
}

/// Largest rule file `GET /v1/rules` returns the text of.
const MAX_DEFINITION_BYTES: usize = 64 << 10;

/// `GET /v1/rules`: the rules as `vigil rules list` loads them, each with its file's text.
pub fn rules_fn(
    cfg: &Config,
    feed: Option<Arc<crate::services::policy::PolicyFeed>>,
) -> Arc<api::RulesFn> {
    let detect = cfg.detect.clone();
    Arc::new(move || {
        let d = crate::services::rules::defaults(&detect, feed.as_deref())
            .map_err(|e| format!("{e:#}"))?;
        let sources = vigil_detect::rules::sources(
            crate::config::nonempty(&detect.rules_dir),
            detect.default_rules,
        )
        .map_err(|e| e.to_string())?;
        let loaded = vigil_detect::rules::load(&sources, &d);
        let text = |source: &str| {
            sources
                .iter()
                .find(|s| s.name == source)
                .filter(|s| s.text.len() <= MAX_DEFINITION_BYTES)
                .map(|s| s.text.clone())
        };
        let rules = loaded
            .all()
            .map(|r| api::RuleInfo {
                id: r.meta.id.clone(),
                version: r.meta.version,
                title: r.meta.title.clone(),
                severity: r.meta.severity,
                kind: r.meta.kind.as_str().to_owned(),
                description: r.meta.description.clone(),
                source: r.meta.source.clone(),
                definition: text(&r.meta.source),
            })
            .collect();
        let inactive = (loaded.inactive.iter())
            .map(|(id, reason)| api::InactiveRule {
                id: id.clone(),
                reason: reason.clone(),
            })
            .collect();
        Ok(api::RulesList { rules, inactive })
    })
}

/// What the API does with the rules: reload them, describe them.
pub struct RuleHooks {
    pub reload: Arc<api::ReloadFn>,
    pub list: Arc<api::RulesFn>,
}

/// Start the API: bind (so a busy address fails `serve` at once), record calls, serve.
pub fn start(
    cfg: &Config,
    bucket: Option<Arc<vigil_store::Bucket>>,
    signer: LogSigner,
    ready: Arc<AtomicBool>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    live: vigil_query::Live,
    rules: RuleHooks,
) -> anyhow::Result<Api> {
    let auth = auth(cfg)?;
    let tls = tls_config(cfg)?;
    if !auth.configured() {
        tracing::warn!(
            "the API has no API keys or JWT settings: every route but /healthz and /readyz answers 401 (see api.keys, `vigil api-key`)"
        );
    }
    let listener = std::net::TcpListener::bind(&cfg.api.listen)
        .with_context(|| format!("api.listen {}", cfg.api.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;

    // Every call is recorded in `vigil.api`; OPA uploads (`POST /logs`) are stored as
    // received in `vigil.opa`, decoded as OPA's upload format.
    let mut store = Store::open(&cfg.store.data_dir, WriteOptions::default())?;
    if let Some(b) = bucket {
        store = store.with_bucket(b);
    }
    let opa = vigil_schemas::Decoder::new(
        cfg.decode.decoder_config()?,
        Some(vigil_schemas::SourceFormat::Opa),
    );
    let own_logs = api::OwnLogs::start(&store, &signer, opa, cfg.api.upload_batch_bytes)?;

    let data_dir = cfg.store.data_dir.clone();
    let lifecycle_cfg = cfg.clone();
    let lifecycle: Arc<api::LifecycleFn> = Arc::new(move |cmd| {
        crate::services::alerts::apply_or_queue(
            &lifecycle_cfg,
            &data_dir,
            &cmd,
            Duration::from_secs(10),
        )
        .map_err(|e| format!("{e:#}"))
    });
    // The alert log's directory exists from the start, so its table is its files, not an empty
    // stand-in made before the first alert.
    std::fs::create_dir_all(vigil_store::layout::alerts(&cfg.store.data_dir))?;
    let catalog = Arc::new(vigil_query::Catalog::open(&cfg.store.data_dir)?.with_live(live));
    let state = AppState {
        catalog,
        cfg: Arc::new(Settings {
            data_dir: cfg.store.data_dir.clone(),
            max_body_bytes: cfg.api.max_body_bytes,
            body_read_timeout_ms: cfg.api.body_read_timeout_ms,
            max_uploads_per_credential: cfg.api.max_uploads_per_credential.max(1),
            max_decompressed_bytes: cfg.decode.decoder_config()?.max_decompressed_bytes,
        }),
        upload_slots: Arc::default(),
        queries: query_runner(&cfg.api)?,
        auth: Arc::new(auth),
        lifecycle: Some(lifecycle),
        reload: rules.reload,
        rules: rules.list,
        audit: own_logs.audit.clone(),
        uploads: Some(own_logs.uploads.clone()),
        checkpoints: Some(signer.checkpoints().clone()),
        ready,
        metrics,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    anyhow::ensure!(
        cfg.api.max_connections > 0,
        "api.max_connections must be at least 1"
    );
    let conn_limits = crate::services::api_listen::ConnLimits {
        max_connections: cfg.api.max_connections,
        tls_handshake_timeout_ms: cfg.api.tls_handshake_timeout_ms,
        header_read_timeout_ms: cfg.api.header_read_timeout_ms,
        idle_timeout_ms: cfg.api.idle_timeout_ms,
    };
    let server = std::thread::Builder::new().name("vigil-api".into()).spawn(
        move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("vigil-api-worker")
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                crate::services::api_listen::serve(
                    listener,
                    tls,
                    api::router(state),
                    stopped,
                    conn_limits,
                )
                .await
            })
        },
    )?;
    tracing::info!(%addr, https = !cfg.api.tls_cert_file.as_os_str().is_empty(),
        mtls = !cfg.api.tls_client_ca_file.as_os_str().is_empty(), "analyst API listening");
    Ok(Api {
        stop: Some(stop),
        server,
        own_logs,
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
        served.context("API server")?;
        self.own_logs.join().context("API log writer")?;
        Ok(())
    }
}
