//! Cilium Hubble flows (`flow.proto` in protobuf's JSON mapping), bare or wrapped as the
//! exporter and `hubble observe -o json` write them: `{"flow":{…},"node_name":…,"time":…}`.
//!
//! FORWARDED (and the other pass-through verdicts) is allow, DROPPED is deny with its drop
//! reason, ERROR is error; AUDIT (policy audit mode: would have been dropped) is allow with
//! the reason `AUDIT`. Replies are kept and marked in `is_reply`. Hubble has no principal, so
//! the workload name (else the pod name) stands in for it.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Mapped, TopLevel, port_at, status_at, time_at, value_at};
use crate::error::{Fail, syntax};
use crate::json::{Json, List, Shape};
use crate::model::{Decision, Event, Identity, Kind, SourceFormat};

const VERDICTS: &[&str] = &[
    "FORWARDED",
    "DROPPED",
    "ERROR",
    "AUDIT",
    "REDIRECTED",
    "TRACED",
    "TRANSLATED",
    "VERDICT_UNKNOWN",
];

pub(crate) fn is_verdict(v: &str) -> bool {
    VERDICTS.contains(&v)
}

#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Flow<'a> {
    #[serde(borrow)]
    time: Json<'a>,
    #[serde(borrow)]
    uuid: Json<'a>,
    #[serde(borrow)]
    verdict: Json<'a>,
    #[serde(borrow)]
    drop_reason_desc: Json<'a>,
    #[serde(borrow)]
    IP: Json<'a, Ip<'a>>,
    #[serde(borrow)]
    l4: Json<'a, L4<'a>>,
    #[serde(borrow)]
    l7: Json<'a, L7<'a>>,
    #[serde(borrow)]
    source: Json<'a, Endpoint<'a>>,
    #[serde(borrow)]
    destination: Json<'a, Endpoint<'a>>,
    #[serde(borrow)]
    source_service: Json<'a, Service<'a>>,
    #[serde(borrow)]
    destination_service: Json<'a, Service<'a>>,
    #[serde(borrow)]
    source_names: List<Json<'a>>,
    #[serde(borrow)]
    destination_names: List<Json<'a>>,
    #[serde(borrow)]
    is_reply: Json<'a>,
    #[serde(borrow)]
    trace_context: Json<'a, TraceContext<'a>>,
    #[serde(borrow)]
    egress_denied_by: List<Json<'a, Policy<'a>>>,
    #[serde(borrow)]
    ingress_denied_by: List<Json<'a, Policy<'a>>>,
    #[serde(borrow)]
    egress_allowed_by: List<Json<'a, Policy<'a>>>,
    #[serde(borrow)]
    ingress_allowed_by: List<Json<'a, Policy<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ip<'a> {
    #[serde(borrow)]
    source: Json<'a>,
    #[serde(borrow)]
    destination: Json<'a>,
}

#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
struct L4<'a> {
    #[serde(borrow)]
    TCP: Json<'a, Ports<'a>>,
    #[serde(borrow)]
    UDP: Json<'a, Ports<'a>>,
    #[serde(borrow)]
    SCTP: Json<'a, Ports<'a>>,
    #[serde(borrow)]
    ICMPv4: Json<'a>,
    #[serde(borrow)]
    ICMPv6: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ports<'a> {
    #[serde(borrow)]
    source_port: Json<'a>,
    #[serde(borrow)]
    destination_port: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct L7<'a> {
    #[serde(borrow)]
    http: Json<'a, L7Http<'a>>,
    #[serde(borrow)]
    dns: Json<'a, L7Dns<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct L7Http<'a> {
    #[serde(borrow)]
    method: Json<'a>,
    #[serde(borrow)]
    url: Json<'a>,
    #[serde(borrow)]
    code: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct L7Dns<'a> {
    #[serde(borrow)]
    query: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Endpoint<'a> {
    #[serde(borrow)]
    namespace: Json<'a>,
    #[serde(borrow)]
    pod_name: Json<'a>,
    #[serde(borrow)]
    workloads: List<Json<'a, Workload<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Workload<'a> {
    #[serde(borrow)]
    name: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Service<'a> {
    #[serde(borrow)]
    name: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TraceContext<'a> {
    #[serde(borrow)]
    parent: Json<'a, TraceParent<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TraceParent<'a> {
    #[serde(borrow)]
    trace_id: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Policy<'a> {
    #[serde(borrow)]
    name: Json<'a>,
    #[serde(borrow)]
    namespace: Json<'a>,
}

/// Hubble's `lost_events`: flows the node's ring buffer or queue dropped before anyone read
/// them. Telemetry loss: the flows that would have shown an attack may be among them.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct LostEvents<'a> {
    #[serde(borrow)]
    source: Json<'a>,
    #[serde(borrow)]
    num_events_lost: Json<'a>,
}

/// A `lost_events` record as an event: kind `flow`, decision `unknown`, action
/// `lost_events`, the reporting node as the caller's service, and in `reason` where the loss
/// happened and how many were lost.
fn map_lost<'a>(l: &LostEvents<'a>, t: &TopLevel<'a>, raw: &'a [u8]) -> Mapped<'a> {
    let p = "/lost_events";
    let source = value_at(&l.source, (p, "/source"))?;
    // protojson writes uint64 as a string; other encoders as a number.
    let lost = match l.num_events_lost.i64_at((p, "/num_events_lost")) {
        Ok(n) => n.map(|n| n.to_string()),
        Err(_) => value_at(&l.num_events_lost, (p, "/num_events_lost"))?.map(Cow::into_owned),
    };
    let mut e = Event::new(SourceFormat::Hubble, Kind::Flow, Decision::Unknown, raw);
    e.action = Some(Cow::Borrowed("lost_events"));
    e.reason = Some(Cow::Owned(format!(
        "{}: {} events lost",
        source.as_deref().unwrap_or("UNKNOWN_LOST_EVENT_SOURCE"),
        lost.as_deref().unwrap_or("an unknown number of")
    )));
    e.time_ns = time_at(&t.time, "/time")?;
    e.caller.service = value_at(&t.node_name, "/node_name")?;
    Ok(e)
}

/// `text` is the record; a bare flow (no `flow` wrapper) is parsed again as a [`Flow`] — the
/// union [`TopLevel`] does not hold every flow field, and bare flows are the rarer shape.
pub(crate) fn map<'a>(t: &TopLevel<'a>, text: &'a str) -> Mapped<'a> {
    if let Some(lost) = t.lost_events.obj_at("/lost_events")? {
        return map_lost(lost, t, text.as_bytes());
    }
    if let Some(flow) = t.flow.obj_at("/flow")? {
        let mut e = map_flow(flow, "/flow", text.as_bytes())?;
        if e.time_ns.is_none() {
            e.time_ns = time_at(&t.time, "/time")?;
        }
        return Ok(e);
    }
    let flow: Flow<'a> = serde_json::from_str(text).map_err(|e| Fail::Kind(syntax(&e)))?;
    map_flow(&flow, "", text.as_bytes())
}

fn map_flow<'a>(f: &Flow<'a>, p: &str, raw: &'a [u8]) -> Mapped<'a> {
    let verdict = f
        .verdict
        .str_at((p, "/verdict"))?
        .ok_or_else(|| Fail::missing((p, "/verdict")))?;
    let drop_reason = value_at(&f.drop_reason_desc, (p, "/drop_reason_desc"))?;
    let (decision, reason) = match verdict {
        "FORWARDED" | "REDIRECTED" | "TRACED" | "TRANSLATED" => (Decision::Allow, None),
        "DROPPED" => (
            Decision::Deny,
            drop_reason.or(Some(Cow::Borrowed("DROPPED"))),
        ),
        "ERROR" => (
            Decision::Error,
            drop_reason.or(Some(Cow::Borrowed("ERROR"))),
        ),
        "AUDIT" => (Decision::Allow, Some(Cow::Borrowed("AUDIT"))),
        "VERDICT_UNKNOWN" => (Decision::Unknown, None),
        other => {
            return Err(
                Shape::new((p, "/verdict"), "a Hubble verdict", Shape::quote(other)).into(),
            );
        }
    };
    let mut e = Event::new(SourceFormat::Hubble, Kind::Flow, decision, raw);
    e.reason = reason;
    e.time_ns = time_at(&f.time, (p, "/time"))?;
    e.event_id = value_at(&f.uuid, (p, "/uuid"))?;
    e.is_reply = Some(f.is_reply.bool_at((p, "/is_reply"))?.unwrap_or(false));
    e.caller = endpoint(&f.source, p, "/source")?;
    e.callee = endpoint(&f.destination, p, "/destination")?;
    if let Some(ip) = f.IP.obj_at((p, "/IP"))? {
        e.caller.ip = value_at(&ip.source, (p, "/IP/source"))?;
        e.callee.ip = value_at(&ip.destination, (p, "/IP/destination"))?;
    }
    if let Some(l4) = f.l4.obj_at((p, "/l4"))? {
        for (name, at, ports) in [
            ("TCP", "/l4/TCP", &l4.TCP),
            ("UDP", "/l4/UDP", &l4.UDP),
            ("SCTP", "/l4/SCTP", &l4.SCTP),
        ] {
            if let Some(ports) = ports.obj_at((p, at))? {
                e.action = Some(Cow::Borrowed(name));
                e.caller.port = port_at(&ports.source_port, (p, at, "/source_port"))?;
                e.callee.port = port_at(&ports.destination_port, (p, at, "/destination_port"))?;
            }
        }
        if l4.ICMPv4.is_present() {
            e.action = Some(Cow::Borrowed("ICMPv4"));
        } else if l4.ICMPv6.is_present() {
            e.action = Some(Cow::Borrowed("ICMPv6"));
        }
    }
    if let Some(l7) = f.l7.obj_at((p, "/l7"))? {
        if let Some(http) = l7.http.obj_at((p, "/l7/http"))? {
            e.action = value_at(&http.method, (p, "/l7/http/method"))?.or(e.action);
            e.resource = value_at(&http.url, (p, "/l7/http/url"))?;
            e.status_code = status_at(&http.code, (p, "/l7/http/code"))?;
        } else if let Some(dns) = l7.dns.obj_at((p, "/l7/dns"))? {
            e.action = Some(Cow::Borrowed("DNS"));
            e.resource = value_at(&dns.query, (p, "/l7/dns/query"))?;
        }
    }
    e.caller.service = service(&f.source_service, &f.source_names, p, "/source_service")?;
    e.callee.service = service(
        &f.destination_service,
        &f.destination_names,
        p,
        "/destination_service",
    )?;
    if let Some(tc) = f.trace_context.obj_at((p, "/trace_context"))?
        && let Some(parent) = tc.parent.obj_at((p, "/trace_context/parent"))?
    {
        e.trace_id = value_at(&parent.trace_id, (p, "/trace_context/parent/trace_id"))?;
    }
    let policies = if decision == Decision::Deny {
        [
            (&f.egress_denied_by, "/egress_denied_by"),
            (&f.ingress_denied_by, "/ingress_denied_by"),
        ]
    } else {
        [
            (&f.egress_allowed_by, "/egress_allowed_by"),
            (&f.ingress_allowed_by, "/ingress_allowed_by"),
        ]
    };
    let mut names = Vec::new();
    for (list, field) in policies {
        for pol in list.items_at((p, field))?.iter().filter_map(|p| p.obj()) {
            match (pol.namespace.str(), pol.name.str()) {
                (Some(ns), Some(name)) if !ns.is_empty() => names.push(format!("{ns}/{name}")),
                (_, Some(name)) => names.push(name.to_owned()),
                _ => {}
            }
        }
    }
    if !names.is_empty() {
        e.policy = Some(Cow::Owned(names.join(",")));
    }
    Ok(e)
}

fn endpoint<'a>(ep: &Json<'a, Endpoint<'a>>, p: &str, field: &str) -> Result<Identity<'a>, Fail> {
    let mut id = Identity::default();
    if let Some(ep) = ep.obj_at((p, field))? {
        id.namespace = value_at(&ep.namespace, (p, field, "/namespace"))?;
        let workload = ep.workloads.items_at((p, field, "/workloads"))?.first();
        id.principal = match workload.and_then(|w| w.obj()).and_then(|w| w.name.cow()) {
            Some(w) if !w.is_empty() => Some(w),
            _ => value_at(&ep.pod_name, (p, field, "/pod_name"))?,
        };
    }
    Ok(id)
}

fn service<'a>(
    svc: &Json<'a, Service<'a>>,
    names: &List<Json<'a>>,
    p: &str,
    field: &str,
) -> Result<Option<Cow<'a, str>>, Fail> {
    if let Some(s) = svc.obj_at((p, field))?
        && let Some(name) = value_at(&s.name, (p, field, "/name"))?
    {
        return Ok(Some(name));
    }
    Ok(names
        .items()
        .first()
        .and_then(|n| n.cow())
        .filter(|n| !n.is_empty()))
}

#[cfg(test)]
mod tests {
    use crate::decode::test_one as one;
    use crate::{Decision, Decoder};

    #[test]
    fn lost_events_are_telemetry_loss_events_not_rejected_records() {
        // As Hubble's exporter writes them (protojson: the count as a string), and as a number.
        for n in [r#""125""#, "125"] {
            let e = one(&format!(
                r#"{{"lost_events":{{"source":"HUBBLE_RING_BUFFER","num_events_lost":{n},"cpu":{{"value":2}}}},"node_name":"kind-worker","time":"2024-01-01T00:00:01Z"}}"#
            ));
            assert_eq!(e.format, crate::SourceFormat::Hubble);
            assert_eq!((e.kind, e.decision), (crate::Kind::Flow, Decision::Unknown));
            assert_eq!(e.action.as_deref(), Some("lost_events"));
            assert_eq!(
                e.reason.as_deref(),
                Some("HUBBLE_RING_BUFFER: 125 events lost")
            );
            assert_eq!(e.caller.service.as_deref(), Some("kind-worker"));
            assert!(e.time_ns.is_some());
        }
    }

    #[test]
    fn bare_forwarded_reply_with_workloads_and_l7() {
        let e = one(
            r#"{"time":"2024-01-01T00:00:00Z","uuid":"u-1","verdict":"FORWARDED","is_reply":true,
            "IP":{"source":"10.0.0.1","destination":"10.0.0.2"},
            "l4":{"TCP":{"source_port":80,"destination_port":40000}},
            "source":{"namespace":"shop","pod_name":"cart-5d9-x","workloads":[{"name":"cart","kind":"Deployment"}]},
            "destination":{"namespace":"web","pod_name":"frontend-1"},
            "destination_names":["frontend.web.svc"],
            "l7":{"type":"RESPONSE","http":{"code":200,"method":"GET","url":"http://cart/items"}},
            "ingress_allowed_by":[{"name":"allow-web","namespace":"shop"}]}"#,
        );
        assert_eq!(e.decision, Decision::Allow);
        assert_eq!(e.is_reply, Some(true));
        assert_eq!(e.caller.principal.as_deref(), Some("cart"));
        assert_eq!(e.callee.principal.as_deref(), Some("frontend-1"));
        assert_eq!(e.callee.service.as_deref(), Some("frontend.web.svc"));
        assert_eq!((e.caller.port, e.callee.port), (Some(80), Some(40000)));
        assert_eq!(
            (e.action.as_deref(), e.resource.as_deref()),
            (Some("GET"), Some("http://cart/items"))
        );
        assert_eq!(e.status_code, Some(200));
        assert_eq!(e.policy.as_deref(), Some("shop/allow-web"));
        assert_eq!(e.event_id.as_deref(), Some("u-1"));
    }

    #[test]
    fn unknown_verdicts_are_errors_with_the_path() {
        let err = Decoder::new(Default::default(), Some(crate::SourceFormat::Hubble))
            .decode_with(br#"{"flow":{"verdict":"MAYBE"}}"#, |_| {})
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hubble: at /flow/verdict: expected a Hubble verdict, found string \"MAYBE\""
        );
    }
}
