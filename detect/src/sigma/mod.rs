//! Sigma rules in: `*.yml` / `*.yaml` files of `detect.rules_dir` (one or several documents a
//! file), parsed by `rsigma-parser`, mapped by pySigma-style processing pipelines
//! (`detect.sigma_pipelines`, applied by `rsigma-eval`), and loaded as rules of the engine
//! ([`kind::Sigma`]) beside Vigil's own.
//!
//! What loading decides, and says:
//! - **Log source.** `logsource` (after the pipelines) must name events Vigil reads:
//!   product `kubernetes` (service `audit`: the `k8s_audit` decoder), `gcp` (`gke_audit`),
//!   `opa`, `envoy`, `cilium` (Hubble), `vigil` (native); or, without a product, category
//!   `authentication`, `authorization` or `network_connection` (Vigil's event kinds). Any other
//!   is an error naming the rule (a pipeline can map it) — a rule that would never see an event
//!   is not loaded silently.
//! - **Fields it cannot find.** A rule about Kubernetes audit events naming a field that is no
//!   part of one (SigmaHQ's `hostPath`, a top-level `apiGroup`), or comparing a numeric one
//!   with text (`responseStatus.code: 'ALLOW'`), loads with a warning: as written that test
//!   can never match.
//! - **What feeds a correlation only.** A detection rule (or a correlation, chained) another
//!   correlation references (by id or name, across files) raises no alert of its own unless
//!   the correlation says `generate: true`.
//! - **Identity.** A Sigma rule's Vigil id is `sigma:` and its `id` (else its name, else its
//!   title); its version is its `modified` (else `date`) as `YYYYMMDD`, else 1.
//! - **Attribution.** Every alert carries the rule's title, id, level, author, licence,
//!   ATT&CK tags and references in its detail (SigmaHQ's Detection Rule License asks that
//!   messages based on matches carry the author).
//!
//! Vigil's own settings for a Sigma rule are custom attributes of it (or set by a pipeline's
//! `set_custom_attribute`): `vigil.group_by` (fields naming an alert's group, default
//! `caller_principal`; correlations group by their `group-by`), `vigil.suppress` (a duration,
//! default the engine's).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use rsigma_eval::pipeline::apply_pipelines_to_correlation;
use rsigma_eval::{Pipeline, apply_pipelines};
use rsigma_parser::{CorrelationRule, SigmaCollection, SigmaRule};

use crate::alerts::Severity;
use crate::filter::{Field, FieldType};
use crate::rules::{Defaults, KindName, Loaded, Meta, Rule, RuleError, Source};

mod checks;
mod event;
mod kind;
#[cfg(test)]
mod tests;

pub(crate) use kind::KeyRow;
pub use kind::Sigma;
use kind::{Logsource, Matcher, SigmaSpec};

/// Whether a source is a Sigma file (by its name).
pub(crate) fn is_sigma(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with(".yml") || n.ends_with(".yaml")
}

/// Why a pipeline file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("Sigma pipeline {path}: {message}")]
pub struct PipelineError {
    pub path: String,
    pub message: String,
}

/// Read processing pipelines (pySigma's format), in `priority` order.
pub fn load_pipelines(paths: &[std::path::PathBuf]) -> Result<Vec<Pipeline>, PipelineError> {
    let mut out = Vec::new();
    for p in paths {
        let pl = rsigma_eval::parse_pipeline_file(p).map_err(|e| PipelineError {
            path: p.display().to_string(),
            message: e.to_string(),
        })?;
        out.push(pl);
    }
    rsigma_eval::merge_pipelines(&mut out);
    Ok(out)
}

/// One parsed document and the file it came from.
struct Doc<T> {
    file: String,
    rule: T,
}

/// Products and categories Vigil reads, for the error that names them.
const PRODUCTS: &str = "kubernetes, gcp, opa, envoy, cilium, vigil";
const CATEGORIES: &str = "authentication, authorization, network_connection";

/// Load Sigma sources into `out`: each rule on its own (a bad one is reported and skipped).
pub(crate) fn load(sources: &[&Source], d: &Defaults, out: &mut Loaded) {
    let mut rules: Vec<Doc<SigmaRule>> = Vec::new();
    let mut corrs: Vec<Doc<CorrelationRule>> = Vec::new();
    let err = |file: &str, message: String| RuleError {
        file: file.to_owned(),
        line: 0,
        message,
    };
    for s in sources {
        let c = match rsigma_parser::parse_sigma_yaml(&s.text) {
            Ok(c) => c,
            Err(e) => {
                out.errors
                    .push(err(&s.name, format!("not a Sigma file: {e}")));
                continue;
            }
        };
        for e in c.errors {
            out.errors.push(err(&s.name, e));
        }
        for f in c.filters {
            out.errors.push(err(
                &s.name,
                format!(
                    "Sigma filter `{}` is not applied (filters are not supported)",
                    f.title
                ),
            ));
        }
        for mut r in c.rules {
            match apply_pipelines(&d.sigma_pipelines, &mut r) {
                Ok(()) => rules.push(Doc {
                    file: s.name.clone(),
                    rule: r,
                }),
                Err(e) => out
                    .errors
                    .push(err(&s.name, format!("rule `{}`: pipeline: {e}", r.title))),
            }
        }
        for mut r in c.correlations {
            match apply_pipelines_to_correlation(&d.sigma_pipelines, &mut r) {
                Ok(_) => corrs.push(Doc {
                    file: s.name.clone(),
                    rule: r,
                }),
                Err(e) => out.errors.push(err(
                    &s.name,
                    format!("correlation `{}`: pipeline: {e}", r.title),
                )),
            }
        }
    }
    // Names a correlation references, and whether it lets them alert on their own.
    let mut feeds: HashMap<String, (String, bool)> = HashMap::new();
    for c in &corrs {
        for r in &c.rule.rules {
            let e = feeds
                .entry(r.clone())
                .or_insert((c.rule.title.clone(), false));
            e.1 |= c.rule.generate;
        }
    }
    let named = |id: &Option<String>, name: &Option<String>| {
        [id, name]
            .into_iter()
            .flatten()
            .find_map(|n| feeds.get(n).cloned())
    };
    for doc in &rules {
        let r = &doc.rule;
        let id = vigil_id(&r.id, &r.name, &r.title);
        if let Some((by, false)) = named(&r.id, &r.name) {
            out.inactive.push((
                id,
                format!("feeds the correlation `{by}` only (generate: false)"),
            ));
            continue;
        }
        match detection_rule(doc, &id, d) {
            Ok((rule, warnings)) => {
                out.warnings.extend(warnings);
                push(out, rule);
            }
            Err(message) => out
                .errors
                .push(err(&doc.file, format!("rule `{}`: {message}", r.title))),
        }
    }
    for doc in &corrs {
        let id = vigil_id(&doc.rule.id, &doc.rule.name, &doc.rule.title);
        // A correlation another one chains on feeds it, as a detection rule would.
        if let Some((by, false)) = named(&doc.rule.id, &doc.rule.name) {
            out.inactive.push((
                id,
                format!("feeds the correlation `{by}` only (generate: false)"),
            ));
            continue;
        }
        match correlation_rule(doc, &id, &rules, &corrs, d) {
            Ok(rule) => push(out, rule),
            Err(message) => out.errors.push(err(
                &doc.file,
                format!("correlation `{}`: {message}", doc.rule.title),
            )),
        }
    }
}

/// Add a rule; one of the same id loaded before is replaced.
fn push(out: &mut Loaded, rule: Rule) {
    out.sigma.retain(|r| r.meta.id != rule.meta.id);
    out.sigma.push(rule);
}

fn vigil_id(id: &Option<String>, name: &Option<String>, title: &str) -> String {
    let base = id.clone().or_else(|| name.clone()).unwrap_or_else(|| {
        title
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    });
    format!("sigma:{base}")
}

/// `modified` (else `date`) as `YYYYMMDD`, else 1.
fn version_of(modified: &Option<String>, date: &Option<String>) -> u32 {
    modified
        .as_ref()
        .or(date.as_ref())
        .and_then(|d| {
            let digits: String = d.chars().filter(char::is_ascii_digit).collect();
            (digits.len() == 8).then(|| digits.parse().ok()).flatten()
        })
        .unwrap_or(1)
}

fn severity_of(level: Option<rsigma_parser::Level>) -> Severity {
    use rsigma_parser::Level;
    match level {
        Some(Level::Informational) => Severity::Info,
        Some(Level::Low) => Severity::Low,
        Some(Level::High) => Severity::High,
        Some(Level::Critical) => Severity::Critical,
        Some(Level::Medium) | None => Severity::Medium,
    }
}

/// The attribution lines every alert of a rule carries.
#[allow(clippy::too_many_arguments)]
fn attribution(
    title: &str,
    id: &Option<String>,
    level: Option<rsigma_parser::Level>,
    author: &Option<String>,
    license: &Option<String>,
    tags: &[String],
    references: &[String],
    file: &str,
) -> Vec<String> {
    let mut v = vec![format!(
        "sigma rule: {title}{}{}; author: {}",
        id.as_ref().map_or(String::new(), |i| format!(" (id {i})")),
        level.map_or(String::new(), |l| format!(", level {}", l.as_str())),
        author.as_deref().unwrap_or("not given")
    )];
    v.push(format!(
        "licence: {}; from {}",
        license.as_deref().unwrap_or("as its source states"),
        Path::new(file)
            .file_name()
            .map_or(file.into(), |n| n.to_string_lossy())
    ));
    if !tags.is_empty() {
        v.push(format!("tags: {}", tags.join(", ")));
    }
    if !references.is_empty() {
        v.push(format!("references: {}", references.join(" ")));
    }
    v
}

/// A rule's `logsource`, checked against what Vigil reads.
fn logsource(ls: &rsigma_parser::LogSource) -> Result<Logsource, String> {
    let lower = |s: &Option<String>| s.as_ref().map(|s| s.to_ascii_lowercase());
    let out = Logsource {
        product: lower(&ls.product),
        service: lower(&ls.service),
        category: lower(&ls.category),
    };
    match (&out.product, &out.category) {
        (Some(p), _) => {
            if !PRODUCTS.split(", ").any(|k| k == p) {
                return Err(format!(
                    "logsource product `{p}` is no source Vigil reads ({PRODUCTS}); map it with a pipeline (detect.sigma_pipelines)"
                ));
            }
        }
        (None, Some(c)) => {
            if !CATEGORIES.split(", ").any(|k| k == c) {
                return Err(format!(
                    "logsource category `{c}` is no kind of event Vigil reads ({CATEGORIES}); map it with a pipeline (detect.sigma_pipelines)"
                ));
            }
        }
        (None, None) => {}
    }
    Ok(out)
}

fn suppress_of(attrs: &HashMap<String, yaml_serde::Value>, d: &Defaults) -> Result<i64, String> {
    match attrs.get("vigil.suppress") {
        None => Ok(d.suppress_ns),
        Some(v) => {
            let s = v
                .as_str()
                .ok_or("vigil.suppress must be a duration (\"1h\")")?;
            let dur = humantime::parse_duration(s).map_err(|e| format!("vigil.suppress: {e}"))?;
            i64::try_from(dur.as_nanos()).map_err(|_| "vigil.suppress is too long".to_owned())
        }
    }
}

/// Group fields, as the alerts name them: column `i` of the key row.
fn synthetic(names: &[String]) -> crate::group::GroupBy {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                Field {
                    column: i,
                    ty: FieldType::Str,
                    normalize: false,
                },
            )
        })
        .collect()
}

fn detection_rule(
    doc: &Doc<SigmaRule>,
    id: &str,
    d: &Defaults,
) -> Result<(Rule, Vec<RuleError>), String> {
    let r = &doc.rule;
    let ls = logsource(&r.logsource)?;
    let compiled = rsigma_eval::compile_rule(r).map_err(|e| e.to_string())?;
    let warnings = checks::unknown_fields(r, &ls, &doc.file);
    let group: Vec<String> = match r.custom_attributes.get("vigil.group_by") {
        None => vec!["caller_principal".to_owned()],
        Some(v) => v
            .as_sequence()
            .ok_or("vigil.group_by must be a list of field names")?
            .iter()
            .map(|f| {
                f.as_str()
                    .map(str::to_owned)
                    .ok_or("vigil.group_by must name fields")
            })
            .collect::<Result<_, _>>()?,
    };
    let suppress_ns = suppress_of(&r.custom_attributes, d)?;
    let spec = SigmaSpec {
        matcher: Matcher::Detection {
            rule: Box::new(compiled),
            logsource: ls,
        },
        group_by: synthetic(&group),
        key_paths: group.clone(),
        suppress_ns,
        window_ns: 0,
        attribution: attribution(
            &r.title,
            &r.id,
            r.level,
            &r.author,
            &r.license,
            &r.tags,
            &r.references,
            &doc.file,
        ),
        allowed_lateness_ns: d.allowed_lateness_ns,
        max_groups: d.max_groups,
    };
    let meta = Meta {
        id: id.to_owned(),
        version: version_of(&r.modified, &r.date),
        title: r.title.clone(),
        severity: severity_of(r.level),
        description: r.description.clone().unwrap_or_default(),
        kind: KindName::Sigma,
        group_names: group,
        suppress_ns,
        source: doc.file.clone(),
    };
    Ok((
        Rule {
            meta,
            kind: crate::rules::Kind::Sigma(Sigma::new(spec)),
        },
        warnings,
    ))
}

/// A `temporal` correlation means every referenced rule within the timespan (the Sigma
/// specification). rsigma 0.23 reads one without a `condition` as `gte: 1` and then fires on
/// any one of them (its parser says "all rules must match"; its evaluator counts rules
/// fired): that condition becomes "as many as it references".
///
/// And, as for detection rules, one with a name only gets it as its id: rsigma knows which
/// correlation fired by its id when it chains on it.
fn all_of_temporal(mut c: CorrelationRule) -> CorrelationRule {
    use rsigma_parser::{ConditionOperator, CorrelationCondition, CorrelationType};
    if c.id.is_none() {
        c.id = c.name.clone();
    }
    if c.correlation_type == CorrelationType::Temporal
        && let CorrelationCondition::Threshold {
            predicates,
            field: None,
            ..
        } = &mut c.condition
        && predicates.as_slice() == [(ConditionOperator::Gte, 1)]
    {
        predicates[0].1 = c.rules.len() as u64;
    }
    c
}

fn correlation_rule(
    doc: &Doc<CorrelationRule>,
    id: &str,
    rules: &[Doc<SigmaRule>],
    corrs: &[Doc<CorrelationRule>],
    d: &Defaults,
) -> Result<Rule, String> {
    let c = &doc.rule;
    // Everything it references, through chained correlations.
    let names = |id: &Option<String>, name: &Option<String>| -> Vec<String> {
        [id, name].into_iter().flatten().cloned().collect()
    };
    let mut sub = SigmaCollection::new();
    let mut want: Vec<String> = c.rules.clone();
    let mut seen: HashSet<String> = HashSet::new();
    let mut refs = Vec::new();
    sub.correlations.push(all_of_temporal(c.clone()));
    while let Some(n) = want.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(r) = rules
            .iter()
            .find(|r| names(&r.rule.id, &r.rule.name).contains(&n))
        {
            let ls = logsource(&r.rule.logsource)
                .map_err(|e| format!("its rule `{}`: {e}", r.rule.title))?;
            // rsigma knows which rule a match given to it is of by the rule's id: one with a
            // name only is given one (its name) inside this correlation.
            let mut rule = r.rule.clone();
            if rule.id.is_none() {
                rule.id = rule.name.clone();
            }
            let compiled = rsigma_eval::compile_rule(&rule)
                .map_err(|e| format!("its rule `{}`: {e}", rule.title))?;
            refs.push((compiled, ls));
            sub.rules.push(rule);
        } else if let Some(k) = corrs
            .iter()
            .find(|k| names(&k.rule.id, &k.rule.name).contains(&n))
        {
            if std::ptr::eq(k, doc) {
                return Err("references itself".into());
            }
            want.extend(k.rule.rules.iter().cloned());
            sub.correlations.push(all_of_temporal(k.rule.clone()));
        } else {
            return Err(format!(
                "references `{n}`, which no loaded Sigma rule is (by id or name)"
            ));
        }
    }
    let config = kind::correlation_config(d.max_groups);
    let engine = kind::correlation_engine(&sub, &config)?;
    let own: BTreeSet<String> = names(&c.id, &c.name)
        .into_iter()
        .chain([c.title.clone()])
        .collect();
    let suppress_ns = suppress_of(&c.custom_attributes, d)?;
    let window_ns = i64::try_from(c.timespan.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1_000_000_000))
        .ok_or("timespan is too long")?;
    let group: Vec<String> = c.group_by.clone();
    let spec = SigmaSpec {
        matcher: Matcher::Correlation {
            engine: Box::new(engine),
            refs,
            names: own.into_iter().collect(),
            collection: Box::new(sub),
            config,
        },
        group_by: synthetic(&group),
        key_paths: Vec::new(),
        suppress_ns,
        window_ns,
        attribution: attribution(
            &c.title,
            &c.id,
            c.level,
            &c.author,
            &c.license,
            &c.tags,
            &c.references,
            &doc.file,
        ),
        allowed_lateness_ns: d.allowed_lateness_ns.max(window_ns),
        max_groups: d.max_groups,
    };
    Ok(Rule {
        meta: Meta {
            id: id.to_owned(),
            version: version_of(&c.modified, &c.date),
            title: c.title.clone(),
            severity: severity_of(c.level),
            description: c.description.clone().unwrap_or_default(),
            kind: KindName::SigmaCorrelation,
            group_names: group,
            suppress_ns,
            source: doc.file.clone(),
        },
        kind: crate::rules::Kind::Sigma(Sigma::new(spec)),
    })
}
