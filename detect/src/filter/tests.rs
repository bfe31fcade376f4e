use super::*;
use std::collections::HashMap;

/// An event as a map of field → value, for tests.
#[derive(Default)]
struct Ev(HashMap<usize, Lit>);

impl Ev {
    fn with(mut self, name: &str, v: Lit) -> Ev {
        self.0.insert(field(name).unwrap().column, v);
        self
    }
    fn s(self, name: &str, v: &str) -> Ev {
        self.with(name, Lit::Str(v.into()))
    }
}

impl Row for Ev {
    fn str(&self, c: usize) -> Option<&str> {
        match self.0.get(&c) {
            Some(Lit::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn int(&self, c: usize) -> Option<i64> {
        match self.0.get(&c) {
            Some(Lit::Int(i)) => Some(*i),
            _ => None,
        }
    }
    fn bool(&self, c: usize) -> Option<bool> {
        match self.0.get(&c) {
            Some(Lit::Bool(b)) => Some(*b),
            _ => None,
        }
    }
}

fn m(f: &str, e: &Ev) -> bool {
    Filter::parse(f)
        .unwrap_or_else(|e| panic!("{f}: {e}"))
        .matches(e)
}

#[test]
fn operators_on_present_and_missing_fields() {
    let e = Ev::default()
        .s("decision", "deny")
        .s("source_format", "envoy")
        .s("caller_ip", "10.4.2.7")
        .s(
            "caller_principal",
            "spiffe://cluster.local/ns/web/sa/frontend",
        )
        .with("status_code", Lit::Int(403))
        .with("is_reply", Lit::Bool(false));
    for (f, want) in [
        (r#"decision == "deny""#, true),
        (r#"decision != "deny""#, false),
        (r#"decision != "allow""#, true),
        (r#"reason != "x""#, false),
        (r#"reason == "x""#, false),
        (r#"not reason == "x""#, true),
        (r#"source_format in ["opa", "envoy"]"#, true),
        (r#"source_format in ["opa"]"#, false),
        (
            r#"caller_principal startswith "spiffe://cluster.local/ns/web/""#,
            true,
        ),
        (r#"caller_principal matches "/sa/front(end)?$""#, true),
        (r#"caller_principal matches "^frontend""#, false),
        (r#"caller_ip cidr "10.0.0.0/8""#, true),
        (r#"caller_ip cidr "10.4.2.7""#, true),
        (r#"caller_ip cidr "192.168.0.0/16""#, false),
        (r#"callee_ip cidr "0.0.0.0/0""#, false),
        ("status_code == 403", true),
        ("status_code in [401, 403]", true),
        ("status_code != 403", false),
        ("is_reply == false", true),
        ("caller_port exists", false),
        ("caller_port missing", true),
        ("caller_ip exists", true),
        (
            r#"decision == "deny" and (status_code == 401 or status_code == 403)"#,
            true,
        ),
        (r#"decision == "allow" or not source_format == "opa""#, true),
        (r#"not not decision == "deny""#, true),
        (
            r#"decision == "deny" and source_format == "opa" or status_code == 403"#,
            true,
        ),
        (
            r#"decision == "deny" and (source_format == "opa" or status_code == 500)"#,
            false,
        ),
    ] {
        assert_eq!(m(f, &e), want, "{f}");
    }
}

#[test]
fn errors_name_the_column_and_the_reason() {
    for (f, col, what) in [
        (r#"decison == "deny""#, 1, "unknown field `decison`"),
        (r#"decision == 5"#, 13, "holds Str values"),
        (r#"status_code == "403""#, 16, "holds Int values"),
        (r#"decision = "deny""#, 10, "expected `==` or `!=`"),
        (r#"decision == "deny" and"#, 23, "expected a field"),
        (r#"(decision == "deny""#, 20, "expected `)`"),
        (r#"decision == "deny")"#, 19, "unexpected `)`"),
        (r#"decision == "deny"#, 13, "unterminated string"),
        (r#"resource matches "(""#, 18, "bad regex"),
        (r#"resource cidr "10.0.0.0/8""#, 1, "needs an address field"),
        (r#"caller_ip cidr "10.0.0.0/33""#, 16, "is not a CIDR"),
        (r#"status_code startswith "4""#, 1, "needs a text field"),
        (r#"decision"#, 9, "expected an operator"),
        (r#"raw == "x""#, 1, "unknown field `raw`"),
        (r#"decision in []"#, 14, "expected a value"),
    ] {
        let e = Filter::parse(f).expect_err(f);
        assert_eq!(e.column, col, "{f}: {e}");
        assert!(e.message.contains(what), "{f}: {e}");
    }
}

#[test]
fn every_filterable_field_resolves() {
    let names = filterable_fields();
    for n in [
        "decision",
        "caller_principal",
        "callee_ip",
        "status_code",
        "is_reply",
        "kind",
    ] {
        assert!(names.contains(&n), "{n}");
    }
    assert!(!names.contains(&"raw") && !names.contains(&"event_time"));
}
