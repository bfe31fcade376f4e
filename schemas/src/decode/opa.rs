//! OPA decision logs (`EventV1`), one per record or as the JSON array OPA uploads.
//!
//! OPA's own fields are read strictly. `input` is whatever the policy's caller sent, so it is
//! read in two ways: the Envoy ext_authz `CheckRequest` shape (opa-envoy-plugin), strictly,
//! because its types are fixed by protobuf's JSON mapping; and a few common generic shapes
//! (`input.method`, `input.path`, `input.user`/`subject`/`principal`), loosely, because there
//! any type is legitimate.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Mapped, TopLevel, first_time, namespace_of, port_at, status_at, sub, value_at};
use crate::error::Fail;
use crate::json::{Json, StrOrSegments};
use crate::model::{Decision, Event, Identity, Kind, SourceFormat};

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Input<'a> {
    #[serde(borrow)]
    attributes: Json<'a, Attributes<'a>>,
    #[serde(borrow)]
    method: Json<'a>,
    #[serde(borrow)]
    path: StrOrSegments<'a>,
    #[serde(borrow)]
    user: Json<'a>,
    #[serde(borrow)]
    subject: Json<'a>,
    #[serde(borrow)]
    principal: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Attributes<'a> {
    #[serde(borrow)]
    source: Json<'a, Peer<'a>>,
    #[serde(borrow)]
    destination: Json<'a, Peer<'a>>,
    #[serde(borrow)]
    request: Json<'a, Request<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Peer<'a> {
    #[serde(borrow)]
    address: Json<'a, Address<'a>>,
    #[serde(borrow)]
    principal: Json<'a>,
}

#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
struct Address<'a> {
    #[serde(borrow)]
    socketAddress: Json<'a, SocketAddress<'a>>,
}

#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
struct SocketAddress<'a> {
    #[serde(borrow)]
    address: Json<'a>,
    #[serde(borrow)]
    portValue: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Request<'a> {
    #[serde(borrow)]
    http: Json<'a, Http<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Http<'a> {
    #[serde(borrow)]
    method: Json<'a>,
    #[serde(borrow)]
    path: Json<'a>,
    #[serde(borrow)]
    host: Json<'a>,
    #[serde(borrow)]
    id: Json<'a>,
    #[serde(borrow)]
    headers: Json<'a, Headers<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Headers<'a> {
    #[serde(borrow, rename = "x-request-id")]
    request_id: Json<'a>,
    #[serde(borrow)]
    traceparent: Json<'a>,
    #[serde(borrow, rename = "x-b3-traceid")]
    b3_trace_id: Json<'a>,
}

/// `result` when it is an object: opa-envoy-plugin's `{"allowed": …, "http_status": …}`, or
/// a policy's own `{"allow": …, "reason": …}`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ResultObj<'a> {
    #[serde(borrow)]
    allowed: Json<'a>,
    #[serde(borrow)]
    allow: Json<'a>,
    #[serde(borrow)]
    reason: Json<'a>,
    #[serde(borrow)]
    http_status: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ErrorObj<'a> {
    #[serde(borrow)]
    code: Json<'a>,
    #[serde(borrow)]
    message: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Bundle<'a> {
    #[serde(borrow)]
    revision: Json<'a>,
}

pub(crate) fn map<'a>(t: &TopLevel<'a>, raw: &'a [u8]) -> Mapped<'a> {
    if !(t.decision_id.is_present()
        || t.input.is_present()
        || t.result.is_present()
        || t.path.is_present())
    {
        return Err(Fail::missing("/decision_id"));
    }
    let (decision, reason, status) = decision(t)?;
    let mut e = Event::new(SourceFormat::Opa, Kind::Authz, decision, raw);
    e.reason = reason;
    e.status_code = status;
    e.time_ns = first_time(&[(&t.timestamp, "/timestamp"), (&t.time, "/time")])?;
    e.event_id = value_at(&t.decision_id, "/decision_id")?;
    e.policy = value_at(&t.path, "/path")?;
    e.trace_id = value_at(&t.trace_id, "/trace_id")?;
    e.policy_revision = revision(t)?;

    let Some(input) = t.input.obj() else {
        return Ok(e);
    };
    if let Some(attrs) = input.attributes.obj_at("/input/attributes")? {
        envoy_shape(attrs, &mut e)?;
    } else {
        // Generic inputs: read loosely, whatever their types.
        e.action = input.method.cow();
        e.resource = match &input.path {
            StrOrSegments::Str(p) => Some(p.clone()),
            other => other.to_path().map(|p| Cow::Owned(p.into_owned())),
        };
        e.caller.principal = input
            .user
            .cow()
            .or(input.subject.cow())
            .or(input.principal.cow());
        e.caller.namespace = e.caller.principal.as_ref().and_then(namespace_of);
    }
    Ok(e)
}

/// The decision, its reason and HTTP status, from `result` and `error`.
/// A decision with its reason and HTTP status.
type Verdict<'a> = (Decision, Option<Cow<'a, str>>, Option<i32>);

fn decision<'a>(t: &TopLevel<'a>) -> Result<Verdict<'a>, Fail> {
    match &t.error {
        Json::Absent | Json::Null => {}
        Json::Str(s) => return Ok((Decision::Error, Some(s.clone()), None)),
        Json::Object(err) => {
            let msg = err.message.cow().or(err.code.cow());
            return Ok((
                Decision::Error,
                msg.or(Some(Cow::Borrowed("evaluation error"))),
                None,
            ));
        }
        _ => {
            return Ok((
                Decision::Error,
                Some(Cow::Borrowed("evaluation error")),
                None,
            ));
        }
    }
    Ok(match &t.result {
        Json::Bool(true) => (Decision::Allow, None, None),
        Json::Bool(false) => (Decision::Deny, None, None),
        // OPA's documentation example logs the result as the string "true".
        Json::Str(s) if s == "true" => (Decision::Allow, None, None),
        Json::Str(s) if s == "false" => (Decision::Deny, None, None),
        Json::Object(r) => {
            let allowed = r
                .allowed
                .bool_at("/result/allowed")?
                .or(r.allow.bool_at("/result/allow")?);
            let decision = match allowed {
                Some(true) => Decision::Allow,
                Some(false) => Decision::Deny,
                None => Decision::Unknown,
            };
            (
                decision,
                r.reason.cow(),
                status_at(&r.http_status, "/result/http_status")?,
            )
        }
        Json::Absent | Json::Null => (
            Decision::Unknown,
            Some(Cow::Borrowed("undefined decision (no result)")),
            None,
        ),
        _ => (Decision::Unknown, None, None),
    })
}

/// `bundles` as sorted `name=revision` pairs, or the legacy top-level `revision`.
fn revision<'a>(t: &TopLevel<'a>) -> Result<Option<Cow<'a, str>>, Fail> {
    if let Some(bundles) = t.bundles.obj_at("/bundles")? {
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(bundles.0.len());
        for (name, b) in &bundles.0 {
            if let Some(rev) = b.obj().and_then(|b| b.revision.str()) {
                pairs.push((name, rev));
            }
        }
        if let [(name, rev)] = pairs.as_slice() {
            return Ok(Some(Cow::Owned(format!("{name}={rev}"))));
        }
        if !pairs.is_empty() {
            pairs.sort_unstable();
            let joined: Vec<String> = pairs.iter().map(|(n, r)| format!("{n}={r}")).collect();
            return Ok(Some(Cow::Owned(joined.join(","))));
        }
    }
    Ok(value_at(&t.revision, "/revision")?)
}

/// opa-envoy-plugin: `input` is Envoy's ext_authz `CheckRequest` (protobuf JSON mapping).
fn envoy_shape<'a>(attrs: &Attributes<'a>, e: &mut Event<'a>) -> Result<(), Fail> {
    e.caller = peer(&attrs.source, "/input/attributes/source")?;
    e.callee = peer(&attrs.destination, "/input/attributes/destination")?;
    let Some(req) = attrs.request.obj_at("/input/attributes/request")? else {
        return Ok(());
    };
    let Some(http) = req.http.obj_at("/input/attributes/request/http")? else {
        return Ok(());
    };
    e.action = value_at(&http.method, "/input/attributes/request/http/method")?;
    e.resource = value_at(&http.path, "/input/attributes/request/http/path")?;
    e.callee.service = value_at(&http.host, "/input/attributes/request/http/host")?;
    let stream_id = value_at(&http.id, "/input/attributes/request/http/id")?;
    if let Some(h) = http
        .headers
        .obj_at("/input/attributes/request/http/headers")?
    {
        e.request_id = value_at(
            &h.request_id,
            "/input/attributes/request/http/headers/x-request-id",
        )?;
        if e.trace_id.is_none() {
            e.trace_id = match value_at(
                &h.traceparent,
                "/input/attributes/request/http/headers/traceparent",
            )? {
                // W3C traceparent: version-traceid-parentid-flags.
                Some(tp) => sub(&tp, |s| s.split('-').nth(1).filter(|id| id.len() == 32)),
                None => value_at(
                    &h.b3_trace_id,
                    "/input/attributes/request/http/headers/x-b3-traceid",
                )?,
            };
        }
    }
    if e.request_id.is_none() {
        e.request_id = stream_id;
    }
    Ok(())
}

fn peer<'a>(p: &Json<'a, Peer<'a>>, path: &str) -> Result<Identity<'a>, Fail> {
    let mut id = Identity::default();
    let Some(p) = p.obj_at(path)? else {
        return Ok(id);
    };
    id.principal = value_at(&p.principal, (path, "/principal"))?;
    id.namespace = id.principal.as_ref().and_then(namespace_of);
    if let Some(a) = p.address.obj_at((path, "/address"))?
        && let Some(sa) = a.socketAddress.obj_at((path, "/address/socketAddress"))?
    {
        id.ip = value_at(&sa.address, (path, "/address/socketAddress/address"))?;
        id.port = port_at(&sa.portValue, (path, "/address/socketAddress/portValue"))?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use crate::decode::test_one as one;
    use crate::{Decision, Decoder};

    #[test]
    fn result_object_with_allowed_and_http_status() {
        let e = one(
            r#"{"decision_id":"d","result":{"allowed":false,"http_status":403,"reason":"no"},"input":{}}"#,
        );
        assert_eq!(e.decision, Decision::Deny);
        assert_eq!(e.status_code, Some(403));
        assert_eq!(e.reason.as_deref(), Some("no"));
    }

    #[test]
    fn evaluation_errors_are_error_decisions() {
        let e = one(
            r#"{"decision_id":"d","error":{"code":"eval_conflict_error","message":"conflict"}}"#,
        );
        assert_eq!(e.decision, Decision::Error);
        assert_eq!(e.reason.as_deref(), Some("conflict"));
    }

    #[test]
    fn undefined_results_are_unknown_not_allow() {
        let e = one(r#"{"decision_id":"d","path":"x/allow"}"#);
        assert_eq!(e.decision, Decision::Unknown);
    }

    #[test]
    fn bundles_become_sorted_name_revision_pairs() {
        let e = one(
            r#"{"decision_id":"d","result":true,"bundles":{"b":{"revision":"2"},"a":{"revision":"1"}}}"#,
        );
        assert_eq!(e.policy_revision.as_deref(), Some("a=1,b=2"));
    }

    #[test]
    fn generic_inputs_are_read_loosely() {
        let e = one(
            r#"{"decision_id":"d","result":true,"input":{"method":5,"path":["v1","data"],"user":"spiffe://td/ns/x/sa/y"}}"#,
        );
        assert_eq!(e.action, None);
        assert_eq!(e.resource.as_deref(), Some("/v1/data"));
        assert_eq!(e.caller.namespace.as_deref(), Some("x"));
    }

    #[test]
    fn envoy_shape_types_are_checked_with_paths() {
        let err = Decoder::default()
            .decode_with(
                br#"{"decision_id":"d","result":true,"input":{"attributes":{"source":{"address":{"socketAddress":{"address":"1.2.3.4","portValue":"x"}}}}}}"#,
                |_| {},
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "opa: at /input/attributes/source/address/socketAddress/portValue: expected integer, found string \"x\""
        );
    }

    #[test]
    fn traceparent_gives_the_trace_id() {
        let e = one(
            r#"{"decision_id":"d","result":true,"input":{"attributes":{"request":{"http":{"headers":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}}}}}"#,
        );
        assert_eq!(
            e.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
