//! Single-pass, borrowed views of JSON values for the decoders.
//!
//! Every decoder parses a record exactly once with `serde_json` into structs of these types.
//! They never fail on a type mismatch while parsing: a value of an unexpected type is skipped
//! (without allocating) and remembered only by its [`JsonType`]. The mapping code then asks for
//! the type it needs with a JSON-pointer path, and gets a [`Shape`] error naming the path, the
//! expected type and the type found. This gives precise errors, tolerates unknown fields, and
//! keeps strings borrowed from the input whenever they contain no escapes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The type of a JSON value, as reported in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JsonType {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonType::Null => "null",
            JsonType::Bool => "boolean",
            JsonType::Number => "number",
            JsonType::String => "string",
            JsonType::Array => "array",
            JsonType::Object => "object",
        })
    }
}

/// A JSON-pointer path, rendered only when an error needs it: decoders name the path of every
/// field they read, and building those strings eagerly would cost an allocation per field.
pub(crate) trait PathArg {
    fn render(&self) -> String;
}

impl PathArg for &str {
    fn render(&self) -> String {
        (*self).to_owned()
    }
}

impl PathArg for String {
    fn render(&self) -> String {
        self.clone()
    }
}

impl PathArg for (&str, &str) {
    fn render(&self) -> String {
        [self.0, self.1].concat()
    }
}

impl PathArg for (&str, &str, &str) {
    fn render(&self) -> String {
        [self.0, self.1, self.2].concat()
    }
}

/// A path computed by a closure, e.g. one with an array index in it.
pub(crate) struct LazyPath<F>(pub F);

impl<F: Fn() -> String> PathArg for LazyPath<F> {
    fn render(&self) -> String {
        (self.0)()
    }
}

impl<P: PathArg> PathArg for &P {
    fn render(&self) -> String {
        (*self).render()
    }
}

/// A field had the wrong type or an invalid value: where, what was expected, what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// JSON pointer (RFC 6901) to the field, e.g. `/responseStatus/code`.
    pub path: String,
    /// What the decoder expected there, e.g. `string` or `RFC 3339 timestamp`.
    pub expected: String,
    /// What it found: a JSON type, or for an invalid value a short, truncated quote of it.
    pub found: String,
}

impl Shape {
    pub(crate) fn new(
        path: impl PathArg,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Shape {
            path: path.render(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// Quote an invalid string value for an error message, truncated to keep errors small.
    pub(crate) fn quote(value: &str) -> String {
        const MAX_CHARS: usize = 64;
        let mut out: String = value.chars().take(MAX_CHARS).collect();
        if value.chars().count() > MAX_CHARS {
            out.push('…');
        }
        format!("string {out:?}")
    }

    /// Prefix the path, for fields inside an array element or an embedded document.
    pub(crate) fn within(mut self, prefix: &str) -> Self {
        self.path = format!("{prefix}{}", self.path);
        self
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {}: expected {}, found {}",
            self.path, self.expected, self.found
        )
    }
}

/// A struct that accepts any object and keeps nothing: the default payload of [`Json`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Skipped;

impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Skipped)
    }
}

/// One JSON value of any type. Objects are parsed into `T` (a struct of further `Json` fields);
/// arrays are skipped (use [`List`] where the elements matter).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum Json<'a, T = Skipped> {
    /// The key was not present.
    #[default]
    Absent,
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    Object(T),
}

impl<'a, T> Json<'a, T> {
    /// The JSON type found, or `None` when absent.
    pub(crate) fn json_type(&self) -> Option<JsonType> {
        Some(match self {
            Json::Absent => return None,
            Json::Null => JsonType::Null,
            Json::Bool(_) => JsonType::Bool,
            Json::Int(_) | Json::UInt(_) | Json::Float(_) => JsonType::Number,
            Json::Str(_) => JsonType::String,
            Json::Array => JsonType::Array,
            Json::Object(_) => JsonType::Object,
        })
    }

    /// Present and not null.
    pub(crate) fn is_present(&self) -> bool {
        !matches!(self, Json::Absent | Json::Null)
    }

    fn mismatch(&self, path: impl PathArg, expected: &str) -> Shape {
        let found = self
            .json_type()
            .map_or_else(|| "nothing".to_owned(), |t| t.to_string());
        Shape::new(path, expected, found)
    }

    /// The string, if this is one (any other type is `None`). For fields whose shape the
    /// upstream format does not fix (for example OPA's free-form `input`).
    pub(crate) fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string, keeping the borrow from the input when there is one.
    pub(crate) fn cow(&self) -> Option<Cow<'a, str>> {
        match self {
            Json::Str(Cow::Borrowed(s)) => Some(Cow::Borrowed(s)),
            Json::Str(Cow::Owned(s)) => Some(Cow::Owned(s.clone())),
            _ => None,
        }
    }

    /// Absent or null is `Ok(None)`, a string is `Ok(Some)`, anything else is a [`Shape`] error.
    pub(crate) fn str_at(&self, path: impl PathArg) -> Result<Option<&str>, Shape> {
        match self {
            Json::Absent | Json::Null => Ok(None),
            Json::Str(s) => Ok(Some(s)),
            _ => Err(self.mismatch(path, "string")),
        }
    }

    /// Like [`Json::str_at`], keeping the borrow from the input.
    pub(crate) fn cow_at(&self, path: impl PathArg) -> Result<Option<Cow<'a, str>>, Shape> {
        match self {
            Json::Absent | Json::Null => Ok(None),
            Json::Str(_) => Ok(self.cow()),
            _ => Err(self.mismatch(path, "string")),
        }
    }

    /// Absent or null is `Ok(None)`, a boolean is `Ok(Some)`, anything else is an error.
    pub(crate) fn bool_at(&self, path: impl PathArg) -> Result<Option<bool>, Shape> {
        match self {
            Json::Absent | Json::Null => Ok(None),
            Json::Bool(b) => Ok(Some(*b)),
            _ => Err(self.mismatch(path, "boolean")),
        }
    }

    /// An integer. Strings of digits are accepted too, because protobuf's JSON mapping writes
    /// 64-bit integers as strings.
    pub(crate) fn i64_at(&self, path: impl PathArg) -> Result<Option<i64>, Shape> {
        match self {
            Json::Absent | Json::Null => Ok(None),
            Json::Int(i) => Ok(Some(*i)),
            Json::UInt(u) => i64::try_from(*u)
                .map(Some)
                .map_err(|_| Shape::new(path, "integer within 64 bits", format!("number {u}"))),
            Json::Str(s) => s
                .parse::<i64>()
                .map(Some)
                .map_err(|_| Shape::new(path, "integer", Shape::quote(s))),
            _ => Err(self.mismatch(path, "integer")),
        }
    }

    /// An integer in `lo..=hi`, e.g. a port or an HTTP status.
    pub(crate) fn int_in_at(
        &self,
        path: impl PathArg,
        lo: i64,
        hi: i64,
    ) -> Result<Option<i64>, Shape> {
        match self.i64_at(&path)? {
            Some(v) if !(lo..=hi).contains(&v) => Err(Shape::new(
                path,
                format!("integer in {lo}..={hi}"),
                format!("number {v}"),
            )),
            v => Ok(v),
        }
    }

    /// The object, or `None` if absent or null; an error for any other type.
    pub(crate) fn obj_at(&self, path: impl PathArg) -> Result<Option<&T>, Shape> {
        match self {
            Json::Absent | Json::Null => Ok(None),
            Json::Object(t) => Ok(Some(t)),
            _ => Err(self.mismatch(path, "object")),
        }
    }

    /// The object if this is one; any other type is `None`.
    pub(crate) fn obj(&self) -> Option<&T> {
        match self {
            Json::Object(t) => Some(t),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for Json<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor(PhantomData))
    }
}

struct JsonVisitor<'a, T>(PhantomData<(&'a (), T)>);

impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for JsonVisitor<'a, T> {
    type Value = Json<'a, T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Json::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Json::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Json::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Json::Object)
    }
}

/// A JSON array whose elements matter (each parsed as `T`), or whatever else was found there.
/// At most [`List::MAX_KEPT`] elements are kept; the rest are skipped but counted.
#[derive(Clone, Debug, PartialEq, Default)]
pub(crate) enum List<T> {
    #[default]
    Absent,
    Items {
        kept: Vec<T>,
        len: usize,
    },
    Other(JsonType),
}

impl<T> List<T> {
    /// Elements beyond this many are parsed for validity but not kept (bounds memory per event).
    pub(crate) const MAX_KEPT: usize = 16;

    /// The kept elements; empty when absent or null, an error for a non-array.
    pub(crate) fn items_at(&self, path: impl PathArg) -> Result<&[T], Shape> {
        match self {
            List::Absent | List::Other(JsonType::Null) => Ok(&[]),
            List::Items { kept, .. } => Ok(kept),
            List::Other(t) => Err(Shape::new(path, "array", t.to_string())),
        }
    }

    /// The kept elements; empty for anything that is not an array.
    pub(crate) fn items(&self) -> &[T] {
        match self {
            List::Items { kept, .. } => kept,
            _ => &[],
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor(PhantomData))
    }
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = List<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut kept = Vec::new();
        let mut len = 0usize;
        while len < List::<T>::MAX_KEPT {
            match seq.next_element::<T>()? {
                Some(t) => kept.push(t),
                None => return Ok(List::Items { kept, len }),
            }
            len += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            len += 1;
        }
        Ok(List::Items { kept, len })
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(List::Other(JsonType::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(List::Other(JsonType::Null))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(List::Other(JsonType::Bool))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(List::Other(JsonType::Number))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(List::Other(JsonType::Number))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(List::Other(JsonType::Number))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(List::Other(JsonType::String))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(List::Other(JsonType::Object))
    }
}

/// A JSON object with arbitrary keys (e.g. OPA's `bundles`), as kept `(key, value)` pairs.
/// At most [`Entries::MAX_KEPT`] entries are kept; the rest are parsed and skipped.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entries<'a, T>(pub Vec<(Cow<'a, str>, T)>);

impl<T> Default for Entries<'_, T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<T> Entries<'_, T> {
    pub(crate) const MAX_KEPT: usize = 16;
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for Entries<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a, T>(PhantomData<(&'a (), T)>);
        impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for V<'a, T> {
            type Value = Entries<'a, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kept = Vec::new();
                while kept.len() < Entries::<T>::MAX_KEPT {
                    match map.next_entry::<Json<'a>, T>()? {
                        Some((Json::Str(k), v)) => kept.push((k, v)),
                        Some(_) => {}
                        None => return Ok(Entries(kept)),
                    }
                }
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Entries(kept))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A string, or an array of strings (e.g. OPA inputs that carry a path as segments).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum StrOrSegments<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Segments(Vec<Cow<'a, str>>),
    Other,
}

impl StrOrSegments<'_> {
    /// The string, or the segments joined as an absolute path (`["v1","data"]` → `/v1/data`).
    pub(crate) fn to_path(&self) -> Option<Cow<'_, str>> {
        match self {
            StrOrSegments::Str(s) => Some(Cow::Borrowed(s)),
            StrOrSegments::Segments(segs) => {
                let mut out = String::new();
                for s in segs {
                    out.push('/');
                    out.push_str(s);
                }
                Some(Cow::Owned(out))
            }
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StrOrSegments<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StrOrSegments<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrOrSegments::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrOrSegments::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut segs = Vec::new();
                let mut all_strings = true;
                while let Some(item) = seq.next_element::<Json<'a>>()? {
                    match item {
                        Json::Str(s) if all_strings && segs.len() < List::<()>::MAX_KEPT => {
                            segs.push(s)
                        }
                        _ => all_strings = false,
                    }
                }
                Ok(if all_strings {
                    StrOrSegments::Segments(segs)
                } else {
                    StrOrSegments::Other
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(StrOrSegments::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(StrOrSegments::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(StrOrSegments::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(StrOrSegments::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(StrOrSegments::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(StrOrSegments::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod tests;
