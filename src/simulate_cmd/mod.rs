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

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::Config;
use vigil_store::clock::now_ns;

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

/// One service of the mesh.
#[derive(Clone, Debug)]
struct Service {
    ns: String,
    name: String,
    ip: String,
}

impl Service {
    fn spiffe(&self) -> String {
        format!("spiffe://cluster.local/ns/{}/sa/{}", self.ns, self.name)
    }

    /// Its cluster DNS name (what callers put in the HTTP host).
    fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.ns)
    }
}

const NAMES: [(&str, &str); 16] = [
    ("web", "frontend"),
    ("shop", "checkout"),
    ("shop", "cart"),
    ("shop", "catalog"),
    ("shop", "inventory"),
    ("pay", "payments"),
    ("pay", "ledger"),
    ("auth", "auth"),
    ("auth", "users"),
    ("ship", "shipping"),
    ("ship", "tracking"),
    ("notify", "notifications"),
    ("notify", "email"),
    ("search", "search"),
    ("search", "recommendations"),
    ("ops", "reports"),
];

/// The mesh: services and who calls whom.
#[derive(Clone, Debug)]
pub struct Mesh {
    services: Vec<Service>,
    /// (caller, callee) indexes into `services`.
    edges: Vec<(usize, usize)>,
}

impl Mesh {
    /// `n` services (4..=16 named, more numbered), each calling 2–3 others.
    pub fn new(n: usize, rng: &mut StdRng) -> Mesh {
        let n = n.max(4);
        let services: Vec<Service> = (0..n)
            .map(|i| {
                let (ns, name) = NAMES
                    .get(i)
                    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                    .unwrap_or_else(|| ("apps".to_owned(), format!("svc{i}")));
                Service {
                    ns,
                    name,
                    ip: format!("10.{}.{}.{}", 1 + i / 250, i % 250, 10 + i % 7),
                }
            })
            .collect();
        let mut edges = Vec::new();
        for caller in 0..n {
            let k = rng.random_range(2..=3);
            while edges.iter().filter(|(c, _)| *c == caller).count() < k {
                let callee = rng.random_range(0..n);
                if callee != caller && !edges.contains(&(caller, callee)) {
                    edges.push((caller, callee));
                }
            }
        }
        Mesh { services, edges }
    }

    /// A service that does not call `callee`... and a callee it never called.
    fn new_edge(&self, rng: &mut StdRng) -> (usize, usize) {
        let n = self.services.len();
        loop {
            let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
            if a != b && !self.edges.contains(&(a, b)) {
                return (a, b);
            }
        }
    }
}

/// A record: its key (the source address) and value.
pub type Record = (String, String);

/// The key of every history record.
const HISTORY_KEY: &str = "vigil-simulate-history";

/// A time as RFC 3339 with nanoseconds, as the sources write it.
pub(crate) fn rfc3339(t_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(t_ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Builds the records, with unique ids.
struct Emit {
    n: u64,
    run: u64,
}

impl Emit {
    fn id(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}-{:x}-{:08}", self.run, self.n)
    }

    /// An OPA decision on an Envoy ext_authz check. `caller` None: a client without a
    /// workload identity.
    #[allow(clippy::too_many_arguments)]
    fn opa(
        &mut self,
        t_ns: i64,
        caller: Option<&str>,
        ip: &str,
        callee: &str,
        method: &str,
        path: &str,
        allow: bool,
    ) -> Record {
        let id = self.id("opa");
        // The service addressed, as its cluster DNS name (from the callee's SPIFFE ID).
        let host = callee
            .strip_prefix("spiffe://cluster.local/ns/")
            .and_then(|r| r.split_once("/sa/"))
            .map(|(ns, sa)| format!("{sa}.{ns}.svc.cluster.local"))
            .unwrap_or_else(|| "api".to_owned());
        let principal = caller
            .map(|c| format!(r#","principal":"{c}""#))
            .unwrap_or_default();
        let v = format!(
            r#"{{"decision_id":"{id}","path":"envoy/authz/allow","result":{allow},"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{ip}","portValue":{}}}}}{principal}}},"destination":{{"address":{{"socketAddress":{{"address":"10.96.0.10","portValue":8443}}}},"principal":"{callee}"}},"request":{{"http":{{"method":"{method}","path":"{path}","host":"{host}","headers":{{"x-request-id":"{id}"}}}}}}}}}}}}"#,
            rfc3339(t_ns),
            32768 + self.n % 28000,
        );
        (ip.to_owned(), v)
    }

    /// A login at `target` from an address without a workload identity.
    fn login(&mut self, t_ns: i64, ip: &str, target: &Service, allow: bool) -> Record {
        self.opa(t_ns, None, ip, &target.spiffe(), "POST", "/login", allow)
    }

    /// A Hubble flow from `from` to `to`, forwarded or dropped by policy.
    fn flow(&mut self, t_ns: i64, from: &Service, to: &Service, dropped: bool) -> Record {
        let id = self.id("flow");
        let t = rfc3339(t_ns);
        let (verdict, reason) = if dropped {
            ("DROPPED", r#","drop_reason_desc":"POLICY_DENIED""#)
        } else {
            ("FORWARDED", "")
        };
        let v = format!(
            r#"{{"flow":{{"time":"{t}","uuid":"{id}","verdict":"{verdict}"{reason},"IP":{{"source":"{}","destination":"{}","ipVersion":"IPv4"}},"l4":{{"TCP":{{"source_port":{},"destination_port":8443}}}},"source":{{"namespace":"{}","pod_name":"{}-7d9f","workloads":[{{"name":"{}","kind":"Deployment"}}]}},"destination":{{"namespace":"{}","pod_name":"{}-5c6b","workloads":[{{"name":"{}","kind":"Deployment"}}]}},"is_reply":false}},"time":"{t}"}}"#,
            from.ip,
            to.ip,
            32768 + self.n % 28000,
            from.ns,
            from.name,
            from.name,
            to.ns,
            to.name,
            to.name,
        );
        (from.ip.clone(), v)
    }

    /// A Kubernetes audit event.
    fn k8s(&mut self, t_ns: i64, user: &str, ip: &str, verb: &str, uri: &str, code: u16) -> Record {
        let id = self.id("k8s");
        let decision = if code == 403 { "forbid" } else { "allow" };
        let v = format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"{uri}","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["{ip}"],"responseStatus":{{"code":{code}}},"requestReceivedTimestamp":"{}","stageTimestamp":"{}","annotations":{{"authorization.k8s.io/decision":"{decision}"}}}}"#,
            rfc3339(t_ns),
            rfc3339(t_ns),
        );
        (ip.to_owned(), v)
    }
}

/// The traffic: normal events and attacks, over a mesh.
pub struct Traffic {
    pub mesh: Mesh,
    rng: StdRng,
    emit: Emit,
    /// Outside callers (`--callers`) and the next one's number.
    callers: usize,
    next_caller: usize,
}

/// What an attack injected.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Injected {
    pub scenario: &'static str,
    pub time: String,
    pub records: usize,
    /// Who did it (the group the alert is about).
    pub subject: String,
    pub what: String,
    /// The default rules it should fire.
    pub expect: &'static [&'static str],
}

impl Traffic {
    pub fn new(services: usize, seed: u64) -> Traffic {
        let mut rng = StdRng::seed_from_u64(seed);
        let mesh = Mesh::new(services, &mut rng);
        // Ids unique across runs (a rerun on the same topic is new traffic, not duplicates).
        let run = u64::try_from(now_ns()).unwrap_or(0) / 1_000_000;
        Traffic {
            mesh,
            rng,
            emit: Emit { n: 0, run },
            callers: 0,
            next_caller: 0,
        }
    }

    /// Calls come from `n` distinct workloads outside the mesh, in turn (0: from the mesh).
    pub fn with_callers(mut self, n: usize) -> Traffic {
        self.callers = n;
        self
    }

    /// One normal event at `t_ns`: a call on the graph (70%), a flow (20%), a Kubernetes API
    /// call (10%); now and then a legitimate one-off denial, drop or 403.
    pub fn normal(&mut self, t_ns: i64) -> Record {
        let roll: f64 = self.rng.random();
        let (c, e) = self.mesh.edges[self.rng.random_range(0..self.mesh.edges.len())];
        let (caller, callee) = (&self.mesh.services[c], &self.mesh.services[e]);
        if roll < 0.7 && self.callers > 0 {
            let k = self.next_caller % self.callers;
            self.next_caller += 1;
            let path = format!("/v1/{}/{}", callee.name, self.rng.random_range(0..50));
            // 100.64.0.0/10 holds 4 194 304 addresses: one per caller up to that many.
            let ip = format!("100.{}.{}.{}", 64 + (k >> 16) % 64, (k >> 8) & 255, k & 255);
            self.emit.opa(
                t_ns,
                Some(&format!("spiffe://cluster.local/ns/clients/sa/client-{k}")),
                &ip,
                &callee.spiffe(),
                "GET",
                &path,
                true,
            )
        } else if roll < 0.7 {
            let allow = !self.rng.random_bool(1.0 / 3000.0);
            let method = if self.rng.random_bool(0.8) {
                "GET"
            } else {
                "POST"
            };
            let path = format!("/v1/{}/{}", callee.name, self.rng.random_range(0..50));
            self.emit.opa(
                t_ns,
                Some(&caller.spiffe()),
                &caller.ip,
                &callee.spiffe(),
                method,
                &path,
                allow,
            )
        } else if roll < 0.9 {
            let dropped = self.rng.random_bool(1.0 / 5000.0);
            self.emit.flow(t_ns, caller, callee, dropped)
        } else {
            let forbidden = self.rng.random_bool(1.0 / 3000.0);
            let (user, ip) = if forbidden {
                (
                    format!("dev-{}@example.com", self.rng.random_range(0..500)),
                    "10.250.0.8",
                )
            } else if self.rng.random_bool(0.5) {
                ("system:serviceaccount:ci:deployer".to_owned(), "10.250.0.7")
            } else {
                ("system:kube-controller-manager".to_owned(), "10.250.0.2")
            };
            let ns = &caller.ns;
            let (verb, uri) = if forbidden {
                ("get", format!("/api/v1/namespaces/{ns}/secrets/db"))
            } else {
                ("list", format!("/api/v1/namespaces/{ns}/pods"))
            };
            let code = if forbidden { 403 } else { 200 };
            self.emit.k8s(t_ns, &user, ip, verb, &uri, code)
        }
    }

    /// Backdated calls on every edge, hourly over `hours` before `now_ns`, in time order, all
    /// under one key: one partition holds them in order. (Spread over partitions, one
    /// partition's whole history could be evaluated before another's, whose events would then
    /// be too late to learn from.)
    pub fn history(&mut self, hours: u32, now_ns: i64) -> Vec<Record> {
        let hour_ns = 3_600_000_000_000i64;
        let mut out = Vec::new();
        for h in (1..=i64::from(hours)).rev() {
            let t = now_ns - h * hour_ns;
            for (i, &(c, e)) in self.mesh.edges.clone().iter().enumerate() {
                let (caller, callee) = (&self.mesh.services[c], &self.mesh.services[e]);
                let path = format!("/v1/{}/{}", callee.name, i % 50);
                let t = t + i as i64 * 1_000_000;
                out.push(self.emit.opa(
                    t,
                    Some(&caller.spiffe()),
                    &caller.ip,
                    &callee.spiffe(),
                    "GET",
                    &path,
                    true,
                ));
            }
        }
        for (key, _) in &mut out {
            HISTORY_KEY.clone_into(key);
        }
        out
    }

    /// The records of one attack at `t_ns` (spread over a second or two).
    pub fn attack(&mut self, s: Scenario, t_ns: i64) -> (Vec<Record>, Injected) {
        let ms = 1_000_000i64;
        let mut out = Vec::new();
        let n = self.mesh.services.len();
        let auth = self.mesh.services[7 % n].clone();
        let (subject, what) = match s {
            Scenario::CredentialStuffing => {
                let ip = format!("203.0.113.{}", self.rng.random_range(2..250));
                for i in 0..60 {
                    out.push(self.emit.login(t_ns + i * 20 * ms, &ip, &auth, false));
                }
                (ip, format!("60 denied logins to {}", auth.spiffe()))
            }
            Scenario::CompromisedProbing => {
                let me = self.rng.random_range(0..n);
                let who = self.mesh.services[me].clone();
                for i in 0..25i64 {
                    let callee = &self.mesh.services[(me + 1 + i as usize) % n];
                    let path = format!("/admin/{}/{}", callee.name, i);
                    out.push(self.emit.opa(
                        t_ns + i * 30 * ms,
                        Some(&who.spiffe()),
                        &who.ip,
                        &callee.spiffe(),
                        "GET",
                        &path,
                        false,
                    ));
                }
                (
                    who.spiffe(),
                    "25 denied calls to 25 routes of other services".to_owned(),
                )
            }
            Scenario::LateralMovement => {
                let (c, e) = self.mesh.new_edge(&mut self.rng);
                let (caller, callee) = (&self.mesh.services[c], &self.mesh.services[e]);
                for i in 0..3 {
                    out.push(self.emit.opa(
                        t_ns + i * 100 * ms,
                        Some(&caller.spiffe()),
                        &caller.ip,
                        &callee.spiffe(),
                        "GET",
                        "/v1/export",
                        true,
                    ));
                }
                (
                    format!("{} → {}", caller.spiffe(), callee.spiffe()),
                    "3 allowed calls on an edge never seen before".to_owned(),
                )
            }
            Scenario::K8s403Burst => {
                let who = &self.mesh.services[self.rng.random_range(0..n)];
                let user = format!("system:serviceaccount:{}:{}", who.ns, who.name);
                for i in 0..15i64 {
                    let uri = format!(
                        "/api/v1/namespaces/{}/secrets",
                        NAMES[(i as usize) % NAMES.len()].0
                    );
                    out.push(
                        self.emit
                            .k8s(t_ns + i * 50 * ms, &user, &who.ip, "list", &uri, 403),
                    );
                }
                (
                    user,
                    "15 forbidden secret listings across namespaces".to_owned(),
                )
            }
            Scenario::DroppedFlows => {
                let me = self.rng.random_range(0..n);
                let from = self.mesh.services[me].clone();
                for i in 0..120i64 {
                    let to = self.mesh.services[(me + 1 + i as usize) % n].clone();
                    out.push(self.emit.flow(t_ns + i * 10 * ms, &from, &to, true));
                }
                (
                    format!("{}/{}", from.ns, from.name),
                    "120 flows dropped by policy".to_owned(),
                )
            }
            Scenario::DenyThenAllow => {
                let ip = format!("198.51.100.{}", self.rng.random_range(2..250));
                for i in 0..6 {
                    out.push(self.emit.login(t_ns + i * 200 * ms, &ip, &auth, false));
                }
                out.push(self.emit.login(t_ns + 1400 * ms, &ip, &auth, true));
                (
                    format!("{ip} at {}", auth.host()),
                    format!("6 denied logins to {}, then one allowed", auth.spiffe()),
                )
            }
            Scenario::All => (String::new(), String::new()),
        };
        let injected = Injected {
            scenario: s.name(),
            time: rfc3339(t_ns),
            records: out.len(),
            subject,
            what,
            expect: s.expects(),
        };
        (out, injected)
    }
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
mod tests {
    use super::*;
    use vigil_schemas::Decoder;

    /// Decode a record with Vigil's decoders: (kind, decision, caller, callee, source format).
    fn decode(v: &str) -> Vec<(String, String, String, String, String)> {
        let mut rows = Vec::new();
        Decoder::default()
            .decode_with(v.as_bytes(), |e| {
                let s = |x: &Option<std::borrow::Cow<'_, str>>| {
                    x.as_deref().unwrap_or_default().to_owned()
                };
                rows.push((
                    e.kind.as_str().to_owned(),
                    e.decision.as_str().to_owned(),
                    s(&e.caller.principal),
                    s(&e.callee.principal),
                    e.format.as_str().to_owned(),
                ));
            })
            .unwrap_or_else(|e| panic!("{e}: {v}"));
        rows
    }

    #[test]
    fn normal_traffic_decodes_as_the_mesh_reports_it() {
        let mut t = Traffic::new(12, 1);
        let now = now_ns();
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..2000 {
            let (key, v) = t.normal(now);
            let rows = decode(&v);
            assert_eq!(rows.len(), 1, "{v}");
            *kinds.entry(rows[0].4.clone()).or_default() += 1;
            assert!(!key.is_empty());
        }
        // About 70/20/10.
        assert!(
            kinds["opa"] > 1200 && kinds["hubble"] > 250 && kinds["k8s_audit"] > 100,
            "{kinds:?}"
        );
        let h = t.history(25, now);
        assert_eq!(h.len(), 25 * t.mesh.edges.len());
        assert!(h.iter().all(|(_, v)| decode(v)[0].1 == "allow"));
    }

    #[test]
    fn outside_callers_take_turns_each_with_its_own_identity_and_address() {
        let mut t = Traffic::new(12, 2).with_callers(300);
        let now = now_ns();
        let (mut principals, mut ips) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        for _ in 0..1000 {
            let (key, v) = t.normal(now);
            let row = decode(&v).remove(0);
            if row.4 == "opa" {
                assert!(
                    row.2
                        .starts_with("spiffe://cluster.local/ns/clients/sa/client-"),
                    "{v}"
                );
                principals.insert(row.2);
                ips.insert(key);
            }
        }
        // ~700 calls from outside over 300 callers in turn: every one of them, each its own
        // address (the record's key).
        assert_eq!(principals.len(), 300);
        assert_eq!(ips.len(), 300);
    }

    #[test]
    fn every_attack_decodes_into_what_its_rules_count() {
        let mut t = Traffic::new(12, 3);
        for s in Scenario::EACH {
            let (records, injected) = t.attack(s, now_ns());
            assert_eq!(records.len(), injected.records);
            assert!(!injected.expect.is_empty());
            let rows: Vec<_> = records.iter().flat_map(|(_, v)| decode(v)).collect();
            let denied = rows.iter().filter(|r| r.1 == "deny").count();
            match s {
                Scenario::CredentialStuffing => assert_eq!(denied, 60),
                Scenario::CompromisedProbing => {
                    assert_eq!(denied, 25);
                    assert!(rows.iter().all(|r| r.2 == injected.subject));
                }
                Scenario::LateralMovement => {
                    assert_eq!(denied, 0);
                    let (c, e) = (&rows[0].2, &rows[0].3);
                    let known = t.mesh.edges.iter().any(|&(a, b)| {
                        &t.mesh.services[a].spiffe() == c && &t.mesh.services[b].spiffe() == e
                    });
                    assert!(!known, "{c} → {e} is on the graph");
                }
                Scenario::K8s403Burst => {
                    assert_eq!(denied, 15);
                    assert!(
                        rows.iter()
                            .all(|r| r.4 == "k8s_audit" && r.2 == injected.subject)
                    );
                }
                Scenario::DroppedFlows => {
                    assert_eq!(denied, 120);
                    assert!(
                        rows.iter()
                            .all(|r| r.0 == "flow"
                                && injected.subject.ends_with(&format!("/{}", r.2)))
                    );
                }
                Scenario::DenyThenAllow => {
                    assert_eq!(denied, 6);
                    assert_eq!(rows.last().unwrap().1, "allow");
                }
                Scenario::All => unreachable!(),
            }
        }
        assert_eq!(expand(&[Scenario::All]).len(), 6);
    }
}
