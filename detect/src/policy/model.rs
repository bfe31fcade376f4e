//! What the files describe: workloads with their labels, namespaces with theirs, and the policy
//! objects, with the label selectors that pick workloads out of them.

use std::collections::BTreeMap;

use yaml_rust2::Yaml;

use super::audit;

#[derive(Clone, Debug)]
pub(super) struct Workload {
    pub(super) namespace: String,
    pub(super) name: String,
    /// Pod names as Hubble reports them, when no workload name is given.
    pub(super) pod_pattern: Option<String>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) service_account: String,
}

/// A label selector: `matchLabels` and `matchExpressions`.
#[derive(Debug, Default)]
pub(super) struct Selector {
    pub(super) labels: BTreeMap<String, String>,
    pub(super) exprs: Vec<(String, String, Vec<String>)>,
    /// A namespace the selector itself names (Cilium's `k8s:io.kubernetes.pod.namespace`).
    pub(super) namespace: Option<String>,
}

pub(super) const NS_LABEL: &str = "io.kubernetes.pod.namespace";

pub(super) fn s(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(v) => Some(v.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

pub(super) fn strings(y: &Yaml) -> Vec<String> {
    list(y).iter().filter_map(s).collect()
}

pub(super) fn map(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| h.iter().filter_map(|(k, v)| Some((s(k)?, s(v)?))).collect())
        .unwrap_or_default()
}

/// Cilium writes labels with a source prefix (`k8s:app`, `any:org`).
pub(super) fn unprefixed(k: &str) -> &str {
    k.strip_prefix("k8s:")
        .or_else(|| k.strip_prefix("any:"))
        .unwrap_or(k)
}

pub(super) fn selector(y: &Yaml) -> Selector {
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
    pub(super) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
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
pub(super) struct Model {
    pub(super) workloads: Vec<Workload>,
    pub(super) namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub(super) policies: Vec<(String, Yaml)>,
    /// Policies given twice (the later one counts).
    pub(super) replaced: Vec<String>,
}

pub(super) fn namespace_of(doc: &Yaml) -> String {
    s(&doc["metadata"]["namespace"]).unwrap_or_else(|| "default".to_owned())
}

impl Model {
    pub(super) fn add(&mut self, file: &str, doc: &Yaml) {
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
    pub(super) fn apply(&mut self, file: &str, change: audit::Change) {
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

    pub(super) fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.to_owned());
        l
    }

    /// Workloads in `ns` (any namespace for `None`) that `sel` selects.
    pub(super) fn select(&self, ns: Option<&str>, sel: &Selector) -> Vec<&Workload> {
        let ns = sel.namespace.as_deref().or(ns);
        self.workloads
            .iter()
            .filter(|w| ns.is_none_or(|n| w.namespace == n) && sel.matches(&w.labels))
            .collect()
    }
}
