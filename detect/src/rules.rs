//! Rules as code: rule files (TOML) parsed, checked and compiled into rule state machines,
//! the default pack, and the tests rule files carry.
//!
//! A rule file is one rule; see `detect/rules/` (the default pack) and the README for the
//! format. Every problem is reported with the file, the line and the reason, and a bad file
//! never stops the others from loading.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::alerts::Severity;
use crate::allowlist::{Allowlist, AllowlistSpec, EdgeFields, EdgeSpec, PolicyGraph};
use crate::distinct::{DistinctCount, DistinctSpec};
use crate::filter::{Field, FieldType, Filter, Row, field};
use crate::first_seen::{FirstSeen, FirstSeenSpec};
use crate::group::GroupBy;
use crate::hit::{Counters, EvRef, Outcome};
use crate::rate_spike::{RateSpike, RateSpikeSpec};
use crate::sequence::{Sequence, SequenceSpec};
use crate::threshold::{Threshold, ThresholdSpec};

/// The default pack, compiled into the binary (`detect/rules/*.toml`).
pub const DEFAULT_PACK: &[(&str, &str)] = &[
    (
        "api_denied_burst.toml",
        include_str!("../rules/api_denied_burst.toml"),
    ),
    (
        "own_record_claimed.toml",
        include_str!("../rules/own_record_claimed.toml"),
    ),
    (
        "denial_burst_caller.toml",
        include_str!("../rules/denial_burst_caller.toml"),
    ),
    (
        "denial_burst_source_ip.toml",
        include_str!("../rules/denial_burst_source_ip.toml"),
    ),
    (
        "k8s_forbidden_burst.toml",
        include_str!("../rules/k8s_forbidden_burst.toml"),
    ),
    (
        "k8s_forbidden_public_ip.toml",
        include_str!("../rules/k8s_forbidden_public_ip.toml"),
    ),
    (
        "k8s_secret_access_denied.toml",
        include_str!("../rules/k8s_secret_access_denied.toml"),
    ),
    (
        "dropped_flow_burst.toml",
        include_str!("../rules/dropped_flow_burst.toml"),
    ),
    (
        "permission_probing.toml",
        include_str!("../rules/permission_probing.toml"),
    ),
    (
        "unexpected_caller_declared.toml",
        include_str!("../rules/unexpected_caller_declared.toml"),
    ),
    (
        "unexpected_flow_declared.toml",
        include_str!("../rules/unexpected_flow_declared.toml"),
    ),
    (
        "declared_but_denied.toml",
        include_str!("../rules/declared_but_denied.toml"),
    ),
    (
        "unexpected_caller_learned.toml",
        include_str!("../rules/unexpected_caller_learned.toml"),
    ),
    (
        "deny_then_allow.toml",
        include_str!("../rules/deny_then_allow.toml"),
    ),
    ("rate_spike.toml", include_str!("../rules/rate_spike.toml")),
    (
        "bruteforce_source_ip.toml",
        include_str!("../rules/bruteforce_source_ip.toml"),
    ),
    (
        "bruteforce_slow.toml",
        include_str!("../rules/bruteforce_slow.toml"),
    ),
    (
        "password_spraying.toml",
        include_str!("../rules/password_spraying.toml"),
    ),
    ("port_scan.toml", include_str!("../rules/port_scan.toml")),
    ("fan_out.toml", include_str!("../rules/fan_out.toml")),
    (
        "admin_port_new_edge.toml",
        include_str!("../rules/admin_port_new_edge.toml"),
    ),
    (
        "sidecar_bypass.toml",
        include_str!("../rules/sidecar_bypass.toml"),
    ),
    (
        "telemetry_offset_gap.toml",
        include_str!("../rules/telemetry_offset_gap.toml"),
    ),
    (
        "telemetry_hubble_lost.toml",
        include_str!("../rules/telemetry_hubble_lost.toml"),
    ),
    (
        "time_skewed_source.toml",
        include_str!("../rules/time_skewed_source.toml"),
    ),
    (
        "time_late_source.toml",
        include_str!("../rules/time_late_source.toml"),
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
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            allowed_lateness_ns: 30 * 1_000_000_000,
            max_groups: 100_000,
            suppress_ns: 3600 * 1_000_000_000,
            allowlist: None,
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

/// A rule state machine of any kind.
#[derive(Debug)]
pub enum Kind {
    Threshold(Threshold),
    DistinctCount(DistinctCount),
    Allowlist(Allowlist),
    FirstSeen(FirstSeen),
    Sequence(Sequence),
    RateSpike(RateSpike),
    Absence(crate::absence::Absence),
}

macro_rules! each {
    ($self:expr, $r:ident => $e:expr) => {
        match $self {
            Kind::Threshold($r) => $e,
            Kind::DistinctCount($r) => $e,
            Kind::Allowlist($r) => $e,
            Kind::FirstSeen($r) => $e,
            Kind::Sequence($r) => $e,
            Kind::RateSpike($r) => $e,
            Kind::Absence($r) => $e,
        }
    };
}

impl Kind {
    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        each!(self, r => r.observe(row, ev))
    }

    pub fn expire(&mut self) {
        each!(self, r => r.expire())
    }

    /// Close the group's open alert (it was resolved): its next match can fire a new one.
    pub fn close(&mut self, key: &crate::group::PackedKey) {
        use crate::group::HasOpen;
        let fields = self.group_fields().clone();
        each!(self, r => {
            if let Some(o) = r.st.groups.get_by_key_mut(&fields, key).and_then(|g| g.open_mut()) {
                o.alert = None;
            }
        })
    }

    /// The fields that make a group's key.
    pub fn group_fields(&self) -> &GroupBy {
        match self {
            Kind::Threshold(r) => &r.spec.group_by,
            Kind::DistinctCount(r) => &r.spec.group_by,
            Kind::Allowlist(r) => &r.group_by,
            Kind::FirstSeen(r) => &r.spec.group_by,
            Kind::Sequence(r) => &r.spec.group_by,
            Kind::RateSpike(r) => &r.spec.group_by,
            Kind::Absence(r) => &r.spec.group_by,
        }
    }

    pub fn counters(&self) -> Counters {
        each!(self, r => r.st.counters)
    }

    /// For a rule that learns before it alerts (`first_seen`): `Some(until)`, the event time
    /// its learning ends (`None`: it has seen nothing yet, so it has not started); `None` for
    /// every other kind.
    pub fn learning_until(&self) -> Option<Option<i64>> {
        match self {
            Kind::FirstSeen(r) => Some(r.started_ns.map(|s| s.saturating_add(r.spec.learn_ns))),
            _ => None,
        }
    }

    /// Whether the rule is still learning (before its first event, or until its learning
    /// period has passed in event time).
    pub fn is_learning(&self) -> bool {
        match self {
            Kind::FirstSeen(r) => r
                .started_ns
                .is_none_or(|s| r.st.clock.newest_ns < s.saturating_add(r.spec.learn_ns)),
            _ => false,
        }
    }

    /// What the watermark decided (absence rules: triggers whose companion never came; see
    /// `absence::Absence::due` for `log_ns`).
    pub fn due(
        &mut self,
        watermark_ns: i64,
        log_ns: &dyn Fn(u32) -> i64,
    ) -> Vec<crate::absence::Due> {
        match self {
            Kind::Absence(r) => r.due(watermark_ns, log_ns),
            _ => Vec::new(),
        }
    }

    /// Count a late event this rule matched (the engine judges lateness).
    pub fn note_late(&mut self) {
        each!(self, r => r.st.counters.late += 1)
    }

    /// Keep the rule's clock at or before `max_ns` (a restored state saved by a version that
    /// let a forged event time move it).
    pub fn clamp_clock(&mut self, max_ns: i64) {
        each!(self, r => r.st.clock.clamp(max_ns))
    }

    pub fn groups(&self) -> usize {
        each!(self, r => r.st.groups.len())
    }

    /// The bytes the rule's state holds (its groups and what indexes them).
    pub fn weigh(&self) -> usize {
        match self {
            Kind::Absence(r) => r.weigh(),
            k => each!(k, r => r.st.groups.weigh()),
        }
    }

    /// Evict the least recently seen sixteenth of the groups (detection's memory budget):
    /// how many went; counted as evictions.
    pub fn shed(&mut self) -> u64 {
        let n = match &mut *self {
            Kind::Absence(r) => r.shed(),
            k => each!(k, r => r.st.groups.shed()),
        };
        each!(self, r => r.st.counters.evicted = r.st.groups.evicted);
        n
    }

    /// The state, for the engine's checkpoint: serialized straight from the groups (no copy
    /// of them is built, however many there are).
    pub fn saved(&self) -> SavedKind<'_> {
        SavedKind(self)
    }

    /// Restore state saved by [`Kind::saved`] (of the same rule version).
    pub fn restore(&mut self, v: &serde_json::value::RawValue) -> serde_json::Result<()> {
        #[derive(Deserialize)]
        struct Saved<S> {
            clock: crate::group::Clock,
            counters: Counters,
            extra: Option<i64>,
            groups: Vec<crate::group::Entry<S>>,
        }
        fn load<S: serde::de::DeserializeOwned>(
            st: &mut crate::group::State<S>,
            by: &GroupBy,
            v: &serde_json::value::RawValue,
        ) -> serde_json::Result<Option<i64>> {
            let s: Saved<S> = serde_json::from_str(v.get())?;
            st.clock.newest_ns = s.clock.newest_ns;
            st.counters = s.counters;
            st.groups.restore(by, s.groups);
            Ok(s.extra)
        }
        let by = self.group_fields().clone();
        match self {
            Kind::FirstSeen(r) => r.started_ns = load(&mut r.st, &by, v)?,
            Kind::Absence(r) => {
                // Its groups are keyed by what pairs events, not by the alert's key.
                let by = r.spec.match_by.clone();
                load(&mut r.st, &by, v)?;
                r.rebuild_due();
            }
            _ => {
                each!(self, r => load(&mut r.st, &by, v)?);
            }
        }
        Ok(())
    }
}

/// A rule's state as [`Kind::saved`] writes it: clock, counters, the kind's extra figure and
/// every group, borrowed.
pub struct SavedKind<'a>(&'a Kind);

impl Serialize for SavedKind<'_> {
    fn serialize<Ser: serde::Serializer>(&self, ser: Ser) -> Result<Ser::Ok, Ser::Error> {
        #[derive(Serialize)]
        struct Table<'a, S> {
            clock: &'a crate::group::Clock,
            counters: &'a Counters,
            extra: Option<i64>,
            groups: Vec<&'a crate::group::Entry<S>>,
        }
        fn table<S: Serialize, Ser: serde::Serializer>(
            st: &crate::group::State<S>,
            extra: Option<i64>,
            ser: Ser,
        ) -> Result<Ser::Ok, Ser::Error> {
            Table {
                clock: &st.clock,
                counters: &st.counters,
                extra,
                groups: st.groups.entries().collect(),
            }
            .serialize(ser)
        }
        match self.0 {
            Kind::FirstSeen(r) => table(&r.st, r.started_ns, ser),
            k => each!(k, r => table(&r.st, None, ser)),
        }
    }
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
    pub errors: Vec<RuleError>,
    pub inactive: Vec<(String, String)>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parse a duration like "30s", "5m", "1h 30m", "7d", "250ms".
pub fn duration_ns(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("duration {s:?}: {e}"))?;
    i64::try_from(d.as_nanos()).map_err(|_| format!("duration {s:?} is too long"))
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
        let ns = duration_ns(d.get_ref()).map_err(|e| self.err(d.span(), e))?;
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
        const RATIO: [&str; 2] = ["of", "min_ratio"];
        match self {
            KindName::Threshold => &["filter", "group_by", "count", "window", RATIO[0], RATIO[1]],
            KindName::DistinctCount => &[
                "filter", "group_by", "field", "count", "window", RATIO[0], RATIO[1],
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
                RATIO[0],
                RATIO[1],
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
    fn at<T>(v: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
        v.as_ref().map(Spanned::span)
    }
    let kind_span = rf.kind.span();
    let present = [
        ("filter", at(&rf.filter)),
        ("group_by", at(&rf.group_by)),
        ("count", at(&rf.count)),
        ("window", at(&rf.window)),
        ("of", at(&rf.of)),
        ("min_ratio", at(&rf.min_ratio)),
        ("field", at(&rf.field)),
        ("caller_field", at(&rf.caller_field)),
        ("callee_field", at(&rf.callee_field)),
        ("caller_namespace_field", at(&rf.caller_namespace_field)),
        ("callee_namespace_field", at(&rf.callee_namespace_field)),
        ("port_field", at(&rf.port_field)),
        ("edge_kind", at(&rf.edge_kind)),
        ("declared", at(&rf.declared)),
        ("method_field", at(&rf.method_field)),
        ("path_field", at(&rf.path_field)),
        ("policy_file", at(&rf.policy_file)),
        ("allow", (!rf.allow.is_empty()).then(|| kind_span.clone())),
        ("learn", at(&rf.learn)),
        ("forget", at(&rf.forget)),
        ("first", at(&rf.first)),
        ("first_count", at(&rf.first_count)),
        ("then", at(&rf.then)),
        ("expect", at(&rf.expect)),
        ("within", at(&rf.within)),
        ("protected_by", at(&rf.protected_by)),
        ("match_by", at(&rf.match_by)),
        ("consecutive", at(&rf.consecutive)),
        ("bucket", at(&rf.bucket)),
        ("baseline_buckets", at(&rf.baseline_buckets)),
        ("min_history_buckets", at(&rf.min_history_buckets)),
        ("z", at(&rf.z)),
        ("min_count", at(&rf.min_count)),
        ("peak_factor", at(&rf.peak_factor)),
        ("peak_half_life", at(&rf.peak_half_life)),
    ];
    let kind = *rf.kind.get_ref();
    for (key, span) in present {
        let Some(span) = span else { continue };
        if !kind.keys().contains(&key) {
            return Err(RuleError {
                file: file.to_owned(),
                line: line_of(text, span.start),
                message: format!(
                    "`{key}` is not a key of a {} rule (its own keys: {})",
                    kind.as_str(),
                    kind.keys().join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Compile a parsed rule into its state machine. `dir` resolves a relative `policy_file`.
pub fn compile(
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
    let filter = || -> Result<Filter, RuleError> {
        match &rf.filter {
            Some(f) => cx.filter(f),
            None => Ok(Filter::parse("kind exists").expect("a fixed filter parses")),
        }
    };
    let suppress_ns = match &rf.suppress {
        Some(s) => cx.dur(s)?,
        None => d.suppress_ns,
    };
    let allowed_lateness_ns = match &rf.allowed_lateness {
        Some(s) => cx.dur(s)?,
        None => d.allowed_lateness_ns,
    };
    let max_groups = match &rf.max_groups {
        Some(m) if *m.get_ref() == 0 => return Err(cx.err(m.span(), "max_groups must be ≥ 1")),
        Some(m) => *m.get_ref(),
        None => d.max_groups,
    };
    let group_by = match &rf.group_by {
        Some(g) => cx.group_by(g)?,
        None => Vec::new(),
    };
    let count = |c: &Spanned<u64>| -> Result<usize, RuleError> {
        match usize::try_from(*c.get_ref()) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(cx.err(c.span(), "a count must be ≥ 1")),
        }
    };
    let needs_group = |what: &str| -> Result<(), RuleError> {
        if group_by.is_empty() {
            Err(cx.err(k.span(), format!("a {what} rule needs `group_by`")))
        } else {
            Ok(())
        }
    };
    let kind = match k.get_ref() {
        KindName::Threshold => {
            needs_group("threshold")?;
            let ratio = ratio(&cx, rf)?;
            Kind::Threshold(Threshold::new(ThresholdSpec {
                filter: filter()?,
                group_by: group_by.clone(),
                count: count(cx.need(&rf.count, "count", k)?)?,
                window_ns: cx.dur(cx.need(&rf.window, "window", k)?)?,
                suppress_ns,
                allowed_lateness_ns,
                max_groups,
                ratio,
            }))
        }
        KindName::DistinctCount => {
            needs_group("distinct_count")?;
            let f = cx.need(&rf.field, "field", k)?;
            let ratio = ratio(&cx, rf)?;
            Kind::DistinctCount(DistinctCount::new(DistinctSpec {
                filter: filter()?,
                group_by: group_by.clone(),
                field: (f.get_ref().clone(), cx.field(f)?),
                count: count(cx.need(&rf.count, "count", k)?)?,
                window_ns: cx.dur(cx.need(&rf.window, "window", k)?)?,
                suppress_ns,
                allowed_lateness_ns,
                max_groups,
                ratio,
            }))
        }
        KindName::Allowlist => {
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
                edges.extend(load_policy(&path).map_err(|e| cx.err(p.span(), e))?.edges);
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
            let al_ratio = ratio(&cx, rf)?;
            if al_ratio.is_some() && !rf.declared.as_ref().is_some_and(|d| *d.get_ref()) {
                return Err(cx.err(
                    k.span(),
                    "`of` and `min_ratio` on an allowlist rule need `declared = true`",
                ));
            }
            // A rule about flows is quiet while the graph declares none (it would call every
            // connection undeclared).
            let quiet =
                rf.edge_kind.as_ref().is_some_and(|k| k.get_ref() == "flow") && edges.is_empty();
            let al = Allowlist::new(AllowlistSpec {
                filter: filter()?,
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
                suppress_ns,
                allowed_lateness_ns,
                max_groups,
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
            .map_err(|e| cx.err(k.span(), e))?;
            Kind::Allowlist(al)
        }
        KindName::FirstSeen => {
            needs_group("first_seen")?;
            Kind::FirstSeen(FirstSeen::new(FirstSeenSpec {
                filter: filter()?,
                group_by: group_by.clone(),
                learn_ns: match &rf.learn {
                    Some(l) => cx.dur(l)?,
                    None => 0,
                },
                forget_ns: cx.dur(cx.need(&rf.forget, "forget", k)?)?,
                suppress_ns,
                allowed_lateness_ns,
                max_groups,
            }))
        }
        KindName::Sequence => {
            needs_group("sequence")?;
            Kind::Sequence(Sequence::new(SequenceSpec {
                group_by: group_by.clone(),
                first: cx.filter(cx.need(&rf.first, "first", k)?)?,
                first_count: count(cx.need(&rf.first_count, "first_count", k)?)?,
                then: cx.filter(cx.need(&rf.then, "then", k)?)?,
                consecutive: rf.consecutive.as_ref().is_some_and(|c| *c.get_ref()),
                window_ns: cx.dur(cx.need(&rf.window, "window", k)?)?,
                suppress_ns,
                allowed_lateness_ns,
                max_groups,
            }))
        }
        KindName::Absence => {
            needs_group("absence")?;
            // What pairs a trigger with its companion (default: the alert's group_by, which
            // must be among them).
            let match_by = match &rf.match_by {
                Some(m) => {
                    if let Some((n, _)) = group_by
                        .iter()
                        .find(|(g, _)| !m.get_ref().iter().any(|n| n == g))
                    {
                        return Err(
                            cx.err(m.span(), format!("group_by field `{n}` is not in match_by"))
                        );
                    }
                    cx.group_by(m)?
                }
                None => group_by.clone(),
            };
            Kind::Absence(crate::absence::Absence::new(crate::absence::AbsenceSpec {
                trigger: filter()?,
                expect: cx.filter(cx.need(&rf.expect, "expect", k)?)?,
                group_by: group_by.clone(),
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
                suppress_ns,
                allowed_lateness_ns,
                max_groups,
            }))
        }
        KindName::RateSpike => {
            needs_group("rate_spike")?;
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
            Kind::RateSpike(RateSpike::new(RateSpikeSpec {
                filter: filter()?,
                group_by: group_by.clone(),
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
                suppress_ns,
                allowed_lateness_ns,
                max_groups,
            }))
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
        _ => group_by.into_iter().map(|(n, _)| n).collect(),
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
            suppress_ns,
            source: file.to_owned(),
        },
        kind,
    })
}

/// Read a policy graph file (TOML `[[edge]]` tables).
pub fn load_policy(path: &Path) -> Result<PolicyGraph, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("policy graph {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        format!("policy graph {}:{line}: {}", path.display(), e.message())
    })
}

/// One rule source: a name (file path or `default:<file>`), its text, and its directory.
pub struct Source {
    pub name: String,
    pub text: String,
    pub dir: Option<PathBuf>,
}

/// The rule sources: the default pack (unless `with_defaults` is false), then every `*.toml`
/// in `dir` (sorted). A directory rule with a default rule's id replaces it.
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
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pack_loads_and_passes_its_own_tests() {
        let src = sources(None, true).unwrap();
        let loaded = load(&src, &Defaults::default());
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        // Without an allowlist the declared rules (calls, flows) are off, the learned one on.
        assert_eq!(loaded.rules.len(), DEFAULT_PACK.len() - 3);
        let inactive: Vec<&str> = loaded.inactive.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            inactive,
            [
                "vigil.unexpected_caller.declared",
                "vigil.unexpected_flow.declared",
                "vigil.declared_but_denied"
            ]
        );
        let with_graph = Defaults {
            allowlist: Some(PolicyGraph::default()),
            ..Defaults::default()
        };
        let loaded = load(&src, &with_graph);
        assert_eq!(loaded.inactive[0].0, "vigil.unexpected_caller.learned");
        let results = crate::ruletest::run(&src, &Defaults::default());
        let failed: Vec<_> = results.iter().filter(|r| r.failure.is_some()).collect();
        assert!(failed.is_empty(), "{failed:#?}");
        assert!(results.len() >= DEFAULT_PACK.len());
    }

    /// A key another kind takes is an error naming the file and its line, not a rule that
    /// loads and quietly ignores it; every kind's own keys still load.
    #[test]
    fn a_key_of_another_kind_is_an_error_at_its_line() {
        let head = "id = \"t.x\"\nversion = 1\ntitle = \"t\"\nseverity = \"low\"\n";
        let threshold = format!(
            "{head}kind = \"threshold\"\nfilter = 'decision == \"deny\"'\n\
             group_by = [\"caller_ip\"]\ncount = 4\nwindow = \"1m\"\n"
        );
        parse("t.toml", &threshold).unwrap();
        let e = parse("t.toml", &format!("{threshold}z = 3.0\n")).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("t.toml", 10), "{e}");
        assert!(
            e.message.contains("`z` is not a key of a threshold rule"),
            "{e}"
        );
        // A sequence's filters are `first` and `then`: a `filter` would be ignored.
        let seq = format!(
            "{head}kind = \"sequence\"\ngroup_by = [\"caller_ip\"]\n\
             first = 'decision == \"deny\"'\nfirst_count = 3\n\
             then = 'decision == \"allow\"'\nwindow = \"1m\"\n"
        );
        parse("s.toml", &seq).unwrap();
        let e = parse("s.toml", &format!("{seq}filter = 'kind == \"authz\"'\n")).unwrap_err();
        assert_eq!(e.line, 11, "{e}");
        assert!(
            e.message
                .contains("`filter` is not a key of a sequence rule"),
            "{e}"
        );
    }

    /// `normalize_keys`: names written differently — case, full-width forms, a Cyrillic
    /// look-alike letter — are one group (and without it, four); the key shown is the first.
    #[test]
    fn normalized_keys_make_look_alike_names_one_group() {
        let rule = |normalize: bool| {
            format!(
                "id = \"t.user\"\nversion = 1\ntitle = \"t\"\nseverity = \"low\"\n\
                 kind = \"threshold\"\nfilter = 'decision == \"deny\"'\n\
                 group_by = [\"caller_principal\"]\ncount = 4\nwindow = \"1m\"\n\
                 normalize_keys = {normalize}\n\
                 [[test]]\nname = \"variants\"\n{}\n{}",
                if normalize {
                    "alerts = 1\nkeys = [[\"alice\"]]"
                } else {
                    "alerts = 0"
                },
                ["alice", "Alice", "\u{ff21}\u{ff2c}\u{ff29}\u{ff23}\u{ff25}", "\u{0430}lice"]
                    .iter()
                    .map(|u| format!(
                        "[[test.event]]\nfields = {{ kind = \"authz\", decision = \"deny\", caller_principal = \"{u}\" }}\n"
                    ))
                    .collect::<String>()
            )
        };
        for normalize in [true, false] {
            let src = vec![Source {
                name: "t.toml".into(),
                text: rule(normalize),
                dir: None,
            }];
            let results = crate::ruletest::run(&src, &Defaults::default());
            let failed: Vec<_> = results.iter().filter(|r| r.failure.is_some()).collect();
            assert!(
                failed.is_empty(),
                "normalize_keys = {normalize}: {failed:#?}"
            );
        }
        use crate::key::normalize;
        assert_eq!(normalize("\u{0430}dmin"), normalize("ADMIN"));
        assert_ne!(normalize("alice"), normalize("alicia"));
    }

    fn one(text: &str) -> Result<Rule, RuleError> {
        let rf = parse("r.toml", text)?;
        compile(&rf, "r.toml", text, None, &Defaults::default(), None)
    }

    #[test]
    fn problems_name_the_file_line_and_reason() {
        let base = "id = \"x\"\nversion = 1\ntitle = \"t\"\nseverity = \"low\"\n";
        let e = one(&format!(
            "{base}kind = \"threshold\"\ngroup_by = [\"caller_ip\"]\nwindow = \"1m\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.to_string(), "r.toml:5: a threshold rule needs `count`");
        let e = one(&format!("{base}kind = \"threshold\"\ncount = 3\nwindow = \"1m\"\ngroup_by = [\"caller_ip\"]\nfilter = 'decision = \"deny\"'\n")).unwrap_err();
        assert_eq!(e.line, 9);
        assert!(
            e.message
                .contains("filter `decision = \"deny\"`: column 10"),
            "{e}"
        );
        let e = one(&format!("{base}kind = \"thresold\"\n")).unwrap_err();
        assert_eq!(e.line, 5);
        assert!(e.message.contains("unknown variant `thresold`"), "{e}");
        let e = one(&format!("{base}kind = \"threshold\"\ncount = 3\nwindow = \"1 fortnight\"\ngroup_by = [\"caller_ip\"]\n")).unwrap_err();
        assert_eq!(e.line, 7);
        let e = one(&format!(
            "{base}kind = \"threshold\"\ncount = 3\nwindow = \"1m\"\ngroup_by = [\"caller_ipp\"]\n"
        ))
        .unwrap_err();
        assert!(
            e.message.contains("unknown group_by field `caller_ipp`"),
            "{e}"
        );
        let e = one(&format!("{base}kind = \"threshold\"\ncolor = 3\n")).unwrap_err();
        assert!(e.message.contains("unknown field `color`"), "{e}");
        assert_eq!(e.line, 6);
    }

    #[test]
    fn one_bad_rule_never_stops_the_others() {
        let good = DEFAULT_PACK[0].1.to_owned();
        let src = vec![
            Source {
                name: "bad.toml".into(),
                text: "id = ".into(),
                dir: None,
            },
            Source {
                name: "good.toml".into(),
                text: good,
                dir: None,
            },
        ];
        let l = load(&src, &Defaults::default());
        assert_eq!(l.rules.len(), 1);
        assert_eq!(l.errors.len(), 1);
        assert_eq!(l.errors[0].file, "bad.toml");
    }
}
