//! The attack shapes: what each sends, with its random rates, spread, names, ports and
//! partitions, and the rules and group keys it must fire.

use std::collections::BTreeMap;

use rand::Rng;
use serde::Serialize;

use super::mesh::World;
use super::{Out, S};

mod calls;
mod flows;
mod logins;

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

/// What an attack starts from: its number, its shape, when, the topic, and whether its
/// records are spread over partitions (else its source's one).
#[derive(Clone, Copy)]
struct AttackStart<'a> {
    id: usize,
    shape: Shape,
    t0: i64,
    topic: &'a str,
    spread: bool,
}

/// An attack's records, its subjects, the alerts it must raise and what it did.
struct Built {
    out: Vec<Out>,
    subjects: Vec<String>,
    exp: Vec<Expect>,
    what: String,
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
        let spread = self.rng.random_bool(0.5);
        let at = AttackStart {
            id,
            shape: s,
            t0,
            topic,
            spread,
        };
        let Built {
            mut out,
            subjects,
            exp,
            what,
        } = match s {
            Shape::BruteForce
            | Shape::BruteForceSlow
            | Shape::ForgedFutureThenBurst
            | Shape::BackdatedBurst => self.brute_force(&at),
            Shape::PasswordSpraying => self.password_spraying(&at),
            Shape::DenyThenAllow => self.deny_then_allow(&at),
            Shape::CompromisedProbing => self.compromised_probing(&at),
            Shape::LateralMovement => self.lateral_movement(&at),
            Shape::K8sSecrets => self.k8s_secrets(&at),
            Shape::DroppedFlows => self.dropped_flows(&at),
            Shape::PortScan => self.port_scan(&at),
            Shape::FanOut => self.fan_out(&at),
            Shape::AdminPortEdge => self.admin_port_edge(&at),
            Shape::SidecarBypass => self.sidecar_bypass(&at),
        };
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
