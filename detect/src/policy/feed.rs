//! The workloads of the Kubernetes audit events Vigil has stored: read as their files appear,
//! kept as the manifests they amount to, and given to the policy import with the others — so
//! a label selector resolves to a workload deployed after the manifests were written.
//!
//! Incremental (each stored row is read once, from where the feed stood) and bounded
//! (`max_objects` workloads and namespaces; past it the least recently changed go, counted).

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray};
use serde_json::Value;
use vigil_store::{Store, StoreError};

use super::audit::{self, Change};

/// The verbs that change an object.
const VERBS: &[&str] = &["create", "update", "patch", "delete"];

/// Workloads and namespaces learned from the stored audit events of some topics.
#[derive(Debug)]
pub struct AuditFeed {
    topics: Vec<String>,
    max_objects: usize,
    /// Per partition log: the next leaf index to read.
    positions: HashMap<String, u64>,
    /// (kind, namespace, name) → the object as a manifest, and when it last changed (a
    /// sequence number: the oldest go first past the bound).
    objects: BTreeMap<Key, (Value, u64)>,
    /// The same objects by that sequence number, oldest first (what goes past the bound).
    order: BTreeMap<u64, Key>,
    seq: u64,
    /// Objects dropped past `max_objects`; audit events that carried no usable object.
    pub dropped: u64,
    pub unusable: u64,
    /// The last reason an event carried no usable object.
    pub last_unusable: Option<String>,
}

impl AuditFeed {
    pub fn new(topics: Vec<String>, max_objects: usize) -> AuditFeed {
        AuditFeed {
            topics,
            max_objects: max_objects.max(1),
            positions: HashMap::new(),
            objects: BTreeMap::new(),
            order: BTreeMap::new(),
            seq: 0,
            dropped: 0,
            unusable: 0,
            last_unusable: None,
        }
    }

    /// Workloads and namespaces held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Read what was stored since the last call; whether the workloads changed.
    pub fn read(&mut self, store: &Store) -> Result<bool, StoreError> {
        let mut changed = false;
        for id in store.partitions()? {
            if !self.topics.contains(&id.topic) {
                continue;
            }
            let log = id.to_string();
            let from = self.positions.get(&log).copied().unwrap_or(0);
            let mut next = from;
            for piece in vigil_store::read::LogReader::new(store, &id.topic, id.partition, from)? {
                let piece = piece?;
                let (_, after) = vigil_store::leaf_indexes(&piece.batch, piece.first_leaf_index)?;
                next = next.max(after);
                for ev in workload_events(&piece.batch) {
                    changed |= self.apply(&ev);
                }
            }
            self.positions.insert(log, next);
        }
        Ok(changed)
    }

    /// One audit event; whether the workloads changed.
    fn apply(&mut self, ev: &Value) -> bool {
        let change = match audit::change(ev) {
            Ok(Some(c)) => c,
            Ok(None) => return false,
            Err(why) => {
                self.unusable += 1;
                self.last_unusable = Some(why);
                return false;
            }
        };
        match change {
            Change::Apply(doc) => {
                let key = key_of(&doc);
                self.seq += 1;
                self.order.insert(self.seq, key.clone());
                let same = self.objects.get(&key).is_some_and(|(d, _)| *d == doc);
                if let Some((_, s)) = self.objects.insert(key, (doc, self.seq)) {
                    self.order.remove(&s);
                }
                if self.objects.len() > self.max_objects
                    && let Some((_, oldest)) = self.order.pop_first()
                {
                    self.objects.remove(&oldest);
                    self.dropped += 1;
                }
                !same
            }
            Change::Delete {
                kind,
                namespace,
                name,
            } => {
                let gone: Vec<Key> = if kind == "Namespace" {
                    // The namespace, and everything in it.
                    self.objects
                        .keys()
                        .filter(|(k, ns, n)| ns == &name || (k == "Namespace" && n == &name))
                        .cloned()
                        .collect()
                } else {
                    // A controller's workload stands under its controller's kind: any kind of
                    // that namespace and name goes.
                    audit::RESOURCES
                        .iter()
                        .filter(|(_, k)| *k != "Namespace")
                        .map(|(_, k)| ((*k).to_owned(), namespace.clone(), name.clone()))
                        .filter(|key| self.objects.contains_key(key))
                        .collect()
                };
                for key in &gone {
                    if let Some((_, s)) = self.objects.remove(key) {
                        self.order.remove(&s);
                    }
                }
                !gone.is_empty()
            }
        }
    }

    /// The workloads as one manifest file for [`super::import`] (YAML documents, each in
    /// JSON's flow style), named after the topics.
    pub fn manifests(&self) -> (String, String) {
        let mut text = String::new();
        for (doc, _) in self.objects.values() {
            text.push_str("---\n");
            text.push_str(&doc.to_string());
            text.push('\n');
        }
        (
            format!("the Kubernetes audit stream ({})", self.topics.join(", ")),
            text,
        )
    }
}

/// An object's kind, namespace (none for a namespace) and name.
type Key = (String, String, String);

fn key_of(doc: &Value) -> Key {
    let s = |p: &str| {
        doc.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let ns = if s("/kind") == "Namespace" {
        String::new()
    } else {
        s("/metadata/namespace")
    };
    (s("/kind"), ns, s("/metadata/name"))
}

/// The audit events of a stored batch that may change a workload: Kubernetes audit rows whose
/// verb changes an object (only those records are parsed again).
fn workload_events(batch: &arrow::record_batch::RecordBatch) -> Vec<Value> {
    // Dictionary-encoded or not: as plain strings.
    let utf8 = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).ok())
    };
    let (Some(format), Some(action), Some(raw)) = (
        utf8("source_format"),
        utf8("action"),
        batch
            .column_by_name("raw")
            .and_then(|c| c.as_binary_opt::<i32>()),
    ) else {
        return Vec::new();
    };
    let (format, action) = (format.as_string::<i32>(), action.as_string::<i32>());
    let mut out = Vec::new();
    for i in 0..batch.num_rows() {
        if format.is_valid(i)
            && format.value(i) == "k8s_audit"
            && action.is_valid(i)
            && VERBS.contains(&action.value(i))
            && let Ok(v) = serde_json::from_slice::<Value>(raw.value(i))
        {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schemas::Decoder;
    use vigil_store::{PartitionBatch, RecordRef, WriteOptions};

    fn trace(name: &str) -> Value {
        let path = format!(
            "{}/../../shared/data/k8s-audit-falco/trace_files/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    }

    /// Store `events` as records of `topic/0` after `from` records, one file.
    fn store_events(store: &Store, b: &mut PartitionBatch, from: i64, events: &[Value]) {
        for (i, e) in events.iter().enumerate() {
            let v = e.to_string();
            let rec = RecordRef {
                topic: "k8s-audit",
                partition: 0,
                offset: from + i as i64,
                timestamp_ms: Some(1_700_000_000_000),
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            };
            b.append(&rec, &Decoder::default(), 0).unwrap();
        }
        store.write(&b.seal().unwrap().unwrap()).unwrap();
    }

    #[test]
    fn stored_audit_events_become_manifests_read_once_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), WriteOptions::default()).unwrap();
        let mut b = PartitionBatch::new("k8s-audit", 0, Default::default(), 16);
        // The replicaset-controller creates an nginx pod; an attach and a secret read are
        // about something else.
        let created = trace("create_nginx_pod_unprivileged.json");
        store_events(
            &store,
            &mut b,
            0,
            &[
                created.clone(),
                trace("attach_pod.json"),
                trace("create_clusterrole.json"),
            ],
        );
        let mut feed = AuditFeed::new(vec!["k8s-audit".into()], 2);
        assert!(feed.read(&store).unwrap());
        assert_eq!(feed.len(), 1);
        let (name, text) = feed.manifests();
        assert!(name.contains("k8s-audit"), "{name}");
        assert!(text.contains(r#""name":"nginx-deployment""#), "{text}");
        // Read once: nothing new, no change.
        assert!(!feed.read(&store).unwrap());
        // A second replica of the same Deployment changes nothing.
        let mut replica = created.clone();
        replica["responseObject"]["metadata"]["name"] = "nginx-deployment-78f5d695bd-zzzzz".into();
        store_events(&store, &mut b, 3, &[replica]);
        assert!(!feed.read(&store).unwrap());
        // Past the bound the least recently changed goes, counted.
        let pod = |name: &str| {
            let mut e = created.clone();
            e["responseObject"]["metadata"]["ownerReferences"] = Value::Null;
            e["responseObject"]["metadata"]["name"] = name.into();
            e
        };
        store_events(&store, &mut b, 4, &[pod("a"), pod("b")]);
        assert!(feed.read(&store).unwrap());
        assert_eq!((feed.len(), feed.dropped), (2, 1));
        assert!(!feed.manifests().1.contains(r#""kind":"Deployment""#));
        // The manifests import as such.
        let got = super::super::import(&[feed.manifests()], "cluster.local").unwrap();
        assert_eq!(got.workloads, 2);
        // A standalone pod deleted: gone (and the bound's order with it).
        let mut deleted = pod("a");
        deleted["verb"] = "delete".into();
        deleted["objectRef"]["name"] = "a".into();
        store_events(&store, &mut b, 6, &[deleted]);
        assert!(feed.read(&store).unwrap());
        assert_eq!((feed.len(), feed.order.len()), (1, 1));
        assert!(!feed.manifests().1.contains(r#""name":"a""#));
    }
}
