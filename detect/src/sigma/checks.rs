//! What a Sigma rule about Kubernetes audit events cannot match as written: fields an audit
//! event never has, and text compared with a field that is a number (a warning each; the rule
//! still loads).

use rsigma_eval::RuleFieldSet;
use rsigma_parser::{SigmaCollection, SigmaRule};

use super::kind::Logsource;
use crate::rules::RuleError;

/// The top-level fields of a Kubernetes audit event (`audit.k8s.io/v1` `Event`).
const K8S_AUDIT_FIELDS: &[&str] = &[
    "kind",
    "apiVersion",
    "level",
    "auditID",
    "stage",
    "requestURI",
    "verb",
    "user",
    "impersonatedUser",
    "sourceIPs",
    "userAgent",
    "objectRef",
    "responseStatus",
    "requestObject",
    "responseObject",
    "requestReceivedTimestamp",
    "stageTimestamp",
    "annotations",
];

/// Fields of a Kubernetes audit event that hold numbers.
const K8S_AUDIT_NUMBERS: &[&str] = &["responseStatus.code"];

/// Detection items comparing a numeric field with text that is no number (SigmaHQ's
/// "Potential Enumeration" compares `responseStatus.code` with `'ALLOW'`): (field, value).
fn text_for_numbers(d: &rsigma_parser::Detection, out: &mut Vec<(String, String)>) {
    use rsigma_parser::{Detection, SigmaValue};
    match d {
        Detection::AllOf(items) => {
            for it in items {
                let Some(name) = &it.field.name else { continue };
                if !K8S_AUDIT_NUMBERS.contains(&name.as_str()) || !it.field.modifiers.is_empty() {
                    continue;
                }
                for v in &it.values {
                    if let SigmaValue::String(s) = v
                        && s.original.parse::<f64>().is_err()
                        && !s.original.contains(['*', '?'])
                    {
                        out.push((name.clone(), s.original.clone()));
                    }
                }
            }
        }
        Detection::AnyOf(v) | Detection::And(v) => {
            for d in v {
                text_for_numbers(d, out);
            }
        }
        _ => {}
    }
}

/// Fields a rule names that its log source's events never have, and numeric fields it
/// compares with text (a warning each).
pub(super) fn unknown_fields(rule: &SigmaRule, ls: &Logsource, file: &str) -> Vec<RuleError> {
    if ls.product.as_deref() != Some("kubernetes") {
        return Vec::new();
    }
    let mut typed = Vec::new();
    for d in rule.detection.named.values() {
        text_for_numbers(d, &mut typed);
    }
    typed.sort();
    typed.dedup();
    let typed = typed.into_iter().map(|(f, v)| RuleError {
        file: file.to_owned(),
        line: 0,
        message: format!(
            "rule `{}`: `{f}` is a number in a Kubernetes audit event, never {v:?}: as written that test cannot match",
            rule.title
        ),
    });
    let mut one = SigmaCollection::new();
    one.rules.push(rule.clone());
    let fields = RuleFieldSet::collect(&one, &[], false);
    fields
        .names()
        .filter(|f| {
            let root = f.split('.').next().unwrap_or(f);
            !K8S_AUDIT_FIELDS.contains(&root)
                && !f.starts_with("vigil.")
                && crate::filter::field(f).is_none()
        })
        .map(|f| RuleError {
            file: file.to_owned(),
            line: 0,
            message: format!(
                "rule `{}`: `{f}` is no field of a Kubernetes audit event: as written the rule cannot match",
                rule.title
            ),
        })
        .chain(typed)
        .collect()
}
