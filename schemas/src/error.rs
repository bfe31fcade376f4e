//! The one error a decoder returns: what was wrong, where, and the record's bytes.

use std::fmt;

use crate::json::Shape;
use crate::model::SourceFormat;

/// What was wrong with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Zero bytes, or only whitespace.
    Empty,
    /// The record is larger than the configured `max_record_bytes`.
    TooLarge { len_bytes: usize, max_bytes: usize },
    /// The bytes are not UTF-8; `offset` is the first invalid byte.
    InvalidUtf8 { offset: usize },
    /// Gzip framing or data is corrupt.
    Gzip { detail: String },
    /// Decompressing would exceed `max_decompressed_bytes` (a gzip bomb, or a huge upload).
    DecompressedTooLarge { max_bytes: usize },
    /// Not JSON: serde_json's message with line and column.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON, but not an object (or, at the top level, an array of objects).
    NotAnObject { found: String },
    /// An array that holds no event.
    EmptyArray,
    /// An array of more than `max_events_per_record` events.
    TooManyEvents { len: usize, max: usize },
    /// Valid JSON whose keys identify none of the known formats.
    UnknownFormat,
    /// A field has the wrong type or an invalid value.
    Shape(Shape),
    /// A field the format requires is missing.
    Missing { path: String },
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind::*;
        match self {
            Empty => f.write_str("empty record"),
            TooLarge {
                len_bytes,
                max_bytes,
            } => {
                write!(
                    f,
                    "record is {len_bytes} bytes, over the limit of {max_bytes} bytes"
                )
            }
            InvalidUtf8 { offset } => write!(f, "invalid UTF-8 at byte offset {offset}"),
            Gzip { detail } => write!(f, "corrupt gzip data: {detail}"),
            DecompressedTooLarge { max_bytes } => {
                write!(f, "gzip data decompresses to more than {max_bytes} bytes")
            }
            Syntax {
                line,
                column,
                message,
            } => {
                write!(f, "invalid JSON at line {line} column {column}: {message}")
            }
            NotAnObject { found } => write!(f, "expected a JSON object, found {found}"),
            EmptyArray => f.write_str("empty array: no events in the record"),
            TooManyEvents { len, max } => {
                write!(
                    f,
                    "array of {len} events, over the limit of {max} per record"
                )
            }
            UnknownFormat => f.write_str(
                "no known format recognised (expected keys such as decision_id+input (opa), \
                 response_code+start_time (envoy), flow or verdict (hubble), \
                 kind=Event+verb / apiVersion=audit.k8s.io/* (k8s_audit), \
                 protoPayload (gke_audit), schema=vigil.event/v1 (native))",
            ),
            Shape(s) => s.fmt(f),
            Missing { path } => write!(f, "at {path}: required field is missing"),
        }
    }
}

/// A record that could not be decoded. It carries the record's bytes exactly as received, so
/// nothing is lost: the caller decides where it goes (the store's `rejected` rows, a
/// dead-letter topic, stderr).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    /// The format that was pinned or detected, if it got that far.
    pub format: Option<SourceFormat>,
    pub kind: DecodeErrorKind,
    /// The record's bytes, exactly as passed to the decoder.
    pub raw: Vec<u8>,
}

impl DecodeError {
    pub(crate) fn new(format: Option<SourceFormat>, kind: DecodeErrorKind, raw: &[u8]) -> Self {
        DecodeError {
            format,
            kind,
            raw: raw.to_vec(),
        }
    }

    /// A short, stable name of the error kind, for metrics labels and Kafka headers.
    pub fn kind_name(&self) -> &'static str {
        use DecodeErrorKind::*;
        match self.kind {
            Empty => "empty",
            TooLarge { .. } => "too_large",
            InvalidUtf8 { .. } => "invalid_utf8",
            Gzip { .. } => "gzip",
            DecompressedTooLarge { .. } => "decompressed_too_large",
            Syntax { .. } => "syntax",
            NotAnObject { .. } => "not_an_object",
            EmptyArray => "empty_array",
            TooManyEvents { .. } => "too_many_events",
            UnknownFormat => "unknown_format",
            Shape(_) => "shape",
            Missing { .. } => "missing_field",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.format {
            Some(fmt_) => write!(f, "{fmt_}: {}", self.kind),
            None => self.kind.fmt(f),
        }
    }
}

/// A decoder-internal failure, before the raw bytes are attached.
#[derive(Debug)]
pub(crate) enum Fail {
    Kind(DecodeErrorKind),
    Shape(Shape),
}

impl From<Shape> for Fail {
    fn from(s: Shape) -> Self {
        Fail::Shape(s)
    }
}

impl From<DecodeErrorKind> for Fail {
    fn from(k: DecodeErrorKind) -> Self {
        Fail::Kind(k)
    }
}

impl Fail {
    pub(crate) fn missing(path: impl crate::json::PathArg) -> Self {
        Fail::Kind(DecodeErrorKind::Missing {
            path: path.render(),
        })
    }

    pub(crate) fn into_kind(self) -> DecodeErrorKind {
        match self {
            Fail::Kind(k) => k,
            Fail::Shape(s) => DecodeErrorKind::Shape(s),
        }
    }

    /// Prefix any path in the error (element of an array, embedded document).
    pub(crate) fn within(self, prefix: &str) -> Self {
        match self {
            Fail::Shape(s) => Fail::Shape(s.within(prefix)),
            Fail::Kind(DecodeErrorKind::Missing { path }) => Fail::Kind(DecodeErrorKind::Missing {
                path: format!("{prefix}{path}"),
            }),
            Fail::Kind(DecodeErrorKind::Syntax {
                line,
                column,
                message,
            }) => Fail::Kind(DecodeErrorKind::Syntax {
                line,
                column,
                message: format!("{message} (in {prefix})"),
            }),
            other => other,
        }
    }
}

pub(crate) fn syntax(e: &serde_json::Error) -> DecodeErrorKind {
    // serde_json's Display appends " at line L column C"; keep the message without it.
    let msg = e.to_string();
    let message = match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    };
    DecodeErrorKind::Syntax {
        line: e.line(),
        column: e.column(),
        message,
    }
}
