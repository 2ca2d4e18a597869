//! Alertmanager API v2 alert lists: one alert per incident and severity, kept firing while
//! the incident is open and re-sent after an Alertmanager restart.
//!
//! One file per receiver format: each is a schema of its own, tested against it.

use super::{EventContext, rfc3339};
use crate::incidents::EventKind;
use crate::rules::Severity;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A Prometheus label name made of `[a-zA-Z0-9_]`, not starting with a digit.
fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// How far ahead a firing alert's `endsAt` is set. Incidents are resolved explicitly (a
/// `closed` event ends the alert), so the alert must not end on Alertmanager's
/// `resolve_timeout` (5m by default) while the incident is open; every later notification
/// about the incident moves it forward again.
pub const FIRING_HORIZON_DAYS: i64 = 30;

/// An Alertmanager API v2 alert list. The current severity's alert fires (`endsAt`
/// [`FIRING_HORIZON_DAYS`] ahead) or, on `closed`, ends now; alerts of lower severities are ended whenever the severity rose or
/// the incident closed, since `severity` is a label and so part of the alert's identity.
pub fn alertmanager_body(ctx: &EventContext) -> Value {
    let i = ctx.incident;
    let mut labels = BTreeMap::new();
    for (k, v) in i.labels.iter().chain(i.key.iter()) {
        labels.insert(label_name(k), v.clone());
    }
    for (k, v) in [
        ("alertname", i.rule.as_str()),
        ("incident", i.uid.as_str()),
        ("rule", i.rule.as_str()),
        ("category", i.category.as_str()),
        ("host", ctx.origin.host.as_str()),
        ("source", "logwarden"),
    ] {
        labels.insert(k.to_string(), v.to_string());
    }
    let mut annotations = BTreeMap::from([
        ("summary".to_string(), i.summary.clone()),
        ("incident_state".to_string(), i.state.as_str().to_string()),
        ("count".to_string(), i.count.to_string()),
        ("first_seen".to_string(), rfc3339(i.first_seen)),
        ("controls".to_string(), i.controls.join(", ")),
    ]);
    if !i.description.is_empty() {
        annotations.insert("description".into(), i.description.clone());
    }
    if let Some(runbook) = &i.runbook {
        annotations.insert("runbook_url".into(), runbook.clone());
    }
    let generator = format!("{}/api/v1/incidents/{}", ctx.origin.api_base, i.id);
    let closed = ctx.event == EventKind::Closed;
    let end_lower = closed || ctx.event == EventKind::SeverityChanged;
    let alert = |severity: Severity, ends: bool| {
        let mut labels = labels.clone();
        labels.insert("severity".into(), severity.as_str().into());
        let mut alert = json!({
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(i.opened_at),
            "generatorURL": generator,
        });
        let end = if ends {
            ctx.at.max(i.opened_at)
        } else {
            ctx.at + chrono::Duration::days(FIRING_HORIZON_DAYS)
        };
        alert["endsAt"] = json!(rfc3339(end));
        alert
    };
    let mut alerts = vec![alert(i.severity, closed)];
    if end_lower {
        alerts.extend(
            Severity::ALL
                .into_iter()
                .filter(|s| *s < i.severity)
                .map(|s| alert(s, true)),
        );
    }
    Value::Array(alerts)
}

/// Where alerts are posted for a configured Alertmanager URL: the base URL or the
/// `/api/v2/alerts` endpoint itself.
pub fn alertmanager_endpoint(url: &str) -> String {
    let base = url.trim_end_matches('/');
    if base.ends_with("/api/v2/alerts") {
        base.to_string()
    } else {
        format!("{base}/api/v2/alerts")
    }
}

/// The alert an Alertmanager body raises for the incident's current severity (the first of
/// [`alertmanager_body`]'s list): what a re-send repeats while the incident is open.
pub fn firing_alert(body: &str) -> Option<Value> {
    match serde_json::from_str::<Value>(body).ok()? {
        Value::Array(mut alerts) if !alerts.is_empty() => Some(alerts.swap_remove(0)),
        _ => None,
    }
}

/// A re-send of firing alerts: each ends [`FIRING_HORIZON_DAYS`] after `at` again, so an
/// incident open longer than the horizon stays firing.
pub fn resend_body<'a>(alerts: impl IntoIterator<Item = &'a Value>, at: DateTime<Utc>) -> String {
    let ends = json!(rfc3339(at + chrono::Duration::days(FIRING_HORIZON_DAYS)));
    let alerts: Vec<Value> = alerts
        .into_iter()
        .map(|a| {
            let mut a = a.clone();
            a["endsAt"] = ends.clone();
            a
        })
        .collect();
    Value::Array(alerts).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::incidents::sample_incident;
    use crate::notification::format::testing::{ctx, origin};

    #[test]
    fn alertmanager_alerts_fire_then_end_with_stable_labels() {
        let (mut i, o) = (sample_incident(), origin());
        i.key.insert("user-name".into(), "root".into());
        let fire = alertmanager_body(&ctx(EventKind::Opened, &i, &o));
        let alerts = fire.as_array().unwrap();
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(a["labels"]["alertname"], "ssh-bruteforce");
        assert_eq!(a["labels"]["incident"], "web1/INC-1");
        assert_eq!(a["labels"]["severity"], "high");
        assert_eq!(a["labels"]["host"], "web1");
        assert_eq!(a["labels"]["ip"], "203.0.113.9");
        assert_eq!(a["labels"]["user_name"], "root");
        assert_eq!(a["labels"]["team"], "security");
        assert_eq!(a["annotations"]["summary"], i.summary);
        assert_eq!(a["annotations"]["runbook_url"], "https://wiki.example/ssh");
        assert_eq!(a["startsAt"], "2026-11-22T10:00:05.000Z");
        // Firing: ends only with the incident, not on Alertmanager's resolve_timeout.
        assert_eq!(a["endsAt"], "2026-12-22T10:01:05.000Z");
        assert_eq!(
            a["generatorURL"],
            "http://127.0.0.1:9733/api/v1/incidents/INC-1"
        );

        let close = alertmanager_body(&ctx(EventKind::Closed, &i, &o));
        let closed = close.as_array().unwrap();
        assert_eq!(closed.len(), 3, "high plus the lower moderate and low");
        assert_eq!(closed[0]["labels"], a["labels"]);
        assert_eq!(closed[0]["endsAt"], "2026-11-22T10:01:05.000Z");
        assert!(closed.iter().all(|a| a["endsAt"].is_string()));
    }
}
