//! Kubernetes audit events (`audit.k8s.io/v1` and `v1beta1`), and AKS's diagnostic-log wrapper
//! (`{"category":"kube-audit","properties":{"log":"<audit event as a JSON string>"}}`).
//!
//! Decision: a 401 is an authentication denial; the authorizer's
//! `authorization.k8s.io/decision` annotation (`forbid`) or a 403 is an authorization denial;
//! `allow`, or a response below 400 without the annotation, is allow; anything else (no
//! response yet, other errors) is unknown. The caller is the authenticated user; the callee is
//! the API server, in the namespace of the object acted on.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Mapped, TopLevel, first_time, namespace_of, status_at, value_at};
use crate::error::{Fail, syntax};
use crate::json::Json;
use crate::model::{Decision, Event, Kind, SourceFormat};

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct User<'a> {
    #[serde(borrow)]
    username: Json<'a>,
}

#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ObjectRef<'a> {
    #[serde(borrow)]
    resource: Json<'a>,
    #[serde(borrow)]
    namespace: Json<'a>,
    #[serde(borrow)]
    name: Json<'a>,
    #[serde(borrow)]
    subresource: Json<'a>,
    #[serde(borrow)]
    apiGroup: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Status<'a> {
    #[serde(borrow)]
    code: Json<'a>,
    #[serde(borrow)]
    reason: Json<'a>,
    #[serde(borrow)]
    message: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Annotations<'a> {
    #[serde(borrow, rename = "authorization.k8s.io/decision")]
    decision: Json<'a>,
    #[serde(borrow, rename = "authorization.k8s.io/reason")]
    reason: Json<'a>,
}

#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Metadata<'a> {
    #[serde(borrow)]
    creationTimestamp: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct AksProperties<'a> {
    #[serde(borrow)]
    log: Json<'a>,
}

pub(crate) fn is_aks_wrapper(t: &TopLevel<'_>) -> bool {
    t.category
        .str()
        .is_some_and(|c| c.starts_with("kube-audit"))
        && t.properties.obj().is_some_and(|p| p.log.str().is_some())
}

pub(crate) fn map<'a>(t: &TopLevel<'a>, raw: &'a [u8]) -> Mapped<'a> {
    if is_aks_wrapper(t) {
        return map_aks(t, raw);
    }
    let audit_api = t
        .apiVersion
        .str()
        .is_some_and(|v| v.starts_with("audit.k8s.io/"));
    if !(audit_api
        || t.verb.is_present()
        || t.auditID.is_present()
        || t.requestURI.is_present()
        || t.objectRef.is_present()
        || t.user.is_present())
    {
        return Err(Fail::missing("/verb"));
    }
    let code = match t.responseStatus.obj_at("/responseStatus")? {
        Some(s) => status_at(&s.code, "/responseStatus/code")?,
        None => None,
    };
    let status = t.responseStatus.obj();
    let status_text =
        || status.and_then(|s| s.message.cow().filter(|m| !m.is_empty()).or(s.reason.cow()));
    let (authz, authz_reason) = match t.annotations.obj_at("/annotations")? {
        Some(a) => (
            value_at(&a.decision, "/annotations/authorization.k8s.io~1decision")?,
            value_at(&a.reason, "/annotations/authorization.k8s.io~1reason")?,
        ),
        None => (None, None),
    };
    let (kind, decision, reason) = if code == Some(401) {
        (
            Kind::Authn,
            Decision::Deny,
            status_text().or(Some(Cow::Borrowed("401 Unauthorized"))),
        )
    } else if authz.as_deref() == Some("forbid") || code == Some(403) {
        (
            Kind::Authz,
            Decision::Deny,
            authz_reason.or_else(status_text),
        )
    } else if authz.as_deref() == Some("allow") || code.is_some_and(|c| c < 400) {
        (Kind::AdminAudit, Decision::Allow, authz_reason)
    } else {
        (Kind::AdminAudit, Decision::Unknown, status_text())
    };

    let mut e = Event::new(SourceFormat::K8sAudit, kind, decision, raw);
    e.reason = reason;
    e.status_code = code;
    let created = t.metadata.obj().map(|m| &m.creationTimestamp);
    e.time_ns = first_time(&[
        (&t.requestReceivedTimestamp, "/requestReceivedTimestamp"),
        (&t.stageTimestamp, "/stageTimestamp"),
        (&t.timestamp, "/timestamp"),
        (
            created.unwrap_or(&Json::Absent),
            "/metadata/creationTimestamp",
        ),
    ])?;
    e.event_id = value_at(&t.auditID, "/auditID")?;
    e.action = value_at(&t.verb, "/verb")?;
    if let Some(u) = t.user.obj_at("/user")? {
        e.caller.principal = value_at(&u.username, "/user/username")?;
        e.caller.namespace = e.caller.principal.as_ref().and_then(namespace_of);
    }
    if let Some(ip) = t.sourceIPs.items_at("/sourceIPs")?.first() {
        e.caller.ip = value_at(ip, "/sourceIPs/0")?;
    }
    e.callee.service = Some(Cow::Borrowed("kube-apiserver"));
    e.resource = value_at(&t.requestURI, "/requestURI")?;
    if let Some(o) = t.objectRef.obj_at("/objectRef")? {
        e.callee.namespace = value_at(&o.namespace, "/objectRef/namespace")?;
        if e.resource.is_none() {
            e.resource = object_path(o)?;
        }
    }
    Ok(e)
}

/// `[group/]resource[/name][/subresource]` for events that carry no request URI.
fn object_path<'a>(o: &ObjectRef<'a>) -> Result<Option<Cow<'a, str>>, Fail> {
    let Some(resource) = value_at(&o.resource, "/objectRef/resource")? else {
        return Ok(None);
    };
    let mut out = String::new();
    if let Some(g) = value_at(&o.apiGroup, "/objectRef/apiGroup")? {
        out.push_str(&g);
        out.push('/');
    }
    out.push_str(&resource);
    for (part, path) in [
        (&o.name, "/objectRef/name"),
        (&o.subresource, "/objectRef/subresource"),
    ] {
        if let Some(p) = value_at(part, path)? {
            out.push('/');
            out.push_str(&p);
        }
    }
    Ok(Some(Cow::Owned(out)))
}

/// AKS: the audit event is a JSON document inside the `properties.log` string. It is decoded
/// on its own; `raw` stays the whole record.
fn map_aks<'a>(t: &TopLevel<'a>, raw: &'a [u8]) -> Mapped<'a> {
    const AT: &str = "/properties/log";
    let log = t
        .properties
        .obj()
        .and_then(|p| p.log.str())
        .ok_or_else(|| Fail::missing(AT))?;
    let inner: TopLevel<'_> =
        serde_json::from_str(log).map_err(|e| Fail::Kind(syntax(&e)).within(AT))?;
    if is_aks_wrapper(&inner) {
        return Err(Fail::missing("/verb").within(AT));
    }
    let mut e = map(&inner, raw).map_err(|f| f.within(AT))?.into_owned();
    e.raw = Cow::Borrowed(raw);
    Ok(e)
}

#[cfg(test)]
mod tests {
    use crate::decode::test_one as one;
    use crate::{Decision, Decoder, Kind};

    #[test]
    fn forbidden_service_account_is_an_authz_denial_in_its_namespace() {
        let e = one(
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a-1","stage":"ResponseComplete",
            "requestURI":"/api/v1/namespaces/prod/secrets","verb":"list",
            "user":{"username":"system:serviceaccount:ci:builder"},"sourceIPs":["10.0.0.9"],
            "objectRef":{"resource":"secrets","namespace":"prod"},"responseStatus":{"code":403,"reason":"Forbidden"},
            "requestReceivedTimestamp":"2024-01-01T00:00:00.000001Z",
            "annotations":{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}"#,
        );
        assert_eq!((e.kind, e.decision), (Kind::Authz, Decision::Deny));
        assert_eq!(e.reason.as_deref(), Some("Forbidden"));
        assert_eq!(e.caller.namespace.as_deref(), Some("ci"));
        assert_eq!(e.callee.namespace.as_deref(), Some("prod"));
        assert_eq!(e.time_ns, Some(1_704_067_200_000_001_000));
    }

    #[test]
    fn unauthenticated_is_authn_denial() {
        let e = one(
            r#"{"kind":"Event","verb":"get","requestURI":"/api","responseStatus":{"code":401}}"#,
        );
        assert_eq!((e.kind, e.decision), (Kind::Authn, Decision::Deny));
    }

    #[test]
    fn request_received_stage_has_no_decision() {
        let e = one(
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","stage":"RequestReceived","verb":"get","requestURI":"/api"}"#,
        );
        assert_eq!(e.decision, Decision::Unknown);
    }

    #[test]
    fn wrong_status_code_type_names_the_field() {
        // A digit string is accepted, as protobuf's JSON mapping may write one.
        let mut code = None;
        Decoder::default()
            .decode_with(
                br#"{"kind":"Event","verb":"get","responseStatus":{"code":"403"}}"#,
                |e| code = e.status_code,
            )
            .unwrap();
        assert_eq!(code, Some(403));
        let err = Decoder::default()
            .decode_with(
                br#"{"kind":"Event","verb":"get","responseStatus":{"code":true}}"#,
                |_| {},
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "k8s_audit: at /responseStatus/code: expected integer, found boolean"
        );
    }

    #[test]
    fn aks_wrapper_errors_point_inside_the_embedded_document() {
        let err = Decoder::default()
            .decode_with(br#"{"category":"kube-audit","properties":{"log":"{\"kind\":\"Event\",\"verb\":7}"}}"#, |_| {})
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "k8s_audit: at /properties/log/verb: expected string, found number"
        );
    }
}
