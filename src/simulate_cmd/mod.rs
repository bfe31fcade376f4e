//! `vigil simulate`: traffic from a small zero-trust mesh to Kafka, with named attacks on top.
//!
//! The mesh: services with SPIFFE identities (`spiffe://cluster.local/ns/<ns>/sa/<name>`) and
//! a fixed call graph. Each second it emits, at `--rate` with a diurnal swing, what such a mesh
//! reports: OPA decision logs in Envoy ext_authz's shape for every call (allowed on the graph;
//! now and then a legitimate one-off denial), Cilium Hubble flows (now and then a dropped one),
//! Kubernetes audit events from controllers and CI (now and then a 403). Before the live
//! traffic it emits `--history-hours` of backdated calls on every edge, so that rules which
//! learn the mesh (first seen caller → callee) have learned it.
//!
//! Attacks are injected every `--attack-every` seconds, in the order given; each is printed
//! with its time, its subject and the rules it should fire, so the output can be laid next to
//! the alerts. Every record is keyed by its source address (one source's events stay in order
//! in one partition), and decodes with Vigil's own decoders (unit-tested below).

mod labelled;
mod mesh;
mod traffic;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::Config;
use vigil_store::clock::now_ns;

pub use traffic::{Record, Traffic};

/// A named attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Many denied logins from one outside address to the auth service.
    CredentialStuffing,
    /// A mesh service (stolen identity) probing callees and routes it has no access to.
    CompromisedProbing,
    /// A mesh service calling a callee it has never called (allowed by a loose policy).
    LateralMovement,
    /// A service account hitting Kubernetes API 403s (reading secrets it may not).
    K8s403Burst,
    /// A burst of flows dropped by network policy from one workload.
    DroppedFlows,
    /// Denied logins from one address, then one that succeeds.
    DenyThenAllow,
    /// Every scenario above, in this order.
    All,
}

impl Scenario {
    const EACH: [Scenario; 6] = [
        Scenario::CredentialStuffing,
        Scenario::CompromisedProbing,
        Scenario::LateralMovement,
        Scenario::K8s403Burst,
        Scenario::DroppedFlows,
        Scenario::DenyThenAllow,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::CredentialStuffing => "credential-stuffing",
            Scenario::CompromisedProbing => "compromised-probing",
            Scenario::LateralMovement => "lateral-movement",
            Scenario::K8s403Burst => "k8s-403-burst",
            Scenario::DroppedFlows => "dropped-flows",
            Scenario::DenyThenAllow => "deny-then-allow",
            Scenario::All => "all",
        }
    }

    /// The default rules it should fire.
    pub fn expects(self) -> &'static [&'static str] {
        match self {
            Scenario::CredentialStuffing => &["vigil.denial_burst.source_ip"],
            // Its calls to services it never called are new edges too.
            Scenario::CompromisedProbing => &[
                "vigil.permission_probing",
                "vigil.denial_burst.caller",
                "vigil.unexpected_caller.learned",
            ],
            Scenario::LateralMovement => &["vigil.unexpected_caller.learned"],
            Scenario::K8s403Burst => &["vigil.k8s.forbidden_burst.user"],
            Scenario::DroppedFlows => &["vigil.flow.drop_burst.source"],
            Scenario::DenyThenAllow => &["vigil.deny_then_allow"],
            Scenario::All => &[],
        }
    }
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Kafka bootstrap brokers (overrides `kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// Topic to produce to.
    #[arg(long, default_value = "mesh")]
    topic: String,
    /// Mean events per second of normal traffic. Above ~80 with `--history-hours`, busy
    /// callers jump from the history's one call per edge an hour to over 300 a minute, and
    /// `vigil.rate_spike.caller` rightly fires for them.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds to run (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Attacks to inject, in order (repeatable; `all` for every one).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Seconds between attacks (the first after one interval).
    #[arg(long, default_value_t = 5.0)]
    attack_every: f64,
    /// Services in the mesh (at least 4).
    #[arg(long, default_value_t = 12)]
    services: usize,
    /// Length of a simulated day in seconds: the traffic swings ±30% over it.
    #[arg(long, default_value_t = 600.0)]
    day_secs: f64,
    /// Hours of backdated traffic (one call per edge an hour) before the live traffic, so that
    /// the learned-edge rule knows the mesh (it learns for 24 h of event time); 0: none.
    #[arg(long, default_value_t = 25)]
    history_hours: u32,
    /// Seed of the mesh and the traffic (the same seed, the same mesh).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print injections and the summary as JSON lines.
    #[arg(long)]
    json: bool,
    /// Workloads outside the mesh calling its services instead of the mesh itself, in turn,
    /// each with its own SPIFFE id and address: this many distinct callers, so as many groups
    /// in every per-caller rule (for load and memory measurements); 0: none.
    #[arg(long, default_value_t = 0)]
    callers: usize,
    /// Also write the mesh's edges, each injection and the summary as JSON lines to this file
    /// (as `--json` prints them), whatever the terminal shows.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
    #[command(flatten)]
    labelled: labelled::LabelledArgs,
}

/// A time as RFC 3339 with nanoseconds, as the sources write it.
pub(crate) fn rfc3339(t_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(t_ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A Kubernetes audit event (`ResponseComplete`, metadata level) with id `id`: `user` at `ip`
/// doing `verb` on `uri`, answered `code` (403: forbidden).
pub(crate) fn k8s_audit_event(
    id: &str,
    t_ns: i64,
    user: &str,
    ip: &str,
    verb: &str,
    uri: &str,
    code: u16,
) -> String {
    let decision = if code == 403 { "forbid" } else { "allow" };
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"{uri}","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["{ip}"],"responseStatus":{{"code":{code}}},"requestReceivedTimestamp":"{t}","stageTimestamp":"{t}","annotations":{{"authorization.k8s.io/decision":"{decision}"}}}}"#,
        t = rfc3339(t_ns),
    )
}

/// The scenarios to run, `all` expanded.
fn expand(scenarios: &[Scenario]) -> Vec<Scenario> {
    scenarios
        .iter()
        .flat_map(|&s| {
            if s == Scenario::All {
                Scenario::EACH.to_vec()
            } else {
                vec![s]
            }
        })
        .collect()
}

/// Sends records, waiting for room when the producer's queue is full.
struct Sender {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl Sender {
    fn send(&self, (key, value): &Record) -> anyhow::Result<()> {
        crate::services::produce::send(
            &self.producer,
            &self.topic,
            Some(key.as_bytes()),
            value.as_bytes(),
        )
    }
}

pub fn run(cfg: &Config, args: SimulateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be above 0"
    );
    anyhow::ensure!(args.attack_every > 0.0, "--attack-every must be above 0");
    anyhow::ensure!(args.day_secs > 0.0, "--day-secs must be above 0");
    let brokers = args
        .brokers
        .clone()
        .unwrap_or_else(|| cfg.kafka.brokers.clone());
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "100000");
    for (k, v) in &cfg.kafka.properties {
        pc.set(k, v);
    }
    let sender = Sender {
        producer: pc.create().context("creating the producer")?,
        topic: args.topic.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc_handler(move || stop.store(true, Ordering::Relaxed))?;
    }

    if args.labelled.labelled.is_some() {
        let say = |line: String| {
            if !args.json {
                println!("{line}");
            }
        };
        labelled::run(
            &sender.producer,
            &args.topic,
            &args.labelled,
            args.rate,
            args.seed,
            args.history_hours,
            &say,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut traffic = Traffic::new(args.services, args.seed).with_callers(args.callers);
    let scenarios = expand(&args.scenarios);
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    let mut record = match &args.record {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    // A JSON line: printed with `--json`, written to `--record` (flushed: it is read live).
    let mut structured = |v: serde_json::Value| -> anyhow::Result<()> {
        if let Some(r) = record.as_mut() {
            writeln!(r, "{v}")?;
            r.flush()?;
        }
        if args.json {
            say(v.to_string());
        }
        Ok(())
    };
    if !args.json {
        say(format!(
            "simulating {} services ({} call edges) → {} on {brokers}: ~{} events/s{}; attacks: {}",
            traffic.mesh.services.len(),
            traffic.mesh.edges.len(),
            args.topic,
            args.rate,
            args.duration
                .map(|d| format!(" for {d} s"))
                .unwrap_or_default(),
            if scenarios.is_empty() {
                "none".to_owned()
            } else {
                scenarios
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    {
        let edges: Vec<[String; 2]> = traffic
            .mesh
            .edges
            .iter()
            .map(|&(c, e)| {
                [
                    traffic.mesh.services[c].spiffe(),
                    traffic.mesh.services[e].spiffe(),
                ]
            })
            .collect();
        structured(serde_json::json!({"mesh": {"edges": edges}}))?;
    }
    let mut sent = 0u64;
    let mut attack_records = 0u64;
    if args.history_hours > 0 {
        let history = traffic.history(args.history_hours, now_ns());
        for r in &history {
            sender.send(r)?;
        }
        sent += history.len() as u64;
        sender
            .producer
            .flush(Duration::from_secs(30))
            .context("delivering the history")?;
        if !args.json {
            say(format!(
                "history: {} calls over the {} h before now (what learned-edge rules know)",
                history.len(),
                args.history_hours
            ));
        }
        // Let consumers take it before live traffic (event time runs forward from here).
        std::thread::sleep(Duration::from_secs(2));
    }

    let start = Instant::now();
    let mut normal = 0u64;
    let mut next_attack = 0usize;
    let mut last_report = Instant::now();
    let tick = Duration::from_millis(10);
    while !stop.load(Ordering::Relaxed) {
        let elapsed = start.elapsed().as_secs_f64();
        if args.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        // Normal traffic: the expected count so far (diurnal swing), minus what went out.
        let phase = std::f64::consts::TAU * elapsed / args.day_secs;
        let expected = args.rate
            * (elapsed - 0.3 * args.day_secs / std::f64::consts::TAU * (phase.cos() - 1.0));
        while (normal as f64) < expected {
            let r = traffic.normal(now_ns());
            sender.send(&r)?;
            normal += 1;
        }
        if next_attack < scenarios.len() && elapsed >= args.attack_every * (next_attack + 1) as f64
        {
            let s = scenarios[next_attack];
            let (records, injected) = traffic.attack(s, now_ns());
            for r in &records {
                sender.send(r)?;
            }
            attack_records += records.len() as u64;
            next_attack += 1;
            structured(serde_json::to_value(&injected)?)?;
            if !args.json {
                say(format!(
                    "[{elapsed:6.1}s] injected {:<20} {} — {} ({} records) → expect {}",
                    injected.scenario,
                    injected.subject,
                    injected.what,
                    injected.records,
                    injected.expect.join(", ")
                ));
            }
        }
        if !args.json && last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            say(format!(
                "[{elapsed:6.1}s] {} events sent",
                sent + normal + attack_records
            ));
        }
        std::thread::sleep(tick);
    }
    sender
        .producer
        .flush(Duration::from_secs(30))
        .context("delivering the records")?;
    let total = sent + normal + attack_records;
    let secs = start.elapsed().as_secs_f64();
    structured(
        serde_json::json!({"done": true, "events": total, "normal": normal, "attack": attack_records, "history": sent, "secs": secs}),
    )?;
    if !args.json {
        say(format!(
            "done: {total} events in {secs:.1} s ({normal} normal, {attack_records} in {next_attack} attacks, {sent} history)"
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `f` on Ctrl-C (SIGINT) or SIGTERM.
fn ctrlc_handler(f: impl Fn() + Send + 'static) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("vigil-simulate-signals".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
                f();
            });
        })?;
    Ok(())
}

#[cfg(test)]
mod tests;
