//! The mesh and its benign traffic: workloads, the declared graph, calls (a decision per
//! request, a flow per new connection), logins, Kubernetes API calls, DNS, databases, health
//! checks, scrapes, a batch job, deploys, and the history the learned rules learn from.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::payloads::{End, Payloads, end};
use super::{APP_PORT, HEALTH_PORT, METRICS_PORT, MS, Out, S};

/// A workload of the mesh.
#[derive(Clone, Debug)]
pub(super) struct Workload {
    pub(super) ns: &'static str,
    pub(super) name: &'static str,
    pub(super) ip: String,
    /// Relative share of the mesh's calls it makes.
    pub(super) weight: f64,
    /// Probability that one of its calls is a legitimate one-off denial.
    pub(super) deny_p: f64,
}

impl Workload {
    pub(super) fn spiffe(&self) -> String {
        format!("spiffe://cluster.local/ns/{}/sa/{}", self.ns, self.name)
    }
}

pub(super) const WORKLOADS: [(&str, &str); 24] = [
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
pub(super) const AUTH: usize = 10;
pub(super) const REPORTS: usize = 18;
pub(super) const POSTGRES: usize = 20;
pub(super) const REDIS: usize = 21;
pub(super) const COREDNS: usize = 22;
pub(super) const PROMETHEUS: usize = 23;
/// Workloads that call others on the application port (the rest are infrastructure).
pub(super) const CALLERS: usize = 20;
/// Remote-administration and database ports an attacker moves laterally on.
pub(super) const ADMIN_PORTS: [u16; 8] = [22, 3389, 445, 5985, 135, 5432, 3306, 6379];

/// The mesh, its declared graph, and everything that generates records.
pub(super) struct World {
    pub(super) rng: StdRng,
    pub(super) p: Payloads,
    pub(super) w: Vec<Workload>,
    /// Declared caller → callee edges in use from the start.
    pub(super) edges: Vec<(usize, usize)>,
    /// Declared edges first used by a deploy at the given time.
    pub(super) deploys: Vec<(usize, usize, i64)>,
    pub(super) partitions: i32,
    pub(super) seq: u64,
    /// Each edge's open connection: its source port.
    pub(super) conns: HashMap<(usize, usize), u16>,
    /// Benign users: (name, address).
    pub(super) users: Vec<(String, String)>,
    pub(super) nodes: Vec<String>,
}

/// A benign login's office NAT: many users behind one address.
pub(super) const NAT_IP: &str = "198.18.0.1";

impl World {
    pub(super) fn new(seed: u64, partitions: i32) -> World {
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
                run: u64::try_from(vigil_store::clock::now_ns()).unwrap_or(0) / 1_000_000,
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
    pub(super) fn plan_deploys(&mut self) {
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
    pub(super) fn time_deploys(&mut self, e0: i64, span: i64) {
        for (k, d) in self.deploys.iter_mut().enumerate() {
            d.2 = e0 + span * (k as i64 + 1) / 4 + self.rng.random_range(0..60) * S;
        }
    }

    /// The declared policy graph: every call edge (deploy edges too) with its flow on the
    /// application port, DNS, the databases, Prometheus's scrapes.
    pub(super) fn graph(&self) -> String {
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

    pub(super) fn partition_of(&self, key: &str) -> i32 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.partitions as u64) as i32
    }

    pub(super) fn out(
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
    pub(super) fn call(
        &mut self,
        t: i64,
        c: usize,
        e: usize,
        path: String,
        allow: bool,
        out: &mut Vec<Out>,
    ) {
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
    pub(super) fn benign(&mut self, t: i64, out: &mut Vec<Out>) {
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
    pub(super) fn benign_login(&mut self, t: i64, out: &mut Vec<Out>) {
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

    pub(super) fn benign_k8s(&mut self, t: i64, out: &mut Vec<Out>) {
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
    pub(super) fn health_round(&mut self, t: i64, out: &mut Vec<Out>) {
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
    pub(super) fn scrape_round(&mut self, t: i64, out: &mut Vec<Out>) {
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
    pub(super) fn batch_round(&mut self, t: i64, out: &mut Vec<Out>) {
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
    pub(super) fn history(&mut self, hours: u32, end_ns: i64) -> Vec<Out> {
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

    pub(super) fn outside_ip(&mut self) -> String {
        let nets = ["203.0.113", "198.51.100", "192.0.2"];
        format!(
            "{}.{}",
            nets[self.rng.random_range(0..nets.len())],
            self.rng.random_range(2..254)
        )
    }

    /// A calling workload other than the auth service and `not`.
    pub(super) fn some_caller(&mut self, not: Option<usize>) -> usize {
        loop {
            let c = self.rng.random_range(0..CALLERS);
            if Some(c) != not && c != AUTH {
                return c;
            }
        }
    }
}
