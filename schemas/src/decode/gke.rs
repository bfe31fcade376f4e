//! GKE Kubernetes audit events as Google Cloud Audit Logs (`protoPayload` of type
//! `google.cloud.audit.AuditLog`, `serviceName` `k8s.io`).
//!
//! Decision: gRPC status 16 (UNAUTHENTICATED) is an authentication denial; status 7
//! (PERMISSION_DENIED) or any `authorizationInfo` entry with `granted: false` is an
//! authorization denial; all entries granted is allow; otherwise unknown.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Mapped, TopLevel, first_time, namespace_of, sub, value_at};
use crate::error::Fail;
use crate::json::{Json, LazyPath, List};
use crate::model::{Decision, Event, Kind, SourceFormat};

#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Proto<'a> {
    #[serde(borrow)]
    serviceName: Json<'a>,
    #[serde(borrow)]
    methodName: Json<'a>,
    #[serde(borrow)]
    resourceName: Json<'a>,
    #[serde(borrow)]
    authenticationInfo: Json<'a, AuthnInfo<'a>>,
    #[serde(borrow)]
    authorizationInfo: List<Json<'a, AuthzInfo<'a>>>,
    #[serde(borrow)]
    requestMetadata: Json<'a, RequestMetadata<'a>>,
    #[serde(borrow)]
    status: Json<'a, RpcStatus<'a>>,
}

#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthnInfo<'a> {
    #[serde(borrow)]
    principalEmail: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthzInfo<'a> {
    #[serde(borrow)]
    granted: Json<'a>,
    #[serde(borrow)]
    permission: Json<'a>,
}

#[allow(non_snake_case)]
#[derive(Deserialize, Default)]
#[serde(default)]
struct RequestMetadata<'a> {
    #[serde(borrow)]
    callerIP: Json<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RpcStatus<'a> {
    #[serde(borrow)]
    code: Json<'a>,
    #[serde(borrow)]
    message: Json<'a>,
}

pub(crate) fn is_k8s(p: &Proto<'_>) -> bool {
    p.serviceName.str() == Some("k8s.io")
        || p.methodName.str().is_some_and(|m| m.starts_with("io.k8s."))
}

const GRPC_PERMISSION_DENIED: i64 = 7;
const GRPC_UNAUTHENTICATED: i64 = 16;

pub(crate) fn map<'a>(t: &TopLevel<'a>, raw: &'a [u8]) -> Mapped<'a> {
    let p = t
        .protoPayload
        .obj_at("/protoPayload")?
        .ok_or_else(|| Fail::missing("/protoPayload"))?;
    let (rpc_code, rpc_message) = match p.status.obj_at("/protoPayload/status")? {
        Some(s) => (
            s.code.i64_at("/protoPayload/status/code")?,
            value_at(&s.message, "/protoPayload/status/message")?,
        ),
        None => (None, None),
    };
    let mut granted = Vec::new();
    let mut permission = None;
    for (i, a) in p
        .authorizationInfo
        .items_at("/protoPayload/authorizationInfo")?
        .iter()
        .enumerate()
    {
        let at = |field: &'static str| {
            LazyPath(move || format!("/protoPayload/authorizationInfo/{i}{field}"))
        };
        let Some(a) = a.obj_at(at(""))? else { continue };
        granted.push(a.granted.bool_at(at("/granted"))?.unwrap_or(false));
        if permission.is_none() {
            permission = value_at(&a.permission, at("/permission"))?;
        }
    }
    let (kind, decision) = if rpc_code == Some(GRPC_UNAUTHENTICATED) {
        (Kind::Authn, Decision::Deny)
    } else if rpc_code == Some(GRPC_PERMISSION_DENIED) || granted.contains(&false) {
        (Kind::Authz, Decision::Deny)
    } else if !granted.is_empty() {
        (Kind::AdminAudit, Decision::Allow)
    } else {
        (Kind::AdminAudit, Decision::Unknown)
    };
    let mut e = Event::new(SourceFormat::GkeAudit, kind, decision, raw);
    e.reason = if decision == Decision::Allow {
        None
    } else {
        rpc_message
    };
    e.policy = permission;
    e.time_ns = first_time(&[
        (&t.timestamp, "/timestamp"),
        (&t.receiveTimestamp, "/receiveTimestamp"),
    ])?;
    e.event_id = value_at(&t.insertId, "/insertId")?;
    // io.k8s.core.v1.pods.create → create
    e.action = value_at(&p.methodName, "/protoPayload/methodName")?
        .and_then(|m| sub(&m, |s| s.rsplit('.').next()));
    e.resource = value_at(&p.resourceName, "/protoPayload/resourceName")?;
    e.callee.namespace = e.resource.as_ref().and_then(|r| {
        sub(r, |s| {
            let mut parts = s.split('/');
            parts.find(|p| *p == "namespaces")?;
            parts.next().filter(|ns| !ns.is_empty())
        })
    });
    e.callee.service = Some(Cow::Borrowed("kube-apiserver"));
    if let Some(a) = p
        .authenticationInfo
        .obj_at("/protoPayload/authenticationInfo")?
    {
        e.caller.principal = value_at(
            &a.principalEmail,
            "/protoPayload/authenticationInfo/principalEmail",
        )?;
        e.caller.namespace = e.caller.principal.as_ref().and_then(namespace_of);
    }
    if let Some(m) = p.requestMetadata.obj_at("/protoPayload/requestMetadata")? {
        e.caller.ip = value_at(&m.callerIP, "/protoPayload/requestMetadata/callerIP")?;
    }
    Ok(e)
}
