//! Vigil's native JSON event (`schemas/native-event.schema.json`): the canonical columns as
//! JSON, for services that emit decisions directly. Read strictly: the format is ours, so a
//! wrong type or an unknown enum value is an error, never a guess.

use serde::Deserialize;

use super::{Mapped, TopLevel, namespace_of, port_at, status_at, time_at, value_at};
use crate::error::Fail;
use crate::json::{Json, Shape};
use crate::model::{Decision, Event, Identity, Kind, SourceFormat};

/// Every native event carries `"schema": "vigil.event/v1"`.
pub(crate) const SCHEMA_PREFIX: &str = "vigil.event/";
pub const SCHEMA_V1: &str = "vigil.event/v1";

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Party<'a> {
    #[serde(borrow)]
    principal: Json<'a>,
    #[serde(borrow)]
    namespace: Json<'a>,
    #[serde(borrow)]
    service: Json<'a>,
    #[serde(borrow)]
    ip: Json<'a>,
    #[serde(borrow)]
    port: Json<'a>,
}

fn required<'a, 'b>(j: &'b Json<'a>, path: &str) -> Result<&'b str, Fail> {
    j.str_at(path)?.ok_or_else(|| Fail::missing(path))
}

fn enum_at<T: std::str::FromStr>(j: &Json<'_>, path: &str, what: &str) -> Result<T, Fail> {
    let s = required(j, path)?;
    s.parse()
        .map_err(|_| Shape::new(path, what, Shape::quote(s)).into())
}

pub(crate) fn map<'a>(t: &TopLevel<'a>, raw: &'a [u8]) -> Mapped<'a> {
    let schema = required(&t.schema, "/schema")?;
    if schema != SCHEMA_V1 {
        return Err(Shape::new("/schema", format!("\"{SCHEMA_V1}\""), Shape::quote(schema)).into());
    }
    let kind: Kind = enum_at(&t.kind, "/kind", "one of authn, authz, flow, admin_audit")?;
    let decision: Decision = enum_at(
        &t.decision,
        "/decision",
        "one of allow, deny, error, unknown",
    )?;
    let mut e = Event::new(SourceFormat::Native, kind, decision, raw);
    e.time_ns = Some(time_at(&t.time, "/time")?.ok_or_else(|| Fail::missing("/time"))?);
    e.event_id = value_at(&t.id, "/id")?;
    e.reason = value_at(&t.reason, "/reason")?;
    e.policy = value_at(&t.policy, "/policy")?;
    e.policy_revision = value_at(&t.policy_revision, "/policy_revision")?;
    e.caller = party(&t.caller, "/caller")?;
    e.callee = party(&t.callee, "/callee")?;
    e.action = value_at(&t.action, "/action")?;
    e.resource = value_at(&t.resource, "/resource")?;
    e.status_code = status_at(&t.status_code, "/status_code")?;
    e.trace_id = value_at(&t.trace_id, "/trace_id")?;
    e.request_id = value_at(&t.request_id, "/request_id")?;
    e.is_reply = t.is_reply.bool_at("/is_reply")?;
    Ok(e)
}

fn party<'a>(p: &Json<'a, Box<Party<'a>>>, path: &str) -> Result<Identity<'a>, Fail> {
    let mut id = Identity::default();
    if let Some(p) = p.obj_at(path)? {
        id.principal = value_at(&p.principal, (path, "/principal"))?;
        id.namespace = match value_at(&p.namespace, (path, "/namespace"))? {
            Some(ns) => Some(ns),
            None => id.principal.as_ref().and_then(namespace_of),
        };
        id.service = value_at(&p.service, (path, "/service"))?;
        id.ip = value_at(&p.ip, (path, "/ip"))?;
        if let Some(ip) = &id.ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(Shape::new((path, "/ip"), "an IP address", Shape::quote(ip)).into());
        }
        id.port = port_at(&p.port, (path, "/port"))?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use crate::{Decision, Decoder, Kind};

    #[test]
    fn a_full_native_event() {
        let mut n = 0;
        Decoder::default()
            .decode_with(
                br#"{"schema":"vigil.event/v1","id":"e1","time":"2024-01-01T00:00:00Z","kind":"authz","decision":"deny",
                "caller":{"principal":"spiffe://td/ns/a/sa/b","ip":"10.0.0.1","port":1234},
                "callee":{"service":"db","port":5432},"action":"connect","resource":"db/users","extra":{"ok":1}}"#,
                |e| {
                    n += 1;
                    assert_eq!((e.kind, e.decision), (Kind::Authz, Decision::Deny));
                    assert_eq!(e.caller.namespace.as_deref(), Some("a"));
                    assert_eq!(e.callee.port, Some(5432));
                },
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn strict_errors() {
        let d = Decoder::default();
        let err = |s: &str| d.decode_with(s.as_bytes(), |_| {}).unwrap_err().to_string();
        assert_eq!(
            err(
                r#"{"schema":"vigil.event/v1","time":"2024-01-01T00:00:00Z","kind":"authz","decision":"maybe"}"#
            ),
            "native: at /decision: expected one of allow, deny, error, unknown, found string \"maybe\""
        );
        assert_eq!(
            err(r#"{"schema":"vigil.event/v1","kind":"authz","decision":"deny"}"#),
            "native: at /time: required field is missing"
        );
        assert_eq!(
            err(r#"{"schema":"vigil.event/v2","time":"x","kind":"authz","decision":"deny"}"#),
            "native: at /schema: expected \"vigil.event/v1\", found string \"vigil.event/v2\""
        );
        assert_eq!(
            err(
                r#"{"schema":"vigil.event/v1","time":"2024-01-01T00:00:00Z","kind":"authz","decision":"deny","caller":{"ip":"nope"}}"#
            ),
            "native: at /caller/ip: expected an IP address, found string \"nope\""
        );
    }
}
