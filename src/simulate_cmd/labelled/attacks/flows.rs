//! Attacks seen in flows: drops, port scans, fan-out, new admin-port edges, connections around
//! the sidecar.

use rand::Rng;

use super::{AttackStart, Built, Expect, expect};
use crate::simulate_cmd::labelled::mesh::{ADMIN_PORTS, CALLERS, World};
use crate::simulate_cmd::labelled::payloads::{End, end};
use crate::simulate_cmd::labelled::{APP_PORT, MS, Out, S};

/// Where an attack's flow goes: a workload of the mesh, or an address outside it; and the port.
enum To<'a> {
    Workload(usize, u16),
    Address(&'a str, u16),
}

impl World {
    /// One TCP flow of the attack from workload `me` (its next ephemeral port) at `at`, keyed
    /// by `me`'s address.
    fn attack_flow(
        &mut self,
        a: &AttackStart<'_>,
        at: i64,
        me: usize,
        to: To<'_>,
        dropped: bool,
    ) -> Out {
        let sport = self.p.ephemeral();
        let to = match to {
            To::Workload(i, port) => end(&self.w, i, port),
            To::Address(ip, port) => End {
                ns: None,
                name: None,
                ip,
                port,
            },
        };
        let v = self
            .p
            .flow(at, &end(&self.w, me, sport), &to, "TCP", dropped);
        let key = self.w[me].ip.clone();
        self.out(at, &key, v, Some((a.id, at)), a.spread)
    }

    /// What names workload `me`: its name, address and SPIFFE id.
    fn workload_subjects(&self, me: usize) -> Vec<String> {
        let a = &self.w[me];
        vec![a.name.to_owned(), a.ip.clone(), a.spiffe()]
    }

    /// A burst of flows from one workload dropped by policy.
    pub(super) fn dropped_flows(&mut self, at: &AttackStart<'_>) -> Built {
        let t0 = at.t0;
        let me = self.some_caller(None);
        let n = self.rng.random_range(12..=80);
        let dur = self.rng.random_range(2_000..=9_000) * MS;
        let out = (0..n)
            .map(|j| {
                let e = (me + 1 + j as usize) % CALLERS;
                self.attack_flow(at, t0 + dur * j / n, me, To::Workload(e, APP_PORT), true)
            })
            .collect();
        let a = &self.w[me];
        let exp = vec![expect(
            "vigil.flow.drop_burst.source",
            &[("caller_namespace", a.ns), ("caller_principal", a.name)],
        )];
        Built {
            out,
            subjects: self.workload_subjects(me),
            exp,
            what: format!("{n} flows dropped by policy in {} ms", dur / MS),
        }
    }

    /// Flows from one workload to many ports of another.
    pub(super) fn port_scan(&mut self, at: &AttackStart<'_>) -> Built {
        let t0 = at.t0;
        let me = self.some_caller(None);
        let target = self.some_caller(Some(me));
        let n = self.rng.random_range(15..=300);
        let dur = self.rng.random_range(5..=240) * S;
        let dropped = self.rng.random_bool(0.5);
        let base = self.rng.random_range(1..2000u16);
        let out = (0..n)
            .map(|j| {
                let to = To::Workload(target, base + j as u16 * 3);
                self.attack_flow(at, t0 + dur * j / n, me, to, dropped)
            })
            .collect();
        let exp = vec![expect(
            "vigil.flow.port_scan",
            &[("caller_ip", &self.w[me].ip)],
        )];
        let what = format!(
            "{n} ports of {} probed over {} s ({})",
            self.w[target].name,
            dur / S,
            if dropped { "dropped" } else { "forwarded" }
        );
        Built {
            out,
            subjects: self.workload_subjects(me),
            exp,
            what,
        }
    }

    /// Flows from one workload to many hosts on one port.
    pub(super) fn fan_out(&mut self, at: &AttackStart<'_>) -> Built {
        let t0 = at.t0;
        let me = self.some_caller(None);
        let n = self.rng.random_range(50..=150);
        let dur = self.rng.random_range(30..=240) * S;
        let port = [443u16, 6379, 8443, 80][self.rng.random_range(0..4)];
        let out = (0..n)
            .map(|j| {
                let dst = format!("10.2.{}.{}", j / 200, 1 + j % 200);
                self.attack_flow(at, t0 + dur * j / n, me, To::Address(&dst, port), false)
            })
            .collect();
        let exp = vec![expect(
            "vigil.flow.fan_out",
            &[("caller_ip", &self.w[me].ip)],
        )];
        Built {
            out,
            subjects: self.workload_subjects(me),
            exp,
            what: format!("flows to {n} hosts on port {port} over {} s", dur / S),
        }
    }

    /// A few connections from workload `me` to `target`:`port`, seconds apart (at most
    /// `max_gap_s`), through `me`'s partition; and what they expect of `rule`.
    fn few_connections(
        &mut self,
        at: &AttackStart<'_>,
        (me, target, port): (usize, usize, u16),
        max_gap_s: i64,
        rule: &'static str,
    ) -> (Vec<Out>, Vec<Expect>, i64) {
        let one_partition = AttackStart {
            spread: false,
            ..*at
        };
        let n = self.rng.random_range(1..=3);
        let out = (0..n)
            .map(|j| {
                let sent = at.t0 + j * self.rng.random_range(1..max_gap_s) * S;
                self.attack_flow(&one_partition, sent, me, To::Workload(target, port), false)
            })
            .collect();
        let (a, b) = (&self.w[me], &self.w[target]);
        let exp = vec![expect(
            rule,
            &[
                ("caller_ip", &a.ip),
                ("callee_ip", &b.ip),
                ("callee_port", &port.to_string()),
            ],
        )];
        (out, exp, n)
    }

    /// New connections to a remote-administration or database port.
    pub(super) fn admin_port_edge(&mut self, at: &AttackStart<'_>) -> Built {
        let me = self.some_caller(None);
        let target = self.some_caller(Some(me));
        let port = ADMIN_PORTS[self.rng.random_range(0..ADMIN_PORTS.len())];
        let (out, exp, n) =
            self.few_connections(at, (me, target, port), 30, "vigil.flow.admin_port_new_edge");
        let what = format!(
            "{n} connections {} → {}:{port}",
            self.w[me].name, self.w[target].name
        );
        Built {
            out,
            subjects: self.workload_subjects(me),
            exp,
            what,
        }
    }

    /// Connections on a declared edge with no policy decision (around the sidecar).
    pub(super) fn sidecar_bypass(&mut self, at: &AttackStart<'_>) -> Built {
        // On a declared edge (so only the missing decision gives it away).
        let (c, e) = self.edges[self.rng.random_range(0..self.edges.len())];
        let (out, exp, n) = self.few_connections(
            at,
            (c, e, APP_PORT),
            20,
            "vigil.enforcement_gap.sidecar_bypass",
        );
        let (a, b) = (&self.w[c], &self.w[e]);
        let what = format!(
            "{n} connections {} → {}:{APP_PORT} with no decision",
            a.name, b.name
        );
        Built {
            out,
            subjects: vec![a.ip.clone(), format!("{}→{}", a.ip, b.ip)],
            exp,
            what,
        }
    }
}
