//! What each target is sent: its request body and headers, webhook signatures and their check,
//! URLs as they may be shown.

use super::*;

/// A Sigma rule's attribution in an alert (its title, id, level, author; its licence): what
/// the Detection Rule License asks every message based on a match to carry, so also the
/// targets that send a summary rather than the whole alert.
fn attribution(a: &Alert) -> Vec<&str> {
    if !a.rule_kind.starts_with("sigma") {
        return Vec::new();
    }
    a.detail
        .iter()
        .filter(|d| d.starts_with("sigma rule: ") || d.starts_with("licence: "))
        .map(String::as_str)
        .collect()
}

/// The body and headers one target gets for one alert revision.
pub fn request(t: &Target, a: &Alert, now_s: i64) -> (Vec<u8>, Vec<(String, String)>) {
    let key = idempotency_key(a);
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("idempotency-key".to_owned(), key.clone()),
    ];
    let body = match t.cfg.kind {
        TargetKind::Webhook | TargetKind::File => serde_json::json!({
            "idempotency_key": key,
            "alert": crate::alerts::formatted(a, t.cfg.format),
        }),
        TargetKind::Slack => {
            let group: Vec<String> = a
                .group_key
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("-")))
                .collect();
            let incident = a
                .incident_id
                .as_deref()
                .map(|i| format!(" · incident `{}`", slack_escape(i)))
                .unwrap_or_default();
            let credit: String = attribution(a)
                .iter()
                .map(|l| format!("\n{}", slack_escape(l)))
                .collect();
            serde_json::json!({
                "text": format!(
                    "*[{}] {}* — {} events, {}\nrule `{}` · alert `{}` (revision {}){incident}{credit}",
                    slack_escape(&a.severity.as_str().to_uppercase()),
                    slack_escape(&a.title),
                    a.event_count,
                    slack_escape(&group.join(", ")),
                    slack_escape(&a.rule_id),
                    slack_escape(&a.alert_id),
                    a.revision
                ),
            })
        }
        TargetKind::Splunk => {
            headers.push(("authorization".into(), format!("Splunk {}", t.secret)));
            serde_json::json!({
                "time": a.detected_ns as f64 / 1e9,
                "host": "vigil",
                "source": "vigil",
                "sourcetype": t.cfg.sourcetype,
                "event": crate::alerts::formatted(a, t.cfg.format),
                "fields": { "idempotency_key": key, "rule_id": a.rule_id, "severity": a.severity, "incident_id": a.incident_id },
            })
        }
        TargetKind::Alertmanager => {
            let rfc3339 = |ns: i64| {
                chrono::DateTime::from_timestamp_nanos(ns)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            };
            let mut labels = serde_json::Map::new();
            labels.insert("alertname".into(), a.rule_id.clone().into());
            labels.insert("severity".into(), a.severity.as_str().into());
            labels.insert("alert_id".into(), a.alert_id.clone().into());
            // `group_by: [incident_id]` in Alertmanager: one notification per incident, updated
            // as its alerts come.
            if let Some(i) = &a.incident_id {
                labels.insert("incident_id".into(), i.clone().into());
            }
            for (k, v) in &a.group_key {
                labels.insert(k.clone(), v.clone().unwrap_or_default().into());
            }
            let mut alert = serde_json::json!({
                "labels": labels,
                "annotations": {
                    "summary": a.title,
                    "events": a.event_count.to_string(),
                    "revision": a.revision.to_string(),
                },
                "startsAt": rfc3339(a.first_event_ns),
            });
            alert["annotations"]["status"] = a.status.as_str().into();
            let credit = attribution(a);
            if !credit.is_empty() {
                alert["annotations"]["attribution"] = credit.join("; ").into();
            }
            if let Some(by) = &a.status_by {
                alert["annotations"]["status_by"] = by.clone().into();
            }
            if let Some(note) = &a.status_note {
                alert["annotations"]["status_note"] = note.clone().into();
            }
            if a.status == Status::Resolved {
                alert["endsAt"] = rfc3339(a.status_at_ns.unwrap_or(a.detected_ns)).into();
            }
            serde_json::json!([alert])
        }
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    if t.cfg.kind == TargetKind::Webhook {
        let ts = now_s.to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(t.secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(&body);
        let sig = hex::encode(mac.finalize().into_bytes());
        headers.push(("x-vigil-timestamp".into(), ts));
        headers.push(("x-vigil-signature".into(), format!("v1={sig}")));
    }
    (body, headers)
}

/// A target's URL as it may be shown (logs, errors, the outbox, alerts): scheme, host and
/// port, never the path, query or user info (a Slack webhook's path is its credential).
pub fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.has_host() => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.path() == "/" && u.query().is_none() {
                ""
            } else {
                "/…"
            };
            format!(
                "{}://{}{port}{rest}",
                u.scheme(),
                u.host_str().unwrap_or_default()
            )
        }
        // A file target's path, or something that is no URL: shown by what it is.
        _ if !url.contains("://") => url.to_owned(),
        _ => "<a URL that does not parse>".into(),
    }
}

/// A failed request's error without its URL, with what caused it.
pub(super) fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Text for Slack's mrkdwn: `&`, `<` and `>` escaped, so a value from an event cannot
/// mention (`<!channel>`), link (`<https://…|click>`) or break out of the message.
pub(super) fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Where a target's requests go.
pub(super) fn endpoint(t: &Target) -> String {
    let base = t.cfg.url.trim_end_matches('/');
    match t.cfg.kind {
        TargetKind::Splunk if !base.ends_with("/services/collector/event") => {
            format!("{base}/services/collector/event")
        }
        TargetKind::Alertmanager if !base.ends_with("/api/v2/alerts") => {
            format!("{base}/api/v2/alerts")
        }
        _ => t.cfg.url.clone(),
    }
}

/// Check a webhook delivery as a receiver should: the signature over `timestamp.body` with the
/// shared key, and a timestamp within `tolerance_s` of now (replays are refused).
pub fn verify_webhook(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now_s - ts).abs() > tolerance_s {
        return false;
    }
    let Some(hex_sig) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}
