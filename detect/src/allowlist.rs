//! The allowlist rule kind: the declared call graph (caller → callee edges, optionally with
//! methods and paths, from a policy-graph file). Any observed event outside it alerts — the
//! declared form of "unexpected caller". One alert per unexpected edge per suppression window.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::evidence::{EvRef, Hit, Outcome};
use crate::filter::{Field, Filter, Row};
use crate::group::{GroupBy, Open, State};

/// One allowed edge as written in a policy graph. Patterns are exact, or globs where `*`
/// matches any run of characters (`spiffe://cluster.local/ns/shop/*`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    pub caller: String,
    pub callee: String,
    /// Allowed methods/verbs (empty: any).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Allowed paths, as patterns (empty: any).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Which events the edge is about: `authz` (decisions between principals) or `flow`
    /// (connections between workloads); none: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The caller's and callee's namespaces, as patterns (none: any), checked by rules that
    /// name namespace fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callee_namespace: Option<String>,
    /// Allowed destination ports (empty: any), checked by rules that name a port field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Where the edge came from (the policy it was imported from), for the analyst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_policy: Option<String>,
}

/// A policy graph file: `[[edge]]` tables.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyGraph {
    #[serde(default, rename = "edge")]
    pub edges: Vec<EdgeSpec>,
}

#[derive(Debug)]
struct Pattern(Option<Regex>, String);

/// A policy graph pattern that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("pattern `{pattern}`: {source}")]
pub struct PatternError {
    pattern: String,
    source: regex::Error,
}

impl Pattern {
    fn new(p: &str) -> Result<Pattern, PatternError> {
        if !p.contains('*') {
            return Ok(Pattern(None, p.to_owned()));
        }
        let re = format!("^{}$", regex::escape(p).replace(r"\*", ".*"));
        Regex::new(&re)
            .map(|r| Pattern(Some(r), p.to_owned()))
            .map_err(|source| PatternError {
                pattern: p.to_owned(),
                source,
            })
    }

    fn matches(&self, v: &str) -> bool {
        match &self.0 {
            Some(r) => r.is_match(v),
            None => self.1 == v,
        }
    }
}

#[derive(Debug)]
struct Edge {
    caller: Pattern,
    callee: Pattern,
    methods: Vec<String>,
    paths: Vec<Pattern>,
    kind: Option<String>,
    caller_namespace: Option<Pattern>,
    callee_namespace: Option<Pattern>,
    ports: Vec<u16>,
}

/// The fields an allowlist reads.
#[derive(Clone, Copy, Debug)]
pub struct EdgeFields {
    pub caller: Field,
    pub callee: Field,
    pub method: Option<Field>,
    pub path: Option<Field>,
    pub caller_namespace: Option<Field>,
    pub callee_namespace: Option<Field>,
    pub port: Option<Field>,
}

#[derive(Debug)]
pub struct AllowlistSpec {
    /// Which events the allowlist governs (e.g. `kind == "authz"`).
    pub filter: Filter,
    pub fields: EdgeFields,
    pub edges: Vec<EdgeSpec>,
    pub suppress_ns: i64,
    pub allowed_lateness_ns: i64,
    pub max_groups: usize,
    /// Judge nothing (a flow rule over a graph that declares no flows).
    pub quiet: bool,
    /// Inverted: fire on events *on* declared edges, at this many within this window (ns) per
    /// edge — repeated denials where the graph says the call is meant to work.
    pub declared: Option<(u64, i64)>,
    /// With `declared`: the matches must also be this share of the edge's base events (`of`)
    /// in the window — an edge that mostly fails, not one that mostly works.
    pub ratio: Option<crate::group::Ratio>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Group {
    open: Open,
    last_ns: i64,
    /// Events counted (the inverted, declared-edge mode).
    #[serde(default)]
    hits: crate::group::Counts,
    /// Base events counted (declared mode with a ratio).
    #[serde(default)]
    base: crate::group::Counts,
}

crate::has_open!(Group);

impl crate::group::Weigh for Group {
    fn heap_bytes(&self) -> usize {
        self.hits.heap_bytes() + self.base.heap_bytes()
    }
}

#[derive(Debug)]
pub struct Allowlist {
    pub(crate) spec: AllowlistSpec,
    edges: Vec<Edge>,
    pub(crate) group_by: GroupBy,
    pub(crate) st: State<Group>,
}

impl Allowlist {
    pub fn new(spec: AllowlistSpec) -> Result<Allowlist, PatternError> {
        let edges = spec
            .edges
            .iter()
            .map(|e| {
                Ok(Edge {
                    caller: Pattern::new(&e.caller)?,
                    callee: Pattern::new(&e.callee)?,
                    methods: e.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                    paths: e
                        .paths
                        .iter()
                        .map(|p| Pattern::new(p))
                        .collect::<Result<_, _>>()?,
                    kind: e.kind.clone(),
                    caller_namespace: e
                        .caller_namespace
                        .as_deref()
                        .map(Pattern::new)
                        .transpose()?,
                    callee_namespace: e
                        .callee_namespace
                        .as_deref()
                        .map(Pattern::new)
                        .transpose()?,
                    ports: e.ports.clone(),
                })
            })
            .collect::<Result<Vec<_>, PatternError>>()?;
        // Alerts group by the edge (caller, callee).
        let group_by = vec![
            ("caller".to_owned(), spec.fields.caller),
            ("callee".to_owned(), spec.fields.callee),
        ];
        Ok(Allowlist {
            st: State::new(spec.max_groups.max(1), spec.allowed_lateness_ns),
            edges,
            group_by,
            spec,
        })
    }

    pub fn groups(&self) -> usize {
        self.st.groups.len()
    }

    fn allowed(&self, row: &impl Row) -> bool {
        let f = &self.spec.fields;
        let (Some(caller), Some(callee)) = (row.str(f.caller.column), row.str(f.callee.column))
        else {
            // An event without both ends is not an edge the graph can allow.
            return false;
        };
        let method = f.method.and_then(|m| row.str(m.column));
        let path = f.path.and_then(|p| row.str(p.column));
        let kind = crate::filter::field("kind").and_then(|k| row.str(k.column));
        let ns = |field: Option<Field>, want: &Option<Pattern>| match (field, want) {
            (Some(f), Some(p)) => row.str(f.column).is_some_and(|v| p.matches(v)),
            _ => true,
        };
        let port = f.port.map(|p| row.int(p.column));
        // A flow's URL (Hubble L7) is judged by its path.
        let url_path = path.map(|p| match p.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => p,
        });
        self.edges.iter().any(|e| {
            // Flow edges carry L7 constraints only for flows that show L7 (an L4 flow of the
            // same connection has no method or path to check).
            let flow = e.kind.as_deref() == Some("flow");
            let path = if flow { url_path } else { path };
            e.kind.as_deref().is_none_or(|k| kind == Some(k))
                && ns(f.caller_namespace, &e.caller_namespace)
                && ns(f.callee_namespace, &e.callee_namespace)
                && (e.ports.is_empty()
                    || port.is_none_or(|p| {
                        p.is_some_and(|p| e.ports.iter().any(|x| i64::from(*x) == p))
                    }))
                && e.caller.matches(caller)
                && e.callee.matches(callee)
                && (e.methods.is_empty()
                    || (flow && method.is_none())
                    || method.is_some_and(|m| e.methods.iter().any(|x| x.eq_ignore_ascii_case(m))))
                && (e.paths.is_empty()
                    || (flow && path.is_none())
                    || path.is_some_and(|p| e.paths.iter().any(|x| x.matches(p))))
        })
    }

    pub fn observe(&mut self, row: &impl Row, ev: EvRef) -> Outcome {
        let t = ev.time_ns;
        if self.spec.quiet {
            return Outcome::Nothing;
        }
        let base = self.spec.ratio.as_ref().is_some_and(|r| r.of.matches(row));
        if !self.spec.filter.matches(row) {
            // A base event on a declared edge (declared mode with a ratio).
            if base
                && let Some((_, window)) = self.spec.declared
                && self.allowed(row)
            {
                let (_, g) = self.st.groups.entry(&self.group_by, row, || Group {
                    open: Open::default(),
                    last_ns: t,
                    hits: Default::default(),
                    base: Default::default(),
                });
                g.last_ns = g.last_ns.max(t);
                g.base.add(t, window);
            }
            return Outcome::Nothing;
        }
        self.st.clock.advance(t);
        if self.allowed(row) != self.spec.declared.is_some() {
            return Outcome::Nothing;
        }
        self.st.counters.matched += 1;
        let suppress = self.spec.suppress_ns;
        let f = self.spec.fields;
        let (key, g) = self.st.groups.entry(&self.group_by, row, || Group {
            open: Open::default(),
            last_ns: t,
            hits: Default::default(),
            base: Default::default(),
        });
        g.last_ns = g.last_ns.max(t);
        let min_ratio = self.spec.ratio.as_ref().map(|r| r.min_ratio);
        let enough = match self.spec.declared {
            None => true,
            Some((count, window)) => {
                g.hits.add(t, window);
                if base {
                    g.base.add(t, window);
                }
                let hits = g.hits.in_window(t, window);
                let of = g.base.in_window(t, window).max(hits).max(1);
                hits >= count && min_ratio.is_none_or(|m| hits as f64 >= m * of as f64)
            }
        };
        let outcome = if let Some(n) = g.open.absorb(t, 0, suppress) {
            Outcome::Updated { count: n, ev }
        } else if !enough {
            Outcome::Nothing
        } else {
            g.open.fire(t, 1);
            let mut detail = Vec::new();
            if let Some(m) = f.method.and_then(|m| row.str(m.column)) {
                detail.push(format!("method={m}"));
            }
            if let Some(p) = f.path.and_then(|p| row.str(p.column)) {
                detail.push(format!("path={p}"));
            }
            Outcome::Fired(Hit {
                key: key.to_key(),
                first_ns: t,
                last_ns: t,
                count: 1,
                detail,
                evidence: vec![ev],
            })
        };
        self.st.outcome(outcome)
    }

    pub(crate) fn expire(&mut self) {
        let horizon = self.st.clock.watermark();
        let suppress = self.spec.suppress_ns;
        let window = self.spec.declared.map_or(0, |(_, w)| w);
        self.st.groups.retain(|g| {
            g.open.is_open(horizon, suppress) || g.last_ns.saturating_add(window) > horizon
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::at;
    use crate::filter::field;
    use crate::row::OwnedRow;

    const S: i64 = 1_000_000_000;

    fn rule(edges: Vec<EdgeSpec>) -> Allowlist {
        Allowlist::new(AllowlistSpec {
            filter: Filter::parse(r#"kind == "authz""#).unwrap(),
            fields: EdgeFields {
                caller: field("caller_principal").unwrap(),
                callee: field("callee_principal").unwrap(),
                method: field("action"),
                path: field("resource"),
                caller_namespace: None,
                callee_namespace: None,
                port: None,
            },
            edges,
            suppress_ns: 3600 * S,
            allowed_lateness_ns: 60 * S,
            max_groups: 100,
            quiet: false,
            declared: None,
            ratio: None,
        })
        .unwrap()
    }

    fn ev(caller: &str, callee: &str, method: &str, path: &str) -> OwnedRow {
        OwnedRow::of(&[
            ("kind", "authz"),
            ("caller_principal", caller),
            ("callee_principal", callee),
            ("action", method),
            ("resource", path),
        ])
    }

    const WEB: &str = "spiffe://c/ns/web/sa/frontend";
    const ORDERS: &str = "spiffe://c/ns/shop/sa/orders";
    const PAY: &str = "spiffe://c/ns/shop/sa/payments";

    #[test]
    fn edges_outside_the_graph_alert_once_per_suppression_window() {
        let mut r = rule(vec![
            EdgeSpec {
                caller: WEB.into(),
                callee: ORDERS.into(),
                methods: vec!["get".into(), "POST".into()],
                paths: vec!["/api/orders*".into()],
                ..Default::default()
            },
            EdgeSpec {
                caller: "spiffe://c/ns/shop/*".into(),
                callee: "spiffe://c/ns/shop/*".into(),
                ..Default::default()
            },
        ]);
        assert_eq!(
            r.observe(&ev(WEB, ORDERS, "GET", "/api/orders/7"), at(0)),
            Outcome::Nothing
        );
        assert_eq!(
            r.observe(&ev(ORDERS, PAY, "PUT", "/x"), at(S)),
            Outcome::Nothing
        );
        // Not declared: web → payments.
        let o = r.observe(&ev(WEB, PAY, "POST", "/charge"), at(2 * S));
        let Outcome::Fired(h) = o else {
            panic!("{o:?}")
        };
        assert_eq!(h.key, vec![Some(WEB.into()), Some(PAY.into())]);
        assert_eq!(h.detail, ["method=POST", "path=/charge"]);
        // The same edge again updates the alert.
        assert!(matches!(
            r.observe(&ev(WEB, PAY, "POST", "/charge"), at(3 * S)),
            Outcome::Updated { count: 2, .. }
        ));
        // A declared edge with a method or path outside it alerts too.
        assert!(
            r.observe(&ev(WEB, ORDERS, "DELETE", "/api/orders/7"), at(4 * S))
                .fired()
        );
        // Other event kinds are not governed.
        let flow = OwnedRow::of(&[("kind", "flow"), ("caller_principal", WEB)]);
        assert_eq!(r.observe(&flow, at(5 * S)), Outcome::Nothing);
        // An authz event without a callee is not an allowed edge.
        let half = OwnedRow::of(&[("kind", "authz"), ("caller_principal", WEB)]);
        assert!(r.observe(&half, at(6 * S)).fired());
        // After the suppression window the edge alerts again.
        assert!(
            r.observe(&ev(WEB, PAY, "POST", "/charge"), at(3 * S + 3600 * S))
                .fired()
        );
    }

    #[test]
    fn patterns_are_literal_but_for_the_star() {
        // Every regex metacharacter but `*` is literal, so patterns always compile.
        let r = rule(vec![EdgeSpec {
            caller: "a.b(c".into(),
            callee: "*".into(),
            ..Default::default()
        }]);
        assert!(r.observe_ok("a.b(c"));
        assert!(!r.observe_ok("aXb(c"));
    }

    impl Allowlist {
        fn observe_ok(&self, caller: &str) -> bool {
            self.allowed(&ev(caller, "x", "GET", "/"))
        }
    }
}
