//! The declared graph from the policies a mesh already enforces: Kubernetes `NetworkPolicy`,
//! Cilium `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy` (L3/L4, and L7 HTTP rules)
//! and Istio `AuthorizationPolicy` (principals, namespaces, methods, paths, ports; ALLOW) become
//! edges of the allowlist rules' [`PolicyGraph`]. Label selectors are resolved to workloads
//! from the manifests given alongside (Pods, Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, Jobs, CronJobs, Namespaces), and from the Kubernetes audit stream: the
//! workloads and namespaces the API server created, changed and deleted (`audit.rs`), applied
//! after the manifests, in order.
//!
//! Flow edges (`kind = "flow"`) name workloads as Hubble does — the workload's name, or a pod's
//! name (`deathstar` and `deathstar-*` for a Deployment's pods) — with namespaces and ports;
//! authorization edges (`kind = "authz"`) name SPIFFE identities
//! (`spiffe://<trust domain>/ns/<ns>/sa/<service account>`). What cannot be expressed (an
//! `ipBlock` or entity peer, a DENY policy, `when` conditions, a named port) is reported in
//! [`Imported::notes`], never silently widened into an allow.

use yaml_rust2::YamlLoader;

use crate::allowlist::PolicyGraph;

mod audit;
mod feed;
mod model;
#[cfg(test)]
mod tests;
mod translate;

use model::{Model, namespace_of, s};
use translate::{authorization_policy, cilium_policy, network_policy};

pub use feed::AuditFeed;

/// What an import made, and what it could not.
#[derive(Debug, Default)]
pub struct Imported {
    pub graph: PolicyGraph,
    /// Workloads the selectors were resolved against.
    pub workloads: usize,
    /// Kubernetes audit events that created, changed or deleted a workload or namespace.
    pub audit_changes: usize,
    /// Policies read (`Kind namespace/name`).
    pub policies: Vec<String>,
    /// What was left out, and why (file and object named).
    pub notes: Vec<String>,
}

/// A document that is not YAML.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub message: String,
}

/// Whether a file is read as a Kubernetes audit log (JSON lines) rather than YAML manifests.
pub fn is_audit_log(name: &str) -> bool {
    [".json", ".jsonl", ".log"]
        .iter()
        .any(|x| name.ends_with(x))
}

/// Import the policies and manifests in `files` (`(name, text)`, YAML, several documents a
/// file), and the workloads of the Kubernetes audit logs among them ([`is_audit_log`]: JSON
/// lines, or an `EventList`), applied after every manifest, in the order given.
/// `trust_domain` names SPIFFE identities (`cluster.local`).
pub fn import(files: &[(String, String)], trust_domain: &str) -> Result<Imported, PolicyError> {
    let mut m = Model::default();
    let mut notes = Vec::new();
    let (logs, manifests): (Vec<_>, Vec<_>) = files.iter().partition(|(n, _)| is_audit_log(n));
    for (name, text) in manifests {
        let docs = YamlLoader::load_from_str(text).map_err(|e| PolicyError {
            file: name.clone(),
            message: e.to_string(),
        })?;
        for d in &docs {
            m.add(name, d);
        }
    }
    let mut changes = 0;
    for (name, text) in logs {
        let (events, other) = audit::events(text);
        if events.is_empty() {
            return Err(PolicyError {
                file: name.clone(),
                message: format!(
                    "no Kubernetes audit event in it ({other} lines that are not one)"
                ),
            });
        }
        for ev in &events {
            match audit::change(ev) {
                Ok(Some(c)) => {
                    m.apply(name, c);
                    changes += 1;
                }
                Ok(None) => {}
                Err(why) => notes.push(format!("{name}: {why}")),
            }
        }
    }
    notes.extend(m.replaced.iter().cloned());
    let mut out = Imported {
        workloads: m.workloads.len(),
        audit_changes: changes,
        notes,
        ..Imported::default()
    };
    for (file, doc) in &m.policies {
        let kind = s(&doc["kind"]).unwrap_or_default();
        let what = format!(
            "{kind} {}/{}",
            namespace_of(doc),
            s(&doc["metadata"]["name"]).unwrap_or_default()
        );
        let from = format!("{what} ({file})");
        let before = out.graph.edges.len();
        match kind.as_str() {
            "NetworkPolicy" => network_policy(&m, &from, doc, &mut out),
            "CiliumNetworkPolicy" => cilium_policy(&m, &from, doc, false, &mut out),
            "CiliumClusterwideNetworkPolicy" => cilium_policy(&m, &from, doc, true, &mut out),
            "AuthorizationPolicy" => authorization_policy(&m, &from, doc, trust_domain, &mut out),
            _ => {}
        }
        if out.graph.edges.len() == before {
            out.notes.push(format!(
                "{from}: no edge: its selectors match no workload in the manifests given"
            ));
        }
        out.policies.push(what);
    }
    out.graph.edges.sort_by(|a, b| {
        (
            &a.kind,
            &a.caller_namespace,
            &a.caller,
            &a.callee_namespace,
            &a.callee,
        )
            .cmp(&(
                &b.kind,
                &b.caller_namespace,
                &b.caller,
                &b.callee_namespace,
                &b.callee,
            ))
            .then_with(|| (&a.ports, &a.methods, &a.paths).cmp(&(&b.ports, &b.methods, &b.paths)))
    });
    out.graph.edges.dedup();
    out.notes.sort();
    out.notes.dedup();
    Ok(out)
}
