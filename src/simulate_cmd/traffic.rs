//! The traffic: the mesh's normal events second by second, its backdated history, and the
//! attacks injected on top, as records keyed by their source address.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vigil_store::clock::now_ns;

use super::mesh::{Mesh, NAMES, Service};
use super::{Scenario, k8s_audit_event, rfc3339};

/// A record: its key (the source address) and value.
pub type Record = (String, String);

/// The key of every history record.
pub(super) const HISTORY_KEY: &str = "vigil-simulate-history";

/// Builds the records, with unique ids.
pub(super) struct Emit {
    pub(super) n: u64,
    pub(super) run: u64,
}

impl Emit {
    pub(super) fn id(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}-{:x}-{:08}", self.run, self.n)
    }

    /// An OPA decision on an Envoy ext_authz check. `caller` None: a client without a
    /// workload identity.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn opa(
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
    pub(super) fn login(&mut self, t_ns: i64, ip: &str, target: &Service, allow: bool) -> Record {
        self.opa(t_ns, None, ip, &target.spiffe(), "POST", "/login", allow)
    }

    /// A Hubble flow from `from` to `to`, forwarded or dropped by policy.
    pub(super) fn flow(
        &mut self,
        t_ns: i64,
        from: &Service,
        to: &Service,
        dropped: bool,
    ) -> Record {
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
    pub(super) fn k8s(
        &mut self,
        t_ns: i64,
        user: &str,
        ip: &str,
        verb: &str,
        uri: &str,
        code: u16,
    ) -> Record {
        let id = self.id("k8s");
        let v = k8s_audit_event(&id, t_ns, user, ip, verb, uri, code);
        (ip.to_owned(), v)
    }
}

/// The traffic: normal events and attacks, over a mesh.
pub struct Traffic {
    pub mesh: Mesh,
    pub(super) rng: StdRng,
    pub(super) emit: Emit,
    /// Outside callers (`--callers`) and the next one's number.
    pub(super) callers: usize,
    pub(super) next_caller: usize,
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
