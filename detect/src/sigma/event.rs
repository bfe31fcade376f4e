//! A Vigil event as a Sigma rule reads it ([`SigmaEvent`]): the fields of its source record as
//! the source spells them (`verb`, `objectRef.resource`, `input.attributes.source.principal`),
//! then Vigil's canonical columns by name; and its log source in Sigma's words.
//!
//! Which names come from where, because a producer writes every byte of its record:
//! - `vigil.<field>` is always Vigil's canonical column (`vigil.caller_principal`), never the
//!   record's;
//! - the context fields (`kafka_topic`, `own_log`, `time_skewed`, …) are always Vigil's: a
//!   record carrying a `kafka_topic` key does not move a rule that tests it;
//! - every other name is the record's field where the record has it, else the canonical column
//!   of that name (so a rule can say `decision: deny` of any source).

use std::borrow::Cow;

use rsigma_eval::event::{Event, EventValue, JsonEvent};
use serde_json::Value;
use vigil_schemas::SourceFormat;

use crate::evidence::EvRef;
use crate::filter::{CONTEXT_FIELDS, FieldType, Row};

/// The fields naming an event's log source (Sigma's `logsource`), for rsigma's pruning.
pub(crate) const PRODUCT_FIELD: &str = "vigil.logsource.product";
pub(crate) const SERVICE_FIELD: &str = "vigil.logsource.service";
pub(crate) const CATEGORY_FIELD: &str = "vigil.logsource.category";

/// An event's log source in Sigma's vocabulary: (product, service) by the decoder that read it,
/// category by its kind.
pub(crate) fn logsource_of(
    row: &impl Row,
) -> (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
) {
    // Looked up once: every Sigma rule asks for every event.
    static COLUMNS: std::sync::OnceLock<(Option<usize>, Option<usize>)> =
        std::sync::OnceLock::new();
    let (format_col, kind_col) = *COLUMNS.get_or_init(|| {
        let col = |name: &str| crate::filter::field(name).map(|f| f.column);
        (col("source_format"), col("kind"))
    });
    let format = format_col.and_then(|c| row.str(c));
    let (product, service) = match format {
        Some(f) if f == SourceFormat::K8sAudit.as_str() => (Some("kubernetes"), Some("audit")),
        Some(f) if f == SourceFormat::GkeAudit.as_str() => (Some("gcp"), Some("gcp.audit")),
        Some(f) if f == SourceFormat::Opa.as_str() => (Some("opa"), Some("decision_log")),
        Some(f) if f == SourceFormat::Envoy.as_str() => (Some("envoy"), Some("access_log")),
        Some(f) if f == SourceFormat::Hubble.as_str() => (Some("cilium"), Some("hubble")),
        Some(f) if f == SourceFormat::Native.as_str() => (Some("vigil"), None),
        _ => (None, None),
    };
    let category = match kind_col.and_then(|c| row.str(c)) {
        Some("authn") => Some("authentication"),
        Some("authz") => Some("authorization"),
        Some("flow") => Some("network_connection"),
        _ => None,
    };
    (product, service, category)
}

/// One event for rsigma: its parsed record (if it is JSON), its canonical row, and where it is
/// in the store (what a correlation keeps of it: [`SigmaEvent::to_json`]).
pub(crate) struct SigmaEvent<'a, R> {
    json: Option<JsonEvent<'a>>,
    row: &'a R,
    ev: EvRef,
}

impl<'a, R: Row> SigmaEvent<'a, R> {
    pub(crate) fn new(row: &'a R, ev: EvRef) -> SigmaEvent<'a, R> {
        SigmaEvent {
            json: row.record().map(JsonEvent::borrow),
            row,
            ev,
        }
    }

    fn canonical(&self, name: &str) -> Option<EventValue<'_>> {
        let f = crate::filter::field(name)?;
        match f.ty {
            FieldType::Str => self
                .row
                .str(f.column)
                .map(|s| EventValue::Str(Cow::Borrowed(s))),
            FieldType::Int => self.row.int(f.column).map(EventValue::Int),
            FieldType::Bool => self.row.bool(f.column).map(EventValue::Bool),
        }
    }
}

/// The reference a correlation keeps of an event, as [`evidence_of`] reads it back.
fn ref_text(ev: &EvRef) -> String {
    format!(
        "{}:{}:{}:{}",
        ev.log,
        ev.index,
        ev.time_ns,
        hex::encode(ev.leaf)
    )
}

/// The event a correlation's reference names (`None`: not one Vigil wrote).
pub(crate) fn evidence_of(id: &str) -> Option<EvRef> {
    let mut it = id.splitn(4, ':');
    let log = it.next()?.parse().ok()?;
    let index = it.next()?.parse().ok()?;
    let time_ns = it.next()?.parse().ok()?;
    let mut leaf = [0u8; 32];
    hex::decode_to_slice(it.next()?, &mut leaf).ok()?;
    Some(EvRef {
        log,
        index,
        time_ns,
        leaf,
    })
}

impl<R: Row> Event for SigmaEvent<'_, R> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        match path {
            PRODUCT_FIELD => return logsource_of(self.row).0.map(|s| EventValue::Str(s.into())),
            SERVICE_FIELD => return logsource_of(self.row).1.map(|s| EventValue::Str(s.into())),
            CATEGORY_FIELD => return logsource_of(self.row).2.map(|s| EventValue::Str(s.into())),
            _ => {}
        }
        if let Some(name) = path.strip_prefix("vigil.") {
            return self.canonical(name);
        }
        if CONTEXT_FIELDS.iter().any(|(n, _)| *n == path) {
            return self.canonical(path);
        }
        if let Some(v) = self.json.as_ref().and_then(|j| j.get_field(path)) {
            return Some(v);
        }
        self.canonical(path)
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        self.json.as_ref().is_some_and(|j| j.any_string_value(pred))
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        self.json
            .as_ref()
            .map(|j| j.all_string_values())
            .unwrap_or_default()
    }

    /// What rsigma keeps of an event for a correlation's evidence: only where it is in the
    /// store (its `id`), never the record's own fields — a record's `id` key is the
    /// producer's to write, the reference is Vigil's.
    fn to_json(&self) -> Value {
        serde_json::json!({ "id": ref_text(&self.ev) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::OwnedRow;

    #[test]
    fn a_reference_round_trips_and_a_forged_one_is_none() {
        let ev = EvRef {
            log: 3,
            index: 99,
            time_ns: -5,
            leaf: [7; 32],
        };
        assert_eq!(evidence_of(&ref_text(&ev)), Some(ev));
        for bad in [
            "",
            "1:2:3",
            "1:2:3:zz",
            "a:2:3:00",
            &format!("1:2:3:{}", "0".repeat(62)),
        ] {
            assert_eq!(evidence_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn record_fields_come_first_but_never_for_vigils_own_names() {
        let raw = br#"{"verb":"create","decision":"forged","kafka_topic":"forged","objectRef":{"resource":"pods"}}"#;
        let row =
            OwnedRow::of(&[("decision", "deny"), ("source_format", "k8s_audit")]).with_raw(raw);
        let e = SigmaEvent::new(&row, EvRef::default());
        let s = |p: &str| {
            e.get_field(p)
                .and_then(|v| v.as_str().map(|s| s.into_owned()))
        };
        assert_eq!(s("verb").as_deref(), Some("create"));
        assert_eq!(s("objectRef.resource").as_deref(), Some("pods"));
        // The record's spelling first; the canonical column under `vigil.`.
        assert_eq!(s("decision").as_deref(), Some("forged"));
        assert_eq!(s("vigil.decision").as_deref(), Some("deny"));
        // Context fields are Vigil's alone (none is set on this row).
        assert_eq!(s("kafka_topic"), None);
        assert_eq!(s(PRODUCT_FIELD).as_deref(), Some("kubernetes"));
        assert_eq!(s("nothing.here"), None);
        assert_eq!(
            e.to_json(),
            serde_json::json!({"id": ref_text(&EvRef::default())})
        );
    }
}
