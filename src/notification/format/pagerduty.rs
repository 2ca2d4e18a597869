//! PagerDuty Events API v2 events: trigger, acknowledge and resolve of one alert per
//! incident.
//!
//! One file per receiver format: each is a schema of its own, tested against it.

use super::{EventContext, cut, rfc3339};
use crate::incidents::EventKind;
use crate::rules::Severity;
use serde_json::{Value, json};

/// PagerDuty cuts `payload.summary` at 1024 characters.
const PAGERDUTY_SUMMARY_CHARS: usize = 1024;

/// PagerDuty's four severities for ours.
pub fn pagerduty_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Moderate => "warning",
        Severity::Low => "info",
    }
}

/// A PagerDuty Events API v2 event without `routing_key` (added at send time, so the key is
/// never stored in the outbox). `dedup_key` is the incident's fleet-unique uid, so a trigger,
/// its acknowledge and its resolve all address one PagerDuty alert, and two hosts' `INC-7`
/// never do.
pub fn pagerduty_body(ctx: &EventContext) -> Option<Value> {
    let i = ctx.incident;
    let action = match ctx.event {
        EventKind::Opened | EventKind::SeverityChanged | EventKind::Escalated => "trigger",
        EventKind::Acknowledged => "acknowledge",
        EventKind::Closed => "resolve",
        EventKind::StateChanged | EventKind::Updated | EventKind::AuditHead => return None,
    };
    if action != "trigger" {
        return Some(json!({"event_action": action, "dedup_key": i.uid}));
    }
    let mut body = json!({
        "event_action": "trigger",
        "dedup_key": i.uid,
        "client": "logwarden",
        "payload": {
            "summary": cut(&format!("{}: {}", i.uid, i.summary), PAGERDUTY_SUMMARY_CHARS),
            "source": ctx.origin.host,
            "severity": pagerduty_severity(i.severity),
            "timestamp": rfc3339(i.first_seen),
            "component": i.rule,
            "group": i.category,
            "class": i.rule,
            "custom_details": {
                "incident": i.uid,
                "event": ctx.event.as_str(),
                "state": i.state.as_str(),
                "key": i.key,
                "count": i.count,
                "controls": i.controls,
                "labels": i.labels,
                "first_seen": rfc3339(i.first_seen),
                "last_seen": rfc3339(i.last_seen),
                "ruleset_version": i.ruleset_version,
            },
        },
    });
    if let Some(runbook) = &i.runbook {
        body["links"] = json!([{"href": runbook, "text": "Runbook"}]);
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::incidents::sample_incident;
    use crate::notification::format::testing::{ctx, origin};

    /// PagerDuty Events API v2: `event_action` trigger|acknowledge|resolve, `dedup_key`;
    /// a trigger needs `payload.summary` (≤ 1024), `payload.source`, `payload.severity`
    /// (critical|error|warning|info); optional `timestamp`, `component`, `group`, `class`,
    /// `custom_details`, `links[{href, text}]`, `client`.
    #[test]
    fn pagerduty_events_follow_the_events_api_v2_schema() {
        let (i, o) = (sample_incident(), origin());
        let trigger = pagerduty_body(&ctx(EventKind::Opened, &i, &o)).unwrap();
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "web1/INC-1");
        assert!(trigger.get("routing_key").is_none(), "added at send time");
        let p = &trigger["payload"];
        assert_eq!(
            p["summary"],
            "web1/INC-1: 5 failed SSH logins from 203.0.113.9"
        );
        assert_eq!(p["source"], "web1");
        assert_eq!(p["severity"], "error");
        assert_eq!(p["timestamp"], "2026-11-22T10:00:05.000Z");
        assert_eq!(p["component"], "ssh-bruteforce");
        assert_eq!(p["group"], "unauthorized-access");
        assert_eq!(p["class"], "ssh-bruteforce");
        assert_eq!(p["custom_details"]["key"]["ip"], "203.0.113.9");
        assert_eq!(p["custom_details"]["count"], 5);
        assert_eq!(trigger["links"][0]["href"], "https://wiki.example/ssh");
        assert_eq!(trigger["links"][0]["text"], "Runbook");
        assert_eq!(trigger["client"], "logwarden");
        let allowed = [
            "summary",
            "source",
            "severity",
            "timestamp",
            "component",
            "group",
            "class",
            "custom_details",
        ];
        for k in p.as_object().unwrap().keys() {
            assert!(allowed.contains(&k.as_str()), "unknown payload field {k}");
        }
        for (event, action) in [
            (EventKind::Acknowledged, "acknowledge"),
            (EventKind::Closed, "resolve"),
        ] {
            let b = pagerduty_body(&ctx(event, &i, &o)).unwrap();
            assert_eq!(
                b,
                json!({"event_action": action, "dedup_key": "web1/INC-1"})
            );
        }
        assert!(pagerduty_body(&ctx(EventKind::StateChanged, &i, &o)).is_none());
        let mut long = sample_incident();
        long.summary = "y".repeat(2000);
        let b = pagerduty_body(&ctx(EventKind::Opened, &long, &o)).unwrap();
        assert_eq!(
            b["payload"]["summary"].as_str().unwrap().chars().count(),
            1024
        );
    }

    #[test]
    fn severities_map_to_pagerdutys_four() {
        let mapped: Vec<_> = Severity::ALL.into_iter().map(pagerduty_severity).collect();
        assert_eq!(mapped, ["info", "warning", "error", "critical"]);
    }
}
