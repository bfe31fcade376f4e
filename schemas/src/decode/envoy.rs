//! Envoy / Istio JSON access logs (Istio's default JSON format plus the peer URI SANs that
//! zero-trust deployments add).
//!
//! Denials: ext_authz (`response_flags` `UAEX`, details `ext_authz_denied`), Istio RBAC
//! (`rbac_access_denied_matched_policy[…]`), JWT authn (`jwt_authn_access_denied…`); an
//! ext_authz failure (`ext_authz_error`) is an error decision. Any other request passed the
//! authorization layer: allow, whatever the upstream answered.

use std::borrow::Cow;

use super::{Mapped, TopLevel, namespace_of, split_addr, status_at, sub, time_at, value_at};
use crate::error::Fail;
use crate::model::{Decision, Event, Kind, SourceFormat};

pub(crate) fn map<'a>(t: &TopLevel<'a>, raw: &'a [u8]) -> Mapped<'a> {
    let code = status_at(&t.response_code, "/response_code")?;
    let flags = value_at(&t.response_flags, "/response_flags")?;
    let details = value_at(&t.response_code_details, "/response_code_details")?;
    if code.is_none() && details.is_none() && !t.start_time.is_present() {
        return Err(Fail::missing("/response_code"));
    }
    let d = details.as_deref().unwrap_or("");
    let uaex = flags
        .as_deref()
        .is_some_and(|f| f.split(',').any(|f| f == "UAEX"));
    let (kind, decision, policy) = if d.starts_with("rbac_access_denied") {
        // rbac_access_denied_matched_policy[ns[foo]-policy[deny-all]-rule[0]] or …[none]
        let policy = details.as_ref().and_then(|c| {
            sub(c, |s| {
                let inner = &s[s.find('[')? + 1..s.rfind(']')?];
                (inner != "none" && !inner.is_empty()).then_some(inner)
            })
        });
        (Kind::Authz, Decision::Deny, policy)
    } else if d.starts_with("ext_authz_error") {
        (Kind::Authz, Decision::Error, None)
    } else if d.starts_with("ext_authz_denied") || uaex {
        (Kind::Authz, Decision::Deny, None)
    } else if d.starts_with("jwt_authn_access_denied") || code == Some(401) {
        (Kind::Authn, Decision::Deny, None)
    } else if code == Some(403) {
        (Kind::Authz, Decision::Deny, None)
    } else {
        (Kind::Authz, Decision::Allow, None)
    };

    let mut e = Event::new(SourceFormat::Envoy, kind, decision, raw);
    e.status_code = code;
    e.policy = policy;
    e.reason = match (&decision, details) {
        (Decision::Allow, _) => None,
        (_, Some(d)) => Some(d),
        (_, None) => flags.map(|f| Cow::Owned(format!("response_flags={f}"))),
    };
    e.time_ns = time_at(&t.start_time, "/start_time")?;
    e.action = value_at(&t.method, "/method")?;
    e.resource = value_at(&t.path, "/path")?;
    e.request_id = value_at(&t.request_id, "/request_id")?;
    e.trace_id = value_at(&t.trace_id, "/trace_id")?;

    e.caller.principal = value_at(&t.downstream_peer_uri_san, "/downstream_peer_uri_san")?;
    if let Some(a) = value_at(&t.downstream_remote_address, "/downstream_remote_address")? {
        (e.caller.ip, e.caller.port) = split_addr(&a);
    }
    // Outbound logs name the upstream's identity; inbound (sidecar) logs name our own.
    e.callee.principal = match value_at(&t.upstream_peer_uri_san, "/upstream_peer_uri_san")? {
        Some(p) => Some(p),
        None => value_at(&t.downstream_local_uri_san, "/downstream_local_uri_san")?,
    };
    let callee_addr = match value_at(&t.upstream_host, "/upstream_host")? {
        Some(a) => Some(a),
        None => value_at(&t.downstream_local_address, "/downstream_local_address")?,
    };
    if let Some(a) = callee_addr {
        (e.callee.ip, e.callee.port) = split_addr(&a);
    }
    e.callee.service = value_at(&t.authority, "/authority")?;
    e.caller.namespace = e.caller.principal.as_ref().and_then(namespace_of);
    e.callee.namespace = e.callee.principal.as_ref().and_then(namespace_of);
    Ok(e)
}

#[cfg(test)]
mod tests {
    use crate::decode::test_one as one;
    use crate::{Decision, Kind};

    const BASE: &str = r#""start_time":"2024-05-01T10:00:00.123Z","method":"POST","path":"/api/orders","protocol":"HTTP/1.1","authority":"orders.shop:8080","upstream_host":"10.1.2.3:8080","downstream_remote_address":"10.9.8.7:51234","downstream_peer_uri_san":"spiffe://cluster.local/ns/web/sa/frontend","upstream_peer_uri_san":"spiffe://cluster.local/ns/shop/sa/orders","request_id":"r-1""#;

    #[test]
    fn ext_authz_denial() {
        let e = one(&format!(
            r#"{{{BASE},"response_code":403,"response_flags":"UAEX","response_code_details":"ext_authz_denied"}}"#
        ));
        assert_eq!((e.kind, e.decision), (Kind::Authz, Decision::Deny));
        assert_eq!(e.reason.as_deref(), Some("ext_authz_denied"));
        assert_eq!(
            e.caller.principal.as_deref(),
            Some("spiffe://cluster.local/ns/web/sa/frontend")
        );
        assert_eq!(e.caller.namespace.as_deref(), Some("web"));
        assert_eq!(
            (e.caller.ip.as_deref(), e.caller.port),
            (Some("10.9.8.7"), Some(51234))
        );
        assert_eq!(e.callee.namespace.as_deref(), Some("shop"));
        assert_eq!(e.callee.service.as_deref(), Some("orders.shop:8080"));
        assert_eq!(
            (e.action.as_deref(), e.resource.as_deref()),
            (Some("POST"), Some("/api/orders"))
        );
    }

    #[test]
    fn istio_rbac_denial_names_the_policy() {
        let e = one(&format!(
            r#"{{{BASE},"response_code":403,"response_flags":"-","response_code_details":"rbac_access_denied_matched_policy[ns[shop]-policy[deny-web]-rule[0]]"}}"#
        ));
        assert_eq!(e.decision, Decision::Deny);
        assert_eq!(
            e.policy.as_deref(),
            Some("ns[shop]-policy[deny-web]-rule[0]")
        );
    }

    #[test]
    fn ext_authz_error_is_an_error_and_jwt_failures_are_authn() {
        let e = one(&format!(
            r#"{{{BASE},"response_code":403,"response_code_details":"ext_authz_error"}}"#
        ));
        assert_eq!(e.decision, Decision::Error);
        let e = one(&format!(
            r#"{{{BASE},"response_code":401,"response_code_details":"jwt_authn_access_denied{{Jwt_is_expired}}"}}"#
        ));
        assert_eq!((e.kind, e.decision), (Kind::Authn, Decision::Deny));
    }

    #[test]
    fn upstream_errors_are_still_allowed_requests() {
        let e = one(&format!(
            r#"{{{BASE},"response_code":503,"response_flags":"UF","response_code_details":"upstream_reset_before_response_started{{connection_failure}}"}}"#
        ));
        assert_eq!(e.decision, Decision::Allow);
        assert_eq!(e.reason, None);
        assert_eq!(e.status_code, Some(503));
    }

    #[test]
    fn dashes_are_missing_values() {
        let e = one(
            r#"{"start_time":"2024-05-01T10:00:00Z","response_code":200,"method":"GET","path":"/","upstream_host":"-","downstream_peer_uri_san":"-","downstream_remote_address":"[::1]:4000"}"#,
        );
        assert_eq!(e.callee.ip, None);
        assert_eq!(e.caller.principal, None);
        assert_eq!(e.caller.ip.as_deref(), Some("::1"));
    }
}
