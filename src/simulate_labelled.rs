//! `vigil simulate --labelled FILE`: the labelled detection benchmark's workload.
//!
//! A mesh of 24 workloads sends benign traffic shaped like a real cluster's — calls on the
//! declared graph (an authorization decision per request, a Hubble flow per new connection),
//! busy services with one-off denials on many paths, logins with retries and an office NAT,
//! Kubernetes controllers and CI, DNS, database connections, kubelet health checks,
//! Prometheus scrapes, a batch job's bursts, deploys that start using declared edges — and,
//! at random times, attacks of fourteen shapes, each with its own random rate, spread in time,
//! user names, ports and partitions. Everything is written to explicit partitions (by source
//! address; an attack may spread its records over all of them), one partition `--lag-ms`
//! behind the others.
//!
//! Event time runs `--speed` times faster than the wall clock and ends at the wall clock, so
//! a million events cover tens of minutes of event time (the slow attacks need that) while no
//! record is ever dated ahead of when it was sent. Before it, `--history-hours` of one call
//! per edge an hour (all on partition 0) let the learned rules learn the mesh.
//!
//! FILE gets, as JSON lines: the run's parameters, every attack (its scenario, subjects, the
//! rules and group keys it must fire, and each of its records' stated time, send time and
//! partition), and the counts. `--graph-out` writes the declared policy graph the mesh runs
//! under (for `detect.allowlist_file`). `benches/detection.rs` scores a run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::Serialize;

const S: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;
/// The application port every mesh workload serves on (and its sidecar guards).
const APP_PORT: u16 = 8443;
/// The port Prometheus scrapes, outside the sidecar (not guarded).
const METRICS_PORT: u16 = 9090;
/// The first minutes of the run, before any attack: traffic going from the sparse history to
/// its full rate is a real rate spike for every caller (`vigil.rate_spike.caller`); a
/// deployment that had been watched for a day would not show it. Scorers leave alerts that
/// start in it aside.
const WARM_UP_NS: i64 = 5 * 60 * S;
/// The kubelet's health-check port.
const HEALTH_PORT: u16 = 8080;

/// The labelled mode's options.
#[derive(clap::Args, Clone, Debug)]
pub struct LabelledArgs {
    /// Write the labelled benchmark's workload and its labels (JSON lines) to this file
    /// instead of simulating live traffic.
    #[arg(long)]
    pub labelled: Option<PathBuf>,
    /// Benign events to send (labelled mode).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Event-time seconds per wall-clock second (labelled mode).
    #[arg(long, default_value_t = 15.0)]
    pub speed: f64,
    /// Partitions of the topic (labelled mode: records name their partition).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The partition sent behind the others (default: the last).
    #[arg(long)]
    pub lag_partition: Option<i32>,
    /// How far behind, in wall-clock milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub lag_ms: u64,
    /// Instances of each attack shape.
    #[arg(long, default_value_t = 3)]
    pub attacks_each: usize,
    /// Write the declared policy graph (`[[edge]]` tables) here.
    #[arg(long)]
    pub graph_out: Option<PathBuf>,
}

/// A workload of the mesh.
#[derive(Clone, Debug)]
struct Workload {
    ns: &'static str,
    name: &'static str,
    ip: String,
    /// Relative share of the mesh's calls it makes.
    weight: f64,
    /// Probability that one of its calls is a legitimate one-off denial.
    deny_p: f64,
}

impl Workload {
    fn spiffe(&self) -> String {
        format!("spiffe://cluster.local/ns/{}/sa/{}", self.ns, self.name)
    }
}

const WORKLOADS: [(&str, &str); 24] = [
    ("web", "frontend"),
    ("web", "gateway"),
    ("shop", "checkout"),
    ("shop", "cart"),
    ("shop", "catalog"),
    ("shop", "inventory"),
    ("shop", "pricing"),
    ("pay", "payments"),
    ("pay", "ledger"),
    ("pay", "fraud"),
    ("auth", "auth"),
    ("auth", "users"),
    ("ship", "shipping"),
    ("ship", "tracking"),
    ("notify", "notifications"),
    ("notify", "email"),
    ("search", "search"),
    ("search", "recommendations"),
    ("ops", "reports"),
    ("ops", "audit"),
    ("data", "postgres"),
    ("data", "redis"),
    ("kube-system", "coredns"),
    ("monitoring", "prometheus"),
];
const AUTH: usize = 10;
const REPORTS: usize = 18;
const POSTGRES: usize = 20;
const REDIS: usize = 21;
const COREDNS: usize = 22;
const PROMETHEUS: usize = 23;
/// Workloads that call others on the application port (the rest are infrastructure).
const CALLERS: usize = 20;
/// Remote-administration and database ports an attacker moves laterally on.
const ADMIN_PORTS: [u16; 8] = [22, 3389, 445, 5985, 135, 5432, 3306, 6379];

/// The attack shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    BruteForce,
    BruteForceSlow,
    PasswordSpraying,
    DenyThenAllow,
    CompromisedProbing,
    LateralMovement,
    K8sSecrets,
    DroppedFlows,
    PortScan,
    FanOut,
    AdminPortEdge,
    SidecarBypass,
    ForgedFutureThenBurst,
    BackdatedBurst,
}

const SHAPES: [Shape; 14] = [
    Shape::BruteForce,
    Shape::BruteForceSlow,
    Shape::PasswordSpraying,
    Shape::DenyThenAllow,
    Shape::CompromisedProbing,
    Shape::LateralMovement,
    Shape::K8sSecrets,
    Shape::DroppedFlows,
    Shape::PortScan,
    Shape::FanOut,
    Shape::AdminPortEdge,
    Shape::SidecarBypass,
    Shape::ForgedFutureThenBurst,
    Shape::BackdatedBurst,
];

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::BruteForce => "brute-force",
            Shape::BruteForceSlow => "brute-force-slow",
            Shape::PasswordSpraying => "password-spraying",
            Shape::DenyThenAllow => "deny-then-allow",
            Shape::CompromisedProbing => "compromised-probing",
            Shape::LateralMovement => "lateral-movement",
            Shape::K8sSecrets => "k8s-secrets",
            Shape::DroppedFlows => "dropped-flows",
            Shape::PortScan => "port-scan",
            Shape::FanOut => "fan-out",
            Shape::AdminPortEdge => "admin-port-edge",
            Shape::SidecarBypass => "sidecar-bypass",
            Shape::ForgedFutureThenBurst => "forged-future-then-burst",
            Shape::BackdatedBurst => "backdated-burst",
        }
    }

    /// The longest it takes, event time (attacks are placed so that they end inside the run).
    fn max_span_ns(self) -> i64 {
        match self {
            Shape::BruteForceSlow => 28 * 60 * S,
            Shape::PasswordSpraying | Shape::K8sSecrets => 20 * 60 * S,
            _ => 5 * 60 * S,
        }
    }
}

/// A rule an attack must fire, and the group key values (a subset) its alert must carry.
#[derive(Clone, Debug, Serialize)]
pub struct Expect {
    pub rule: &'static str,
    pub key: BTreeMap<&'static str, String>,
}

fn expect(rule: &'static str, key: &[(&'static str, &str)]) -> Expect {
    Expect {
        rule,
        key: key.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    }
}

/// One record to send.
struct Out {
    /// When it is sent, in event time (pacing), and a tie-break.
    at_ns: i64,
    seq: u64,
    partition: i32,
    key: String,
    value: String,
    /// The attack it belongs to, and the time its payload states.
    attack: Option<(usize, i64)>,
}

impl PartialEq for Out {
    fn eq(&self, o: &Self) -> bool {
        (self.at_ns, self.seq) == (o.at_ns, o.seq)
    }
}
impl Eq for Out {}
impl PartialOrd for Out {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Out {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at_ns, self.seq).cmp(&(o.at_ns, o.seq))
    }
}

/// An attack as labelled.
#[derive(Debug, Serialize)]
pub struct Attack {
    pub id: usize,
    pub scenario: &'static str,
    pub start_ns: i64,
    pub end_ns: i64,
    /// Who did it: addresses, principals, workloads (an alert naming one of them during the
    /// attack is about it).
    pub subjects: Vec<String>,
    pub expect: Vec<Expect>,
    pub what: String,
    /// Each record: [stated time, send time (wall clock), partition].
    pub records: Vec<[i64; 3]>,
}

fn rfc3339(t_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(t_ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Workload `i` on `port`.
fn end(w: &[Workload], i: usize, port: u16) -> End<'_> {
    let w = &w[i];
    End {
        ns: Some(w.ns),
        name: Some(w.name),
        ip: &w.ip,
        port,
    }
}

/// Record payloads, with unique ids.
struct Payloads {
    n: u64,
    run: u64,
}

/// One side of a flow or call.
struct End<'a> {
    ns: Option<&'a str>,
    name: Option<&'a str>,
    ip: &'a str,
    port: u16,
}

impl Payloads {
    fn id(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}-{:x}-{:08}", self.run, self.n)
    }

    fn ephemeral(&self) -> u16 {
        32768 + (self.n % 28000) as u16
    }

    /// An OPA decision on an Envoy ext_authz check at the callee's sidecar.
    #[allow(clippy::too_many_arguments)]
    fn decision(
        &mut self,
        t_ns: i64,
        caller: &Workload,
        callee: &Workload,
        method: &str,
        path: &str,
        allow: bool,
        port: u16,
    ) -> String {
        let id = self.id("opa");
        format!(
            r#"{{"decision_id":"{id}","path":"envoy/authz/allow","result":{allow},"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"{}","portValue":{port}}}}},"principal":"{}"}},"destination":{{"address":{{"socketAddress":{{"address":"{}","portValue":{APP_PORT}}}}},"principal":"{}"}},"request":{{"http":{{"method":"{method}","path":"{path}","host":"{}.{}.svc.cluster.local","headers":{{"x-request-id":"{id}"}}}}}}}}}}}}"#,
            rfc3339(t_ns),
            caller.ip,
            caller.spiffe(),
            callee.ip,
            callee.spiffe(),
            callee.name,
            callee.ns,
        )
    }

    /// A Hubble flow.
    fn flow(
        &mut self,
        t_ns: i64,
        from: &End<'_>,
        to: &End<'_>,
        proto: &str,
        dropped: bool,
    ) -> String {
        let id = self.id("flow");
        let t = rfc3339(t_ns);
        let (verdict, reason) = if dropped {
            ("DROPPED", r#","drop_reason_desc":"POLICY_DENIED""#)
        } else {
            ("FORWARDED", "")
        };
        let ep = |e: &End<'_>| match (e.ns, e.name) {
            (Some(ns), Some(name)) => format!(
                r#"{{"namespace":"{ns}","pod_name":"{name}-7d9f","workloads":[{{"name":"{name}","kind":"Deployment"}}]}}"#
            ),
            _ => r#"{"identity":1,"labels":["reserved:host"]}"#.to_owned(),
        };
        format!(
            r#"{{"flow":{{"time":"{t}","uuid":"{id}","verdict":"{verdict}"{reason},"IP":{{"source":"{}","destination":"{}","ipVersion":"IPv4"}},"l4":{{"{proto}":{{"source_port":{},"destination_port":{}}}}},"source":{},"destination":{},"is_reply":false}},"time":"{t}"}}"#,
            from.ip,
            to.ip,
            from.port,
            to.port,
            ep(from),
            ep(to),
        )
    }

    /// A login at the auth service, as Vigil's native event.
    fn login(&mut self, t_ns: i64, user: &str, ip: &str, allow: bool) -> String {
        let id = self.id("login");
        let (decision, reason) = if allow {
            ("allow", String::new())
        } else {
            ("deny", r#","reason":"invalid credentials""#.to_owned())
        };
        format!(
            r#"{{"schema":"vigil.event/v1","id":"{id}","time":"{}","kind":"authn","decision":"{decision}"{reason},"caller":{{"principal":"{user}","ip":"{ip}"}},"callee":{{"principal":"spiffe://cluster.local/ns/auth/sa/auth","service":"auth"}},"action":"POST","resource":"/login"}}"#,
            rfc3339(t_ns),
        )
    }

    /// A Kubernetes audit event.
    fn k8s(&mut self, t_ns: i64, user: &str, ip: &str, verb: &str, uri: &str, code: u16) -> String {
        let id = self.id("k8s");
        let decision = if code == 403 { "forbid" } else { "allow" };
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"{uri}","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["{ip}"],"responseStatus":{{"code":{code}}},"requestReceivedTimestamp":"{t}","stageTimestamp":"{t}","annotations":{{"authorization.k8s.io/decision":"{decision}"}}}}"#,
            t = rfc3339(t_ns),
        )
    }
}

/// The mesh, its declared graph, and everything that generates records.
struct World {
    rng: StdRng,
    p: Payloads,
    w: Vec<Workload>,
    /// Declared caller → callee edges in use from the start.
    edges: Vec<(usize, usize)>,
    /// Declared edges first used by a deploy at the given time.
    deploys: Vec<(usize, usize, i64)>,
    partitions: i32,
    seq: u64,
    /// Each edge's open connection: its source port.
    conns: std::collections::HashMap<(usize, usize), u16>,
    /// Benign users: (name, address).
    users: Vec<(String, String)>,
    nodes: Vec<String>,
}

/// A benign login's office NAT: many users behind one address.
const NAT_IP: &str = "198.18.0.1";

impl World {
    fn new(seed: u64, partitions: i32) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let w: Vec<Workload> = WORKLOADS
            .iter()
            .enumerate()
            .map(|(i, &(ns, name))| Workload {
                ns,
                name,
                ip: format!("10.1.{}.{}", i / 8, 10 + i % 8 * 16),
                // A few busy services, a long tail.
                weight: if i < CALLERS {
                    [6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 1.0, 0.8][i % 8] * (1.0 + (i as f64) * 0.01)
                } else {
                    0.0
                },
                // Three busy services with flaky, one-off denials on many paths.
                deny_p: if [0, 2, 7].contains(&i) {
                    1.0 / 400.0
                } else {
                    1.0 / 4000.0
                },
            })
            .collect();
        let mut edges = Vec::new();
        for caller in 0..CALLERS {
            if caller == REPORTS {
                continue;
            }
            let k = rng.random_range(2..=4);
            while edges.iter().filter(|(c, _)| *c == caller).count() < k {
                let callee = rng.random_range(0..CALLERS);
                if callee != caller && !edges.contains(&(caller, callee)) {
                    edges.push((caller, callee));
                }
            }
        }
        // The batch job reads from six services.
        for callee in [2usize, 5, 7, 8, 12, 16] {
            edges.push((REPORTS, callee));
        }
        let users = (0..3000)
            .map(|i| {
                (
                    format!("user{i:04}@example.com"),
                    format!("100.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256),
                )
            })
            .collect();
        let nodes = (0..3).map(|i| format!("10.0.0.{}", 11 + i)).collect();
        let mut world = World {
            rng,
            p: Payloads {
                n: 0,
                run: u64::try_from(vigil_detect::engine::now_ns()).unwrap_or(0) / 1_000_000,
            },
            w,
            edges,
            deploys: Vec::new(),
            partitions,
            seq: 0,
            conns: Default::default(),
            users,
            nodes,
        };
        world.plan_deploys();
        world
    }

    /// Three deploys during the run, each starting to use a declared edge never used before.
    fn plan_deploys(&mut self) {
        for _ in 0..3 {
            loop {
                let (c, e) = (
                    self.rng.random_range(0..CALLERS),
                    self.rng.random_range(0..CALLERS),
                );
                let known = self.edges.contains(&(c, e))
                    || self.deploys.iter().any(|d| (d.0, d.1) == (c, e));
                if c != e && c != REPORTS && !known {
                    self.deploys.push((c, e, i64::MAX));
                    break;
                }
            }
        }
    }

    /// When each deploy happens: a quarter, a half and three quarters into the run.
    fn time_deploys(&mut self, e0: i64, span: i64) {
        for (k, d) in self.deploys.iter_mut().enumerate() {
            d.2 = e0 + span * (k as i64 + 1) / 4 + self.rng.random_range(0..60) * S;
        }
    }

    /// The declared policy graph: every call edge (deploy edges too) with its flow on the
    /// application port, DNS, the databases, Prometheus's scrapes.
    fn graph(&self) -> String {
        let mut out = String::from(
            "# The declared graph of `vigil simulate --labelled` (for detect.allowlist_file).\n",
        );
        let mut edge = |caller: &str, callee: &str, kind: &str, extra: &str| {
            out.push_str(&format!(
                "\n[[edge]]\ncaller = \"{caller}\"\ncallee = \"{callee}\"\nkind = \"{kind}\"\n{extra}"
            ));
        };
        let all = self
            .edges
            .iter()
            .copied()
            .chain(self.deploys.iter().map(|&(c, e, _)| (c, e)));
        for (c, e) in all {
            let (a, b) = (&self.w[c], &self.w[e]);
            edge(&a.spiffe(), &b.spiffe(), "authz", "");
            edge(
                a.name,
                b.name,
                "flow",
                &format!(
                    "caller_namespace = \"{}\"\ncallee_namespace = \"{}\"\nports = [{APP_PORT}]\n",
                    a.ns, b.ns
                ),
            );
        }
        for (c, db, port) in [
            (8, POSTGRES, 5432),
            (7, POSTGRES, 5432),
            (5, REDIS, 6379),
            (3, REDIS, 6379),
        ] {
            let (a, b) = (&self.w[c], &self.w[db]);
            edge(
                a.name,
                b.name,
                "flow",
                &format!(
                    "caller_namespace = \"{}\"\ncallee_namespace = \"{}\"\nports = [{port}]\n",
                    a.ns, b.ns
                ),
            );
        }
        edge(
            "*",
            "coredns",
            "flow",
            "callee_namespace = \"kube-system\"\nports = [53]\n",
        );
        edge(
            "prometheus",
            "*",
            "flow",
            &format!("caller_namespace = \"monitoring\"\nports = [{METRICS_PORT}]\n"),
        );
        out
    }

    fn partition_of(&self, key: &str) -> i32 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.partitions as u64) as i32
    }

    fn out(
        &mut self,
        at_ns: i64,
        key: &str,
        value: String,
        attack: Option<(usize, i64)>,
        spread: bool,
    ) -> Out {
        self.seq += 1;
        let partition = if spread {
            self.rng.random_range(0..self.partitions)
        } else {
            self.partition_of(key)
        };
        Out {
            at_ns,
            seq: self.seq,
            partition,
            key: key.to_owned(),
            value,
            attack,
        }
    }

    /// A call on an edge at `t`: now and then on a new connection (its flow first), then the
    /// decision, from the connection's source port (the sidecar sees the connection Hubble
    /// reports).
    fn call(&mut self, t: i64, c: usize, e: usize, path: String, allow: bool, out: &mut Vec<Out>) {
        let known = self.conns.get(&(c, e)).copied();
        let port = match known {
            Some(p) if !self.rng.random_bool(0.3) => p,
            _ => {
                let port = self.p.ephemeral();
                self.conns.insert((c, e), port);
                let v = self.p.flow(
                    t,
                    &end(&self.w, c, port),
                    &end(&self.w, e, APP_PORT),
                    "TCP",
                    false,
                );
                let key = self.w[c].ip.clone();
                out.push(self.out(t, &key, v, None, false));
                port
            }
        };
        let method = if self.rng.random_bool(0.8) {
            "GET"
        } else {
            "POST"
        };
        let t2 = t + self.rng.random_range(1..4) * MS;
        let (a, b) = (self.w[c].clone(), self.w[e].clone());
        let v = self.p.decision(t2, &a, &b, method, &path, allow, port);
        out.push(self.out(t2, &a.ip, v, None, false));
    }

    /// One unit of benign traffic at `t` (one to a few records).
    fn benign(&mut self, t: i64, out: &mut Vec<Out>) {
        let roll: f64 = self.rng.random();
        if roll < 0.64 {
            // A call on a declared edge in use, weighted by how busy its caller is.
            let live: Vec<(usize, usize)> = self
                .edges
                .iter()
                .copied()
                .chain(
                    self.deploys
                        .iter()
                        .filter(|d| d.2 <= t)
                        .map(|&(c, e, _)| (c, e)),
                )
                .filter(|&(c, _)| c != REPORTS)
                .collect();
            let total: f64 = live.iter().map(|&(c, _)| self.w[c].weight).sum();
            let mut x = self.rng.random::<f64>() * total;
            let mut pick = live[0];
            for &(c, e) in &live {
                x -= self.w[c].weight;
                if x <= 0.0 {
                    pick = (c, e);
                    break;
                }
            }
            let (c, e) = pick;
            let deny = self.rng.random_bool(self.w[c].deny_p);
            let path = format!("/v1/{}/{}", self.w[e].name, self.rng.random_range(0..200));
            self.call(t, c, e, path, !deny, out);
        } else if roll < 0.74 {
            self.benign_login(t, out);
        } else if roll < 0.82 {
            self.benign_k8s(t, out);
        } else if roll < 0.92 {
            // DNS from any workload.
            let c = self.rng.random_range(0..CALLERS);
            let port = self.p.ephemeral();
            let v = self.p.flow(
                t,
                &end(&self.w, c, port),
                &end(&self.w, COREDNS, 53),
                "UDP",
                false,
            );
            let key = self.w[c].ip.clone();
            out.push(self.out(t, &key, v, None, false));
        } else {
            // A database connection on a learned, declared edge.
            let (c, db, port) = [
                (8, POSTGRES, 5432),
                (7, POSTGRES, 5432),
                (5, REDIS, 6379),
                (3, REDIS, 6379),
            ][self.rng.random_range(0..4)];
            let sport = self.p.ephemeral();
            let v = self.p.flow(
                t,
                &end(&self.w, c, sport),
                &end(&self.w, db, port),
                "TCP",
                false,
            );
            let key = self.w[c].ip.clone();
            out.push(self.out(t, &key, v, None, false));
        }
    }

    /// A user logging in: now and then mistyped, retried one to three times, then right; a
    /// fifth of them from the office NAT.
    fn benign_login(&mut self, t: i64, out: &mut Vec<Out>) {
        let u = self.rng.random_range(0..self.users.len());
        let (user, mut ip) = self.users[u].clone();
        if self.rng.random_bool(0.2) {
            ip = NAT_IP.to_owned();
        }
        let mut at = t;
        if self.rng.random_bool(0.04) {
            for _ in 0..self.rng.random_range(1..=3) {
                let v = self.p.login(at, &user, &ip, false);
                out.push(self.out(at, &ip, v, None, false));
                at += self.rng.random_range(2..12) * S;
            }
        }
        let v = self.p.login(at, &user, &ip, true);
        out.push(self.out(at, &ip, v, None, false));
    }

    fn benign_k8s(&mut self, t: i64, out: &mut Vec<Out>) {
        let ns = self.w[self.rng.random_range(0..CALLERS)].ns;
        let (user, ip, verb, uri, code) = if self.rng.random_bool(1.0 / 2000.0) {
            // A developer's one-off forbidden read.
            (
                format!("dev-{}@example.com", self.rng.random_range(0..300)),
                "10.250.0.8",
                "get",
                format!("/api/v1/namespaces/{ns}/secrets/db"),
                403,
            )
        } else if self.rng.random_bool(0.5) {
            (
                "system:serviceaccount:ci:deployer".to_owned(),
                "10.250.0.7",
                "patch",
                format!("/apis/apps/v1/namespaces/{ns}/deployments/x"),
                200,
            )
        } else {
            (
                "system:kube-controller-manager".to_owned(),
                "10.250.0.2",
                "list",
                format!("/api/v1/namespaces/{ns}/pods"),
                200,
            )
        };
        let v = self.p.k8s(t, &user, ip, verb, &uri, code);
        out.push(self.out(t, ip, v, None, false));
    }

    /// Kubelet health checks of every pod, from its node (no workload identity).
    fn health_round(&mut self, t: i64, out: &mut Vec<Out>) {
        for i in 0..CALLERS {
            let node = self.nodes[i % self.nodes.len()].clone();
            let at = t + (i as i64) * 37 * MS;
            let port = self.p.ephemeral();
            let from = End {
                ns: None,
                name: None,
                ip: &node,
                port,
            };
            let v = self
                .p
                .flow(at, &from, &end(&self.w, i, HEALTH_PORT), "TCP", false);
            out.push(self.out(at, &node, v, None, false));
        }
    }

    /// Prometheus scraping every workload's metrics port (not behind the sidecar).
    fn scrape_round(&mut self, t: i64, out: &mut Vec<Out>) {
        for i in 0..PROMETHEUS {
            let at = t + (i as i64) * 21 * MS;
            let port = self.p.ephemeral();
            let v = self.p.flow(
                at,
                &end(&self.w, PROMETHEUS, port),
                &end(&self.w, i, METRICS_PORT),
                "TCP",
                false,
            );
            let key = self.w[PROMETHEUS].ip.clone();
            out.push(self.out(at, &key, v, None, false));
        }
    }

    /// The report job's burst: 600 calls to its six callees in half a minute.
    fn batch_round(&mut self, t: i64, out: &mut Vec<Out>) {
        let callees: Vec<usize> = self
            .edges
            .iter()
            .filter(|(c, _)| *c == REPORTS)
            .map(|&(_, e)| e)
            .collect();
        for k in 0..600i64 {
            let e = callees[(k as usize) % callees.len()];
            let path = format!("/v1/{}/export/{}", self.w[e].name, k % 40);
            self.call(t + k * 50 * MS, REPORTS, e, path, true, out);
        }
    }

    /// One call per edge an hour for `hours` before `end_ns`, with the databases' and DNS
    /// flows: what the learned rules learn (all on partition 0, in time order).
    fn history(&mut self, hours: u32, end_ns: i64) -> Vec<Out> {
        let mut out = Vec::new();
        for h in (1..=i64::from(hours)).rev() {
            let t = end_ns - h * 3600 * S;
            let edges = self.edges.clone();
            for (i, &(c, e)) in edges.iter().enumerate() {
                let path = format!("/v1/{}/{}", self.w[e].name, i % 50);
                self.call(t + i as i64 * 10 * MS, c, e, path, true, &mut out);
            }
            for (k, (c, db, port)) in [
                (8, POSTGRES, 5432),
                (7, POSTGRES, 5432),
                (5, REDIS, 6379),
                (3, REDIS, 6379),
            ]
            .into_iter()
            .enumerate()
            {
                let at = t + (2000 + k as i64) * MS;
                let sport = self.p.ephemeral();
                let v = self.p.flow(
                    at,
                    &end(&self.w, c, sport),
                    &end(&self.w, db, port),
                    "TCP",
                    false,
                );
                let key = self.w[c].ip.clone();
                out.push(self.out(at, &key, v, None, false));
            }
        }
        out.sort();
        for o in &mut out {
            o.partition = 0;
        }
        out
    }

    fn outside_ip(&mut self) -> String {
        let nets = ["203.0.113", "198.51.100", "192.0.2"];
        format!(
            "{}.{}",
            nets[self.rng.random_range(0..nets.len())],
            self.rng.random_range(2..254)
        )
    }

    /// A calling workload other than the auth service and `not`.
    fn some_caller(&mut self, not: Option<usize>) -> usize {
        loop {
            let c = self.rng.random_range(0..CALLERS);
            if Some(c) != not && c != AUTH {
                return c;
            }
        }
    }

    /// The records of attack `id` of shape `s` starting at `t0`.
    fn attack(&mut self, id: usize, s: Shape, t0: i64, topic: &str) -> (Vec<Out>, Attack) {
        let mut out = Vec::new();
        let mut subjects = Vec::new();
        let mut exp = Vec::new();
        let spread = self.rng.random_bool(0.5);
        let what;
        match s {
            Shape::BruteForce
            | Shape::BruteForceSlow
            | Shape::ForgedFutureThenBurst
            | Shape::BackdatedBurst => {
                let ip = self.outside_ip();
                let (n, dur) = match s {
                    Shape::BruteForceSlow => (
                        self.rng.random_range(45..=70),
                        self.rng.random_range(18 * 60..=27 * 60) * S,
                    ),
                    _ => (
                        self.rng.random_range(25..=120),
                        self.rng.random_range(20..=100) * S,
                    ),
                };
                let targets: Vec<String> = (0..self.rng.random_range(1..=3))
                    .map(|k| {
                        ["admin", "root", "svc-deploy", "alice@example.com"][(k + id) % 4]
                            .to_owned()
                    })
                    .collect();
                // Backdated: stated this far behind when sent (past the allowed lateness).
                let back = if s == Shape::BackdatedBurst {
                    self.rng.random_range(5 * 60..=30 * 60) * S
                } else {
                    0
                };
                // Backdated bursts come through one partition (the log that late_source names).
                let spread = spread && s != Shape::BackdatedBurst;
                let fixed = self.rng.random_range(0..self.partitions);
                let mut start = t0;
                if s == Shape::ForgedFutureThenBurst {
                    // One decision dated in 2099 first, through a partition of its own.
                    let forged = 4_070_908_800 * S + self.rng.random_range(0..86_400) * S;
                    let v = self.p.login(forged, "root", &ip, false);
                    let mut o = self.out(t0, &ip, v, Some((id, t0)), false);
                    o.partition = fixed;
                    exp.push(expect(
                        "vigil.time.skewed_source",
                        &[
                            ("kafka_topic", topic),
                            ("kafka_partition", &fixed.to_string()),
                        ],
                    ));
                    out.push(o);
                    start = t0 + self.rng.random_range(1..=10) * S;
                }
                for k in 0..n {
                    let at = start + dur * k / n + self.rng.random_range(0..(dur / n).max(1) / 2);
                    let stated = at - back;
                    let user = &targets[(k as usize) % targets.len()];
                    let v = self.p.login(stated, user, &ip, false);
                    let mut o = self.out(at, &ip, v, Some((id, stated)), spread);
                    if s == Shape::BackdatedBurst {
                        o.partition = fixed;
                    }
                    out.push(o);
                }
                if s == Shape::BackdatedBurst {
                    exp.push(expect(
                        "vigil.time.late_source",
                        &[
                            ("kafka_topic", topic),
                            ("kafka_partition", &fixed.to_string()),
                        ],
                    ));
                }
                let rule = if s == Shape::BruteForceSlow {
                    "vigil.bruteforce.slow"
                } else {
                    "vigil.bruteforce.source_ip"
                };
                exp.push(expect(rule, &[("caller_ip", &ip)]));
                what = format!(
                    "{n} failed logins as {} over {} s{}",
                    targets.join(", "),
                    dur / S,
                    if back > 0 {
                        format!(", dated {} s back", back / S)
                    } else {
                        String::new()
                    }
                );
                subjects.push(ip);
                // The accounts it tries (the per-principal rules name them).
                subjects.extend(targets);
            }
            Shape::PasswordSpraying => {
                let ip = self.outside_ip();
                let users = self.rng.random_range(12..=40);
                let dur = self.rng.random_range(2 * 60..=20 * 60) * S;
                let mut k = 0;
                for u in 0..users {
                    for _ in 0..self.rng.random_range(1..=2) {
                        let at = t0 + dur * u / users + self.rng.random_range(0..5) * S;
                        let v = self.p.login(
                            at,
                            &format!("user{:04}@example.com", (u * 71 + id as i64) % 3000),
                            &ip,
                            false,
                        );
                        out.push(self.out(at, &ip, v, Some((id, at)), spread));
                        k += 1;
                    }
                }
                exp.push(expect(
                    "vigil.password_spraying.source_ip",
                    &[("caller_ip", &ip)],
                ));
                what = format!("{k} failed logins as {users} users over {} s", dur / S);
                subjects.push(ip);
            }
            Shape::DenyThenAllow => {
                let ip = self.outside_ip();
                let fails = self.rng.random_range(5..=15);
                let dur = self.rng.random_range(10..=180) * S;
                let user = format!("user{:04}@example.com", self.rng.random_range(0..3000));
                for k in 0..fails {
                    let at = t0 + dur * k / fails;
                    let v = self.p.login(at, &user, &ip, false);
                    out.push(self.out(at, &ip, v, Some((id, at)), spread));
                }
                let at = t0 + dur + self.rng.random_range(1..20) * S;
                let v = self.p.login(at, &user, &ip, true);
                out.push(self.out(at, &ip, v, Some((id, at)), spread));
                exp.push(expect(
                    "vigil.deny_then_allow",
                    &[("caller_ip", &ip), ("callee_service", "auth")],
                ));
                what = format!(
                    "{fails} failed logins as {user} over {} s, then one that works",
                    dur / S
                );
                subjects.push(ip);
            }
            Shape::CompromisedProbing => {
                let me = self.some_caller(None);
                let n = self.rng.random_range(15..=60);
                let dur = self.rng.random_range(10..=240) * S;
                let targets: Vec<usize> = (0..CALLERS)
                    .filter(|&e| {
                        e != me
                            && !self.edges.contains(&(me, e))
                            && !self.deploys.iter().any(|d| (d.0, d.1) == (me, e))
                    })
                    .collect();
                let k = self.rng.random_range(6..=targets.len().min(12));
                let (a, mut first) = (self.w[me].clone(), Vec::new());
                for j in 0..n {
                    let e = targets[(j as usize) % k];
                    let at = t0 + dur * j / n;
                    let b = self.w[e].clone();
                    let path = [
                        "/admin",
                        "/debug/vars",
                        "/actuator/env",
                        "/internal/users",
                        "/v1/secrets",
                    ][(j as usize) % 5];
                    let sport = self.p.ephemeral();
                    let v =
                        self.p
                            .decision(at, &a, &b, "GET", &format!("{path}/{j}"), false, sport);
                    out.push(self.out(at, &a.ip, v, Some((id, at)), false));
                    if !first.contains(&e) {
                        first.push(e);
                    }
                }
                for e in first {
                    exp.push(expect(
                        "vigil.unexpected_caller.declared",
                        &[
                            ("caller_principal", &a.spiffe()),
                            ("callee_principal", &self.w[e].spiffe()),
                        ],
                    ));
                }
                what = format!(
                    "{n} denied calls to admin routes of {k} services it never calls, over {} s",
                    dur / S
                );
                subjects.push(a.spiffe());
                subjects.push(a.ip.clone());
            }
            Shape::LateralMovement => {
                let me = self.some_caller(None);
                let e = loop {
                    let e = self.rng.random_range(0..CALLERS);
                    if e != me
                        && !self.edges.contains(&(me, e))
                        && !self.deploys.iter().any(|d| (d.0, d.1) == (me, e))
                    {
                        break e;
                    }
                };
                let n = self.rng.random_range(1..=5);
                let (a, b) = (self.w[me].clone(), self.w[e].clone());
                let port = self.p.ephemeral();
                let v = self.p.flow(
                    t0,
                    &end(&self.w, me, port),
                    &end(&self.w, e, APP_PORT),
                    "TCP",
                    false,
                );
                out.push(self.out(t0, &a.ip, v, Some((id, t0)), false));
                for j in 0..n {
                    let at = t0 + (j + 1) * self.rng.random_range(50..2000) * MS;
                    let v = self.p.decision(at, &a, &b, "GET", "/v1/export", true, port);
                    out.push(self.out(at, &a.ip, v, Some((id, at)), false));
                }
                exp.push(expect(
                    "vigil.unexpected_caller.declared",
                    &[
                        ("caller_principal", &a.spiffe()),
                        ("callee_principal", &b.spiffe()),
                    ],
                ));
                exp.push(expect(
                    "vigil.unexpected_flow.declared",
                    &[("caller_principal", a.name), ("callee_principal", b.name)],
                ));
                what = format!(
                    "{n} allowed calls {} → {} on an undeclared edge",
                    a.name, b.name
                );
                subjects.extend([a.spiffe(), a.ip.clone(), a.name.to_owned()]);
            }
            Shape::K8sSecrets => {
                let who = self.some_caller(None);
                let user = format!(
                    "system:serviceaccount:{}:{}",
                    self.w[who].ns, self.w[who].name
                );
                let ip = self.w[who].ip.clone();
                let n = self.rng.random_range(10..=40);
                let dur = self.rng.random_range(60..=20 * 60) * S;
                for j in 0..n {
                    let at = t0 + dur * j / n;
                    let ns = WORKLOADS[(j as usize * 7 + id) % WORKLOADS.len()].0;
                    let (verb, uri) = if j % 2 == 0 {
                        ("list", format!("/api/v1/namespaces/{ns}/secrets"))
                    } else {
                        ("get", format!("/api/v1/namespaces/{ns}/secrets/token-{j}"))
                    };
                    let v = self.p.k8s(at, &user, &ip, verb, &uri, 403);
                    out.push(self.out(at, &ip, v, Some((id, at)), spread));
                }
                exp.push(expect(
                    "vigil.k8s.forbidden_burst.user",
                    &[("caller_principal", &user)],
                ));
                what = format!("{n} forbidden secret reads over {} s", dur / S);
                subjects.push(user);
            }
            Shape::DroppedFlows => {
                let me = self.some_caller(None);
                let n = self.rng.random_range(12..=80);
                let dur = self.rng.random_range(2_000..=9_000) * MS;
                for j in 0..n {
                    let at = t0 + dur * j / n;
                    let e = (me + 1 + j as usize) % CALLERS;
                    let port = self.p.ephemeral();
                    let v = self.p.flow(
                        at,
                        &end(&self.w, me, port),
                        &end(&self.w, e, APP_PORT),
                        "TCP",
                        true,
                    );
                    let key = self.w[me].ip.clone();
                    out.push(self.out(at, &key, v, Some((id, at)), spread));
                }
                let a = &self.w[me];
                exp.push(expect(
                    "vigil.flow.drop_burst.source",
                    &[("caller_namespace", a.ns), ("caller_principal", a.name)],
                ));
                what = format!("{n} flows dropped by policy in {} ms", dur / MS);
                subjects.extend([a.name.to_owned(), a.ip.clone(), a.spiffe()]);
            }
            Shape::PortScan => {
                let me = self.some_caller(None);
                let target = self.some_caller(Some(me));
                let n = self.rng.random_range(15..=300);
                let dur = self.rng.random_range(5..=240) * S;
                let dropped = self.rng.random_bool(0.5);
                let base = self.rng.random_range(1..2000u16);
                for j in 0..n {
                    let at = t0 + dur * j / n;
                    let port = self.p.ephemeral();
                    let v = self.p.flow(
                        at,
                        &end(&self.w, me, port),
                        &end(&self.w, target, base + j as u16 * 3),
                        "TCP",
                        dropped,
                    );
                    let key = self.w[me].ip.clone();
                    out.push(self.out(at, &key, v, Some((id, at)), spread));
                }
                let a = &self.w[me];
                exp.push(expect("vigil.flow.port_scan", &[("caller_ip", &a.ip)]));
                what = format!(
                    "{n} ports of {} probed over {} s ({})",
                    self.w[target].name,
                    dur / S,
                    if dropped { "dropped" } else { "forwarded" }
                );
                subjects.extend([a.name.to_owned(), a.ip.clone(), a.spiffe()]);
            }
            Shape::FanOut => {
                let me = self.some_caller(None);
                let n = self.rng.random_range(50..=150);
                let dur = self.rng.random_range(30..=240) * S;
                let port = [443u16, 6379, 8443, 80][self.rng.random_range(0..4)];
                for j in 0..n {
                    let at = t0 + dur * j / n;
                    let sport = self.p.ephemeral();
                    let dst = format!("10.2.{}.{}", j / 200, 1 + j % 200);
                    let to = End {
                        ns: None,
                        name: None,
                        ip: &dst,
                        port,
                    };
                    let v = self.p.flow(at, &end(&self.w, me, sport), &to, "TCP", false);
                    let key = self.w[me].ip.clone();
                    out.push(self.out(at, &key, v, Some((id, at)), spread));
                }
                let a = &self.w[me];
                exp.push(expect("vigil.flow.fan_out", &[("caller_ip", &a.ip)]));
                what = format!("flows to {n} hosts on port {port} over {} s", dur / S);
                subjects.extend([a.name.to_owned(), a.ip.clone(), a.spiffe()]);
            }
            Shape::AdminPortEdge => {
                let me = self.some_caller(None);
                let target = self.some_caller(Some(me));
                let port = ADMIN_PORTS[self.rng.random_range(0..ADMIN_PORTS.len())];
                let n = self.rng.random_range(1..=3);
                for j in 0..n {
                    let at = t0 + j * self.rng.random_range(1..30) * S;
                    let sport = self.p.ephemeral();
                    let v = self.p.flow(
                        at,
                        &end(&self.w, me, sport),
                        &end(&self.w, target, port),
                        "TCP",
                        false,
                    );
                    let key = self.w[me].ip.clone();
                    out.push(self.out(at, &key, v, Some((id, at)), false));
                }
                let (a, b) = (&self.w[me], &self.w[target]);
                exp.push(expect(
                    "vigil.flow.admin_port_new_edge",
                    &[
                        ("caller_ip", &a.ip),
                        ("callee_ip", &b.ip),
                        ("callee_port", &port.to_string()),
                    ],
                ));
                what = format!("{n} connections {} → {}:{port}", a.name, b.name);
                subjects.extend([a.name.to_owned(), a.ip.clone(), a.spiffe()]);
            }
            Shape::SidecarBypass => {
                // On a declared edge (so only the missing decision gives it away).
                let (c, e) = self.edges[self.rng.random_range(0..self.edges.len())];
                let n = self.rng.random_range(1..=3);
                for j in 0..n {
                    let at = t0 + j * self.rng.random_range(1..20) * S;
                    let sport = self.p.ephemeral();
                    let v = self.p.flow(
                        at,
                        &end(&self.w, c, sport),
                        &end(&self.w, e, APP_PORT),
                        "TCP",
                        false,
                    );
                    let key = self.w[c].ip.clone();
                    out.push(self.out(at, &key, v, Some((id, at)), false));
                }
                let (a, b) = (&self.w[c], &self.w[e]);
                exp.push(expect(
                    "vigil.enforcement_gap.sidecar_bypass",
                    &[
                        ("caller_ip", &a.ip),
                        ("callee_ip", &b.ip),
                        ("callee_port", &APP_PORT.to_string()),
                    ],
                ));
                what = format!(
                    "{n} connections {} → {}:{APP_PORT} with no decision",
                    a.name, b.name
                );
                subjects.extend([a.ip.clone(), format!("{}→{}", a.ip, b.ip)]);
            }
        }
        out.sort();
        let start_ns = out.first().map_or(t0, |o| o.at_ns);
        let end_ns = out.last().map_or(t0, |o| o.at_ns);
        let attack = Attack {
            id,
            scenario: s.name(),
            start_ns,
            end_ns,
            subjects,
            expect: exp,
            what,
            records: Vec::new(),
        };
        (out, attack)
    }
}

/// Run the labelled workload: send it and write its labels.
pub fn run(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    args: &LabelledArgs,
    rate: f64,
    seed: u64,
    history_hours: u32,
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
    let Some(labels) = &args.labelled else {
        anyhow::bail!("no --labelled file");
    };
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    anyhow::ensure!(
        args.speed >= 1.0 && args.speed.is_finite(),
        "--speed must be at least 1"
    );
    let lag_partition = args.lag_partition.unwrap_or(args.partitions - 1);
    anyhow::ensure!(
        (0..args.partitions).contains(&lag_partition),
        "--lag-partition {lag_partition} is not one of the {} partitions",
        args.partitions
    );
    let wall_ns = (args.events as f64 / rate * 1e9) as i64;
    let span_ns = (wall_ns as f64 * args.speed) as i64;
    anyhow::ensure!(
        span_ns >= 36 * 60 * S,
        "--events / --rate × --speed give {} min of event time; the warm-up and the slow attacks need 36 (raise --speed or --events)",
        span_ns / 60 / S
    );
    let mut world = World::new(seed, args.partitions);
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(labels).with_context(|| format!("creating {}", labels.display()))?,
    );
    let send = |o: &Out| -> anyhow::Result<()> {
        let mut rec: BaseRecord<'_, str, str> = BaseRecord::to(topic)
            .payload(o.value.as_str())
            .key(o.key.as_str())
            .partition(o.partition);
        loop {
            match producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    std::thread::sleep(Duration::from_millis(2));
                    rec = back;
                }
                Err((e, _)) => return Err(e).context("producing"),
            }
        }
    };

    // Event time: [e0, e0 + span), ending at the wall clock as the last record goes out.
    // The graph first: a consumer can load it before the first record arrives.
    if let Some(g) = &args.graph_out {
        std::fs::write(g, world.graph()).with_context(|| format!("writing {}", g.display()))?;
    }
    let now = vigil_detect::engine::now_ns();
    let history_end = now + wall_ns - span_ns - 60 * S;
    let history = world.history(history_hours, history_end);
    for o in &history {
        send(o)?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("delivering the history")?;
    say(format!(
        "history: {} records over the {history_hours} h before the run (partition 0)",
        history.len()
    ));
    // Time for a consumer started with the graph to join and take the history.
    std::thread::sleep(Duration::from_secs(5));
    let w0 = vigil_detect::engine::now_ns();
    let e0 = w0 + wall_ns - span_ns;
    world.time_deploys(e0, span_ns);

    // The attacks: every shape `attacks_each` times, in random order, spread over the run.
    let mut plan: Vec<Shape> = SHAPES
        .iter()
        .flat_map(|&s| std::iter::repeat_n(s, args.attacks_each))
        .collect();
    for i in (1..plan.len()).rev() {
        plan.swap(i, world.rng.random_range(0..=i));
    }
    let mut heap: BinaryHeap<Reverse<Out>> = BinaryHeap::new();
    let mut attacks = Vec::new();
    let first = e0 + WARM_UP_NS + 60 * S;
    let slot = (e0 + span_ns - 3 * 60 * S - first) / plan.len().max(1) as i64;
    for (id, &s) in plan.iter().enumerate() {
        let lo = first + slot * id as i64;
        let latest = e0 + span_ns - s.max_span_ns() - 60 * S;
        let t0 = (lo + world.rng.random_range(0..slot.max(1)))
            .min(latest)
            .max(first);
        let (recs, a) = world.attack(id, s, t0, topic);
        heap.extend(recs.into_iter().map(Reverse));
        attacks.push(a);
    }
    writeln!(
        file,
        "{}",
        serde_json::json!({"labelled": {
            "topic": topic, "partitions": args.partitions, "lag_partition": lag_partition,
            "lag_ms": args.lag_ms, "speed": args.speed, "seed": seed, "start_ns": e0,
            "end_ns": e0 + span_ns, "warm_up_end_ns": e0 + WARM_UP_NS, "attacks": attacks.len(), "events": args.events,
        }})
    )?;
    say(format!(
        "labelled: {} benign events at ~{rate} /s ({:.0} min of event time at ×{}), {} attacks, partition {lag_partition} {} ms behind",
        args.events,
        span_ns as f64 / 60e9,
        args.speed,
        attacks.len(),
        args.lag_ms
    ));

    let started = Instant::now();
    let rate_e = args.events as f64 / (span_ns as f64 / 1e9);
    let (mut benign, mut attack_n) = (0u64, 0u64);
    let mut next_benign = e0;
    let (mut next_health, mut next_scrape, mut next_batch) = (e0, e0 + 3 * S, e0 + 120 * S);
    let lag_ns = i64::try_from(args.lag_ms).unwrap_or(i64::MAX / 4) * MS;
    let mut lagged: VecDeque<(i64, Out)> = VecDeque::new();
    let mut units = Vec::new();
    let mut last_report = Instant::now();
    let deadline = |at: i64| w0 + ((at - e0) as f64 / args.speed) as i64;
    let record = |o: &Out, attacks: &mut Vec<Attack>| {
        if let Some((a, stated)) = o.attack {
            let sent = vigil_detect::engine::now_ns();
            attacks[a]
                .records
                .push([stated, sent, i64::from(o.partition)]);
        }
    };
    loop {
        // Benign traffic generated up to the next record due.
        while benign < args.events && heap.peek().is_none_or(|Reverse(o)| next_benign <= o.at_ns) {
            units.clear();
            if next_benign >= next_health {
                world.health_round(next_health, &mut units);
                next_health += 10 * S;
            } else if next_benign >= next_scrape {
                world.scrape_round(next_scrape, &mut units);
                next_scrape += 15 * S;
            } else if next_benign >= next_batch {
                world.batch_round(next_batch, &mut units);
                next_batch += 600 * S;
            } else {
                world.benign(next_benign, &mut units);
                let gap = -(1.0 - world.rng.random::<f64>()).ln() / rate_e;
                next_benign += (gap * 1e9) as i64;
            }
            benign += units.len() as u64;
            heap.extend(units.drain(..).map(Reverse));
        }
        let Some(Reverse(o)) = heap.pop() else { break };
        let due = deadline(o.at_ns);
        let now = vigil_detect::engine::now_ns();
        if due > now + 2 * MS {
            std::thread::sleep(Duration::from_nanos((due - now) as u64));
        }
        // The lagging partition's records whose time has come.
        let now = vigil_detect::engine::now_ns();
        while lagged.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, l)) = lagged.pop_front() {
                send(&l)?;
                record(&l, &mut attacks);
            }
        }
        if o.attack.is_some() {
            attack_n += 1;
        }
        if o.partition == lag_partition && lag_ns > 0 {
            lagged.push_back((due + lag_ns, o));
        } else {
            send(&o)?;
            record(&o, &mut attacks);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            say(format!(
                "[{:6.1}s] {benign} benign, {attack_n} attack records",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    while let Some((at, l)) = lagged.pop_front() {
        let now = vigil_detect::engine::now_ns();
        if at > now {
            std::thread::sleep(Duration::from_nanos((at - now) as u64));
        }
        send(&l)?;
        record(&l, &mut attacks);
    }
    producer
        .flush(Duration::from_secs(60))
        .context("delivering the records")?;
    for a in &attacks {
        writeln!(file, "{}", serde_json::json!({ "attack": a }))?;
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        file,
        "{}",
        serde_json::json!({"done": {"benign": benign, "attack": attack_n, "history": history.len(), "secs": secs}})
    )?;
    file.flush()?;
    say(format!(
        "done: {benign} benign and {attack_n} attack records in {secs:.1} s ({:.0} /s), {} history",
        (benign + attack_n) as f64 / secs,
        history.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schemas::Decoder;

    /// (kind, decision, caller ip, caller port, callee ip, callee port, time).
    type Row = (String, String, String, u16, String, u16, i64);

    fn decode(v: &str) -> Row {
        let mut rows = Vec::new();
        Decoder::default()
            .decode_with(v.as_bytes(), |e| {
                let s = |x: &Option<std::borrow::Cow<'_, str>>| {
                    x.as_deref().unwrap_or_default().to_owned()
                };
                rows.push((
                    e.kind.as_str().to_owned(),
                    e.decision.as_str().to_owned(),
                    s(&e.caller.ip),
                    e.caller.port.unwrap_or(0),
                    s(&e.callee.ip),
                    e.callee.port.unwrap_or(0),
                    e.time_ns.unwrap_or(0),
                ));
            })
            .unwrap_or_else(|e| panic!("{e}: {v}"));
        assert_eq!(rows.len(), 1, "{v}");
        rows.remove(0)
    }

    fn benign(w: &mut World, e0: i64, n: usize) -> Vec<Out> {
        let mut out = Vec::new();
        let mut t = e0;
        while out.len() < n {
            w.benign(t, &mut out);
            t += 2_500_000;
        }
        w.health_round(e0, &mut out);
        w.scrape_round(e0, &mut out);
        w.batch_round(e0 + S, &mut out);
        out
    }

    #[test]
    fn every_benign_connection_to_a_guarded_port_has_its_decision() {
        let mut w = World::new(11, 4);
        let e0 = 1_800_000_000 * S;
        w.time_deploys(e0, 3600 * S);
        let rows: Vec<Row> = benign(&mut w, e0, 60_000)
            .iter()
            .map(|o| decode(&o.value))
            .collect();
        let decided: std::collections::HashSet<(String, u16, String, u16)> = rows
            .iter()
            .filter(|r| r.0 == "authz")
            .map(|r| (r.2.clone(), r.3, r.4.clone(), r.5))
            .collect();
        let mut flows = 0;
        for r in rows.iter().filter(|r| r.0 == "flow" && r.5 == APP_PORT) {
            flows += 1;
            assert!(
                decided.contains(&(r.2.clone(), r.3, r.4.clone(), r.5)),
                "no decision on the connection {r:?}"
            );
        }
        assert!(flows > 1000, "{flows}");
    }
}
