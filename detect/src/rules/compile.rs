//! A rule file's text to its rule: parsed (every key of its kind and no other's), checked and
//! compiled into the kind's state machine, each problem at its file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::{Defaults, Kind, KindName, Meta, Rule, RuleError, RuleFile, load_policy};
use crate::allowlist::{Allowlist, AllowlistSpec, EdgeFields, EdgeSpec};
use crate::distinct::{DistinctCount, DistinctSpec};
use crate::filter::{Field, FieldType, Filter, field};
use crate::first_seen::{FirstSeen, FirstSeenSpec};
use crate::group::GroupBy;
use crate::rate_spike::{RateSpike, RateSpikeSpec};
use crate::sequence::{Sequence, SequenceSpec};
use crate::threshold::{Threshold, ThresholdSpec};

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parse a duration like "30s", "5m", "1h 30m", "7d", "250ms".
pub(crate) fn duration_ns(s: &str) -> Result<i64, DurationError> {
    let err = |why: String| DurationError {
        text: s.chars().take(80).collect(),
        why,
    };
    let d = humantime::parse_duration(s).map_err(|e| err(e.to_string()))?;
    i64::try_from(d.as_nanos()).map_err(|_| err("too long".into()))
}

/// Text that is no duration (or one too long for nanoseconds in an i64: ~292 years).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("duration {text:?}: {why}")]
pub(crate) struct DurationError {
    pub text: String,
    pub why: String,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    /// The rule's `normalize_keys`: its key fields' text normalised.
    normalize_keys: bool,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> RuleError {
        RuleError {
            file: self.file.to_owned(),
            line: line_of(self.text, span.start),
            message: message.into(),
        }
    }

    fn need<'s, T>(
        &self,
        v: &'s Option<Spanned<T>>,
        key: &str,
        kind: &Spanned<KindName>,
    ) -> Result<&'s Spanned<T>, RuleError> {
        v.as_ref().ok_or_else(|| {
            self.err(
                kind.span(),
                format!("a {} rule needs `{key}`", kind.get_ref().as_str()),
            )
        })
    }

    fn filter(&self, f: &Spanned<String>) -> Result<Filter, RuleError> {
        Filter::parse(f.get_ref())
            .map_err(|e| self.err(f.span(), format!("filter `{}`: {e}", f.get_ref())))
    }

    fn dur(&self, d: &Spanned<String>) -> Result<i64, RuleError> {
        let ns = duration_ns(d.get_ref()).map_err(|e| self.err(d.span(), e.to_string()))?;
        if ns <= 0 {
            return Err(self.err(d.span(), "a duration must be positive"));
        }
        Ok(ns)
    }

    fn field(&self, name: &Spanned<String>) -> Result<Field, RuleError> {
        field(name.get_ref()).ok_or_else(|| {
            self.err(
                name.span(),
                format!(
                    "unknown field `{}` (fields: {})",
                    name.get_ref(),
                    crate::filter::filterable_fields().join(", ")
                ),
            )
        })
    }

    fn group_by(&self, g: &Spanned<Vec<String>>) -> Result<GroupBy, RuleError> {
        g.get_ref()
            .iter()
            .map(|n| {
                field(n)
                    .map(|mut f| {
                        f.normalize = self.normalize_keys && f.ty == FieldType::Str;
                        (n.clone(), f)
                    })
                    .ok_or_else(|| self.err(g.span(), format!("unknown group_by field `{n}`")))
            })
            .collect()
    }
}

/// A threshold or distinct-count rule's base rate (`of` and `min_ratio`, both or neither).
fn ratio(cx: &Ctx<'_>, rf: &RuleFile) -> Result<Option<crate::group::Ratio>, RuleError> {
    match (&rf.of, &rf.min_ratio) {
        (None, None) => Ok(None),
        (Some(of), Some(m)) => {
            let min = *m.get_ref();
            if !(min > 0.0 && min <= 1.0) {
                return Err(cx.err(m.span(), "min_ratio must be in (0, 1]"));
            }
            Ok(Some(crate::group::Ratio {
                of: cx.filter(of)?,
                min_ratio: min,
            }))
        }
        (Some(of), None) => Err(cx.err(of.span(), "`of` needs `min_ratio`")),
        (None, Some(m)) => Err(cx.err(m.span(), "`min_ratio` needs `of`")),
    }
}

/// Parse one rule file's text (checking it compiles with `defaults`).
pub fn parse(file: &str, text: &str) -> Result<RuleFile, RuleError> {
    let rf: RuleFile = toml::from_str(text).map_err(|e| RuleError {
        file: file.to_owned(),
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: e.message().to_owned(),
    })?;
    let id = rf.id.get_ref();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(RuleError {
            file: file.to_owned(),
            line: line_of(text, rf.id.span().start),
            message: format!("rule id {id:?}: use letters, digits, `.`, `_`, `-`"),
        });
    }
    check_kind_keys(file, text, &rf)?;
    Ok(rf)
}

impl KindName {
    /// The keys a rule of this kind takes besides the ones every rule does (`id`, `version`,
    /// `title`, `severity`, `description`, `references`, `enabled`, `requires`, `kind`,
    /// `suppress`, `allowed_lateness`, `max_groups`, `normalize_keys`, `test`).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            KindName::Threshold => &["filter", "group_by", "count", "window", "of", "min_ratio"],
            KindName::DistinctCount => &[
                "filter",
                "group_by",
                "field",
                "count",
                "window",
                "of",
                "min_ratio",
            ],
            KindName::Allowlist => &[
                "filter",
                "caller_field",
                "callee_field",
                "caller_namespace_field",
                "callee_namespace_field",
                "port_field",
                "method_field",
                "path_field",
                "edge_kind",
                "declared",
                "policy_file",
                "allow",
                "count",
                "window",
                "of",
                "min_ratio",
            ],
            KindName::FirstSeen => &["filter", "group_by", "learn", "forget"],
            KindName::Sequence => &[
                "group_by",
                "first",
                "first_count",
                "then",
                "consecutive",
                "window",
            ],
            KindName::Absence => &[
                "filter",
                "group_by",
                "expect",
                "within",
                "protected_by",
                "match_by",
            ],
            KindName::RateSpike => &[
                "filter",
                "group_by",
                "bucket",
                "baseline_buckets",
                "min_history_buckets",
                "z",
                "min_count",
                "peak_factor",
                "peak_half_life",
            ],
            KindName::Sigma | KindName::SigmaCorrelation => &[],
        }
    }
}

/// A key of another kind is an error at its line: a threshold rule with a rate spike's `z`, or
/// a sequence with a `filter` (its filters are `first` and `then`), would otherwise load and
/// quietly mean something else than its author wrote.
///
/// One struct with every kind's keys, checked against [`KindName::keys`], rather than an
/// enum tagged by `kind`: serde buffers an internally tagged enum's document before choosing
/// the variant, and `toml::Spanned` loses its spans there, so no error could name its line.
fn check_kind_keys(file: &str, text: &str, rf: &RuleFile) -> Result<(), RuleError> {
    const KINDS: [KindName; 7] = [
        KindName::Threshold,
        KindName::DistinctCount,
        KindName::Allowlist,
        KindName::FirstSeen,
        KindName::Sequence,
        KindName::Absence,
        KindName::RateSpike,
    ];
    // The document's top-level keys with where they stand (it parsed as a `RuleFile` already).
    let doc: BTreeMap<Spanned<String>, serde::de::IgnoredAny> =
        toml::from_str(text).map_err(|e| RuleError {
            file: file.to_owned(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;
    let kind = *rf.kind.get_ref();
    for key in doc.keys() {
        let k = key.get_ref().as_str();
        let another_kinds = KINDS.iter().any(|o| o.keys().contains(&k));
        if another_kinds && !kind.keys().contains(&k) {
            return Err(RuleError {
                file: file.to_owned(),
                line: line_of(text, key.span().start),
                message: format!(
                    "`{k}` is not a key of a {} rule (its own keys: {})",
                    kind.as_str(),
                    kind.keys().join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Compile a parsed rule into its state machine. `dir` resolves a relative `policy_file`.
pub(crate) fn compile(
    rf: &RuleFile,
    file: &str,
    text: &str,
    dir: Option<&Path>,
    d: &Defaults,
    allow_override: Option<&[EdgeSpec]>,
) -> Result<Rule, RuleError> {
    let cx = Ctx {
        file,
        text,
        normalize_keys: rf.normalize_keys,
    };
    let k = &rf.kind;
    let c = Common {
        suppress_ns: match &rf.suppress {
            Some(s) => cx.dur(s)?,
            None => d.suppress_ns,
        },
        allowed_lateness_ns: match &rf.allowed_lateness {
            Some(s) => cx.dur(s)?,
            None => d.allowed_lateness_ns,
        },
        max_groups: match &rf.max_groups {
            Some(m) if *m.get_ref() == 0 => {
                return Err(cx.err(m.span(), "max_groups must be ≥ 1"));
            }
            Some(m) => *m.get_ref(),
            None => d.max_groups,
        },
        group_by: match &rf.group_by {
            Some(g) => cx.group_by(g)?,
            None => Vec::new(),
        },
    };
    let needs_group = |what: &str| -> Result<(), RuleError> {
        if c.group_by.is_empty() {
            Err(cx.err(k.span(), format!("a {what} rule needs `group_by`")))
        } else {
            Ok(())
        }
    };
    let kind = match k.get_ref() {
        KindName::Sigma | KindName::SigmaCorrelation => {
            return Err(cx.err(k.span(), "Sigma rules are YAML files (`*.yml`), not TOML"));
        }
        KindName::Threshold => {
            needs_group("threshold")?;
            let ratio = ratio(&cx, rf)?;
            Kind::Threshold(Threshold::new(ThresholdSpec {
                filter: rule_filter(&cx, rf)?,
                group_by: c.group_by.clone(),
                count: count(&cx, cx.need(&rf.count, "count", k)?)?,
                window_ns: cx.dur(cx.need(&rf.window, "window", k)?)?,
                suppress_ns: c.suppress_ns,
                allowed_lateness_ns: c.allowed_lateness_ns,
                max_groups: c.max_groups,
                ratio,
            }))
        }
        KindName::DistinctCount => {
            needs_group("distinct_count")?;
            let f = cx.need(&rf.field, "field", k)?;
            let ratio = ratio(&cx, rf)?;
            Kind::DistinctCount(DistinctCount::new(DistinctSpec {
                filter: rule_filter(&cx, rf)?,
                group_by: c.group_by.clone(),
                field: (f.get_ref().clone(), cx.field(f)?),
                count: count(&cx, cx.need(&rf.count, "count", k)?)?,
                window_ns: cx.dur(cx.need(&rf.window, "window", k)?)?,
                suppress_ns: c.suppress_ns,
                allowed_lateness_ns: c.allowed_lateness_ns,
                max_groups: c.max_groups,
                ratio,
            }))
        }
        KindName::Allowlist => Kind::Allowlist(allowlist(&cx, rf, &c, dir, d, allow_override)?),
        KindName::FirstSeen => {
            needs_group("first_seen")?;
            Kind::FirstSeen(FirstSeen::new(FirstSeenSpec {
                filter: rule_filter(&cx, rf)?,
                group_by: c.group_by.clone(),
                learn_ns: match &rf.learn {
                    Some(l) => cx.dur(l)?,
                    None => 0,
                },
                forget_ns: cx.dur(cx.need(&rf.forget, "forget", k)?)?,
                suppress_ns: c.suppress_ns,
                allowed_lateness_ns: c.allowed_lateness_ns,
                max_groups: c.max_groups,
            }))
        }
        KindName::Sequence => {
            needs_group("sequence")?;
            Kind::Sequence(Sequence::new(SequenceSpec {
                group_by: c.group_by.clone(),
                first: cx.filter(cx.need(&rf.first, "first", k)?)?,
                first_count: count(&cx, cx.need(&rf.first_count, "first_count", k)?)?,
                then: cx.filter(cx.need(&rf.then, "then", k)?)?,
                consecutive: rf.consecutive.as_ref().is_some_and(|c| *c.get_ref()),
                window_ns: cx.dur(cx.need(&rf.window, "window", k)?)?,
                suppress_ns: c.suppress_ns,
                allowed_lateness_ns: c.allowed_lateness_ns,
                max_groups: c.max_groups,
            }))
        }
        KindName::Absence => {
            needs_group("absence")?;
            Kind::Absence(absence(&cx, rf, &c)?)
        }
        KindName::RateSpike => {
            needs_group("rate_spike")?;
            Kind::RateSpike(rate_spike(&cx, rf, &c)?)
        }
    };
    let group_names = match &kind {
        Kind::Allowlist(_) => vec![
            rf.caller_field
                .as_ref()
                .map_or("caller_principal".into(), |f| f.get_ref().clone()),
            rf.callee_field
                .as_ref()
                .map_or("callee_principal".into(), |f| f.get_ref().clone()),
        ],
        _ => c.group_by.into_iter().map(|(n, _)| n).collect(),
    };
    Ok(Rule {
        meta: Meta {
            id: rf.id.get_ref().clone(),
            version: rf.version,
            title: rf.title.clone(),
            severity: rf.severity,
            description: rf.description.clone(),
            kind: *k.get_ref(),
            group_names,
            suppress_ns: c.suppress_ns,
            source: file.to_owned(),
        },
        kind,
    })
}

/// What every kind takes from its rule file alike (each with the defaults when absent).
struct Common {
    group_by: GroupBy,
    suppress_ns: i64,
    allowed_lateness_ns: i64,
    max_groups: usize,
}

/// The rule's `filter`, or one every event passes.
fn rule_filter(cx: &Ctx<'_>, rf: &RuleFile) -> Result<Filter, RuleError> {
    match &rf.filter {
        Some(f) => cx.filter(f),
        None => Ok(Filter::parse("kind exists").expect("a fixed filter parses")),
    }
}

/// A count of at least one.
fn count(cx: &Ctx<'_>, c: &Spanned<u64>) -> Result<usize, RuleError> {
    match usize::try_from(*c.get_ref()) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(cx.err(c.span(), "a count must be ≥ 1")),
    }
}

/// An allowlist rule: its edge fields, and its edges — its own `allow`, its `policy_file`'s
/// (relative to the rules directory `dir`), or the declared graph (`d.allowlist`) when it
/// names none; `allow_override` in place of all of them (a rule test's).
fn allowlist(
    cx: &Ctx<'_>,
    rf: &RuleFile,
    c: &Common,
    dir: Option<&Path>,
    d: &Defaults,
    allow_override: Option<&[EdgeSpec]>,
) -> Result<Allowlist, RuleError> {
    let k = &rf.kind;
    let fld = |v: &Option<Spanned<String>>, default: &str| -> Result<Field, RuleError> {
        match v {
            Some(n) => cx.field(n),
            None => Ok(field(default).expect("default fields exist")),
        }
    };
    let opt = |v: &Option<Spanned<String>>| -> Result<Option<Field>, RuleError> {
        v.as_ref().map(|n| cx.field(n)).transpose()
    };
    let mut edges = rf.allow.clone();
    if let Some(p) = &rf.policy_file {
        let path = match dir {
            Some(dir) => dir.join(p.get_ref()),
            None => PathBuf::from(p.get_ref()),
        };
        edges.extend(
            load_policy(&path)
                .map_err(|e| cx.err(p.span(), e.to_string()))?
                .edges,
        );
    } else if rf.allow.is_empty()
        && let Some(g) = &d.allowlist
    {
        edges.extend(g.edges.iter().cloned());
    }
    if let Some(o) = allow_override {
        edges = o.to_vec();
    }
    if let Some(kind) = &rf.edge_kind {
        match kind.get_ref().as_str() {
            "authz" => edges.retain(|e| e.kind.as_deref().is_none_or(|k| k == "authz")),
            "flow" => edges.retain(|e| e.kind.as_deref() == Some("flow")),
            other => {
                return Err(cx.err(
                    kind.span(),
                    format!("edge_kind {other:?}: `authz` or `flow`"),
                ));
            }
        }
    }
    let al_ratio = ratio(cx, rf)?;
    if al_ratio.is_some() && !rf.declared.as_ref().is_some_and(|d| *d.get_ref()) {
        return Err(cx.err(
            k.span(),
            "`of` and `min_ratio` on an allowlist rule need `declared = true`",
        ));
    }
    // A rule about flows is quiet while the graph declares none (it would call every
    // connection undeclared).
    let quiet = rf.edge_kind.as_ref().is_some_and(|k| k.get_ref() == "flow") && edges.is_empty();
    Allowlist::new(AllowlistSpec {
        filter: rule_filter(cx, rf)?,
        fields: EdgeFields {
            caller: fld(&rf.caller_field, "caller_principal")?,
            callee: fld(&rf.callee_field, "callee_principal")?,
            method: opt(&rf.method_field)?,
            path: opt(&rf.path_field)?,
            caller_namespace: opt(&rf.caller_namespace_field)?,
            callee_namespace: opt(&rf.callee_namespace_field)?,
            port: opt(&rf.port_field)?,
        },
        edges,
        suppress_ns: c.suppress_ns,
        allowed_lateness_ns: c.allowed_lateness_ns,
        max_groups: c.max_groups,
        quiet,
        ratio: al_ratio,
        declared: match rf.declared.as_ref().is_some_and(|d| *d.get_ref()) {
            false => None,
            true => Some((
                *cx.need(&rf.count, "count", k)?.get_ref(),
                cx.dur(cx.need(&rf.window, "window", k)?)?,
            )),
        },
    })
    .map_err(|e| cx.err(k.span(), e.to_string()))
}

/// An absence rule: what pairs a trigger with its companion (`match_by`; default the alert's
/// `group_by`, which must be among them) and what of it says the trigger needed one.
fn absence(cx: &Ctx<'_>, rf: &RuleFile, c: &Common) -> Result<crate::absence::Absence, RuleError> {
    let k = &rf.kind;
    let match_by = match &rf.match_by {
        Some(m) => {
            if let Some((n, _)) = c
                .group_by
                .iter()
                .find(|(g, _)| !m.get_ref().iter().any(|n| n == g))
            {
                return Err(cx.err(m.span(), format!("group_by field `{n}` is not in match_by")));
            }
            cx.group_by(m)?
        }
        None => c.group_by.clone(),
    };
    Ok(crate::absence::Absence::new(crate::absence::AbsenceSpec {
        trigger: rule_filter(cx, rf)?,
        expect: cx.filter(cx.need(&rf.expect, "expect", k)?)?,
        group_by: c.group_by.clone(),
        within_ns: cx.dur(cx.need(&rf.within, "within", k)?)?,
        protected_by: match &rf.protected_by {
            Some(p) => {
                if let Some(n) = p
                    .get_ref()
                    .iter()
                    .find(|n| !match_by.iter().any(|(g, _)| g == *n))
                {
                    return Err(cx.err(
                        p.span(),
                        format!("protected_by field `{n}` is not in match_by"),
                    ));
                }
                cx.group_by(p)?
            }
            None => Vec::new(),
        },
        match_by,
        suppress_ns: c.suppress_ns,
        allowed_lateness_ns: c.allowed_lateness_ns,
        max_groups: c.max_groups,
    }))
}

/// A rate-spike rule, its baseline and thresholds checked (and defaulted).
fn rate_spike(cx: &Ctx<'_>, rf: &RuleFile, c: &Common) -> Result<RateSpike, RuleError> {
    let k = &rf.kind;
    let baseline = rf.baseline_buckets.as_ref().map_or(60, |b| *b.get_ref());
    if baseline == 0 {
        return Err(cx.err(k.span(), "baseline_buckets must be ≥ 1"));
    }
    let z = rf.z.as_ref().map_or(4.0, |z| *z.get_ref());
    if !(z.is_finite() && z > 0.0) {
        return Err(cx.err(k.span(), "z must be a positive number"));
    }
    let peak_factor = rf.peak_factor.as_ref().map_or(0.0, |p| *p.get_ref());
    if !(peak_factor.is_finite() && peak_factor >= 0.0) {
        return Err(cx.err(k.span(), "peak_factor must be a number ≥ 0"));
    }
    Ok(RateSpike::new(RateSpikeSpec {
        filter: rule_filter(cx, rf)?,
        group_by: c.group_by.clone(),
        bucket_ns: cx.dur(cx.need(&rf.bucket, "bucket", k)?)?,
        baseline_buckets: baseline,
        min_history_buckets: rf
            .min_history_buckets
            .as_ref()
            .map_or(baseline / 2, |b| *b.get_ref()),
        z,
        min_count: rf.min_count.as_ref().map_or(100, |m| *m.get_ref()),
        peak_factor,
        peak_half_life_ns: match &rf.peak_half_life {
            Some(h) => cx.dur(h)?,
            None => 24 * 3600 * 1_000_000_000,
        },
        suppress_ns: c.suppress_ns,
        allowed_lateness_ns: c.allowed_lateness_ns,
        max_groups: c.max_groups,
    }))
}
