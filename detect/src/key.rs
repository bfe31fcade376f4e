//! Group keys: the values of a rule's `group_by` fields for one event, hashed and compared
//! without allocating, and kept — once per group — in one compact allocation ([`PackedKey`]).

use std::hash::{BuildHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::filter::{Field, FieldType, Row};

/// A rule's group-by fields (name, field).
pub(crate) type GroupBy = Vec<(String, Field)>;

/// A group's key as alerts report it: one value per group-by field (`None`: the event lacked it).
pub(crate) type Key = Vec<Option<String>>;

/// A group's key as a group table holds it: every field's value as text in one allocation
/// (per field a varint of `len + 1`, or 0 for a missing value, then the bytes). A key of four
/// addresses and ports takes one 48-byte allocation here, against five (and 264 bytes) as a
/// [`Key`]. Persisted and reported as a [`Key`] (the state file's format does not change).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackedKey(Box<[u8]>);

impl PackedKey {
    /// The row's key (as [`value`] writes each field).
    pub(crate) fn of_row(fields: &GroupBy, row: &impl Row) -> PackedKey {
        let mut buf = Vec::new();
        for (_, f) in fields {
            match f.ty {
                FieldType::Str => put(&mut buf, row.str(f.column)),
                FieldType::Int => put(
                    &mut buf,
                    row.int(f.column).map(|i| i.to_string()).as_deref(),
                ),
                FieldType::Bool => put(
                    &mut buf,
                    row.bool(f.column).map(|b| if b { "true" } else { "false" }),
                ),
            }
        }
        PackedKey(buf.into_boxed_slice())
    }

    /// A key's values, encoded.
    pub fn of<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> PackedKey {
        let mut buf = Vec::new();
        for v in values {
            put(&mut buf, v);
        }
        PackedKey(buf.into_boxed_slice())
    }

    /// A reported key, encoded.
    pub(crate) fn from_key(key: &[Option<String>]) -> PackedKey {
        PackedKey::of(key.iter().map(Option::as_deref))
    }

    /// Its values in field order.
    pub fn values(&self) -> Values<'_> {
        Values(&self.0)
    }

    /// The key as alerts report it.
    pub(crate) fn to_key(&self) -> Key {
        self.values().map(|v| v.map(str::to_owned)).collect()
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.values().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes it holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

fn put(buf: &mut Vec<u8>, v: Option<&str>) {
    let Some(s) = v else {
        buf.push(0);
        return;
    };
    let mut n = s.len() as u64 + 1;
    while n >= 0x80 {
        buf.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
    buf.extend_from_slice(s.as_bytes());
}

/// The values of a [`PackedKey`].
pub struct Values<'a>(&'a [u8]);

impl<'a> Iterator for Values<'a> {
    type Item = Option<&'a str>;

    fn next(&mut self) -> Option<Option<&'a str>> {
        let (mut n, mut shift, mut i) = (0u64, 0u32, 0usize);
        loop {
            let b = *self.0.get(i)?;
            n |= u64::from(b & 0x7f) << shift;
            i += 1;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        if n == 0 {
            self.0 = &self.0[i..];
            return Some(None);
        }
        let end = i + (n - 1) as usize;
        // Built only by `put` from `str`s: always whole and valid.
        let s = std::str::from_utf8(&self.0[i..end]).expect("a group key holds text");
        self.0 = &self.0[end..];
        Some(Some(s))
    }
}

impl std::fmt::Debug for PackedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values()).finish()
    }
}

impl Serialize for PackedKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.values())
    }
}

impl<'de> Deserialize<'de> for PackedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PackedKey, D::Error> {
        Ok(PackedKey::from_key(&Key::deserialize(d)?))
    }
}

/// A group key's text as a rule with `normalize_keys` compares it: Unicode NFKC (full-width
/// letters, ligatures, superscripts become plain ones), lower case, then the UTS #39
/// confusable skeleton (a Cyrillic `а` or a Greek `ο` that looks like a Latin letter becomes
/// it). `alice`, `Alice`, `ＡＬＩＣＥ` and `аlice` (Cyrillic а) are one group. Used to hash and
/// compare only: the key an alert shows is the value as first seen.
pub(crate) fn normalize(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let lower = s.nfkc().collect::<String>().to_lowercase();
    unicode_security::confusable_detection::skeleton(&lower).collect()
}

/// A string field's value as the group compares it.
fn key_str<'a>(f: &Field, s: &'a str) -> std::borrow::Cow<'a, str> {
    if f.normalize {
        std::borrow::Cow::Owned(normalize(s))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Hash of the row's group-by values.
pub(crate) fn hash(fields: &GroupBy, row: &impl Row, state: &impl BuildHasher) -> u64 {
    let mut h = state.build_hasher();
    for (_, f) in fields {
        hash_value(f, row, &mut h);
    }
    h.finish()
}

/// Hash of a stored key, equal to [`hash`] of any row with these values.
pub(crate) fn hash_key(fields: &GroupBy, key: &PackedKey, state: &impl BuildHasher) -> u64 {
    let mut h = state.build_hasher();
    for ((_, f), k) in fields.iter().zip(key.values()) {
        match f.ty {
            FieldType::Str => k.map(|k| key_str(f, k)).as_deref().hash(&mut h),
            FieldType::Int => k.and_then(|k| k.parse::<i64>().ok()).hash(&mut h),
            FieldType::Bool => k.and_then(|k| k.parse::<bool>().ok()).hash(&mut h),
        }
    }
    h.finish()
}

/// Hash one field's value (for distinct counting too).
pub(crate) fn hash_value(f: &Field, row: &impl Row, h: &mut impl Hasher) {
    match f.ty {
        FieldType::Str if f.normalize => {
            row.str(f.column).map(|s| key_str(f, s)).as_deref().hash(h)
        }
        FieldType::Str => row.str(f.column).hash(h),
        FieldType::Int => row.int(f.column).hash(h),
        FieldType::Bool => row.bool(f.column).hash(h),
    }
}

/// Whether the row has a value for the field.
pub(crate) fn present(f: &Field, row: &impl Row) -> bool {
    match f.ty {
        FieldType::Str => row.str(f.column).is_some(),
        FieldType::Int => row.int(f.column).is_some(),
        FieldType::Bool => row.bool(f.column).is_some(),
    }
}

/// One field's value as text.
pub(crate) fn value(f: &Field, row: &impl Row) -> Option<String> {
    match f.ty {
        FieldType::Str => row.str(f.column).map(str::to_owned),
        FieldType::Int => row.int(f.column).map(|i| i.to_string()),
        FieldType::Bool => row.bool(f.column).map(|b| b.to_string()),
    }
}

/// Whether the row's value of `f` is `text` (as [`value`] would write it), without allocating.
pub(crate) fn value_is(f: &Field, row: &impl Row, text: &str) -> bool {
    match f.ty {
        FieldType::Str if f.normalize => {
            row.str(f.column).map(|s| key_str(f, s)).as_deref() == Some(&key_str(f, text))
        }
        FieldType::Str => row.str(f.column) == Some(text),
        FieldType::Int => row.int(f.column).is_some_and(|i| text.parse() == Ok(i)),
        FieldType::Bool => row.bool(f.column).is_some_and(|b| text.parse() == Ok(b)),
    }
}

/// Whether the row belongs to the group with this key, without allocating.
pub(crate) fn matches(fields: &GroupBy, key: &PackedKey, row: &impl Row) -> bool {
    fields
        .iter()
        .zip(key.values())
        .all(|((_, f), k)| match f.ty {
            FieldType::Str if f.normalize => match (row.str(f.column), k) {
                (Some(v), Some(k)) => key_str(f, v) == key_str(f, k),
                (v, k) => v.is_none() && k.is_none(),
            },
            FieldType::Str => row.str(f.column) == k,
            FieldType::Int => row.int(f.column) == k.and_then(|k| k.parse().ok()),
            FieldType::Bool => row.bool(f.column) == k.and_then(|k| k.parse().ok()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::field;
    use crate::row::OwnedRow;

    fn by(names: &[&str]) -> GroupBy {
        names
            .iter()
            .map(|n| (n.to_string(), field(n).unwrap()))
            .collect()
    }

    #[test]
    fn a_key_round_trips_through_its_encoding_and_the_state_format() {
        let long = "x".repeat(300); // a two-byte length
        let key: Key = vec![
            Some("10.0.5.66".into()),
            None,
            Some(String::new()),
            Some(long),
        ];
        let g = PackedKey::from_key(&key);
        assert_eq!(g.to_key(), key);
        assert_eq!(g.len(), 4);
        assert_eq!(g.heap_bytes(), 1 + 9 + 1 + 1 + 2 + 300);
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(json, serde_json::to_string(&key).unwrap());
        assert_eq!(serde_json::from_str::<PackedKey>(&json).unwrap(), g);
        assert!(PackedKey::of([]).is_empty());
    }

    #[test]
    fn a_rows_key_hashes_and_matches_as_its_encoding_does() {
        let fields = by(&["caller_ip", "callee_port", "caller_principal"]);
        let (ip, port) = (serde_json::json!("10.0.0.1"), serde_json::json!(8443));
        let row = OwnedRow::from_fields([("caller_ip", &ip), ("callee_port", &port)]).unwrap();
        let k = PackedKey::of_row(&fields, &row);
        assert_eq!(
            k.to_key(),
            vec![Some("10.0.0.1".into()), Some("8443".into()), None]
        );
        let s = foldhash::fast::FixedState::with_seed(7);
        assert_eq!(hash(&fields, &row, &s), hash_key(&fields, &k, &s));
        assert!(matches(&fields, &k, &row));
        let other = PackedKey::of([Some("10.0.0.1"), Some("8444"), None]);
        assert!(!matches(&fields, &other, &row));
    }
}
