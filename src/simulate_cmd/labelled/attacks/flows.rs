//! Attacks seen in flows: drops, port scans, fan-out, new admin-port edges, connections around
//! the sidecar.

use rand::Rng;

use super::{AttackStart, Built, expect};
use crate::simulate_cmd::labelled::mesh::{ADMIN_PORTS, CALLERS, World};
use crate::simulate_cmd::labelled::payloads::{End, end};
use crate::simulate_cmd::labelled::{APP_PORT, MS, S};

impl World {
    /// A burst of flows from one workload dropped by policy.
    pub(super) fn dropped_flows(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart { id, t0, spread, .. } = *at;
        let (mut out, mut subjects, mut exp) = (Vec::new(), Vec::new(), Vec::new());
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
        let what = format!("{n} flows dropped by policy in {} ms", dur / MS);
        subjects.extend([a.name.to_owned(), a.ip.clone(), a.spiffe()]);
        Built {
            out,
            subjects,
            exp,
            what,
        }
    }

    /// Flows from one workload to many ports of another.
    pub(super) fn port_scan(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart { id, t0, spread, .. } = *at;
        let (mut out, mut subjects, mut exp) = (Vec::new(), Vec::new(), Vec::new());
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
        let what = format!(
            "{n} ports of {} probed over {} s ({})",
            self.w[target].name,
            dur / S,
            if dropped { "dropped" } else { "forwarded" }
        );
        subjects.extend([a.name.to_owned(), a.ip.clone(), a.spiffe()]);
        Built {
            out,
            subjects,
            exp,
            what,
        }
    }

    /// Flows from one workload to many hosts on one port.
    pub(super) fn fan_out(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart { id, t0, spread, .. } = *at;
        let (mut out, mut subjects, mut exp) = (Vec::new(), Vec::new(), Vec::new());
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
        let what = format!("flows to {n} hosts on port {port} over {} s", dur / S);
        subjects.extend([a.name.to_owned(), a.ip.clone(), a.spiffe()]);
        Built {
            out,
            subjects,
            exp,
            what,
        }
    }

    /// New connections to a remote-administration or database port.
    pub(super) fn admin_port_edge(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart { id, t0, .. } = *at;
        let (mut out, mut subjects, mut exp) = (Vec::new(), Vec::new(), Vec::new());
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
        let what = format!("{n} connections {} → {}:{port}", a.name, b.name);
        subjects.extend([a.name.to_owned(), a.ip.clone(), a.spiffe()]);
        Built {
            out,
            subjects,
            exp,
            what,
        }
    }

    /// Connections on a declared edge with no policy decision (around the sidecar).
    pub(super) fn sidecar_bypass(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart { id, t0, .. } = *at;
        let (mut out, mut subjects, mut exp) = (Vec::new(), Vec::new(), Vec::new());
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
        let what = format!(
            "{n} connections {} → {}:{APP_PORT} with no decision",
            a.name, b.name
        );
        subjects.extend([a.ip.clone(), format!("{}→{}", a.ip, b.ip)]);
        Built {
            out,
            subjects,
            exp,
            what,
        }
    }
}
