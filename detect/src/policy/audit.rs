//! Workloads from the Kubernetes audit stream: the pods, controllers and namespaces the API
//! server created, changed and deleted, as label selectors need them. Sans I/O: one audit
//! event (`audit.k8s.io`, JSON) in, one [`Change`] out.
//!
//! Only what the API server did counts: an event of stage `ResponseComplete` with a 2xx
//! status (a denied or failed create is an attempt, not a workload). The object is the
//! response's (it has the name the server gave, for `generateName`), or the request's for a
//! create or update logged without responses; a patch needs the response (level
//! `RequestResponse`). A pod a controller owns (a ReplicaSet's, a StatefulSet's, …) stands for
//! its controller's workload — `web` and `web-*` for a Deployment's pods, as Hubble names
//! them — so replicas coming and going change nothing; a standalone pod is itself a workload.

use serde_json::Value;
use yaml_rust2::Yaml;
use yaml_rust2::yaml::Hash;

/// What one audit event says about the cluster's workloads.
#[derive(Debug, PartialEq)]
pub(super) enum Change {
    /// A workload (or namespace) object as it now stands, as a manifest would give it.
    Apply(Value),
    /// A workload (or namespace) gone.
    Delete {
        kind: &'static str,
        namespace: String,
        name: String,
    },
}

/// Why an event says nothing about workloads, when the reader should know (an event that is
/// simply about something else returns `Ok(None)`).
pub(super) type Skip = String;

/// The resources whose objects carry workload labels, and their kinds.
pub(super) const RESOURCES: &[(&str, &str)] = &[
    ("pods", "Pod"),
    ("deployments", "Deployment"),
    ("statefulsets", "StatefulSet"),
    ("daemonsets", "DaemonSet"),
    ("replicasets", "ReplicaSet"),
    ("jobs", "Job"),
    ("cronjobs", "CronJob"),
    ("namespaces", "Namespace"),
];

/// Whether a JSON value is a Kubernetes audit event (or a list of them).
pub(super) fn is_audit(v: &Value) -> bool {
    let api = v["apiVersion"].as_str().unwrap_or_default();
    api.starts_with("audit.k8s.io/") && matches!(v["kind"].as_str(), Some("Event" | "EventList"))
}

/// The change one audit event makes, if any.
pub(super) fn change(ev: &Value) -> Result<Option<Change>, Skip> {
    let str_at = |p: &str| ev.pointer(p).and_then(Value::as_str);
    if ev["kind"].as_str() != Some("Event") {
        return Ok(None);
    }
    if str_at("/stage").is_some_and(|s| s != "ResponseComplete") {
        return Ok(None);
    }
    let Some(&(_, kind)) = RESOURCES
        .iter()
        .find(|(r, _)| str_at("/objectRef/resource") == Some(r))
    else {
        return Ok(None);
    };
    if str_at("/objectRef/subresource").is_some_and(|s| !s.is_empty()) {
        return Ok(None); // exec, log, binding, status, …: not the object's labels
    }
    let code = ev.pointer("/responseStatus/code").and_then(Value::as_i64);
    if !code.is_some_and(|c| (200..300).contains(&c)) {
        return Ok(None);
    }
    let verb = str_at("/verb").unwrap_or_default();
    let of_kind = |o: &Value| o["kind"].as_str() == Some(kind);
    let object = match verb {
        "create" | "update" | "patch" => {
            let response = Some(&ev["responseObject"]).filter(|o| of_kind(o));
            // A patch's request is the patch, not the object.
            let request = Some(&ev["requestObject"]).filter(|o| verb != "patch" && of_kind(o));
            match response.or(request) {
                Some(o) => o,
                None => {
                    return Err(format!(
                        "a {verb} of {kind} {}/{} carries no object (audit level RequestResponse logs it)",
                        str_at("/objectRef/namespace").unwrap_or("-"),
                        str_at("/objectRef/name").unwrap_or("-"),
                    ));
                }
            }
        }
        "delete" => {
            let Some(name) = str_at("/objectRef/name").filter(|n| !n.is_empty()) else {
                return Ok(None); // a collection delete names nothing
            };
            // A controller's pod going: its controller's workload stays.
            if kind == "Pod" && owner(&ev["responseObject"]).is_some() {
                return Ok(None);
            }
            return Ok(Some(Change::Delete {
                kind,
                namespace: str_at("/objectRef/namespace")
                    .unwrap_or("default")
                    .to_owned(),
                name: name.to_owned(),
            }));
        }
        _ => return Ok(None),
    };
    let mut object = object.clone();
    // The namespace the server put it in (a request object may leave it out).
    if object.pointer("/metadata/namespace").is_none()
        && let Some(ns) = str_at("/objectRef/namespace")
        && let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut)
    {
        m.insert("namespace".into(), Value::String(ns.to_owned()));
    }
    if kind == "Pod"
        && let Some(owner) = owner(&object)
    {
        return Ok(Some(Change::Apply(controller_of(&object, &owner))));
    }
    if object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none()
    {
        return Ok(None);
    }
    Ok(Some(Change::Apply(object)))
}

/// The workload a controller-owned pod belongs to: its owner's name, with a ReplicaSet's
/// pod-template hash taken off (`web-7d4b9c` → `web`, the Deployment).
fn owner(pod: &Value) -> Option<String> {
    let refs = pod.pointer("/metadata/ownerReferences")?.as_array()?;
    let o = refs
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))?;
    let name = o["name"].as_str()?;
    Some(match o["kind"].as_str() {
        Some("ReplicaSet") => name.rsplit_once('-').map_or(name, |(d, _)| d).to_owned(),
        _ => name.to_owned(),
    })
}

/// A pod of `owner`'s, as the manifest of a controller whose template has the pod's labels and
/// service account (so it resolves as `owner` and `owner-*`).
fn controller_of(pod: &Value, owner: &str) -> Value {
    serde_json::json!({
        "kind": "Deployment",
        "metadata": {
            "name": owner,
            "namespace": pod.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
        },
        "spec": {"template": {
            "metadata": {"labels": pod.pointer("/metadata/labels").cloned().unwrap_or(Value::Null)},
            "spec": {
                "serviceAccountName": pod.pointer("/spec/serviceAccountName")
                    .or_else(|| pod.pointer("/spec/serviceAccount"))
                    .cloned()
                    .unwrap_or(Value::Null),
            },
        }},
    })
}

/// JSON as the YAML tree the manifests are read into.
pub(super) fn yaml(v: &Value) -> Yaml {
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(yaml).collect()),
        Value::Object(o) => {
            let mut h = Hash::new();
            for (k, v) in o {
                h.insert(Yaml::String(k.clone()), yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}

/// The audit events in a file: JSON lines (one event a line, as the API server's log backend
/// writes them), or one JSON document (an event, an `EventList`, or an array of events).
/// Lines that are not audit events are counted, not fatal.
pub(super) fn events(text: &str) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut other = 0;
    let mut push = |v: Value, other: &mut usize| match v["kind"].as_str() {
        Some("EventList") => out.extend(v["items"].as_array().cloned().unwrap_or_default()),
        _ if is_audit(&v) => out.push(v),
        _ => *other += 1,
    };
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        match v {
            Value::Array(items) => items.into_iter().for_each(|i| push(i, &mut other)),
            v => push(v, &mut other),
        }
        return (out, other);
    }
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => push(v, &mut other),
            Err(_) => other += 1,
        }
    }
    (out, other)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(doc: &Value) -> BTreeMap<String, String> {
        super::super::model::map(&yaml(doc)["metadata"]["labels"])
    }

    fn trace(name: &str) -> Value {
        let path = format!(
            "{}/../../shared/data/k8s-audit-falco/trace_files/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let (evs, _) = events(&text);
        evs.into_iter()
            .next()
            .unwrap_or_else(|| panic!("{name}: no audit event"))
    }

    #[test]
    fn a_replica_set_s_pod_stands_for_its_deployment() {
        // Falco's trace: the replicaset-controller creates nginx-deployment-78f5d695bd-nxqz5.
        let Ok(Some(Change::Apply(doc))) = change(&trace("create_nginx_pod_unprivileged.json"))
        else {
            panic!("no change");
        };
        assert_eq!(doc["kind"].as_str(), Some("Deployment"));
        assert_eq!(doc["metadata"]["name"].as_str(), Some("nginx-deployment"));
        assert_eq!(doc["metadata"]["namespace"].as_str(), Some("default"));
        assert_eq!(
            labels(&doc["spec"]["template"]),
            BTreeMap::from([
                ("app".to_owned(), "nginx".to_owned()),
                ("pod-template-hash".to_owned(), "3491825168".to_owned())
            ])
        );
    }

    #[test]
    fn failed_attempts_other_stages_and_subresources_change_nothing() {
        let mut ev = trace("create_nginx_pod_unprivileged.json");
        ev["responseStatus"]["code"] = 403.into();
        assert_eq!(change(&ev), Ok(None));
        let mut ev = trace("create_nginx_pod_unprivileged.json");
        ev["stage"] = "RequestReceived".into();
        assert_eq!(change(&ev), Ok(None));
        let mut ev = trace("create_nginx_pod_unprivileged.json");
        ev["objectRef"]["subresource"] = "exec".into();
        assert_eq!(change(&ev), Ok(None));
        // A patch logged without its response is named, not guessed.
        let mut ev = trace("create_nginx_pod_unprivileged.json");
        ev["verb"] = "patch".into();
        ev["responseObject"] = Value::Null;
        assert!(change(&ev).unwrap_err().contains("RequestResponse"));
    }

    #[test]
    fn a_standalone_pod_is_itself_a_workload_and_its_delete_removes_it() {
        let mut ev = trace("create_nginx_pod_unprivileged.json");
        ev["responseObject"]["metadata"]["ownerReferences"] = Value::Null;
        ev["responseObject"]["metadata"]["name"] = "debug".into();
        let Ok(Some(Change::Apply(doc))) = change(&ev) else {
            panic!("no change");
        };
        assert_eq!(doc["kind"].as_str(), Some("Pod"));
        assert_eq!(doc["metadata"]["name"].as_str(), Some("debug"));
        ev["verb"] = "delete".into();
        ev["objectRef"]["name"] = "debug".into();
        assert_eq!(
            change(&ev),
            Ok(Some(Change::Delete {
                kind: "Pod",
                namespace: "default".into(),
                name: "debug".into()
            }))
        );
    }

    #[test]
    fn json_lines_an_event_list_and_other_lines() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","verb":"get"}"#;
        let text = format!("{line}\nnot json\n{{\"kind\":\"Pod\"}}\n{line}\n");
        let (evs, other) = events(&text);
        assert_eq!((evs.len(), other), (2, 2));
        let list = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{line},{line},{line}]}}"#
        );
        assert_eq!(events(&list).0.len(), 3);
    }
}
