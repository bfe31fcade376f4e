//! An event written out as field values (rule tests, unit tests): a [`Row`] without Arrow.

use std::collections::BTreeMap;

use crate::filter::{FieldType, Row, field};

/// One event's canonical field values by column.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedRow {
    strs: BTreeMap<usize, String>,
    ints: BTreeMap<usize, i64>,
    bools: BTreeMap<usize, bool>,
    /// The event's bytes as received and, if they are JSON, the record they parse to.
    raw: Option<(Vec<u8>, Option<serde_json::Value>)>,
}

impl OwnedRow {
    /// From `(field, value)` pairs; values are checked against the field's type.
    pub fn from_fields<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a serde_json::Value)>,
    ) -> Result<OwnedRow, String> {
        let mut r = OwnedRow::default();
        for (name, v) in fields {
            let f = field(name).ok_or_else(|| format!("unknown field `{name}`"))?;
            match (f.ty, v) {
                (_, serde_json::Value::Null) => {}
                (FieldType::Str, serde_json::Value::String(s)) => {
                    r.strs.insert(f.column, s.clone());
                }
                (FieldType::Int, serde_json::Value::Number(n)) if n.is_i64() => {
                    r.ints.insert(f.column, n.as_i64().unwrap_or_default());
                }
                (FieldType::Bool, serde_json::Value::Bool(b)) => {
                    r.bools.insert(f.column, *b);
                }
                (ty, v) => return Err(format!("`{name}` is {ty:?}, not {v}")),
            }
        }
        Ok(r)
    }

    /// The same row with its bytes as received (a test's raw record).
    #[cfg(test)]
    pub(crate) fn with_raw(mut self, raw: &[u8]) -> OwnedRow {
        self.raw = Some((raw.to_vec(), serde_json::from_slice(raw).ok()));
        self
    }

    /// The row a group key stands for: each group-by field with its key value (a group judged
    /// without an event of its own, by the watermark).
    pub(crate) fn from_key(fields: &crate::group::GroupBy, key: &[Option<String>]) -> OwnedRow {
        let mut r = OwnedRow::default();
        for ((_, f), v) in fields.iter().zip(key) {
            let Some(v) = v else { continue };
            match f.ty {
                FieldType::Str => {
                    r.strs.insert(f.column, v.clone());
                }
                FieldType::Int => {
                    if let Ok(i) = v.parse() {
                        r.ints.insert(f.column, i);
                    }
                }
                FieldType::Bool => {
                    if let Ok(b) = v.parse() {
                        r.bools.insert(f.column, b);
                    }
                }
            }
        }
        r
    }

    /// From `field = "text"` pairs (unit tests).
    #[cfg(test)]
    pub(crate) fn of(pairs: &[(&str, &str)]) -> OwnedRow {
        let values: Vec<(&str, serde_json::Value)> = pairs
            .iter()
            .map(|(k, v)| (*k, serde_json::Value::String((*v).to_owned())))
            .collect();
        OwnedRow::from_fields(values.iter().map(|(k, v)| (*k, v)))
            .expect("unit-test rows name text fields")
    }
}

impl Row for OwnedRow {
    fn str(&self, column: usize) -> Option<&str> {
        self.strs.get(&column).map(String::as_str)
    }
    fn int(&self, column: usize) -> Option<i64> {
        self.ints.get(&column).copied()
    }
    fn bool(&self, column: usize) -> Option<bool> {
        self.bools.get(&column).copied()
    }
    fn raw(&self) -> Option<&[u8]> {
        self.raw.as_ref().map(|(b, _)| b.as_slice())
    }
    fn record(&self) -> Option<&serde_json::Value> {
        self.raw.as_ref().and_then(|(_, r)| r.as_ref())
    }
}
