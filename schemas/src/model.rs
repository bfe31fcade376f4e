//! The canonical event: what every decoder produces, whatever the source format.
//!
//! [`Event`] is a borrowed view: its strings point into the record's bytes wherever the JSON
//! allowed it, so decoding allocates almost nothing per event. It lives only until it is
//! appended to an [`crate::EventBatchBuilder`], which copies it into Arrow buffers.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $var,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var,)+];

            /// The value as stored in the column and accepted on the command line.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(format!(
                        "unknown {} {s:?}; expected one of: {}",
                        stringify!($name).to_lowercase(),
                        [$($s,)+].join(", ")
                    )),
                }
            }
        }
    };
}

str_enum! {
    /// What kind of security event this is.
    Kind {
        /// Authentication: who the caller is (k8s 401s, JWT failures at Envoy).
        Authn = "authn",
        /// Authorization: may this caller do this (OPA decisions, Envoy ext_authz / RBAC).
        Authz = "authz",
        /// A network flow verdict (Cilium Hubble).
        Flow = "flow",
        /// An audited administrative action (Kubernetes API audit events).
        AdminAudit = "admin_audit",
    }
}

str_enum! {
    /// What the enforcement point decided.
    Decision {
        Allow = "allow",
        Deny = "deny",
        /// The decision itself failed (policy evaluation error, ext_authz error).
        Error = "error",
        /// The record carries no decision (e.g. a request-received audit stage).
        Unknown = "unknown",
    }
}

str_enum! {
    /// The upstream format a record was decoded from.
    SourceFormat {
        /// OPA decision logs (`EventV1`), including opa-envoy-plugin's ext_authz input shape.
        Opa = "opa",
        /// Envoy / Istio JSON access logs.
        Envoy = "envoy",
        /// Cilium Hubble flows (bare or wrapped in `{"flow":…}`).
        Hubble = "hubble",
        /// Kubernetes audit events (`audit.k8s.io` v1 and v1beta1; also AKS's diagnostic
        /// wrapper around them).
        K8sAudit = "k8s_audit",
        /// GKE's Kubernetes audit events as Google Cloud Audit Logs (`protoPayload`).
        GkeAudit = "gke_audit",
        /// Vigil's native JSON event (`schemas/native-event.schema.json`).
        Native = "native",
    }
}

/// One side of an interaction: the caller (source) or the callee (destination).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The authenticated identity: a SPIFFE ID, a Kubernetes user or service account, or
    /// (for Hubble, which has no principal) the workload name.
    pub principal: Option<Cow<'a, str>>,
    /// Kubernetes namespace, from the source or derived from a SPIFFE ID / service account.
    pub namespace: Option<Cow<'a, str>>,
    /// The service name addressed (HTTP authority, Hubble service or DNS name).
    pub service: Option<Cow<'a, str>>,
    /// IP address, as text (v4 dotted, v6 without brackets).
    pub ip: Option<Cow<'a, str>>,
    pub port: Option<u16>,
}

/// A decoded event in canonical form. See [`crate::schema`] for the column-by-column meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// Event time, UTC nanoseconds since the epoch; `None` when the record carries none (the
    /// batch builder then uses the record's receive time and marks it inferred).
    pub time_ns: Option<i64>,
    pub kind: Kind,
    pub format: SourceFormat,
    pub decision: Decision,
    pub reason: Option<Cow<'a, str>>,
    pub policy: Option<Cow<'a, str>>,
    pub policy_revision: Option<Cow<'a, str>>,
    pub caller: Identity<'a>,
    pub callee: Identity<'a>,
    pub action: Option<Cow<'a, str>>,
    pub resource: Option<Cow<'a, str>>,
    pub status_code: Option<i32>,
    pub trace_id: Option<Cow<'a, str>>,
    pub request_id: Option<Cow<'a, str>>,
    pub event_id: Option<Cow<'a, str>>,
    pub is_reply: Option<bool>,
    /// Position of this event within its record (0 unless the record is an array of events).
    pub record_index: u32,
    /// The event's exact bytes: the whole record, or this event's slice of a record that
    /// carries several (an OPA upload array; after gunzip when the upload was compressed).
    pub raw: Cow<'a, [u8]>,
}

impl<'a> Event<'a> {
    /// An event with only the mandatory parts set; decoders fill the rest.
    pub fn new(format: SourceFormat, kind: Kind, decision: Decision, raw: &'a [u8]) -> Self {
        Event {
            time_ns: None,
            kind,
            format,
            decision,
            reason: None,
            policy: None,
            policy_revision: None,
            caller: Identity::default(),
            callee: Identity::default(),
            action: None,
            resource: None,
            status_code: None,
            trace_id: None,
            request_id: None,
            event_id: None,
            is_reply: None,
            record_index: 0,
            raw: Cow::Borrowed(raw),
        }
    }

    /// The same event owning all its data (for keeping events past their record's buffer).
    pub fn into_owned(self) -> Event<'static> {
        fn o(c: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
            c.map(|c| Cow::Owned(c.into_owned()))
        }
        fn id(i: Identity<'_>) -> Identity<'static> {
            Identity {
                principal: o(i.principal),
                namespace: o(i.namespace),
                service: o(i.service),
                ip: o(i.ip),
                port: i.port,
            }
        }
        Event {
            time_ns: self.time_ns,
            kind: self.kind,
            format: self.format,
            decision: self.decision,
            reason: o(self.reason),
            policy: o(self.policy),
            policy_revision: o(self.policy_revision),
            caller: id(self.caller),
            callee: id(self.callee),
            action: o(self.action),
            resource: o(self.resource),
            status_code: self.status_code,
            trace_id: o(self.trace_id),
            request_id: o(self.request_id),
            event_id: o(self.event_id),
            is_reply: self.is_reply,
            record_index: self.record_index,
            raw: Cow::Owned(self.raw.into_owned()),
        }
    }
}
