//! The records' payloads: OPA decisions (Envoy ext_authz), Hubble flows, Vigil's native
//! authentication events, Kubernetes audit events — each as its source writes it.

use super::APP_PORT;
use super::mesh::Workload;

use crate::simulate_cmd::{k8s_audit_event, rfc3339};

/// Workload `i` on `port`.
pub(super) fn end(w: &[Workload], i: usize, port: u16) -> End<'_> {
    let w = &w[i];
    End {
        ns: Some(w.ns),
        name: Some(w.name),
        ip: &w.ip,
        port,
    }
}

/// Record payloads, with unique ids.
pub(super) struct Payloads {
    pub(super) n: u64,
    pub(super) run: u64,
}

/// One side of a flow or call.
pub(super) struct End<'a> {
    pub(super) ns: Option<&'a str>,
    pub(super) name: Option<&'a str>,
    pub(super) ip: &'a str,
    pub(super) port: u16,
}

impl Payloads {
    pub(super) fn id(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}-{:x}-{:08}", self.run, self.n)
    }

    pub(super) fn ephemeral(&self) -> u16 {
        32768 + (self.n % 28000) as u16
    }

    /// An OPA decision on an Envoy ext_authz check at the callee's sidecar.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decision(
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
    pub(super) fn flow(
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
    pub(super) fn login(&mut self, t_ns: i64, user: &str, ip: &str, allow: bool) -> String {
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
    pub(super) fn k8s(
        &mut self,
        t_ns: i64,
        user: &str,
        ip: &str,
        verb: &str,
        uri: &str,
        code: u16,
    ) -> String {
        let id = self.id("k8s");
        k8s_audit_event(&id, t_ns, user, ip, verb, uri, code)
    }
}
