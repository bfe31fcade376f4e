//! Decoding records in the formats services emit into canonical [`Event`]s.
//!
//! One record is parsed **once**, into `TopLevel`: a union of the top-level fields of every
//! supported format, built from the loose value types of [`crate::json`]. The format is then
//! either the one pinned for the topic or detected from which keys are present, and that
//! format's mapping reads what it needs, with JSON-pointer paths in every error.
//!
//! Limits ([`DecoderConfig`]) bound what one record can cost: its size, what it may
//! decompress to, and how many events one array may hold. Nesting depth costs no stack: the
//! decoders parse a few fixed levels into structs, and serde_json skips everything below them
//! iteratively (its recursion limit of 128 stands behind that).

use std::borrow::Cow;
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::batch::EventBatchBuilder;
use crate::error::{DecodeError, DecodeErrorKind, Fail, syntax};
use crate::json::{Json, List, PathArg, Shape, Skipped};
use crate::model::{Event, SourceFormat};

mod envoy;
mod gke;
mod hubble;
mod k8s;
mod native;

/// The native format's `schema` value (`vigil.event/v1`).
pub use native::SCHEMA_V1 as NATIVE_SCHEMA_V1;
mod opa;

/// Bounds on what one record may cost to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Largest record accepted, in bytes (as received, before any gunzip).
    pub max_record_bytes: usize,
    /// Largest size a gzip record may decompress to, in bytes.
    pub max_decompressed_bytes: usize,
    /// Most events one record (an OPA upload array) may carry.
    pub max_events_per_record: usize,
}

impl DecoderConfig {
    pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
    pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;
    pub const DEFAULT_MAX_EVENTS_PER_RECORD: usize = 100_000;
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_record_bytes: Self::DEFAULT_MAX_RECORD_BYTES,
            max_decompressed_bytes: Self::DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_events_per_record: Self::DEFAULT_MAX_EVENTS_PER_RECORD,
        }
    }
}

/// Decodes records into canonical events, detecting the format per record or using the one
/// pinned for the topic. Cheap to construct; holds no per-record state, so one decoder can
/// serve a whole partition.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    config: DecoderConfig,
    pinned: Option<SourceFormat>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// How many bytes `raw` is once decompressed (itself if it is not gzip), counted without
/// holding them; `None` past `max_bytes` or if it is not valid gzip. What a caller can bound
/// memory by before decoding.
pub fn inflated_len(raw: &[u8], max_bytes: usize) -> Option<usize> {
    if !raw.starts_with(&GZIP_MAGIC) {
        return Some(raw.len());
    }
    let mut reader = flate2::read::MultiGzDecoder::new(raw).take(max_bytes as u64 + 1);
    let n = std::io::copy(&mut reader, &mut std::io::sink()).ok()?;
    usize::try_from(n).ok().filter(|&n| n <= max_bytes)
}

impl Decoder {
    /// `pinned`: decode every record as this format instead of detecting it.
    pub fn new(config: DecoderConfig, pinned: Option<SourceFormat>) -> Self {
        Decoder { config, pinned }
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn pinned(&self) -> Option<SourceFormat> {
        self.pinned
    }

    /// Decode one record and append its events to `out`; returns how many were appended.
    /// All or nothing: on error nothing is appended and the error carries the record's bytes.
    /// `received_time_ns` stands in for the event time of events that carry none.
    pub fn decode_into(
        &self,
        raw: &[u8],
        received_time_ns: i64,
        out: &mut EventBatchBuilder,
    ) -> Result<usize, DecodeError> {
        self.decode_with(raw, |e| out.append(e, received_time_ns))
    }

    /// Decode one record and hand each event to `sink`; returns how many there were.
    /// All or nothing, as [`Decoder::decode_into`]: `sink` is called only once the whole
    /// record has decoded.
    pub fn decode_with(
        &self,
        raw: &[u8],
        mut sink: impl FnMut(&Event<'_>),
    ) -> Result<usize, DecodeError> {
        let fail = |(format, kind): (Option<SourceFormat>, DecodeErrorKind)| {
            DecodeError::new(format, kind, raw)
        };
        if raw.len() > self.config.max_record_bytes {
            return Err(fail((
                self.pinned,
                DecodeErrorKind::TooLarge {
                    len_bytes: raw.len(),
                    max_bytes: self.config.max_record_bytes,
                },
            )));
        }
        if raw.starts_with(&GZIP_MAGIC) {
            let text = self.gunzip(raw).map_err(|k| fail((self.pinned, k)))?;
            self.decode_text(&text, &mut sink).map_err(fail)
        } else {
            self.decode_text(raw, &mut sink).map_err(fail)
        }
    }

    fn gunzip(&self, raw: &[u8]) -> Result<Vec<u8>, DecodeErrorKind> {
        let max = self.config.max_decompressed_bytes;
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(max));
        // Read one byte past the limit: reaching it means the data is larger than allowed,
        // and we stop there instead of inflating a bomb. `MultiGzDecoder` accepts the
        // concatenated members some writers produce.
        let mut reader = flate2::read::MultiGzDecoder::new(raw).take(max as u64 + 1);
        reader
            .read_to_end(&mut out)
            .map_err(|e| DecodeErrorKind::Gzip {
                detail: e.to_string(),
            })?;
        if out.len() > max {
            return Err(DecodeErrorKind::DecompressedTooLarge { max_bytes: max });
        }
        Ok(out)
    }

    fn decode_text(
        &self,
        bytes: &[u8],
        sink: &mut impl FnMut(&Event<'_>),
    ) -> Result<usize, (Option<SourceFormat>, DecodeErrorKind)> {
        let pinned = self.pinned;
        let text = simdutf8::compat::from_utf8(bytes).map_err(|e| {
            (
                pinned,
                DecodeErrorKind::InvalidUtf8 {
                    offset: e.valid_up_to(),
                },
            )
        })?;
        match text.trim_ascii_start().as_bytes().first() {
            None => Err((pinned, DecodeErrorKind::Empty)),
            Some(b'{') => {
                let event = self
                    .decode_object(text, 0)
                    .map_err(|(f, e)| (f, e.into_kind()))?;
                sink(&event);
                Ok(1)
            }
            Some(b'[') => self.decode_array(text, sink),
            Some(_) => Err((pinned, not_an_object(text, ""))),
        }
    }

    fn decode_array(
        &self,
        text: &str,
        sink: &mut impl FnMut(&Event<'_>),
    ) -> Result<usize, (Option<SourceFormat>, DecodeErrorKind)> {
        let pinned = self.pinned;
        let elements: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| (pinned, syntax(&e)))?;
        if elements.is_empty() {
            return Err((pinned, DecodeErrorKind::EmptyArray));
        }
        let max = self.config.max_events_per_record;
        if elements.len() > max {
            return Err((
                pinned,
                DecodeErrorKind::TooManyEvents {
                    len: elements.len(),
                    max,
                },
            ));
        }
        // Decode every element before handing any to the sink: a record is all or nothing.
        let mut events = Vec::with_capacity(elements.len());
        for (i, el) in elements.iter().enumerate() {
            let el = el.get();
            let index = u32::try_from(i).map_err(|_| {
                (
                    pinned,
                    DecodeErrorKind::TooManyEvents {
                        len: elements.len(),
                        max,
                    },
                )
            })?;
            if !el.starts_with('{') {
                return Err((pinned, not_an_object(el, &format!("/{i}"))));
            }
            let event = self
                .decode_object(el, index)
                .map_err(|(f, e)| (f, e.within(&format!("/{i}")).into_kind()))?;
            events.push(event);
        }
        events.iter().for_each(sink);
        Ok(events.len())
    }

    /// Decode one JSON object (a whole record, or one element of an array).
    fn decode_object<'a>(
        &self,
        text: &'a str,
        record_index: u32,
    ) -> Result<Event<'a>, (Option<SourceFormat>, Fail)> {
        let top: TopLevel<'a> =
            serde_json::from_str(text).map_err(|e| (self.pinned, syntax(&e).into()))?;
        let format = match self.pinned {
            Some(f) => f,
            None => detect(&top).ok_or((None, Fail::Kind(DecodeErrorKind::UnknownFormat)))?,
        };
        let raw = text.as_bytes();
        let mapped = match format {
            SourceFormat::Opa => opa::map(&top, raw),
            SourceFormat::Envoy => envoy::map(&top, raw),
            SourceFormat::Hubble => hubble::map(&top, text),
            SourceFormat::K8sAudit => k8s::map(&top, raw),
            SourceFormat::GkeAudit => gke::map(&top, raw),
            SourceFormat::Native => native::map(&top, raw),
        };
        let mut event = mapped.map_err(|e| (Some(format), e))?;
        event.record_index = record_index;
        Ok(event)
    }
}

fn not_an_object(text: &str, path: &str) -> DecodeErrorKind {
    match serde_json::from_str::<Json<'_, Skipped>>(text) {
        Err(e) => syntax(&e),
        Ok(v) => DecodeErrorKind::Shape(Shape::new(
            if path.is_empty() { "/" } else { path },
            "a JSON object",
            v.json_type()
                .map_or("nothing".to_owned(), |t| t.to_string()),
        )),
    }
}

/// Which format a record is, from the keys present. `None` when nothing matches.
fn detect(t: &TopLevel<'_>) -> Option<SourceFormat> {
    if t.schema
        .str()
        .is_some_and(|s| s.starts_with(native::SCHEMA_PREFIX))
    {
        return Some(SourceFormat::Native);
    }
    if t.flow.obj().is_some()
        || t.lost_events.obj().is_some()
        || t.verdict.str().is_some_and(hubble::is_verdict)
    {
        return Some(SourceFormat::Hubble);
    }
    let audit_api = t
        .apiVersion
        .str()
        .is_some_and(|v| v.starts_with("audit.k8s.io/"));
    let event_kind = t.kind.str() == Some("Event")
        && (t.verb.is_present() || t.auditID.is_present() || t.requestURI.is_present());
    if audit_api || event_kind || k8s::is_aks_wrapper(t) {
        return Some(SourceFormat::K8sAudit);
    }
    if t.protoPayload.obj().is_some_and(|p| gke::is_k8s(p)) {
        return Some(SourceFormat::GkeAudit);
    }
    if t.decision_id.is_present()
        || (t.input.is_present() && (t.result.is_present() || t.path.is_present()))
    {
        return Some(SourceFormat::Opa);
    }
    if t.response_code.is_present()
        && (t.start_time.is_present()
            || t.response_flags.is_present()
            || t.upstream_cluster.is_present()
            || t.authority.is_present())
    {
        return Some(SourceFormat::Envoy);
    }
    None
}

/// The top-level fields of every supported format, parsed in one pass. Keys shared between
/// formats (`time`, `path`, `kind`, `timestamp`, …) are [`Json`] values, so each format reads
/// them with the type it expects and different types never clash while parsing.
#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct TopLevel<'a> {
    // Shared between formats.
    #[serde(borrow)]
    pub time: Json<'a>,
    #[serde(borrow)]
    pub timestamp: Json<'a>,
    #[serde(borrow)]
    pub kind: Json<'a>,
    #[serde(borrow)]
    pub path: Json<'a>,
    #[serde(borrow)]
    pub trace_id: Json<'a>,
    #[serde(borrow)]
    pub request_id: Json<'a>,
    #[serde(borrow)]
    pub resource: Json<'a>,
    // Native.
    #[serde(borrow)]
    pub schema: Json<'a>,
    #[serde(borrow)]
    pub id: Json<'a>,
    #[serde(borrow)]
    pub decision: Json<'a>,
    #[serde(borrow)]
    pub reason: Json<'a>,
    #[serde(borrow)]
    pub policy: Json<'a>,
    #[serde(borrow)]
    pub policy_revision: Json<'a>,
    #[serde(borrow)]
    pub caller: Json<'a, Box<native::Party<'a>>>,
    #[serde(borrow)]
    pub callee: Json<'a, Box<native::Party<'a>>>,
    #[serde(borrow)]
    pub action: Json<'a>,
    #[serde(borrow)]
    pub status_code: Json<'a>,
    #[serde(borrow)]
    pub is_reply: Json<'a>,
    // OPA.
    #[serde(borrow)]
    pub decision_id: Json<'a>,
    #[serde(borrow)]
    pub input: Json<'a, Box<opa::Input<'a>>>,
    #[serde(borrow)]
    pub result: Json<'a, Box<opa::ResultObj<'a>>>,
    #[serde(borrow)]
    pub error: Json<'a, opa::ErrorObj<'a>>,
    #[serde(borrow)]
    pub bundles: Json<'a, crate::json::Entries<'a, Json<'a, opa::Bundle<'a>>>>,
    #[serde(borrow)]
    pub revision: Json<'a>,
    // Envoy / Istio.
    #[serde(borrow)]
    pub start_time: Json<'a>,
    #[serde(borrow)]
    pub method: Json<'a>,
    #[serde(borrow)]
    pub response_code: Json<'a>,
    #[serde(borrow)]
    pub response_flags: Json<'a>,
    #[serde(borrow)]
    pub response_code_details: Json<'a>,
    #[serde(borrow)]
    pub authority: Json<'a>,
    #[serde(borrow)]
    pub upstream_host: Json<'a>,
    #[serde(borrow)]
    pub upstream_cluster: Json<'a>,
    #[serde(borrow)]
    pub downstream_remote_address: Json<'a>,
    #[serde(borrow)]
    pub downstream_local_address: Json<'a>,
    #[serde(borrow)]
    pub downstream_peer_uri_san: Json<'a>,
    #[serde(borrow)]
    pub downstream_local_uri_san: Json<'a>,
    #[serde(borrow)]
    pub upstream_peer_uri_san: Json<'a>,
    // Hubble.
    #[serde(borrow)]
    pub flow: Json<'a, Box<hubble::Flow<'a>>>,
    /// Hubble's report of flows it could not deliver (`{"lost_events":{…},"node_name":…}`).
    #[serde(borrow)]
    pub lost_events: Json<'a, Box<hubble::LostEvents<'a>>>,
    #[serde(borrow)]
    pub node_name: Json<'a>,
    #[serde(borrow)]
    pub verdict: Json<'a>,
    // Kubernetes audit.
    #[serde(borrow)]
    pub apiVersion: Json<'a>,
    #[serde(borrow)]
    pub auditID: Json<'a>,
    #[serde(borrow)]
    pub stage: Json<'a>,
    #[serde(borrow)]
    pub requestURI: Json<'a>,
    #[serde(borrow)]
    pub verb: Json<'a>,
    #[serde(borrow)]
    pub user: Json<'a, k8s::User<'a>>,
    #[serde(borrow)]
    pub sourceIPs: List<Json<'a>>,
    #[serde(borrow)]
    pub objectRef: Json<'a, Box<k8s::ObjectRef<'a>>>,
    #[serde(borrow)]
    pub responseStatus: Json<'a, Box<k8s::Status<'a>>>,
    #[serde(borrow)]
    pub requestReceivedTimestamp: Json<'a>,
    #[serde(borrow)]
    pub stageTimestamp: Json<'a>,
    #[serde(borrow)]
    pub annotations: Json<'a, k8s::Annotations<'a>>,
    #[serde(borrow)]
    pub metadata: Json<'a, k8s::Metadata<'a>>,
    // AKS diagnostic-log wrapper around a Kubernetes audit event.
    #[serde(borrow)]
    pub category: Json<'a>,
    #[serde(borrow)]
    pub properties: Json<'a, k8s::AksProperties<'a>>,
    // GKE (Google Cloud Audit Logs).
    #[serde(borrow)]
    pub protoPayload: Json<'a, Box<gke::Proto<'a>>>,
    #[serde(borrow)]
    pub insertId: Json<'a>,
    #[serde(borrow)]
    pub receiveTimestamp: Json<'a>,
}

// ---- helpers shared by the format mappings ----

/// Parse a timestamp: RFC 3339 (any offset, any fraction), or the zone-less
/// `YYYY-MM-DD[ T]HH:MM:SS[.f]` some exporters write, taken as UTC.
pub(crate) fn parse_time_ns(s: &str) -> Option<i64> {
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s) {
        return dt.timestamp_nanos_opt();
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| {
            chrono::NaiveDateTime::parse_from_str(s, f)
                .ok()?
                .and_utc()
                .timestamp_nanos_opt()
        })
}

/// A time field: absent/null is `None`; a string that is not a timestamp is an error.
pub(crate) fn time_at<T>(j: &Json<'_, T>, path: impl PathArg) -> Result<Option<i64>, Shape> {
    match j.str_at(&path)? {
        None | Some("") => Ok(None),
        Some(s) => parse_time_ns(s)
            .map(Some)
            .ok_or_else(|| Shape::new(path, "RFC 3339 timestamp", Shape::quote(s))),
    }
}

/// The first of several time fields that is present.
pub(crate) fn first_time(fields: &[(&Json<'_>, &str)]) -> Result<Option<i64>, Shape> {
    for (j, path) in fields {
        if let Some(t) = time_at(j, path)? {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// A sub-slice of a string, borrowed when the string is.
pub(crate) fn sub<'a>(
    c: &Cow<'a, str>,
    f: impl for<'x> Fn(&'x str) -> Option<&'x str>,
) -> Option<Cow<'a, str>> {
    match c {
        Cow::Borrowed(s) => f(s).map(Cow::Borrowed),
        Cow::Owned(s) => f(s).map(|x| Cow::Owned(x.to_owned())),
    }
}

/// A string field that is a real value: absent, null, empty and Envoy's `-` are `None`.
pub(crate) fn value_at<'a, T>(
    j: &Json<'a, T>,
    path: impl PathArg,
) -> Result<Option<Cow<'a, str>>, Shape> {
    Ok(j.cow_at(path)?.filter(|s| !s.is_empty() && s != "-"))
}

/// `ip:port`, `[v6]:port` or a bare IP → (ip, port). Anything that is not an address (a unix
/// socket path, a hostname) gives `(None, None)`: addresses are only stored when they parse.
pub(crate) fn split_addr<'a>(addr: &Cow<'a, str>) -> (Option<Cow<'a, str>>, Option<u16>) {
    use std::net::{IpAddr, SocketAddr};
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        let ip = sub(addr, |s| {
            let host = &s[..s.rfind(':')?];
            Some(
                host.strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host),
            )
        });
        return (ip, Some(sa.port()));
    }
    if addr.parse::<IpAddr>().is_ok() {
        return (Some(addr.clone()), None);
    }
    (None, None)
}

/// The namespace in a SPIFFE ID (`spiffe://td/ns/NS/sa/SA`) or a Kubernetes service-account
/// username (`system:serviceaccount:NS:NAME`).
pub(crate) fn namespace_of<'a>(principal: &Cow<'a, str>) -> Option<Cow<'a, str>> {
    sub(principal, |p| {
        if let Some(rest) = p.strip_prefix("spiffe://") {
            let mut parts = rest.split('/').skip(1);
            while let Some(key) = parts.next() {
                let val = parts.next()?;
                if key == "ns" && !val.is_empty() {
                    return Some(val);
                }
            }
            None
        } else {
            let rest = p.strip_prefix("system:serviceaccount:")?;
            let (ns, _name) = rest.split_once(':')?;
            (!ns.is_empty()).then_some(ns)
        }
    })
}

/// A port field: an integer in 0..=65535.
pub(crate) fn port_at<T>(j: &Json<'_, T>, path: impl PathArg) -> Result<Option<u16>, Shape> {
    Ok(j.int_in_at(path, 0, 65535)?.map(|p| p as u16))
}

/// A status-code field: an integer in 0..=999.
pub(crate) fn status_at<T>(j: &Json<'_, T>, path: impl PathArg) -> Result<Option<i32>, Shape> {
    Ok(j.int_in_at(path, 0, 999)?.map(|c| c as i32))
}

/// Convenience for mappings: a `Result` over [`Fail`].
pub(crate) type Mapped<'a> = Result<Event<'a>, Fail>;

/// Decode a record that must hold exactly one event (unit tests of the format modules).
#[cfg(test)]
pub(crate) fn test_one(json: &str) -> Event<'static> {
    let mut out = Vec::new();
    Decoder::default()
        .decode_with(json.as_bytes(), |e| out.push(e.clone().into_owned()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[cfg(test)]
mod tests;
