//! Attacks on logins: brute force (fast, slow, after a forged 2099 decision, backdated),
//! password spraying, deny then allow.

use rand::Rng;

use super::{AttackStart, Built, expect};
use crate::simulate_cmd::labelled::attacks::Shape;
use crate::simulate_cmd::labelled::mesh::World;
use crate::simulate_cmd::labelled::{Out, S};

impl World {
    /// One login of the attack from `ip` as `user`, sent at `sent` and stating `stated` as its
    /// time.
    fn attack_login(
        &mut self,
        a: &AttackStart<'_>,
        (sent, stated): (i64, i64),
        user: &str,
        ip: &str,
        allow: bool,
    ) -> Out {
        let v = self.p.login(stated, user, ip, allow);
        self.out(sent, ip, v, Some((a.id, stated)), a.spread)
    }

    /// Failed logins from one outside address against a few accounts, fast or slow; or preceded by one decision dated 2099 (forged), or stated minutes back (backdated).
    pub(super) fn brute_force(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart {
            id,
            shape: s,
            t0,
            topic,
            spread,
        } = *at;
        let (mut out, mut subjects, mut exp) = (Vec::new(), Vec::new(), Vec::new());
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
            .map(|k| ["admin", "root", "svc-deploy", "alice@example.com"][(k + id) % 4].to_owned())
            .collect();
        // Backdated: stated this far behind when sent (past the allowed lateness).
        let back = if s == Shape::BackdatedBurst {
            self.rng.random_range(5 * 60..=30 * 60) * S
        } else {
            0
        };
        // Backdated bursts come through one partition (the log that late_source names).
        let burst = AttackStart {
            spread: spread && s != Shape::BackdatedBurst,
            ..*at
        };
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
            let mut o = self.attack_login(&burst, (at, stated), user, &ip, false);
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
        let what = format!(
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
        Built {
            out,
            subjects,
            exp,
            what,
        }
    }

    /// Failed logins from one outside address across many user names.
    pub(super) fn password_spraying(&mut self, at: &AttackStart<'_>) -> Built {
        let AttackStart { id, t0, .. } = *at;
        let ip = self.outside_ip();
        let users = self.rng.random_range(12..=40);
        let dur = self.rng.random_range(2 * 60..=20 * 60) * S;
        let mut out = Vec::new();
        for u in 0..users {
            let user = format!("user{:04}@example.com", (u * 71 + id as i64) % 3000);
            for _ in 0..self.rng.random_range(1..=2) {
                let sent = t0 + dur * u / users + self.rng.random_range(0..5) * S;
                out.push(self.attack_login(at, (sent, sent), &user, &ip, false));
            }
        }
        let exp = vec![expect(
            "vigil.password_spraying.source_ip",
            &[("caller_ip", &ip)],
        )];
        let what = format!(
            "{} failed logins as {users} users over {} s",
            out.len(),
            dur / S
        );
        Built {
            out,
            subjects: vec![ip],
            exp,
            what,
        }
    }

    /// Failed logins from one address as one user, then one that works.
    pub(super) fn deny_then_allow(&mut self, at: &AttackStart<'_>) -> Built {
        let t0 = at.t0;
        let ip = self.outside_ip();
        let fails = self.rng.random_range(5..=15);
        let dur = self.rng.random_range(10..=180) * S;
        let user = format!("user{:04}@example.com", self.rng.random_range(0..3000));
        let mut out: Vec<Out> = (0..fails)
            .map(|k| {
                let sent = t0 + dur * k / fails;
                self.attack_login(at, (sent, sent), &user, &ip, false)
            })
            .collect();
        let sent = t0 + dur + self.rng.random_range(1..20) * S;
        out.push(self.attack_login(at, (sent, sent), &user, &ip, true));
        let exp = vec![expect(
            "vigil.deny_then_allow",
            &[("caller_ip", &ip), ("callee_service", "auth")],
        )];
        let what = format!(
            "{fails} failed logins as {user} over {} s, then one that works",
            dur / S
        );
        Built {
            out,
            subjects: vec![ip],
            exp,
            what,
        }
    }
}
