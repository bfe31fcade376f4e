//! Rule filters: a small expression language over the canonical event fields, parsed once
//! (field names, types, regexes and CIDRs checked and compiled up front) and evaluated per
//! event without allocating.
//!
//! ```text
//! expr  := term ("or" term)*
//! term  := factor ("and" factor)*
//! factor:= "not" factor | "(" expr ")" | test
//! test  := FIELD "==" LIT | FIELD "!=" LIT | FIELD "in" "[" LIT ("," LIT)* "]"
//!        | FIELD "startswith" STRING | FIELD "matches" STRING | FIELD "cidr" STRING
//!        | FIELD "exists" | FIELD "missing"
//! LIT   := STRING | INTEGER | "true" | "false"
//! ```
//!
//! `decision == "deny" and source_format in ["opa", "envoy"] and not caller_ip cidr "10.0.0.0/8"`
//!
//! A test on a field the event does not have (null) is false — `!=` included; `missing` asks
//! for exactly that. `matches` is a regex (Rust `regex` syntax, linear time) that must match
//! somewhere in the value; anchor it with `^…$` for the whole value.
//!
//! One file past 600 lines: the parser and the evaluator share the compiled expression's types
//! and are read together; the tests are apart.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use vigil_schemas::canonical_schema;

use arrow::datatypes::DataType;

mod batch;

pub use batch::BatchRow;
pub use batch::BatchRows;

/// What a field holds, for type checking literals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Str,
    Int,
    Bool,
}

/// A field a filter can test: its canonical column index and type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub column: usize,
    pub ty: FieldType,
    /// As a group key: its text normalised (`key::normalize`) so that values
    /// written differently are one group. Only where a rule asks (`normalize_keys`).
    pub normalize: bool,
}

/// Fields that are not canonical columns but what the engine knows of an event: where its
/// record came from and what it found of its time. A filter reads them like any field; they
/// sit at column indexes past the canonical ones ([`Context`] supplies them).
///
/// - `kafka_topic`, `kafka_partition`: the partition log the record was read from (a producer
///   can write any field of a record, never these);
/// - `own_log`: true for Vigil's own logs (`vigil.audit`, `vigil.api`, `vigil.opa`), which
///   only Vigil writes;
/// - `time_skewed`: the event time was further ahead of the time Vigil received the record
///   than `detect.max_future_skew_ms` (it was evaluated at its receive time instead);
/// - `time_late`: the event arrived behind the detection watermark by more than the allowed
///   lateness (it was still evaluated);
/// - `offset_gap`: the record does not follow the one before it in its partition log (offsets
///   in between are missing: retention deleted them before Vigil read them, the topic was
///   truncated — or compaction and transaction markers, which leave gaps by design).
pub(crate) const CONTEXT_FIELDS: [(&str, FieldType); 6] = [
    ("kafka_topic", FieldType::Str),
    ("kafka_partition", FieldType::Int),
    ("own_log", FieldType::Bool),
    ("time_skewed", FieldType::Bool),
    ("time_late", FieldType::Bool),
    ("offset_gap", FieldType::Bool),
];

/// The number of canonical columns (the first context field's index).
fn canonical_len() -> usize {
    vigil_schemas::schema::COLUMNS.len()
}

/// What the engine knows of an event beyond its columns (see `CONTEXT_FIELDS`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub own_log: bool,
    pub skewed: bool,
    pub late: bool,
    pub gap: bool,
}

/// A row with its [`Context`]: the context fields read from it, every other from the row.
pub(crate) struct WithContext<'a, R> {
    pub row: &'a R,
    pub ctx: Context<'a>,
    /// The row's record, parsed on first use ([`Row::record`]).
    pub record: std::cell::OnceCell<Option<serde_json::Value>>,
}

impl<R: Row> Row for WithContext<'_, R> {
    fn str(&self, column: usize) -> Option<&str> {
        match column.checked_sub(canonical_len()) {
            None => self.row.str(column),
            Some(0) => Some(self.ctx.topic),
            Some(_) => None,
        }
    }
    fn int(&self, column: usize) -> Option<i64> {
        match column.checked_sub(canonical_len()) {
            None => self.row.int(column),
            Some(1) => Some(self.ctx.partition.into()),
            Some(_) => None,
        }
    }
    fn bool(&self, column: usize) -> Option<bool> {
        match column.checked_sub(canonical_len()) {
            None => self.row.bool(column),
            Some(2) => Some(self.ctx.own_log),
            Some(3) => Some(self.ctx.skewed),
            Some(4) => Some(self.ctx.late),
            Some(5) => Some(self.ctx.gap),
            Some(_) => None,
        }
    }
    fn raw(&self) -> Option<&[u8]> {
        self.row.raw()
    }
    fn record(&self) -> Option<&serde_json::Value> {
        self.record
            .get_or_init(|| self.row.raw().and_then(|b| serde_json::from_slice(b).ok()))
            .as_ref()
    }
}

/// Resolve a field name: a canonical column, or one of the `CONTEXT_FIELDS`. `raw` and
/// `event_time` are not filterable.
pub fn field(name: &str) -> Option<Field> {
    if let Some(i) = CONTEXT_FIELDS.iter().position(|(n, _)| *n == name) {
        return Some(Field {
            column: canonical_len() + i,
            ty: CONTEXT_FIELDS[i].1,
            normalize: false,
        });
    }
    let schema = canonical_schema();
    let (column, f) = schema.column_with_name(name)?;
    let ty = match f.data_type() {
        DataType::Utf8 => FieldType::Str,
        DataType::Boolean => FieldType::Bool,
        DataType::Int32 | DataType::UInt16 | DataType::UInt32 => FieldType::Int,
        _ => return None,
    };
    Some(Field {
        column,
        ty,
        normalize: false,
    })
}

/// Access to one event's fields by canonical column index.
pub trait Row {
    fn str(&self, column: usize) -> Option<&str>;
    fn int(&self, column: usize) -> Option<i64>;
    fn bool(&self, column: usize) -> Option<bool>;
    /// The event's exact bytes as received (the `raw` column), where the row has them.
    fn raw(&self) -> Option<&[u8]> {
        None
    }
    /// The event's source record parsed as JSON: parsed once per event, the first time a rule
    /// asks (Sigma rules name the source's own fields); `None` when it is not JSON.
    fn record(&self) -> Option<&serde_json::Value> {
        None
    }
}

#[derive(Debug)]
enum Test {
    EqStr(String),
    NeStr(String),
    InStr(Vec<String>),
    Prefix(String),
    Matches(Regex),
    Cidr(IpNet),
    EqInt(i64),
    NeInt(i64),
    InInt(Vec<i64>),
    EqBool(bool),
    NeBool(bool),
    Exists,
    Missing,
}

#[derive(Debug)]
enum Node {
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Test(Field, Test),
}

/// A parsed filter.
#[derive(Debug)]
pub struct Filter {
    root: Node,
    source: String,
}

/// Why a filter does not parse: what, and where (1-based column in the filter text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct FilterError {
    pub column: usize,
    pub message: String,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens: &tokens,
            pos: 0,
            end: text.chars().count() + 1,
        };
        let root = p.expr()?;
        if let Some(t) = p.peek() {
            return Err(p.err_at(t.col, format!("unexpected {}", t.kind.describe())));
        }
        Ok(Filter {
            root,
            source: text.to_owned(),
        })
    }

    /// The filter as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, row: &impl Row) -> bool {
        eval(&self.root, row)
    }
}

fn eval(node: &Node, row: &impl Row) -> bool {
    match node {
        Node::Or(n) => n.iter().any(|n| eval(n, row)),
        Node::And(n) => n.iter().all(|n| eval(n, row)),
        Node::Not(n) => !eval(n, row),
        Node::Test(f, t) => test(*f, t, row),
    }
}

fn test(f: Field, t: &Test, row: &impl Row) -> bool {
    let c = f.column;
    match t {
        Test::EqStr(v) => row.str(c) == Some(v.as_str()),
        Test::NeStr(v) => row.str(c).is_some_and(|x| x != v),
        Test::InStr(vs) => row.str(c).is_some_and(|x| vs.iter().any(|v| v == x)),
        Test::Prefix(p) => row.str(c).is_some_and(|x| x.starts_with(p.as_str())),
        Test::Matches(re) => row.str(c).is_some_and(|x| re.is_match(x)),
        Test::Cidr(net) => row
            .str(c)
            .and_then(|x| x.parse::<IpAddr>().ok())
            .is_some_and(|ip| net.contains(&ip)),
        Test::EqInt(v) => row.int(c) == Some(*v),
        Test::NeInt(v) => row.int(c).is_some_and(|x| x != *v),
        Test::InInt(vs) => row.int(c).is_some_and(|x| vs.contains(&x)),
        Test::EqBool(v) => row.bool(c) == Some(*v),
        Test::NeBool(v) => row.bool(c).is_some_and(|x| x != *v),
        Test::Exists => crate::key::present(&f, row),
        Test::Missing => !test(f, &Test::Exists, row),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Eq,
    Ne,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Eq => "`==`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
        }
    }
}

#[derive(Debug)]
struct Token {
    kind: Tok,
    col: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |col: usize, m: &str| FilterError {
        column: col,
        message: m.to_owned(),
    };
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        match c {
            _ if c.is_whitespace() => i += 1,
            '(' | ')' | '[' | ']' | ',' => {
                out.push(Token {
                    kind: match c {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '[' => Tok::LBracket,
                        ']' => Tok::RBracket,
                        _ => Tok::Comma,
                    },
                    col,
                });
                i += 1;
            }
            '=' | '!' => {
                if chars.get(i + 1) != Some(&'=') {
                    return Err(err(col, "expected `==` or `!=`"));
                }
                out.push(Token {
                    kind: if c == '=' { Tok::Eq } else { Tok::Ne },
                    col,
                });
                i += 2;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(col, "unterminated string")),
                        Some('"') => break,
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some('"') => s.push('"'),
                                Some('\\') => s.push('\\'),
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                _ => {
                                    return Err(err(
                                        i + 1,
                                        "unknown escape (use \\\" \\\\ \\n \\t)",
                                    ));
                                }
                            }
                            i += 2;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Token {
                    kind: Tok::Str(s),
                    col,
                });
            }
            '-' | '0'..='9' => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(char::is_ascii_digit) {
                    i += 1;
                }
                let s: String = chars[start..i].iter().collect();
                let n = s.parse().map_err(|_| err(col, "not a number"))?;
                out.push(Token {
                    kind: Tok::Int(n),
                    col,
                });
            }
            _ if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                out.push(Token {
                    kind: Tok::Ident(chars[start..i].iter().collect()),
                    col,
                });
            }
            _ => return Err(err(col, &format!("unexpected character {c:?}"))),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    /// Column just past the end, for errors at the end of input.
    end: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn err_at(&self, column: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            column,
            message: message.into(),
        }
    }

    fn here(&self) -> usize {
        self.peek().map_or(self.end, |t| t.col)
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Token { kind: Tok::Ident(s), .. }) if s == k) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, want: Tok) -> Result<(), FilterError> {
        match self.peek() {
            Some(t) if t.kind == want => {
                self.pos += 1;
                Ok(())
            }
            Some(t) => Err(self.err_at(
                t.col,
                format!("expected {}, found {}", want.describe(), t.kind.describe()),
            )),
            None => Err(self.err_at(self.end, format!("expected {}", want.describe()))),
        }
    }

    fn expr(&mut self) -> Result<Node, FilterError> {
        let mut terms = vec![self.term()?];
        while self.keyword("or") {
            terms.push(self.term()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Node::Or(terms)
        })
    }

    fn term(&mut self) -> Result<Node, FilterError> {
        let mut factors = vec![self.factor()?];
        while self.keyword("and") {
            factors.push(self.factor()?);
        }
        Ok(if factors.len() == 1 {
            factors.remove(0)
        } else {
            Node::And(factors)
        })
    }

    fn factor(&mut self) -> Result<Node, FilterError> {
        if self.keyword("not") {
            return Ok(Node::Not(Box::new(self.factor()?)));
        }
        if matches!(
            self.peek(),
            Some(Token {
                kind: Tok::LParen,
                ..
            })
        ) {
            self.pos += 1;
            let e = self.expr()?;
            self.expect(Tok::RParen)?;
            return Ok(e);
        }
        self.test()
    }

    fn literal(&mut self) -> Result<(Lit, usize), FilterError> {
        let col = self.here();
        let lit = match self.peek().map(|t| &t.kind) {
            Some(Tok::Str(s)) => Lit::Str(s.clone()),
            Some(Tok::Int(i)) => Lit::Int(*i),
            Some(Tok::Ident(s)) if s == "true" => Lit::Bool(true),
            Some(Tok::Ident(s)) if s == "false" => Lit::Bool(false),
            Some(t) => {
                return Err(self.err_at(col, format!("expected a value, found {}", t.describe())));
            }
            None => return Err(self.err_at(col, "expected a value")),
        };
        self.pos += 1;
        Ok((lit, col))
    }

    fn string(&mut self, what: &str) -> Result<(String, usize), FilterError> {
        match self.literal()? {
            (Lit::Str(s), col) => Ok((s, col)),
            (_, col) => Err(self.err_at(col, format!("{what} takes a string"))),
        }
    }

    fn test(&mut self) -> Result<Node, FilterError> {
        let col = self.here();
        let name = match self.peek().map(|t| &t.kind) {
            Some(Tok::Ident(s)) => s.clone(),
            Some(t) => {
                return Err(self.err_at(col, format!("expected a field, found {}", t.describe())));
            }
            None => return Err(self.err_at(col, "expected a field")),
        };
        self.pos += 1;
        let f = field(&name).ok_or_else(|| {
            self.err_at(
                col,
                format!(
                    "unknown field `{name}` (fields: {})",
                    filterable_fields().join(", ")
                ),
            )
        })?;
        let typed = |p: &Self, lit: Lit, lcol: usize, eq: bool| -> Result<Test, FilterError> {
            match (f.ty, lit) {
                (FieldType::Str, Lit::Str(s)) => {
                    Ok(if eq { Test::EqStr(s) } else { Test::NeStr(s) })
                }
                (FieldType::Int, Lit::Int(i)) => {
                    Ok(if eq { Test::EqInt(i) } else { Test::NeInt(i) })
                }
                (FieldType::Bool, Lit::Bool(b)) => {
                    Ok(if eq { Test::EqBool(b) } else { Test::NeBool(b) })
                }
                (ty, lit) => {
                    Err(p.err_at(lcol, format!("`{name}` holds {ty:?} values, not {lit:?}")))
                }
            }
        };
        let t = if matches!(self.peek(), Some(Token { kind: Tok::Eq, .. })) {
            self.pos += 1;
            let (lit, lcol) = self.literal()?;
            typed(self, lit, lcol, true)?
        } else if matches!(self.peek(), Some(Token { kind: Tok::Ne, .. })) {
            self.pos += 1;
            let (lit, lcol) = self.literal()?;
            typed(self, lit, lcol, false)?
        } else if self.keyword("in") {
            self.expect(Tok::LBracket)?;
            let mut strs = Vec::new();
            let mut ints = Vec::new();
            loop {
                let (lit, lcol) = self.literal()?;
                match (f.ty, lit) {
                    (FieldType::Str, Lit::Str(s)) => strs.push(s),
                    (FieldType::Int, Lit::Int(i)) => ints.push(i),
                    (ty, lit) => {
                        return Err(
                            self.err_at(lcol, format!("`{name}` holds {ty:?} values, not {lit:?}"))
                        );
                    }
                }
                if matches!(
                    self.peek(),
                    Some(Token {
                        kind: Tok::Comma,
                        ..
                    })
                ) {
                    self.pos += 1;
                    continue;
                }
                self.expect(Tok::RBracket)?;
                break;
            }
            match f.ty {
                FieldType::Str => Test::InStr(strs),
                FieldType::Int => Test::InInt(ints),
                FieldType::Bool => {
                    return Err(self.err_at(col, "`in` needs a text or number field"));
                }
            }
        } else if self.keyword("startswith") {
            self.text_only(f, col, &name, "startswith")?;
            Test::Prefix(self.string("startswith")?.0)
        } else if self.keyword("matches") {
            self.text_only(f, col, &name, "matches")?;
            let (re, rcol) = self.string("matches")?;
            Test::Matches(
                Regex::new(&re).map_err(|e| self.err_at(rcol, format!("bad regex: {e}")))?,
            )
        } else if self.keyword("cidr") {
            if !name.ends_with("_ip") {
                return Err(
                    self.err_at(col, format!("`cidr` needs an address field, not `{name}`"))
                );
            }
            let (net, ncol) = self.string("cidr")?;
            Test::Cidr(
                net.parse::<IpNet>()
                    .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        self.err_at(ncol, format!("{net:?} is not a CIDR (e.g. \"10.0.0.0/8\")"))
                    })?,
            )
        } else if self.keyword("exists") {
            Test::Exists
        } else if self.keyword("missing") {
            Test::Missing
        } else {
            let at = self.here();
            return Err(self.err_at(
                at,
                format!("expected an operator after `{name}` (== != in startswith matches cidr exists missing)"),
            ));
        };
        Ok(Node::Test(f, t))
    }

    fn text_only(&self, f: Field, col: usize, name: &str, op: &str) -> Result<(), FilterError> {
        if f.ty == FieldType::Str {
            Ok(())
        } else {
            Err(self.err_at(col, format!("`{op}` needs a text field, not `{name}`")))
        }
    }
}

/// The names a filter may test.
pub(crate) fn filterable_fields() -> Vec<&'static str> {
    vigil_schemas::schema::COLUMNS
        .iter()
        .map(|c| c.name)
        .filter(|n| field(n).is_some())
        .chain(CONTEXT_FIELDS.iter().map(|(n, _)| *n))
        .collect()
}

#[cfg(test)]
mod tests;
