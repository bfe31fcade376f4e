//! The attack shapes: what each sends, with its random rates, spread, names, ports and
//! partitions, and the rules and group keys it must fire.

use std::collections::BTreeMap;

use rand::Rng;
use serde::Serialize;

use super::mesh::{ADMIN_PORTS, CALLERS, WORKLOADS, World};
use super::payloads::{End, end};
use super::{APP_PORT, MS, Out, S};

/// The attack shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
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

pub(super) const SHAPES: [Shape; 14] = [
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
    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn max_span_ns(self) -> i64 {
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

pub(super) fn expect(rule: &'static str, key: &[(&'static str, &str)]) -> Expect {
    Expect {
        rule,
        key: key.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
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

impl World {
    /// The records of attack `id` of shape `s` starting at `t0`.
    pub(super) fn attack(
        &mut self,
        id: usize,
        s: Shape,
        t0: i64,
        topic: &str,
    ) -> (Vec<Out>, Attack) {
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
