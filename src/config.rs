//! Vigil's configuration: one TOML file, overridden by `VIGIL_SECTION__KEY` environment
//! variables, overridden by command-line flags. Every option has a default, so the embedded
//! setup needs no file at all. The reference (README, "Configuration") lists each option; a
//! test keeps it in step with [`Config::default`].

use std::path::Path;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use vigil_schemas::DecoderConfig;

/// A path setting left empty means none (every path option's default is "").
pub fn nonempty(p: &Path) -> Option<&Path> {
    (!p.as_os_str().is_empty()).then_some(p)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub decode: DecodeConfig,
    pub kafka: KafkaConfig,
    pub store: StoreConfig,
    pub checkpoint: CheckpointConfig,
    pub detect: DetectConfig,
    pub deliver: DeliverConfig,
    pub api: ApiConfig,
    pub retention: RetentionConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Per topic, how many days a file is kept after it was written (`vigil prune`); a topic
    /// not named is kept for ever.
    pub max_age_days: std::collections::BTreeMap<String, u32>,
    /// How often `vigil serve` prunes (at start, then this often).
    pub prune_interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_days: Default::default(),
            prune_interval_ms: 3_600_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the analyst HTTP API from `vigil serve`.
    pub enabled: bool,
    /// Address to listen on (flag `--listen`). Loopback by default.
    pub listen: String,
    /// Rows one query may return at most; more is a 422.
    pub max_rows: usize,
    /// A query running longer is stopped (408).
    pub query_timeout_ms: u64,
    /// Memory one query may use (DataFusion's memory pool); more is a 422.
    pub query_memory_bytes: usize,
    /// Memory all running queries may use together; more is a 422 for the query asking.
    pub query_memory_total_bytes: usize,
    /// Queries running at once; one more is a 429 with `Retry-After`.
    pub max_concurrent_queries: usize,
    /// Threads queries run on (their own: ingest, detection and the API's other calls keep
    /// theirs). 0: half the cores, at least one.
    pub query_threads: usize,
    /// A query's answer, encoded; more is a 422.
    pub max_result_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// A request's body must have arrived whole this long after its headers; later: 408.
    pub body_read_timeout_ms: u64,
    /// `POST /logs` uploads one credential may have being stored at once; more: 429.
    pub max_uploads_per_credential: usize,
    /// Uploads written to `vigil.opa` as one file, at most this many bytes decompressed.
    pub upload_batch_bytes: usize,
    /// Connections open at once; one more is closed at once.
    pub max_connections: usize,
    /// A TLS handshake not done this long after the connection opened: closed.
    pub tls_handshake_timeout_ms: u64,
    /// A request's headers not read whole this long after they began: the connection is closed.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and no byte either way for this long: closed.
    pub idle_timeout_ms: u64,
    /// JWTs: the issuer and audience every token must name. Both empty: no JWTs.
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// The environment variable holding the HS256 secret (at least 32 bytes). Empty: none.
    pub jwt_hs256_secret_env: String,
    /// A JWKS file with the RS256/ES256 public keys (each with a `kid`). Empty: none.
    pub jwt_jwks_file: std::path::PathBuf,
    /// The claim listing a token's roles.
    pub jwt_roles_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway_s: u64,
    /// API keys: `[[api.keys]]` with `name`, `sha256` (hex of the key's SHA-256; `vigil
    /// api-key` makes one) and `roles`.
    pub keys: Vec<ApiKeyConfig>,
    /// HTTPS: the server's certificate chain and private key (PEM). Both empty: plain HTTP.
    pub tls_cert_file: std::path::PathBuf,
    pub tls_key_file: std::path::PathBuf,
    /// mTLS: client certificates must chain to this CA (PEM) to be accepted. Empty: none asked.
    pub tls_client_ca_file: std::path::PathBuf,
    /// Refuse TLS connections without a client certificate (else they may use a bearer
    /// credential instead).
    pub tls_client_required: bool,
    /// Client certificates that authenticate: `[[api.clients]]` with `name`, `sha256` (hex of
    /// the certificate's DER SHA-256) and `roles`.
    pub clients: Vec<ApiKeyConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    pub sha256: String,
    pub roles: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            max_rows: 100_000,
            query_timeout_ms: 30_000,
            query_memory_bytes: 512 << 20,
            query_memory_total_bytes: 1 << 30,
            max_concurrent_queries: 4,
            query_threads: 0,
            max_result_bytes: 64 << 20,
            max_body_bytes: 1 << 20,
            body_read_timeout_ms: 30_000,
            max_uploads_per_credential: 4,
            upload_batch_bytes: 64 << 20,
            max_connections: 256,
            tls_handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_hs256_secret_env: String::new(),
            jwt_jwks_file: Default::default(),
            jwt_roles_claim: "roles".into(),
            jwt_leeway_s: 30,
            keys: Vec::new(),
            tls_cert_file: Default::default(),
            tls_key_file: Default::default(),
            tls_client_ca_file: Default::default(),
            tls_client_required: false,
            clients: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverConfig {
    /// Where alerts go (`[[deliver.targets]]`; see the README's delivery section).
    pub targets: Vec<vigil_detect::deliver::TargetConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// Run the detection engine in `vigil serve`.
    pub enabled: bool,
    /// Load the default rule pack (compiled in).
    pub default_rules: bool,
    /// A directory of rule files loaded after the default pack: Vigil's own (`*.toml`; one
    /// with a default rule's id replaces it) and Sigma rules (`*.yml`, `*.yaml`: detection and
    /// correlation rules, one or several documents a file). Empty: none.
    pub rules_dir: std::path::PathBuf,
    /// Sigma processing pipelines (pySigma's YAML: field-name mappings, log-source changes
    /// and conditions) applied to every Sigma rule before it is compiled, in `priority`
    /// order, so that rules written for another taxonomy (ECS, say) run on the fields Vigil's
    /// sources spell. A pipeline that does not parse is a configuration error (serve does not
    /// start, a reload is refused). Empty: none.
    pub sigma_pipelines: Vec<std::path::PathBuf>,
    /// The policy graph (`[[edge]]` caller → callee) the declared unexpected-caller rule checks
    /// against. Empty: none (the learned first-seen rule runs instead).
    pub allowlist_file: std::path::PathBuf,
    /// A directory of Kubernetes, Cilium and Istio policies and manifests (`*.yaml`) imported
    /// into the policy graph (with `allowlist_file`'s edges) whenever rules load: at start and
    /// on a rule reload. Empty: none.
    pub policy_dir: std::path::PathBuf,
    /// Topics of Kubernetes audit events whose stored workloads (pods, controllers,
    /// namespaces the API server created, changed, deleted) also resolve `policy_dir`'s label
    /// selectors; read as their files appear. Empty: none.
    pub policy_audit_topics: Vec<String>,
    /// How often the stored audit events of `policy_audit_topics` are looked at; a change in
    /// the workloads reloads the rules and the policy graph.
    pub policy_audit_poll_ms: u64,
    /// Workloads and namespaces learned from the audit stream, at most (the least recently
    /// changed go first).
    pub policy_audit_max_objects: usize,
    /// The SPIFFE trust domain of the mesh's identities, for imported Istio policies.
    pub trust_domain: String,
    /// `rules_dir`, `policy_dir` and `allowlist_file` are watched: once changes have been
    /// quiet this long, the rules and the policy graph are reloaded (as `POST
    /// /v1/rules/reload`). 0: not watched.
    pub watch_debounce_ms: u64,
    /// An event this far behind the detection watermark (the slowest active partition log)
    /// is late: still evaluated, but counted per log (`late` in the progress line and
    /// `/metrics`) and visible to rules (`time_late`). Rules may keep their state longer.
    pub allowed_lateness_ms: u64,
    /// An event dated further ahead of the time its record was received (its Kafka
    /// timestamp or the wall clock, whichever is earlier) is skewed: evaluated at its receive
    /// time, counted per log, visible to rules (`time_skewed`); it moves no watermark further.
    pub max_future_skew_ms: u64,
    /// A partition log that sent nothing for this long (wall clock) stops holding the
    /// watermark back.
    pub idle_source_ms: u64,
    /// Events waiting for the watermark at most; past it the oldest are evaluated anyway
    /// (counted: `vigil_detect_forced_total`).
    pub max_buffered_events: usize,
    /// Alerts about the same subject (principal, else address) whose events lie within this
    /// of each other are one incident (`incident_id`; the `incidents` SQL view).
    pub incident_window_ms: u64,
    /// A partition log that sends nothing for this long while the topic's other partitions
    /// keep sending raises `vigil.telemetry.source_silent` (its producers stopped or were
    /// stopped). 0: never.
    pub silent_source_ms: u64,
    /// Groups each rule keeps at most (the least recently seen are evicted, and counted).
    /// Rules may set their own.
    pub max_groups_per_rule: usize,
    /// Every rule's groups together, in bytes (keys, windows, baselines; weighed as the
    /// allocator holds them). Past it, the rule holding the most evicts its least recently
    /// seen sixteenth until the state is back under 15/16 of it; evictions raise
    /// `vigil.detect.state_evicted`. About 250 bytes per group with the default rules.
    pub max_state_bytes: usize,
    /// Chained pieces waiting for detection at most; a full queue makes the pipeline wait.
    pub queue_depth: usize,
    /// Updates of open alerts are stored at most this often; new alerts at once.
    pub alert_flush_ms: u64,
    /// The engine's state (groups, baselines, positions) is checkpointed to
    /// `<data_dir>/detect/state.json` this often, and at shutdown (with a bucket, put there
    /// too: where another instance takes detection over from).
    pub state_interval_ms: u64,
    /// With a bucket: detection runs on the one instance holding the bucket's detection lease,
    /// renewed every third of this; another takes over when it has not been renewed for this
    /// long.
    pub lease_ttl_ms: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            enabled: true,
            default_rules: true,
            rules_dir: Default::default(),
            sigma_pipelines: Vec::new(),
            allowlist_file: Default::default(),
            policy_dir: Default::default(),
            policy_audit_topics: Vec::new(),
            policy_audit_poll_ms: 5_000,
            policy_audit_max_objects: 100_000,
            trust_domain: "cluster.local".to_owned(),
            watch_debounce_ms: 1000,
            allowed_lateness_ms: 30_000,
            max_future_skew_ms: 300_000,
            idle_source_ms: 1_000,
            max_buffered_events: 200_000,
            incident_window_ms: 1_800_000,
            silent_source_ms: 300_000,
            max_groups_per_rule: 100_000,
            max_state_bytes: 384 << 20,
            queue_depth: 16,
            alert_flush_ms: 1000,
            state_interval_ms: 10_000,
            lease_ttl_ms: 15_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// A log whose newest signed checkpoint is this old is signed again (same tree, fresh
    /// time), so a reader can tell a quiet log from a stalled signer.
    pub interval_ms: u64,
    /// Topic every checkpoint is also published to, keyed by origin (an anchor outside the
    /// store). Empty disables it.
    pub kafka_topic: String,
    /// A second directory every checkpoint is also written to. Empty: none.
    pub mirror_dir: std::path::PathBuf,
    /// The private signing key (`PRIVATE+KEY+…`). Empty: generated on first run into
    /// `<data_dir>/keys/` (mode 0600).
    pub signing_key_file: std::path::PathBuf,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: 60_000,
            kafka_topic: "vigil.checkpoints".to_owned(),
            mirror_dir: Default::default(),
            signing_key_file: Default::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]` (flag `--brokers`).
    pub brokers: String,
    /// Topics to consume; a name starting with `^` is a regex (flag `--topics a,b`).
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group_id: String,
    /// Dead-letter topic suffix: records that fail to decode are copied to `<topic><suffix>`.
    /// Empty disables the copy (they are still stored as rejected rows).
    pub dlq_suffix: String,
    /// Format pinned per topic (`topic = "opa"`); other topics are detected per record.
    pub formats: std::collections::BTreeMap<String, String>,
    /// librdkafka properties passed through as given: TLS (`security.protocol`, `ssl.*`),
    /// SASL (`sasl.*`), tuning. They override Vigil's defaults.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".to_owned(),
            topics: Vec::new(),
            group_id: "vigil".to_owned(),
            dlq_suffix: ".dlq".to_owned(),
            formats: Default::default(),
            properties: Default::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Where the store lives (flag `--data-dir`); with an `s3://` `url`, the instance's local
    /// working copy.
    pub data_dir: std::path::PathBuf,
    /// `s3://bucket/prefix`: keep the store in an S3-compatible bucket (flag `--store`); a
    /// path or `file://` URL: the same as `data_dir`; empty: `data_dir` alone.
    pub url: String,
    /// The S3-compatible server (`http://127.0.0.1:9000`); empty: `AWS_ENDPOINT_URL`, or AWS.
    pub s3_endpoint: String,
    /// The bucket's region; empty: `AWS_REGION`, or `us-east-1`.
    pub s3_region: String,
    /// Allow an `http://` endpoint (a server on loopback; never across a network).
    pub s3_allow_http: bool,
    /// Longest one request to the bucket may take before it is retried.
    pub s3_request_timeout_ms: u64,
    /// Longest a request is retried (with backoff, up to 5 s apart) before the write fails.
    pub s3_retry_timeout_ms: u64,
    /// S3 Object Lock (compliance mode) for this many days on every object put; 0: none.
    pub object_lock_days: u32,
    /// With a bucket: how often the files other instances write are fetched here (for SQL and
    /// detection over every partition); 0: never.
    pub follow_interval_ms: u64,
    /// A partition's open batch becomes a file at this many events…
    pub max_batch_events: usize,
    /// …or this many raw bytes…
    pub max_batch_bytes: usize,
    /// …or this long after its first record (also the longest a record waits to be durable).
    pub max_batch_wait_ms: u64,
    /// Threads decoding, hash-chaining and batching records.
    pub pipeline_threads: usize,
    /// Chunks (of up to 1024 records / 1 MiB) queued per pipeline thread before partitions
    /// are paused (backpressure).
    pub pipeline_queue_depth: usize,
    /// Threads writing Parquet files.
    pub writer_threads: usize,
    /// Sealed batches queued per writer before the pipeline threads feeding it wait (and, in
    /// turn, partitions are paused: backpressure).
    pub writer_queue_depth: usize,
    /// zstd compression level of the Parquet files (1 fastest … 22 smallest).
    pub zstd_level: i32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: "./vigil-data".into(),
            url: String::new(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
            s3_allow_http: false,
            s3_request_timeout_ms: 30_000,
            s3_retry_timeout_ms: 180_000,
            object_lock_days: 0,
            follow_interval_ms: 2000,
            max_batch_events: 50_000,
            max_batch_bytes: 64 * 1024 * 1024,
            max_batch_wait_ms: 2000,
            pipeline_threads: 2,
            pipeline_queue_depth: 8,
            writer_threads: 2,
            writer_queue_depth: 2,
            zstd_level: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `vigil=debug,warn`, … (`RUST_LOG` wins if set).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeConfig {
    /// Largest record accepted, in bytes, before any gunzip.
    pub max_record_bytes: usize,
    /// Largest size a gzip record (an OPA upload) may decompress to, in bytes.
    pub max_decompressed_bytes: usize,
    /// Most events one record (an OPA upload array) may carry.
    pub max_events_per_record: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        let d = DecoderConfig::default();
        DecodeConfig {
            max_record_bytes: d.max_record_bytes,
            max_decompressed_bytes: d.max_decompressed_bytes,
            max_events_per_record: d.max_events_per_record,
        }
    }
}

impl DecodeConfig {
    pub fn decoder_config(&self) -> anyhow::Result<DecoderConfig> {
        anyhow::ensure!(
            self.max_record_bytes > 0,
            "decode.max_record_bytes must be > 0"
        );
        anyhow::ensure!(
            self.max_decompressed_bytes > 0,
            "decode.max_decompressed_bytes must be > 0"
        );
        anyhow::ensure!(
            self.max_events_per_record > 0,
            "decode.max_events_per_record must be > 0"
        );
        Ok(DecoderConfig {
            max_record_bytes: self.max_record_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
            max_events_per_record: self.max_events_per_record,
        })
    }
}

impl Config {
    /// Defaults, then the TOML file (if any), then `VIGIL_<SECTION>__<KEY>` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(
                path.is_file(),
                "config file {} does not exist",
                path.display()
            );
            fig = fig.merge(Toml::file_exact(path));
        }
        // Only double-underscore names are config (`VIGIL_LOG__FORMAT`); other VIGIL_ variables
        // (`VIGIL_CONFIG`, secrets) are read where they are used.
        fig = fig.merge(
            Env::prefixed("VIGIL_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        fig.extract().context("invalid configuration")
    }

    /// The configuration as TOML (what `vigil config` prints).
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string(self).context("serialising configuration")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn file_then_env_override_defaults_and_typos_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "vigil.toml",
                "[log]\nformat = \"json\"\n[decode]\nmax_record_bytes = 10\n",
            )?;
            jail.set_env("VIGIL_DECODE__MAX_RECORD_BYTES", "20");
            jail.set_env("VIGIL_WEBHOOK_SECRET", "not config");
            let c = Config::load(Some(Path::new("vigil.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.log.format, LogFormat::Json);
            assert_eq!(c.decode.max_record_bytes, 20);
            assert_eq!(
                c.decode.max_events_per_record,
                DecoderConfig::DEFAULT_MAX_EVENTS_PER_RECORD
            );

            jail.create_file("typo.toml", "[decode]\nmax_record_byte = 10\n")?;
            let err = format!(
                "{:#}",
                Config::load(Some(Path::new("typo.toml"))).unwrap_err()
            );
            assert!(err.contains("max_record_byte"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_readme_documents_every_option_with_its_default() {
        let readme = include_str!("../README.md");
        let defaults: toml::Table = toml::from_str(&Config::default().to_toml().unwrap()).unwrap();
        for (section, keys) in &defaults {
            for (key, default) in keys.as_table().unwrap() {
                let shown = match default {
                    toml::Value::Table(t) if t.is_empty() => "{}".to_owned(),
                    v => v.to_string(),
                };
                let row = format!("| `{section}.{key}` | `{shown}` |");
                assert!(
                    readme.contains(&row),
                    "README's config reference lacks the row {row}"
                );
            }
        }
    }
}
