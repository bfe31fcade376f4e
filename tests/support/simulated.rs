//! `vigil simulate` as the tests drive it: what it said it injected, the alerts each attack
//! must raise (written here, not taken from the simulator), and waiting for them.

use std::time::{Duration, Instant};

use super::{succeed, vigil_command};

/// What `vigil simulate` said it did (its `--json` output or `--record` file): the mesh's call
/// edges and, per injected attack, the rules that should fire about its subject.
pub struct Simulated {
    pub edges: std::collections::BTreeSet<(String, String)>,
    pub injected: Vec<serde_json::Value>,
    /// Every alert the injections must raise: its rule, and the group-key values it must
    /// carry ([`expected_alerts`], written here, not taken from the simulator).
    pub expected: Vec<Expected>,
    /// The closing summary (`{"done": true, "events": N, …}`), when the run has ended.
    pub done: Option<serde_json::Value>,
}

/// An alert as the tests compare it: its rule and group key.
pub type AlertKey = (String, std::collections::BTreeMap<String, Option<String>>);

/// An alert an injection must raise: the rule, and the group-key fields with the exact values
/// it must have (other fields of its key may be anything).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expected {
    pub rule: &'static str,
    pub key: Vec<(&'static str, String)>,
}

impl Expected {
    pub fn answered_by(&self, (rule, key): &AlertKey) -> bool {
        rule == self.rule
            && self
                .key
                .iter()
                .all(|(f, v)| key.get(*f).and_then(|x| x.as_deref()) == Some(v.as_str()))
    }
}

/// What each attack `vigil simulate` injects must raise under the default rules, from what
/// the injection says it did (its scenario and subject) — the test's expectations, so that a
/// rule that stops firing, or a simulator whose list drifts, fails here.
pub fn expected_alerts(injection: &serde_json::Value) -> Vec<Expected> {
    let subject = injection["subject"].as_str().unwrap().to_owned();
    let scenario = injection["scenario"].as_str().unwrap();
    let e = |rule: &'static str, key: &[(&'static str, &str)]| Expected {
        rule,
        key: key.iter().map(|(f, v)| (*f, (*v).to_owned())).collect(),
    };
    match scenario {
        // 60 denied logins from one address.
        "credential-stuffing" => vec![e(
            "vigil.denial_burst.source_ip",
            &[("caller_ip", &subject)],
        )],
        // 25 denied calls to 25 routes of other services, several of them new edges.
        "compromised-probing" => vec![
            e(
                "vigil.permission_probing",
                &[("caller_principal", &subject)],
            ),
            e(
                "vigil.denial_burst.caller",
                &[("caller_principal", &subject)],
            ),
            e(
                "vigil.unexpected_caller.learned",
                &[("caller_principal", &subject)],
            ),
        ],
        // "caller → callee": three allowed calls on an edge never seen before.
        "lateral-movement" => {
            let (caller, callee) = subject.split_once(" → ").unwrap();
            vec![e(
                "vigil.unexpected_caller.learned",
                &[("caller_principal", caller), ("callee_principal", callee)],
            )]
        }
        "k8s-403-burst" => vec![e(
            "vigil.k8s.forbidden_burst.user",
            &[("caller_principal", &subject)],
        )],
        // "namespace/workload": 120 flows dropped by policy.
        "dropped-flows" => {
            let (ns, workload) = subject.split_once('/').unwrap();
            vec![e(
                "vigil.flow.drop_burst.source",
                &[("caller_namespace", ns), ("caller_principal", workload)],
            )]
        }
        // "address at host": six denied logins, then an allowed one.
        "deny-then-allow" => {
            let (ip, host) = subject.split_once(" at ").unwrap();
            vec![e(
                "vigil.deny_then_allow",
                &[("caller_ip", ip), ("callee_service", host)],
            )]
        }
        other => panic!("no expectation for scenario {other:?}"),
    }
}

impl Simulated {
    pub fn parse(text: &str) -> Simulated {
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let edges = lines
            .first()
            .and_then(|l| l["mesh"]["edges"].as_array())
            .unwrap_or_else(|| panic!("the mesh's edges do not come first: {text}"))
            .iter()
            .map(|e| {
                (
                    e[0].as_str().unwrap().to_owned(),
                    e[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let injected: Vec<serde_json::Value> = lines
            .iter()
            .filter(|l| l["scenario"].is_string())
            .cloned()
            .collect();
        let mut expected = Vec::new();
        for i in &injected {
            let want = expected_alerts(i);
            // What the simulator tells its user it expects is what the test expects.
            let mut said: Vec<&str> = i["expect"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            let mut rules: Vec<&str> = want.iter().map(|e| e.rule).collect();
            said.sort_unstable();
            rules.sort_unstable();
            assert_eq!(said, rules, "the simulator's expectations for {i}");
            expected.extend(want);
        }
        let done = lines.iter().find(|l| l["done"] == true).cloned();
        Simulated {
            edges,
            injected,
            expected,
            done,
        }
    }

    /// The expected alerts none of `alerts` answers yet.
    pub fn missing(&self, alerts: &[AlertKey]) -> Vec<&Expected> {
        self.expected
            .iter()
            .filter(|e| !alerts.iter().any(|a| e.answered_by(a)))
            .collect()
    }

    /// Poll `alerts` until every expected alert has come, at most `timeout`; then the alerts.
    /// On timeout, fail with what is missing, what was found and `context()`.
    pub fn wait_for_alerts(
        &self,
        timeout: Duration,
        mut alerts: impl FnMut() -> Vec<AlertKey>,
        context: impl Fn() -> String,
    ) -> Vec<AlertKey> {
        let started = Instant::now();
        loop {
            let found = alerts();
            let missing = self.missing(&found);
            if missing.is_empty() {
                return found;
            }
            assert!(
                started.elapsed() < timeout,
                "missing after {timeout:?}: {missing:?}\nfound: {found:?}\n{}",
                context()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Nothing but the attacks: every alert answers an expected one, and no new-edge alert is
    /// about an edge of the mesh.
    pub fn assert_nothing_else(&self, alerts: &[AlertKey], context: &str) {
        for a in alerts {
            let (rule, key) = a;
            if rule == "vigil.unexpected_caller.learned" {
                let f = |n: &str| key.get(n).cloned().flatten().unwrap_or_default();
                let edge = (f("caller_principal"), f("callee_principal"));
                assert!(
                    !self.edges.contains(&edge),
                    "a mesh edge taken for a new one: {edge:?}\n{context}"
                );
            }
            assert!(
                self.expected.iter().any(|e| e.answered_by(a)),
                "an alert no attack explains: {rule} {key:?}\n{context}"
            );
        }
    }
}

/// `vigil simulate --brokers B --json ARGS…` to its end: what it said it did, and its output.
pub fn simulate(brokers: &str, args: &[&str]) -> (Simulated, String) {
    let stdout = succeed(
        vigil_command()
            .args(["simulate", "--brokers", brokers, "--json"])
            .args(args),
    );
    (Simulated::parse(&stdout), stdout)
}
