//! The 16 SigmaHQ Kubernetes audit rules over the real samples: Falco's traces and Panther's
//! samples, each against a table of what a reader of the rules expects.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

#[test]
fn every_sigmahq_kubernetes_audit_rule_loads_and_the_ones_that_cannot_match_say_why() {
    let l = load(&sigmahq(), &Defaults::default());
    assert!(l.errors.is_empty(), "{:#?}", l.errors);
    assert_eq!(l.sigma.len(), 16, "{:?}", ids(&l));
    assert!(l.all().all(|r| r.meta.id.starts_with("sigma:")));
    // Rules that name what an audit event does not have at its top level: they load, and
    // say that as written they cannot match.
    let warned: BTreeSet<String> = l
        .warnings
        .iter()
        .map(|w| {
            let f = std::path::Path::new(&w.file).file_name().unwrap();
            format!(
                "{} {}",
                f.to_string_lossy(),
                w.message.split('`').nth(3).unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        warned,
        BTreeSet::from([
            "kubernetes_audit_hostpath_mount.yml hostPath".to_owned(),
            "kubernetes_audit_privileged_pod_creation.yml capabilities".to_owned(),
            "kubernetes_audit_rbac_permisions_listing.yml apiGroup".to_owned(),
            "kubernetes_audit_sidecar_injection.yml apiGroup".to_owned(),
            "kubernetes_audit_potential_enumeration_activity.yml responseStatus.code".to_owned(),
        ]),
        "{:#?}",
        l.warnings
    );
}

/// Every trace file through the 16 rules: rule → the files whose events it alerted on.
fn falco_matches() -> BTreeMap<String, BTreeSet<String>> {
    let l = load(&sigmahq(), &Defaults::default());
    let titles: BTreeMap<String, String> = l
        .all()
        .map(|r| (r.meta.id.clone(), r.meta.title.clone()))
        .collect();
    let mut e = engine(l);
    let dir = data("k8s-audit-falco/trace_files");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&[u8]> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::as_bytes)
            .collect();
        let mut log = Log::new(&format!("k8s{i}"));
        e.observe(&log.piece(&lines), 7).unwrap();
        e.drain(7);
        for a in e.take_pending() {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            out.entry(titles[&a.rule_id].clone())
                .or_default()
                .insert(name);
        }
    }
    out
}

/// Checked by hand against the rules (and the table of each trace's verb, resource,
/// subresource, namespace and status): the 47 traces hold no 401/403, no admission webhook,
/// job, event or `list` of secrets, and the four rules that name fields an audit event lacks
/// (and Potential Enumeration, which compares the numeric `responseStatus.code` with 'ALLOW')
/// can match nothing. `attach_pod.json` is `pods/attach`, not `pods/exec`.
#[test]
fn the_falco_kubernetes_audit_traces_raise_what_a_reader_of_the_sigma_rules_expects() {
    let got = falco_matches();
    let want: BTreeMap<String, BTreeSet<String>> = [
        (
            "Creation Of Pod In System Namespace",
            &["create_pod_kube_system_namespace.json"][..],
        ),
        (
            "Deployment Deleted From Kubernetes Cluster",
            &["delete_deployment.json"],
        ),
        (
            "Kubernetes Rolebinding Modification",
            &[
                "attach_cluster_admin_role.json",
                "create_clusterrolebinding.json",
                "delete_clusterrolebinding.json",
            ],
        ),
        (
            "Kubernetes Secrets Modified or Deleted",
            &[
                "create_kube_system_secret.json",
                "create_secret.json",
                "create_service_account_token_secret.json",
                "delete_secret.json",
            ],
        ),
        (
            "New Kubernetes Service Account Created",
            &[
                "create_serviceaccount.json",
                "create_serviceaccount_kube_public_namespace.json",
                "create_serviceaccount_kube_system_namespace.json",
            ],
        ),
        (
            "Potential Remote Command Execution In Pod Container",
            &["exec_pod.json"],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
    .collect();
    assert_eq!(got, want, "{got:#?}");
}

/// Panther's Kubernetes audit test events (one a line, in `log`) through the 16 rules: rule →
/// the Panther tests whose events it alerted on.
fn panther_matches() -> BTreeMap<String, BTreeSet<String>> {
    let l = load(&sigmahq(), &Defaults::default());
    let titles: BTreeMap<String, String> = l
        .all()
        .map(|r| (r.meta.id.clone(), r.meta.title.clone()))
        .collect();
    let mut e = engine(l);
    let text = std::fs::read_to_string(data("panther/by_event_shape/k8s_audit.jsonl")).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let t: serde_json::Value = serde_json::from_str(line).unwrap();
        let raw = serde_json::to_vec(&t["log"]).unwrap();
        let mut log = Log::new(&format!("p{i}"));
        e.observe(&log.piece(&[&raw]), 7).unwrap();
        e.drain(7);
        for a in e.take_pending() {
            let name = format!("{i}:{}", t["test_name"].as_str().unwrap());
            out.entry(titles[&a.rule_id].clone())
                .or_default()
                .insert(name);
        }
    }
    out
}

/// The lines of `panther/by_event_shape/k8s_audit.jsonl` each rule alerts on, checked by hand
/// with each rule's selection read off its YAML and applied to every event's fields on its
/// own: Panther's "(excluded)" cases are exclusions of *Panther's* rules (system principals,
/// failed requests) that the Sigma rules do not make, so they match here as a reader of the
/// Sigma rules expects — 403s to the 401/403 rule, `pods/exec` to the exec rule, `list
/// secrets` to the enumeration rule, and every `serviceaccounts` create to the service-account
/// rule (token requests, `serviceaccounts/token` creates, included: the rule does not name the
/// subresource).
#[test]
fn the_panther_kubernetes_audit_samples_raise_what_a_reader_of_the_sigma_rules_expects() {
    let got: BTreeMap<String, Vec<usize>> = panther_matches()
        .into_iter()
        .map(|(rule, tests)| {
            let mut lines: Vec<usize> = tests
                .iter()
                .map(|t| t.split(':').next().unwrap().parse().unwrap())
                .collect();
            lines.sort_unstable();
            (rule, lines)
        })
        .collect();
    let want: BTreeMap<String, Vec<usize>> = [
        (
            "Creation Of Pod In System Namespace",
            &[66, 72, 75, 76, 78, 85, 97, 103, 166, 168][..],
        ),
        ("Kubernetes Admission Controller Modification", &[20][..]),
        ("Kubernetes Rolebinding Modification", &[35, 36, 37, 38][..]),
        (
            "Kubernetes Secrets Enumeration",
            &[136, 138, 141, 144, 145, 146, 148, 149, 150][..],
        ),
        ("Kubernetes Secrets Modified or Deleted", &[143][..]),
        (
            "Kubernetes Unauthorized or Unauthenticated Access",
            &[
                7, 9, 10, 15, 23, 32, 40, 43, 48, 58, 67, 68, 69, 71, 76, 82, 86, 89, 93, 96, 109,
                115, 122, 128, 130, 132, 134, 135, 136, 140, 150, 160, 169, 176, 179, 180, 186,
            ][..],
        ),
        (
            "New Kubernetes Service Account Created",
            &[17, 18, 19, 155, 156, 157, 158, 159, 160, 161, 172][..],
        ),
        (
            "Potential Remote Command Execution In Pod Container",
            &[
                52, 62, 63, 64, 65, 66, 67, 163, 164, 165, 166, 167, 168, 169, 170,
            ][..],
        ),
    ]
    .into_iter()
    .map(|(k, v): (&str, &[usize])| (k.to_owned(), v.to_vec()))
    .collect();
    assert_eq!(got, want);
}
