//! Rules as code: rule files (TOML) parsed, checked and compiled into rule state machines
//! (`compile.rs`), the default pack, and the tests rule files carry.
//!
//! A rule file is one rule; see `detect/rules/` (the default pack) and the README for the
//! format. Every problem is reported with the file, the line and the reason, and a bad file
//! never stops the others from loading.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::alerts::Severity;
use crate::allowlist::{EdgeSpec, PolicyGraph};

mod compile;
mod kind;
#[cfg(test)]
mod tests;

use compile::line_of;
pub use compile::parse;
pub(crate) use compile::{compile, duration_ns};
pub use kind::Kind;
pub use kind::SavedKind;

/// The default pack, compiled into the binary (`detect/rules/*.toml`).
pub const DEFAULT_PACK: &[(&str, &str)] = &[
    (
        "api_denied_burst.toml",
        include_str!("../../rules/api_denied_burst.toml"),
    ),
    (
        "own_record_claimed.toml",
        include_str!("../../rules/own_record_claimed.toml"),
    ),
    (
        "denial_burst_caller.toml",
        include_str!("../../rules/denial_burst_caller.toml"),
    ),
    (
        "denial_burst_source_ip.toml",
        include_str!("../../rules/denial_burst_source_ip.toml"),
    ),
    (
        "k8s_forbidden_burst.toml",
        include_str!("../../rules/k8s_forbidden_burst.toml"),
    ),
    (
        "k8s_forbidden_public_ip.toml",
        include_str!("../../rules/k8s_forbidden_public_ip.toml"),
    ),
    (
        "k8s_secret_access_denied.toml",
        include_str!("../../rules/k8s_secret_access_denied.toml"),
    ),
    (
        "dropped_flow_burst.toml",
        include_str!("../../rules/dropped_flow_burst.toml"),
    ),
    (
        "permission_probing.toml",
        include_str!("../../rules/permission_probing.toml"),
    ),
    (
        "unexpected_caller_declared.toml",
        include_str!("../../rules/unexpected_caller_declared.toml"),
    ),
    (
        "unexpected_flow_declared.toml",
        include_str!("../../rules/unexpected_flow_declared.toml"),
    ),
    (
        "declared_but_denied.toml",
        include_str!("../../rules/declared_but_denied.toml"),
    ),
    (
        "unexpected_caller_learned.toml",
        include_str!("../../rules/unexpected_caller_learned.toml"),
    ),
    (
        "deny_then_allow.toml",
        include_str!("../../rules/deny_then_allow.toml"),
    ),
    (
        "rate_spike.toml",
        include_str!("../../rules/rate_spike.toml"),
    ),
    (
        "bruteforce_source_ip.toml",
        include_str!("../../rules/bruteforce_source_ip.toml"),
    ),
    (
        "bruteforce_slow.toml",
        include_str!("../../rules/bruteforce_slow.toml"),
    ),
    (
        "password_spraying.toml",
        include_str!("../../rules/password_spraying.toml"),
    ),
    ("port_scan.toml", include_str!("../../rules/port_scan.toml")),
    ("fan_out.toml", include_str!("../../rules/fan_out.toml")),
    (
        "admin_port_new_edge.toml",
        include_str!("../../rules/admin_port_new_edge.toml"),
    ),
    (
        "sidecar_bypass.toml",
        include_str!("../../rules/sidecar_bypass.toml"),
    ),
    (
        "telemetry_offset_gap.toml",
        include_str!("../../rules/telemetry_offset_gap.toml"),
    ),
    (
        "telemetry_hubble_lost.toml",
        include_str!("../../rules/telemetry_hubble_lost.toml"),
    ),
    (
        "time_skewed_source.toml",
        include_str!("../../rules/time_skewed_source.toml"),
    ),
    (
        "time_late_source.toml",
        include_str!("../../rules/time_late_source.toml"),
    ),
];

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    Threshold,
    DistinctCount,
    Allowlist,
    FirstSeen,
    Sequence,
    RateSpike,
    Absence,
    /// A Sigma detection rule (a YAML file, never `kind =` in a TOML one).
    #[serde(skip_deserializing)]
    Sigma,
    /// A Sigma correlation rule.
    #[serde(skip_deserializing)]
    SigmaCorrelation,
}

impl KindName {
    pub fn as_str(self) -> &'static str {
        match self {
            KindName::Threshold => "threshold",
            KindName::DistinctCount => "distinct_count",
            KindName::Allowlist => "allowlist",
            KindName::FirstSeen => "first_seen",
            KindName::Sequence => "sequence",
            KindName::RateSpike => "rate_spike",
            KindName::Absence => "absence",
            KindName::Sigma => "sigma",
            KindName::SigmaCorrelation => "sigma_correlation",
        }
    }
}

/// When a rule is on, relative to the configured policy graph.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Requires {
    /// Only when an allowlist (policy graph) is configured.
    Allowlist,
    /// Only when none is.
    NoAllowlist,
}

/// A rule file as written. Which keys a kind needs is checked after parsing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub id: Spanned<String>,
    pub version: u32,
    pub title: String,
    pub severity: Severity,
    #[serde(default)]
    pub description: String,
    /// Why the defaults are what they are; comparable rules elsewhere.
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub requires: Option<Requires>,
    pub kind: Spanned<KindName>,
    pub filter: Option<Spanned<String>>,
    pub group_by: Option<Spanned<Vec<String>>>,
    pub count: Option<Spanned<u64>>,
    pub window: Option<Spanned<String>>,
    pub suppress: Option<Spanned<String>>,
    pub allowed_lateness: Option<Spanned<String>>,
    pub max_groups: Option<Spanned<usize>>,
    /// Group keys' text normalised (NFKC, lower case) so that values written differently are
    /// one group: `alice`, `Alice`, `ａｌｉｃｅ`. Default false.
    #[serde(default)]
    pub normalize_keys: bool,
    /// threshold, distinct_count: the base rate (events a group's matches are judged
    /// against) and the share of it they must be to fire.
    pub of: Option<Spanned<String>>,
    pub min_ratio: Option<Spanned<f64>>,
    // distinct_count
    pub field: Option<Spanned<String>>,
    // allowlist
    pub caller_field: Option<Spanned<String>>,
    pub callee_field: Option<Spanned<String>>,
    pub caller_namespace_field: Option<Spanned<String>>,
    pub callee_namespace_field: Option<Spanned<String>>,
    pub port_field: Option<Spanned<String>>,
    /// Which edges of the graph the rule checks: `authz` (edges of that kind or of none) or
    /// `flow` (flow edges only: a graph of principals says nothing about connections).
    pub edge_kind: Option<Spanned<String>>,
    /// Inverted: fire on `count` events within `window` on edges the graph *does* declare.
    pub declared: Option<Spanned<bool>>,
    pub method_field: Option<Spanned<String>>,
    pub path_field: Option<Spanned<String>>,
    pub policy_file: Option<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<EdgeSpec>,
    // first_seen
    pub learn: Option<Spanned<String>>,
    pub forget: Option<Spanned<String>>,
    // sequence
    pub first: Option<Spanned<String>>,
    pub first_count: Option<Spanned<u64>>,
    pub then: Option<Spanned<String>>,
    // absence (the trigger is `filter`)
    pub expect: Option<Spanned<String>>,
    pub within: Option<Spanned<String>>,
    pub protected_by: Option<Spanned<Vec<String>>>,
    pub match_by: Option<Spanned<Vec<String>>>,
    /// The `first` events must be a run: a `then` event that does not complete the sequence
    /// ends it (a success after one-off failures is normal).
    pub consecutive: Option<Spanned<bool>>,
    // rate_spike
    pub bucket: Option<Spanned<String>>,
    pub baseline_buckets: Option<Spanned<u32>>,
    pub min_history_buckets: Option<Spanned<u32>>,
    pub z: Option<Spanned<f64>>,
    pub min_count: Option<Spanned<u64>>,
    pub peak_factor: Option<Spanned<f64>>,
    pub peak_half_life: Option<Spanned<String>>,
    #[serde(default, rename = "test")]
    pub tests: Vec<RuleTest>,
}

fn yes() -> bool {
    true
}

/// A test a rule file carries: events in, the alerts expected out.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTest {
    pub name: String,
    #[serde(default, rename = "event")]
    pub events: Vec<TestEvent>,
    /// How many alerts the events raise (updates of an open alert are not new alerts).
    pub alerts: usize,
    /// The alerts' group keys, in firing order (each a list of the group-by values; "" for a
    /// missing one). Optional.
    #[serde(default)]
    pub keys: Vec<Vec<String>>,
    /// For allowlist rules: the policy graph to test against (else the rule's own).
    #[serde(default)]
    pub allow: Option<Vec<EdgeSpec>>,
}

/// Test input: an event's canonical fields, or a raw record in any source format.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEvent {
    #[serde(default)]
    pub fields: Option<toml::Table>,
    #[serde(default)]
    pub raw: Option<String>,
    /// Event time as an offset from the test's start ("90s"); default: `every` after the
    /// previous event, or the raw record's own time.
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub repeat: Option<u32>,
    /// Gap between repeats (default 1s).
    #[serde(default)]
    pub every: Option<String>,
}

/// A rule problem: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Settings the engine gives every rule that does not set its own.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
    pub suppress_ns: i64,
    /// The configured policy graph, if any.
    pub allowlist: Option<PolicyGraph>,
    /// Processing pipelines applied to every Sigma rule (`detect.sigma_pipelines`).
    pub sigma_pipelines: Vec<rsigma_eval::Pipeline>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            allowed_lateness_ns: 30 * 1_000_000_000,
            max_groups: 100_000,
            suppress_ns: 3600 * 1_000_000_000,
            allowlist: None,
            sigma_pipelines: Vec::new(),
        }
    }
}

/// What every alert of a rule says about it.
#[derive(Clone, Debug)]
pub struct Meta {
    pub id: String,
    pub version: u32,
    pub title: String,
    pub severity: Severity,
    pub description: String,
    pub kind: KindName,
    /// Names of the group key's parts.
    pub group_names: Vec<String>,
    pub suppress_ns: i64,
    /// Where it came from (file path, or `default:<name>`).
    pub source: String,
}

/// A loaded rule: what it is, and its state machine.
#[derive(Debug)]
pub struct Rule {
    pub meta: Meta,
    pub kind: Kind,
}

/// The outcome of loading rules: the rules that loaded, the problems of the ones that did
/// not, and the ones switched off (by `enabled = false` or `requires`), with why.
#[derive(Debug, Default)]
pub struct Loaded {
    pub rules: Vec<(Rule, RuleFile)>,
    /// Sigma rules (`*.yml`), which have no rule file of Vigil's.
    pub sigma: Vec<Rule>,
    pub errors: Vec<RuleError>,
    /// Rules that loaded but cannot do all they say (a Sigma rule naming a field its events
    /// never have).
    pub warnings: Vec<RuleError>,
    pub inactive: Vec<(String, String)>,
}

impl Loaded {
    /// Every loaded rule, Vigil's and Sigma's.
    pub fn all(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|(r, _)| r).chain(&self.sigma)
    }

    /// Every loaded rule, for an engine.
    pub fn into_rules(self) -> Vec<Rule> {
        self.rules
            .into_iter()
            .map(|(r, _)| r)
            .chain(self.sigma)
            .collect()
    }
}

/// Why a policy graph file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("policy graph {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy graph {}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Read a policy graph file (TOML `[[edge]]` tables).
pub fn load_policy(path: &Path) -> Result<PolicyGraph, PolicyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| PolicyFileError::Parse {
        path: path.to_owned(),
        line: e.span().map_or(1, |s| line_of(&text, s.start)),
        message: e.message().to_owned(),
    })
}

/// One rule source: a name (file path or `default:<file>`), its text, and its directory.
pub struct Source {
    pub name: String,
    pub text: String,
    pub dir: Option<PathBuf>,
}

/// The rule sources: the default pack (unless `with_defaults` is false), then every `*.toml`
/// and Sigma file (`*.yml`, `*.yaml`) in `dir` (sorted). A directory rule with a default rule's id replaces it.
pub fn sources(dir: Option<&Path>, with_defaults: bool) -> Result<Vec<Source>, RuleError> {
    let mut out = Vec::new();
    if with_defaults {
        for (name, text) in DEFAULT_PACK {
            out.push(Source {
                name: format!("default:{name}"),
                text: (*text).to_owned(),
                dir: None,
            });
        }
    }
    if let Some(dir) = dir {
        let io = |e: std::io::Error| RuleError {
            file: dir.display().to_string(),
            line: 0,
            message: e.to_string(),
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.to_string_lossy();
                (p.extension().is_some_and(|x| x == "toml") || crate::sigma::is_sigma(&name))
                    && p.is_file()
            })
            .collect();
        paths.sort();
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(io)?;
            out.push(Source {
                name: p.display().to_string(),
                text,
                dir: Some(dir.to_owned()),
            });
        }
    }
    Ok(out)
}

/// Load rules from sources: each parsed and compiled on its own (a bad one is reported and
/// skipped); duplicates by id keep the last (a directory rule overrides a default).
pub fn load(sources: &[Source], d: &Defaults) -> Loaded {
    let mut out = Loaded::default();
    let (sigma, sources): (Vec<&Source>, Vec<&Source>) = sources
        .iter()
        .partition(|s| crate::sigma::is_sigma(&s.name));
    for s in sources {
        let rf = match parse(&s.name, &s.text) {
            Ok(rf) => rf,
            Err(e) => {
                out.errors.push(e);
                continue;
            }
        };
        let id = rf.id.get_ref().clone();
        out.rules.retain(|(r, _)| r.meta.id != id);
        out.inactive.retain(|(i, _)| *i != id);
        if !rf.enabled {
            out.inactive.push((id, "enabled = false".into()));
            continue;
        }
        match (rf.requires, d.allowlist.is_some()) {
            (Some(Requires::Allowlist), false)
                if rf.allow.is_empty() && rf.policy_file.is_none() =>
            {
                out.inactive
                    .push((id, "needs an allowlist (detect.allowlist_file)".into()));
                continue;
            }
            (Some(Requires::NoAllowlist), true) => {
                out.inactive
                    .push((id, "replaced by the configured allowlist".into()));
                continue;
            }
            _ => {}
        }
        match compile(&rf, &s.name, &s.text, s.dir.as_deref(), d, None) {
            Ok(r) => out.rules.push((r, rf)),
            Err(e) => out.errors.push(e),
        }
    }
    crate::sigma::load(&sigma, d, &mut out);
    out
}
