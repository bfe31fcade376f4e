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

use std::collections::{BTreeMap, BTreeSet};

use yaml_rust2::{Yaml, YamlLoader};

use crate::allowlist::{EdgeSpec, PolicyGraph};

mod audit;
mod feed;

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

#[derive(Clone, Debug)]
struct Workload {
    namespace: String,
    name: String,
    /// Pod names as Hubble reports them, when no workload name is given.
    pod_pattern: Option<String>,
    labels: BTreeMap<String, String>,
    service_account: String,
}

/// A label selector: `matchLabels` and `matchExpressions`.
#[derive(Debug, Default)]
struct Selector {
    labels: BTreeMap<String, String>,
    exprs: Vec<(String, String, Vec<String>)>,
    /// A namespace the selector itself names (Cilium's `k8s:io.kubernetes.pod.namespace`).
    namespace: Option<String>,
}

const NS_LABEL: &str = "io.kubernetes.pod.namespace";

fn s(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(v) => Some(v.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

fn strings(y: &Yaml) -> Vec<String> {
    list(y).iter().filter_map(s).collect()
}

fn map(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| h.iter().filter_map(|(k, v)| Some((s(k)?, s(v)?))).collect())
        .unwrap_or_default()
}

/// Cilium writes labels with a source prefix (`k8s:app`, `any:org`).
fn unprefixed(k: &str) -> &str {
    k.strip_prefix("k8s:")
        .or_else(|| k.strip_prefix("any:"))
        .unwrap_or(k)
}

fn selector(y: &Yaml) -> Selector {
    let mut sel = Selector::default();
    for (k, v) in map(&y["matchLabels"]) {
        let k = unprefixed(&k).to_owned();
        if k == NS_LABEL {
            sel.namespace = Some(v);
        } else {
            sel.labels.insert(k, v);
        }
    }
    for e in list(&y["matchExpressions"]) {
        if let (Some(k), Some(op)) = (s(&e["key"]), s(&e["operator"])) {
            sel.exprs
                .push((unprefixed(&k).to_owned(), op, strings(&e["values"])));
        }
    }
    sel
}

impl Selector {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|(k, op, vals)| {
                let have = labels.get(k);
                match op.as_str() {
                    "In" => have.is_some_and(|h| vals.contains(h)),
                    "NotIn" => have.is_none_or(|h| !vals.contains(h)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    _ => false,
                }
            })
    }
}

/// Everything read from the files: workloads, namespaces' labels, and the policy objects.
#[derive(Default)]
struct Model {
    workloads: Vec<Workload>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    policies: Vec<(String, Yaml)>,
    /// Policies given twice (the later one counts).
    replaced: Vec<String>,
}

fn namespace_of(doc: &Yaml) -> String {
    s(&doc["metadata"]["namespace"]).unwrap_or_else(|| "default".to_owned())
}

impl Model {
    fn add(&mut self, file: &str, doc: &Yaml) {
        let kind = s(&doc["kind"]).unwrap_or_default();
        if kind == "List" {
            for item in list(&doc["items"]) {
                self.add(file, item);
            }
            return;
        }
        let name = s(&doc["metadata"]["name"]).unwrap_or_default();
        let ns = namespace_of(doc);
        let pod = |spec: &Yaml| {
            s(&spec["serviceAccountName"])
                .or_else(|| s(&spec["serviceAccount"]))
                .unwrap_or_else(|| "default".to_owned())
        };
        let template = match kind.as_str() {
            "Pod" => {
                self.workloads.push(Workload {
                    namespace: ns,
                    name: name.clone(),
                    pod_pattern: None,
                    labels: map(&doc["metadata"]["labels"]),
                    service_account: pod(&doc["spec"]),
                });
                return;
            }
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                &doc["spec"]["template"]
            }
            "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
            "Namespace" => {
                let mut labels = map(&doc["metadata"]["labels"]);
                labels.insert("kubernetes.io/metadata.name".into(), name.clone());
                self.namespaces.insert(name, labels);
                return;
            }
            "NetworkPolicy"
            | "CiliumNetworkPolicy"
            | "CiliumClusterwideNetworkPolicy"
            | "AuthorizationPolicy" => {
                // One object per kind, namespace and name: a later one replaces it, as
                // `kubectl apply` would.
                let same = |(_, d): &(String, Yaml)| {
                    s(&d["kind"]).as_deref() == Some(kind.as_str())
                        && namespace_of(d) == ns
                        && s(&d["metadata"]["name"]).as_deref() == Some(name.as_str())
                };
                if let Some(i) = self.policies.iter().position(same) {
                    let (old, _) = self.policies.remove(i);
                    self.replaced.push(format!(
                        "{kind} {ns}/{name} in {file} replaces the one in {old} (the later file counts; a directory is read in name order)"
                    ));
                }
                self.policies.push((file.to_owned(), doc.clone()));
                return;
            }
            _ => return,
        };
        self.workloads.push(Workload {
            namespace: ns,
            pod_pattern: Some(format!("{name}-*")),
            name,
            labels: map(&template["metadata"]["labels"]),
            service_account: pod(&template["spec"]),
        });
    }

    /// What one audit event did: a workload as it now stands (replacing the one of that
    /// namespace and name), or one gone.
    fn apply(&mut self, file: &str, change: audit::Change) {
        match change {
            audit::Change::Apply(doc) => {
                let doc = audit::yaml(&doc);
                let (ns, name) = (namespace_of(&doc), s(&doc["metadata"]["name"]));
                if s(&doc["kind"]).as_deref() != Some("Namespace") {
                    self.workloads
                        .retain(|w| !(w.namespace == ns && Some(&w.name) == name.as_ref()));
                }
                self.add(file, &doc);
            }
            audit::Change::Delete {
                kind,
                namespace,
                name,
            } => {
                if kind == "Namespace" {
                    self.namespaces.remove(&name);
                    self.workloads.retain(|w| w.namespace != name);
                } else {
                    self.workloads
                        .retain(|w| !(w.namespace == namespace && w.name == name));
                }
            }
        }
    }

    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.to_owned());
        l
    }

    /// Workloads in `ns` (any namespace for `None`) that `sel` selects.
    fn select(&self, ns: Option<&str>, sel: &Selector) -> Vec<&Workload> {
        let ns = sel.namespace.as_deref().or(ns);
        self.workloads
            .iter()
            .filter(|w| ns.is_none_or(|n| w.namespace == n) && sel.matches(&w.labels))
            .collect()
    }
}

/// Who may connect: workloads, or anyone.
enum Peers<'m> {
    Any,
    Some(Vec<&'m Workload>),
}

/// Flow edges from each caller to each callee, on `ports`, with L7 `methods`/`paths`.
#[allow(clippy::too_many_arguments)]
fn flow_edges(
    out: &mut Vec<EdgeSpec>,
    callers: &Peers<'_>,
    callees: &[&Workload],
    ports: &[u16],
    methods: &[String],
    paths: &[String],
    from: &str,
) {
    let names = |w: &Workload| -> Vec<String> {
        std::iter::once(w.name.clone())
            .chain(w.pod_pattern.clone())
            .collect()
    };
    for callee in callees {
        let callers: Vec<(String, Option<String>)> = match callers {
            Peers::Any => vec![("*".to_owned(), None)],
            Peers::Some(ws) => ws
                .iter()
                .flat_map(|w| names(w).into_iter().map(|n| (n, Some(w.namespace.clone()))))
                .collect(),
        };
        for (caller, caller_ns) in &callers {
            for callee_name in names(callee) {
                out.push(EdgeSpec {
                    caller: caller.clone(),
                    callee: callee_name,
                    methods: methods.to_vec(),
                    paths: paths.to_vec(),
                    kind: Some("flow".into()),
                    caller_namespace: caller_ns.clone(),
                    callee_namespace: Some(callee.namespace.clone()),
                    ports: ports.to_vec(),
                    from_policy: Some(from.to_owned()),
                });
            }
        }
    }
}

/// Ports of a `ports:` list (`port` numbers; named ports and ranges are noted).
fn ports(y: &Yaml, notes: &mut Vec<String>, what: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for p in list(y) {
        match &p["port"] {
            Yaml::Integer(i) => out.extend(u16::try_from(*i).ok()),
            Yaml::String(v) => match v.parse::<u16>() {
                Ok(n) => out.push(n),
                Err(_) => notes.push(format!(
                    "{what}: named port {v:?} left out (resolve it to a number)"
                )),
            },
            Yaml::BadValue => {}
            _ => notes.push(format!("{what}: a port that is not a number left out")),
        }
        if !matches!(p["endPort"], Yaml::BadValue) {
            notes.push(format!(
                "{what}: a port range (endPort) was taken as its first port"
            ));
        }
    }
    out
}

/// A Cilium HTTP path (a regular expression) as an allowlist pattern (`*` for `.*`).
fn cilium_path(p: &str, notes: &mut Vec<String>, what: &str) -> String {
    let t = p
        .trim_start_matches('^')
        .trim_end_matches('$')
        .replace(".*", "*");
    if t.chars().any(|c| "()[]{}+?|\\.".contains(c)) {
        notes.push(format!(
            "{what}: the path regex {p:?} is matched literally (only .* is translated)"
        ));
    }
    t
}

fn network_policy(m: &Model, from: &str, doc: &Yaml, out: &mut Imported) {
    let ns = namespace_of(doc);
    let spec = &doc["spec"];
    let subjects = m.select(Some(&ns), &selector(&spec["podSelector"]));
    let types = strings(&spec["policyTypes"]);
    let peers = |rule_peers: &Yaml, notes: &mut Vec<String>| -> Peers<'_> {
        if matches!(rule_peers, Yaml::BadValue) || list(rule_peers).is_empty() {
            return Peers::Any;
        }
        let mut ws = Vec::new();
        for p in list(rule_peers) {
            if !matches!(p["ipBlock"], Yaml::BadValue) {
                notes.push(format!(
                    "{from}: an ipBlock peer ({}) is not a workload: left out",
                    s(&p["ipBlock"]["cidr"]).unwrap_or_default()
                ));
                continue;
            }
            let pods = selector(&p["podSelector"]);
            match &p["namespaceSelector"] {
                Yaml::BadValue => ws.extend(m.select(Some(&ns), &pods)),
                nsy => {
                    let nsel = selector(nsy);
                    let namespaces: BTreeSet<&str> =
                        m.workloads.iter().map(|w| w.namespace.as_str()).collect();
                    for n in namespaces {
                        if nsel.matches(&m.namespace_labels(n)) {
                            ws.extend(m.select(Some(n), &pods));
                        }
                    }
                }
            }
        }
        Peers::Some(ws)
    };
    let ingress = types.is_empty() || types.iter().any(|t| t == "Ingress");
    if ingress {
        for r in list(&spec["ingress"]) {
            let callers = peers(&r["from"], &mut out.notes);
            let p = ports(&r["ports"], &mut out.notes, from);
            flow_edges(
                &mut out.graph.edges,
                &callers,
                &subjects,
                &p,
                &[],
                &[],
                from,
            );
        }
    }
    if types.iter().any(|t| t == "Egress") {
        for r in list(&spec["egress"]) {
            let p = ports(&r["ports"], &mut out.notes, from);
            match peers(&r["to"], &mut out.notes) {
                Peers::Any => out.notes.push(format!(
                    "{from}: egress to anywhere: not a workload edge, left out"
                )),
                Peers::Some(callees) => flow_edges(
                    &mut out.graph.edges,
                    &Peers::Some(subjects.clone()),
                    &callees,
                    &p,
                    &[],
                    &[],
                    from,
                ),
            }
        }
    }
}

fn cilium_policy(m: &Model, from: &str, doc: &Yaml, clusterwide: bool, out: &mut Imported) {
    let ns = (!clusterwide).then(|| namespace_of(doc));
    let specs: Vec<&Yaml> = match &doc["specs"] {
        Yaml::Array(v) => v.iter().collect(),
        _ => vec![&doc["spec"]],
    };
    for spec in specs {
        let subjects = m.select(ns.as_deref(), &selector(&spec["endpointSelector"]));
        let rules = |dir: &str, peers_key: &str| -> Vec<&Yaml> {
            list(&spec[dir])
                .iter()
                .filter(|r| {
                    !matches!(r[peers_key], Yaml::BadValue)
                        || !matches!(r["toPorts"], Yaml::BadValue)
                })
                .collect()
        };
        for (dir, peers_key) in [("ingress", "fromEndpoints"), ("egress", "toEndpoints")] {
            for r in rules(dir, peers_key) {
                for entities in [
                    "fromEntities",
                    "toEntities",
                    "fromCIDR",
                    "toCIDR",
                    "fromCIDRSet",
                    "toCIDRSet",
                    "toFQDNs",
                ] {
                    if !matches!(r[entities], Yaml::BadValue) {
                        out.notes.push(format!(
                            "{from}: {entities} peers are not workloads: left out"
                        ));
                    }
                }
                let peers: Vec<&Workload> = match &r[peers_key] {
                    Yaml::BadValue => continue,
                    v => list(v)
                        .iter()
                        .flat_map(|p| m.select(ns.as_deref(), &selector(p)))
                        .collect(),
                };
                let mut to_ports = list(&r["toPorts"]).iter().peekable();
                let mut emit = |p: &[u16], methods: &[String], paths: &[String]| {
                    let (callers, callees) = if dir == "ingress" {
                        (Peers::Some(peers.clone()), subjects.clone())
                    } else {
                        (Peers::Some(subjects.clone()), peers.clone())
                    };
                    flow_edges(
                        &mut out.graph.edges,
                        &callers,
                        &callees,
                        p,
                        methods,
                        paths,
                        from,
                    );
                };
                if to_ports.peek().is_none() {
                    emit(&[], &[], &[]);
                }
                for tp in to_ports {
                    let p = ports(&tp["ports"], &mut out.notes, from);
                    let http = list(&tp["rules"]["http"]);
                    if http.is_empty() {
                        emit(&p, &[], &[]);
                    }
                    for h in http {
                        let methods: Vec<String> = s(&h["method"]).into_iter().collect();
                        let paths: Vec<String> = s(&h["path"])
                            .map(|x| cilium_path(&x, &mut out.notes, from))
                            .into_iter()
                            .collect();
                        emit(&p, &methods, &paths);
                    }
                }
            }
        }
    }
}

fn authorization_policy(m: &Model, from: &str, doc: &Yaml, td: &str, out: &mut Imported) {
    let ns = namespace_of(doc);
    let spec = &doc["spec"];
    let action = s(&spec["action"]).unwrap_or_else(|| "ALLOW".to_owned());
    if action != "ALLOW" {
        out.notes.push(format!(
            "{from}: action {action}: only ALLOW policies declare edges (left out)"
        ));
        return;
    }
    // The root namespace's policies without a selector apply mesh-wide.
    let mesh_wide = ns == "istio-system" && matches!(spec["selector"], Yaml::BadValue);
    let sel = selector(&spec["selector"]);
    let callees = m.select((!mesh_wide).then_some(ns.as_str()), &sel);
    let spiffe =
        |w: &Workload| format!("spiffe://{td}/ns/{}/sa/{}", w.namespace, w.service_account);
    for rule in list(&spec["rules"]) {
        if !matches!(rule["when"], Yaml::BadValue) {
            out.notes.push(format!(
                "{from}: `when` conditions are not checked (the edge is kept without them)"
            ));
        }
        let mut callers: Vec<String> = Vec::new();
        let mut any = list(&rule["from"]).is_empty();
        for f in list(&rule["from"]) {
            let src = &f["source"];
            for k in [
                "notPrincipals",
                "notNamespaces",
                "ipBlocks",
                "notIpBlocks",
                "remoteIpBlocks",
                "requestPrincipals",
            ] {
                if !matches!(src[k], Yaml::BadValue) {
                    out.notes.push(format!("{from}: source.{k} is not checked"));
                }
            }
            let principals = strings(&src["principals"]);
            let namespaces = strings(&src["namespaces"]);
            if principals.is_empty() && namespaces.is_empty() {
                any = true;
            }
            callers.extend(principals.iter().map(|p| {
                if p == "*" {
                    "*".to_owned()
                } else {
                    format!("spiffe://{p}")
                }
            }));
            callers.extend(
                namespaces
                    .iter()
                    .map(|n| format!("spiffe://{td}/ns/{n}/sa/*")),
            );
        }
        if any {
            callers = vec!["*".to_owned()];
        }
        let ops: Vec<&Yaml> = list(&rule["to"]).iter().map(|t| &t["operation"]).collect();
        let ops: Vec<Option<&Yaml>> = if ops.is_empty() {
            vec![None]
        } else {
            ops.into_iter().map(Some).collect()
        };
        for op in ops {
            let (methods, paths, p) = match op {
                None => (Vec::new(), Vec::new(), Vec::new()),
                Some(op) => {
                    let p: Vec<u16> = strings(&op["ports"])
                        .iter()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    (strings(&op["methods"]), strings(&op["paths"]), p)
                }
            };
            for callee in &callees {
                for caller in &callers {
                    out.graph.edges.push(EdgeSpec {
                        caller: caller.clone(),
                        callee: spiffe(callee),
                        methods: methods.clone(),
                        paths: paths.clone(),
                        kind: Some("authz".into()),
                        caller_namespace: None,
                        callee_namespace: None,
                        ports: p.clone(),
                        from_policy: Some(from.to_owned()),
                    });
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::{Allowlist, AllowlistSpec, EdgeFields};
    use crate::filter::{Filter, field};
    use crate::hit::at;
    use crate::row::OwnedRow;

    fn shared(name: &str) -> (String, String) {
        let path = format!(
            "{}/../../shared/data/policies/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        (name.to_owned(), text)
    }

    fn flows(graph: &PolicyGraph) -> Allowlist {
        Allowlist::new(AllowlistSpec {
            filter: Filter::parse(r#"kind == "flow""#).unwrap(),
            fields: EdgeFields {
                caller: field("caller_principal").unwrap(),
                callee: field("callee_principal").unwrap(),
                method: field("action"),
                path: field("resource"),
                caller_namespace: field("caller_namespace"),
                callee_namespace: field("callee_namespace"),
                port: field("callee_port"),
            },
            edges: graph.edges.clone(),
            suppress_ns: 1,
            allowed_lateness_ns: 1,
            max_groups: 100,
            quiet: false,
            declared: None,
            ratio: None,
        })
        .unwrap()
    }

    fn flow(caller: &str, callee: &str, port: i64, l7: Option<(&str, &str)>) -> OwnedRow {
        let mut v = vec![
            ("kind", serde_json::json!("flow")),
            ("caller_principal", serde_json::json!(caller)),
            ("caller_namespace", serde_json::json!("default")),
            ("callee_principal", serde_json::json!(callee)),
            ("callee_namespace", serde_json::json!("default")),
            ("callee_port", serde_json::json!(port)),
        ];
        if let Some((m, p)) = l7 {
            v.push(("action", serde_json::json!(m)));
            v.push(("resource", serde_json::json!(p)));
        }
        OwnedRow::from_fields(v.iter().map(|(k, v)| (*k, v))).unwrap()
    }

    #[test]
    fn the_star_wars_demo_policies_become_the_declared_graph() {
        // The demo applies the L3/L4 policy, then the L7 one of the same name in its place.
        let files = [
            shared("cilium_http_sw_app.yaml"),
            shared("cilium_sw_l3_l4_policy.yaml"),
            shared("cilium_sw_l3_l4_l7_policy.yaml"),
        ];
        let got = import(&files, "cluster.local").unwrap();
        assert_eq!(got.policies, ["CiliumNetworkPolicy default/rule1"]);
        assert!(
            got.notes.iter().any(|n| n.contains("replaces")),
            "{:?}",
            got.notes
        );
        assert!(got.workloads >= 3, "{}", got.workloads);
        let mut r = flows(&got.graph);
        let allowed = |r: &mut Allowlist, row: &OwnedRow| {
            !r.observe(row, at(0)).fired()
                && !matches!(r.observe(row, at(0)), crate::hit::Outcome::Updated { .. })
        };
        // tiefighter (org: empire) → deathstar (a Deployment's pod, as Hubble names it) on
        // 80, POST /v1/request-landing: inside.
        assert!(allowed(
            &mut r,
            &flow(
                "tiefighter",
                "deathstar-7848d6c4d5-th9v2",
                80,
                Some(("POST", "/v1/request-landing"))
            )
        ));
        // The L4 view of the same connection (no HTTP in the flow): inside.
        assert!(allowed(&mut r, &flow("tiefighter", "deathstar", 80, None)));
        // Another path under the L7 policy: outside.
        assert!(!allowed(
            &mut r,
            &flow(
                "tiefighter",
                "deathstar",
                80,
                Some(("PUT", "/v1/exhaust-port"))
            )
        ));
        // xwing (org: alliance) → deathstar: outside; another port: outside.
        assert!(!allowed(
            &mut r,
            &flow("xwing", "deathstar-7848d6c4d5-th9v2", 80, None)
        ));
        assert!(!allowed(
            &mut r,
            &flow("tiefighter", "deathstar", 443, None)
        ));
    }

    /// An audit event of the API server's (level RequestResponse) for `object`.
    fn audit_event(verb: &str, code: i64, resource: &str, object: serde_json::Value) -> String {
        let ns = object["metadata"]["namespace"].clone();
        let name = object["metadata"]["name"].clone();
        serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
            "stage": "ResponseComplete", "verb": verb,
            "user": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "objectRef": {"resource": resource, "namespace": ns, "name": name, "apiVersion": "v1"},
            "responseStatus": {"code": code},
            "responseObject": object,
        })
        .to_string()
    }

    fn pod(
        ns: &str,
        name: &str,
        owner: Option<&str>,
        labels: serde_json::Value,
    ) -> serde_json::Value {
        let refs = owner.map(|o| {
            serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": o, "controller": true}])
        });
        serde_json::json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": refs},
            "spec": {"serviceAccountName": "default"},
        })
    }

    /// The caller → callee edges on 6379 of the NetworkPolicy example.
    fn db_callers(got: &Imported) -> BTreeSet<(String, Option<String>)> {
        got.graph
            .edges
            .iter()
            .filter(|e| e.callee == "redis" && e.ports == vec![6379] && !e.caller.ends_with('*'))
            .map(|e| (e.caller.clone(), e.caller_namespace.clone()))
            .collect()
    }

    #[test]
    fn selectors_resolve_against_the_workloads_of_the_kubernetes_audit_stream() {
        // No manifests: the cluster as its audit log tells it.
        let ns = serde_json::json!({"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": "myproject", "labels": {"project": "myproject"}}});
        let mut lines = vec![
            audit_event("create", 201, "namespaces", ns),
            audit_event(
                "create",
                201,
                "pods",
                pod(
                    "default",
                    "redis-7f9c4-x2x9z",
                    Some("redis-7f9c4"),
                    serde_json::json!({"role": "db"}),
                ),
            ),
            audit_event(
                "create",
                201,
                "pods",
                pod(
                    "default",
                    "web-5d4b6-abcde",
                    Some("web-5d4b6"),
                    serde_json::json!({"role": "frontend"}),
                ),
            ),
            // A second replica changes nothing; a forbidden create is no workload.
            audit_event(
                "create",
                201,
                "pods",
                pod(
                    "default",
                    "web-5d4b6-fghij",
                    Some("web-5d4b6"),
                    serde_json::json!({"role": "frontend"}),
                ),
            ),
            audit_event(
                "create",
                403,
                "pods",
                pod(
                    "default",
                    "intruder",
                    None,
                    serde_json::json!({"role": "frontend"}),
                ),
            ),
            audit_event(
                "create",
                201,
                "pods",
                pod(
                    "myproject",
                    "worker",
                    None,
                    serde_json::json!({"app": "worker"}),
                ),
            ),
        ];
        let log = |lines: &[String]| ("audit.log".to_owned(), lines.join("\n"));
        let got = import(
            &[shared("k8s_networkpolicy_example.yaml"), log(&lines)],
            "cluster.local",
        )
        .unwrap();
        assert_eq!(got.audit_changes, 5);
        assert_eq!(
            db_callers(&got),
            BTreeSet::from([
                ("web".into(), Some("default".into())),
                ("worker".into(), Some("myproject".into())),
            ])
        );
        // The Deployment's pods are named as Hubble names them.
        assert!(
            got.graph
                .edges
                .iter()
                .any(|e| e.caller == "web-*" && e.callee == "redis-*")
        );
        // The standalone pod is deleted: its edge goes; a replica deleted leaves its workload.
        lines.push(audit_event(
            "delete",
            200,
            "pods",
            pod(
                "myproject",
                "worker",
                None,
                serde_json::json!({"app": "worker"}),
            ),
        ));
        lines.push(audit_event(
            "delete",
            200,
            "pods",
            pod(
                "default",
                "web-5d4b6-abcde",
                Some("web-5d4b6"),
                serde_json::json!({"role": "frontend"}),
            ),
        ));
        let got = import(
            &[shared("k8s_networkpolicy_example.yaml"), log(&lines)],
            "cluster.local",
        )
        .unwrap();
        assert_eq!(
            db_callers(&got),
            BTreeSet::from([("web".into(), Some("default".into()))])
        );
        // A file of something else is refused, named.
        let err = import(
            &[("x.json".into(), "{\"kind\":\"Pod\"}".into())],
            "cluster.local",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no Kubernetes audit event"),
            "{err}"
        );
    }

    #[test]
    fn a_network_policy_resolves_its_selectors_and_says_what_it_left_out() {
        let manifests = (
            "pods.yaml".to_owned(),
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: myproject, labels: {project: myproject}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: redis, namespace: default}
spec: {template: {metadata: {labels: {role: db}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec: {template: {metadata: {labels: {role: frontend}}}}
---
apiVersion: v1
kind: Pod
metadata: {name: worker, namespace: myproject, labels: {app: worker}}
"#
            .to_owned(),
        );
        let got = import(
            &[manifests, shared("k8s_networkpolicy_example.yaml")],
            "cluster.local",
        )
        .unwrap();
        let edges: BTreeSet<(String, Option<String>, String, Vec<u16>)> = got
            .graph
            .edges
            .iter()
            .filter(|e| !e.caller.ends_with('*') && !e.callee.ends_with('*'))
            .map(|e| {
                (
                    e.caller.clone(),
                    e.caller_namespace.clone(),
                    e.callee.clone(),
                    e.ports.clone(),
                )
            })
            .collect();
        // From the frontend pods and from every pod of a namespace labelled project=myproject,
        // to the db on 6379.
        assert!(
            edges.contains(&(
                "web".into(),
                Some("default".into()),
                "redis".into(),
                vec![6379]
            )),
            "{edges:?}"
        );
        assert!(
            edges.contains(&(
                "worker".into(),
                Some("myproject".into()),
                "redis".into(),
                vec![6379]
            )),
            "{edges:?}"
        );
        assert!(
            got.notes.iter().any(|n| n.contains("ipBlock")),
            "{:?}",
            got.notes
        );
    }

    #[test]
    fn an_istio_authorization_policy_declares_principal_edges() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders-service, namespace: shop}
spec: {template: {metadata: {labels: {app: orders-service}}, spec: {serviceAccountName: orders}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders-service}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/payment/sa/payment-service"]}
    to:
    - operation: {methods: ["POST"], paths: ["/api/orders/*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {paths: ["/debug/*"]}}]}]}
"#;
        let got = import(&[("istio.yaml".into(), text.into())], "cluster.local").unwrap();
        assert_eq!(got.graph.edges.len(), 1, "{:#?}", got.graph.edges);
        let e = &got.graph.edges[0];
        assert_eq!(
            e.caller,
            "spiffe://cluster.local/ns/payment/sa/payment-service"
        );
        assert_eq!(e.callee, "spiffe://cluster.local/ns/shop/sa/orders");
        assert_eq!(
            (e.methods.as_slice(), e.paths.as_slice()),
            (&["POST".to_owned()][..], &["/api/orders/*".to_owned()][..])
        );
        assert_eq!(e.kind.as_deref(), Some("authz"));
        assert!(
            got.notes.iter().any(|n| n.contains("DENY")),
            "{:?}",
            got.notes
        );
    }
}
