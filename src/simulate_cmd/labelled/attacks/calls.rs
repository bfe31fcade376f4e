//! Attacks seen in calls and the Kubernetes API: probing admin routes, lateral movement on an
//! undeclared edge, forbidden secret reads.

use rand::Rng;

use super::{AttackStart, Built, expect};
use crate::simulate_cmd::labelled::mesh::{CALLERS, WORKLOADS, World};
use crate::simulate_cmd::labelled::payloads::end;
use crate::simulate_cmd::labelled::{APP_PORT, MS, S};

impl World {
    /// A workload calling admin routes of services it never calls, denied.
    pub(super) fn compromised_probing(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart { id, t0, .. } = *at;
        let (mut out, mut subjects, mut exp) = (Vec::new(), Vec::new(), Vec::new());
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
            let v = self
                .p
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
        let what = format!(
            "{n} denied calls to admin routes of {k} services it never calls, over {} s",
            dur / S
        );
        subjects.push(a.spiffe());
        subjects.push(a.ip.clone());
        Built {
            out,
            subjects,
            exp,
            what,
        }
    }

    /// A workload connecting to, then calling, a service on an undeclared edge (allowed).
    pub(super) fn lateral_movement(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart { id, t0, .. } = *at;
        let (mut out, mut subjects, mut exp) = (Vec::new(), Vec::new(), Vec::new());
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
        let what = format!(
            "{n} allowed calls {} → {} on an undeclared edge",
            a.name, b.name
        );
        subjects.extend([a.spiffe(), a.ip.clone(), a.name.to_owned()]);
        Built {
            out,
            subjects,
            exp,
            what,
        }
    }

    /// A service account reading secrets it may not (403s).
    pub(super) fn k8s_secrets(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart { id, t0, spread, .. } = *at;
        let (mut out, mut subjects, mut exp) = (Vec::new(), Vec::new(), Vec::new());
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
        let what = format!("{n} forbidden secret reads over {} s", dur / S);
        subjects.push(user);
        Built {
            out,
            subjects,
            exp,
            what,
        }
    }
}
