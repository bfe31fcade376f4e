//! Vigil's integration tests: one test binary (so DataFusion and rdkafka are linked once, not
//! once per file), one module per area, each against the real parts — the Tansu broker on a
//! free loopback port, `vigil serve` and the other commands as child processes, real HTTP, the
//! public samples in `../shared/data`. [`support`] holds what they share.
//!
//! Run one area while iterating: `cargo nextest run -p vigil --test integration tamper::`.

mod support;

// Decoding: the `vigil` binary and the decoders on real and hostile input.
mod cli_decode;
mod decode_hostile;
mod decode_real_samples;

// Ingest: Kafka to hash-chained Parquet, and its failures.
mod hostile_faults;
mod hostile_producer;
mod ingest_failures;
mod ingest_kafka;

// Verification: a real store tampered with, and what `verify` says; retention's signed prunes.
mod retention;
mod tamper;

// The store in an S3-compatible bucket (moto on loopback), and several instances on one.
mod instances;
mod store_bucket;

// Detection: rules, the declared graph, event time, the simulator, alerts and their delivery.
mod alert_lifecycle;
mod cli_rules;
mod deliver_http;
mod detect_kafka;
mod detect_policy;
mod detect_samples;
mod detect_sigma;
mod detect_time;
mod export_out;
mod ocsf_out;
mod simulate_kafka;

// The analyst API: HTTP, TLS, and hostile clients and SQL.
mod api_http;
mod api_tls;
mod hostile_http;
mod hostile_sql;

// The analyst console, in a real browser.
mod console_browser;

// The README's main command.
mod demo_main;
