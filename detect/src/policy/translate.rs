//! Each policy kind's rules as edges of the graph: Kubernetes `NetworkPolicy`, Cilium
//! `CiliumNetworkPolicy` (L3/L4 and L7 HTTP), Istio `AuthorizationPolicy`; what cannot be
//! expressed is a note.

use std::collections::BTreeSet;

use yaml_rust2::Yaml;

use super::Imported;
use super::model::*;
use crate::allowlist::EdgeSpec;

/// Who may connect: workloads, or anyone.
pub(super) enum Peers<'m> {
    Any,
    Some(Vec<&'m Workload>),
}

/// Flow edges from each caller to each callee, on `ports`, with L7 `methods`/`paths`.
#[allow(clippy::too_many_arguments)]
pub(super) fn flow_edges(
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
pub(super) fn ports(y: &Yaml, notes: &mut Vec<String>, what: &str) -> Vec<u16> {
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
pub(super) fn cilium_path(p: &str, notes: &mut Vec<String>, what: &str) -> String {
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

pub(super) fn network_policy(m: &Model, from: &str, doc: &Yaml, out: &mut Imported) {
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

pub(super) fn cilium_policy(
    m: &Model,
    from: &str,
    doc: &Yaml,
    clusterwide: bool,
    out: &mut Imported,
) {
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

pub(super) fn authorization_policy(
    m: &Model,
    from: &str,
    doc: &Yaml,
    td: &str,
    out: &mut Imported,
) {
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
