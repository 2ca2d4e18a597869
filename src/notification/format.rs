//! Turning an incident event into the body one receiver expects.
//!
//! Bodies are rendered once, when the notification is written to the outbox, and stored:
//! every retry then sends the same bytes under the same idempotency key. Text from logs is
//! untrusted, so every format escapes it for its target (JSON encoding, Slack mrkdwn
//! escaping, JSON auto-escaping in templates).

use crate::incidents::{EventKind, Incident};
use crate::rules::Severity;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Body format of a webhook (the `format` key of a webhook receiver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event", "idempotency_key", "incident"}`.
    #[default]
    Json,
    /// A Slack incoming-webhook message.
    Slack,
    /// A PagerDuty Events API v2 event.
    Pagerduty,
    /// An Alertmanager API v2 alert list.
    Alertmanager,
}

impl WebhookFormat {
    /// Whether the format can resolve what it raised, so a close must always reach it.
    pub fn resolves(self) -> bool {
        matches!(self, WebhookFormat::Pagerduty | WebhookFormat::Alertmanager)
    }
}

/// Fuel for one template render: stops a runaway loop from stalling the pipeline.
const TEMPLATE_FUEL: u64 = 100_000;
/// Name under which a receiver's template is compiled; `.json` turns on JSON auto-escaping.
const TEMPLATE_NAME: &str = "body.json";
/// PagerDuty cuts `payload.summary` at 1024 characters.
const PAGERDUTY_SUMMARY_CHARS: usize = 1024;
/// Slack limits: header text, section text, field text, number of fields.
const SLACK_HEADER_CHARS: usize = 150;
const SLACK_SECTION_CHARS: usize = 3000;
const SLACK_FIELD_CHARS: usize = 2000;

/// What every body may draw on besides the incident.
#[derive(Debug, Clone)]
pub struct Origin {
    /// This host's name (PagerDuty `source`, Alertmanager `host` label).
    pub host: String,
    /// Base of links back to the API, e.g. `http://127.0.0.1:9733`.
    pub api_base: String,
}

impl Origin {
    /// The configured host name, and the API's listen address as link base.
    pub fn new(host: &str, listen: &str) -> Self {
        Origin {
            host: host.to_string(),
            api_base: format!("http://{listen}"),
        }
    }
}

/// One event to render.
pub struct EventContext<'a> {
    /// What happened.
    pub event: EventKind,
    /// The incident after it.
    pub incident: &'a Incident,
    /// Stable key of this event, also sent as `Idempotency-Key`.
    pub idempotency_key: &'a str,
    /// When the event happened (resolve time for `closed`).
    pub at: DateTime<Utc>,
    /// Host and link base.
    pub origin: &'a Origin,
}

/// Renders bodies for one receiver.
pub struct Formatter {
    format: WebhookFormat,
    template: Option<minijinja::Environment<'static>>,
}

impl Formatter {
    /// Compiles the template, if any; a broken template is refused here (and by `check`).
    pub fn new(format: WebhookFormat, template: Option<&str>) -> Result<Self, String> {
        let template = template.map(compile).transpose().map_err(|e| e.1)?;
        Ok(Formatter { format, template })
    }

    /// Whether this receiver has something to send for `kind` (a PagerDuty body has no
    /// action for a state change or an update; a template says anything).
    pub fn speaks(&self, kind: EventKind) -> bool {
        self.template.is_some()
            || !(self.format == WebhookFormat::Pagerduty
                && matches!(kind, EventKind::StateChanged | EventKind::Updated))
    }

    /// The body for an event, or `None` when the format has nothing to say about it (a
    /// PagerDuty event has no action for `state_changed`).
    pub fn render(&self, ctx: &EventContext) -> Option<String> {
        if let Some(env) = &self.template {
            match render_template(env, ctx) {
                Ok(body) => return Some(body),
                Err(e) => {
                    // The notification is not lost: it goes out in the default JSON format.
                    tracing::warn!(incident = %ctx.incident.id, error = %e, "receiver template failed; sending the default JSON body");
                }
            }
        }
        let body = match self.format {
            WebhookFormat::Json => json_body(ctx),
            WebhookFormat::Slack => slack_body(ctx),
            WebhookFormat::Pagerduty => pagerduty_body(ctx)?,
            WebhookFormat::Alertmanager => alertmanager_body(ctx),
        };
        Some(body.to_string())
    }
}

/// The default body: the event, its idempotency key and the whole incident.
pub fn json_body(ctx: &EventContext) -> Value {
    json!({
        "event": ctx.event.as_str(),
        "idempotency_key": ctx.idempotency_key,
        "incident": ctx.incident,
    })
}

fn template_context(ctx: &EventContext) -> Value {
    json!({
        "event": ctx.event.as_str(),
        "idempotency_key": ctx.idempotency_key,
        "incident": ctx.incident,
        "host": ctx.origin.host,
        "at": rfc3339(ctx.at),
    })
}

fn compile(source: &str) -> Result<minijinja::Environment<'static>, (usize, String)> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_template_owned(TEMPLATE_NAME, source.to_string())
        .map_err(|e| (e.line().unwrap_or(0), describe(&e)))?;
    Ok(env)
}

fn render_template(
    env: &minijinja::Environment<'static>,
    ctx: &EventContext,
) -> Result<String, String> {
    let body = env
        .get_template(TEMPLATE_NAME)
        .and_then(|t| t.render(template_context(ctx)))
        .map_err(|e| describe(&e))?;
    serde_json::from_str::<Value>(&body)
        .map_err(|e| format!("the template did not produce JSON: {e}"))?;
    Ok(body)
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// Checks a receiver template: it must compile and render a sample event into JSON. The
/// error carries the template line (1-based, 0 when unknown).
pub fn check_template(source: &str) -> Result<(), (usize, String)> {
    let env = compile(source)?;
    let incident = template_check_incident();
    let origin = Origin {
        host: "host".into(),
        api_base: "http://127.0.0.1:9733".into(),
    };
    let ctx = EventContext {
        event: EventKind::Opened,
        incident: &incident,
        idempotency_key: "INC-1-1",
        at: incident.opened_at,
        origin: &origin,
    };
    let result = env
        .get_template(TEMPLATE_NAME)
        .and_then(|t| t.render(template_context(&ctx)));
    let body = result.map_err(|e| (e.line().unwrap_or(0), describe(&e)))?;
    serde_json::from_str::<Value>(&body)
        .map_err(|e| (0, format!("the template must produce JSON: {e}")))?;
    Ok(())
}

/// The incident a receiver template is rendered against when it is checked: every optional
/// field is filled, so a template that reads any field fails at `check` and reload rather
/// than on the first real incident.
fn template_check_incident() -> Incident {
    let at = DateTime::parse_from_rfc3339("2026-11-22T10:00:05Z")
        .expect("valid time")
        .with_timezone(&Utc);
    Incident {
        id: "INC-1".into(),
        uid: "web1/INC-1".into(),
        rule: "ssh-bruteforce".into(),
        severity: Severity::High,
        category: "unauthorized-access".into(),
        state: crate::incidents::State::Open,
        key: BTreeMap::from([("ip".to_string(), "203.0.113.9".to_string())]),
        count: 5,
        first_seen: at,
        last_seen: at,
        opened_at: at,
        updated_at: at,
        controls: vec!["CC7.2".into()],
        labels: BTreeMap::from([("team".to_string(), "security".to_string())]),
        summary: "5 failed SSH logins from 203.0.113.9".into(),
        description: "Repeated failed SSH logins from one address".into(),
        runbook: Some("https://wiki.example/ssh".into()),
        escalation: "default".into(),
        ruleset_version: "0123456789abcdef".into(),
        evidence: Vec::new(),
        timeline: Vec::new(),
        resumed_at: None,
        acknowledged_at: None,
        contained_at: None,
        closed_at: None,
        review: None,
        approval: None,
        silenced_by: None,
        drill: false,
    }
}

/// A complete incident for unit tests across the crate: the same one templates are checked
/// against, so tests exercise what `check` exercises.
#[cfg(test)]
pub fn sample_incident() -> Incident {
    template_check_incident()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let mut out: String = text.chars().take(chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Slack mrkdwn: `&`, `<` and `>` are control characters (links, @channel mentions) and
/// must be escaped in text taken from logs.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn key_text(incident: &Incident) -> String {
    incident
        .key
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A Slack incoming-webhook message: `text` (notification fallback) and Block Kit blocks.
pub fn slack_body(ctx: &EventContext) -> Value {
    let i = ctx.incident;
    let headline = format!(
        "[{}] {} {}: {}",
        i.severity.as_str().to_uppercase(),
        i.uid,
        ctx.event.as_str(),
        i.summary
    );
    let field = |name: &str, value: &str| {
        json!({
            "type": "mrkdwn",
            "text": cut(&format!("*{name}*\n{}", slack_escape(value)), SLACK_FIELD_CHARS),
        })
    };
    let mut fields = vec![
        field("Severity", i.severity.as_str()),
        field("State", i.state.as_str()),
        field("Rule", &i.rule),
        field("Count", &i.count.to_string()),
        field("Host", &ctx.origin.host),
    ];
    if !i.key.is_empty() {
        fields.push(field("Key", &key_text(i)));
    }
    if !i.controls.is_empty() {
        fields.push(field("Controls", &i.controls.join(", ")));
    }
    let mut context = format!(
        "logwarden · {} · first seen {}",
        slack_escape(&i.category),
        rfc3339(i.first_seen)
    );
    if let Some(runbook) = i.runbook.as_deref().filter(|u| {
        (u.starts_with("https://") || u.starts_with("http://")) && !u.contains(['|', '<', '>'])
    }) {
        context.push_str(&format!(" · <{runbook}|Runbook>"));
    }
    json!({
        "text": cut(&slack_escape(&headline), SLACK_SECTION_CHARS),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": cut(&format!("{} {}: {}", i.uid, ctx.event.as_str(), i.rule), SLACK_HEADER_CHARS),
                },
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": cut(&slack_escape(&i.summary), SLACK_SECTION_CHARS)},
            },
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&context, SLACK_FIELD_CHARS)}]},
        ],
    })
}

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

    fn origin() -> Origin {
        Origin {
            host: "web1".into(),
            api_base: "http://127.0.0.1:9733".into(),
        }
    }

    fn ctx<'a>(event: EventKind, incident: &'a Incident, origin: &'a Origin) -> EventContext<'a> {
        EventContext {
            event,
            incident,
            idempotency_key: "INC-1-7",
            at: incident.opened_at + chrono::Duration::seconds(60),
            origin,
        }
    }

    #[test]
    fn json_carries_event_key_and_incident() {
        let (i, o) = (sample_incident(), origin());
        let body = json_body(&ctx(EventKind::Opened, &i, &o));
        assert_eq!(body["event"], "opened");
        assert_eq!(body["idempotency_key"], "INC-1-7");
        assert_eq!(body["incident"]["id"], "INC-1");
        assert_eq!(body["incident"]["key"]["ip"], "203.0.113.9");
    }

    /// Slack's incoming-webhook schema: `text` string; `blocks` of types header (plain_text
    /// ≤ 150), section (mrkdwn text ≤ 3000, or ≤ 10 mrkdwn fields ≤ 2000), context
    /// (elements of mrkdwn text).
    #[test]
    fn slack_message_follows_the_block_kit_schema_and_escapes_log_text() {
        let (mut i, o) = (sample_incident(), origin());
        i.summary = "<!channel> 5 failures & more from <evil>".into();
        let body = slack_body(&ctx(EventKind::Opened, &i, &o));
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with("[HIGH] web1/INC-1 opened: "), "{text}");
        assert!(!text.contains("<!channel>"), "mentions are escaped: {text}");
        assert!(text.contains("&lt;!channel&gt;") && text.contains("&amp; more"));
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 4);
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(
            blocks[0]["text"]["text"],
            "web1/INC-1 opened: ssh-bruteforce"
        );
        assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
        assert_eq!(blocks[1]["type"], "section");
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        assert_eq!(
            blocks[1]["text"]["text"],
            "&lt;!channel&gt; 5 failures &amp; more from &lt;evil&gt;"
        );
        assert_eq!(blocks[2]["type"], "section");
        let fields = blocks[2]["fields"].as_array().unwrap();
        assert!(fields.len() <= 10);
        for f in fields {
            assert_eq!(f["type"], "mrkdwn");
            assert!(f["text"].as_str().unwrap().chars().count() <= 2000);
        }
        assert_eq!(fields[0]["text"], "*Severity*\nhigh");
        assert!(fields.iter().any(|f| f["text"] == "*Key*\nip=203.0.113.9"));
        assert!(fields.iter().any(|f| f["text"] == "*Host*\nweb1"));
        assert_eq!(blocks[3]["type"], "context");
        let context = blocks[3]["elements"][0]["text"].as_str().unwrap();
        assert_eq!(blocks[3]["elements"][0]["type"], "mrkdwn");
        assert!(
            context.contains("<https://wiki.example/ssh|Runbook>"),
            "{context}"
        );
        // Nothing but the documented top-level keys.
        assert_eq!(body.as_object().unwrap().len(), 2);
    }

    #[test]
    fn slack_cuts_long_text_to_its_limits() {
        let (mut i, o) = (sample_incident(), origin());
        i.summary = "x".repeat(5000);
        i.rule = "r".repeat(300);
        let body = slack_body(&ctx(EventKind::Opened, &i, &o));
        assert_eq!(
            body["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            150
        );
        assert_eq!(
            body["blocks"][1]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            3000
        );
    }

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

    #[test]
    fn templates_render_json_with_escaped_values_and_are_checked() {
        let (mut i, o) = (sample_incident(), origin());
        i.summary = "quote \" and newline \n".into();
        let f = Formatter::new(
            WebhookFormat::Json,
            Some("{\"msg\": {{ incident.summary }}, \"e\": {{ event }}, \"h\": {{ host }}}"),
        )
        .unwrap();
        let body: Value =
            serde_json::from_str(&f.render(&ctx(EventKind::Opened, &i, &o)).unwrap()).unwrap();
        assert_eq!(body["msg"], "quote \" and newline \n");
        assert_eq!(body["e"], "opened");
        assert_eq!(body["h"], "web1");

        assert!(check_template("{\"a\": {{ incident.id }}}").is_ok());
        let (line, msg) = check_template("{\"a\": 1,\n \"b\": {{ incident.id }\n}").unwrap_err();
        assert_eq!(line, 2, "{msg}");
        let (_, msg) = check_template("not json {{ incident.id }}").unwrap_err();
        assert!(msg.contains("must produce JSON"), "{msg}");
        let (_, msg) = check_template("{{ incident.id | nosuchfilter }}").unwrap_err();
        assert!(
            msg.contains("nosuchfilter") || msg.contains("unknown filter"),
            "{msg}"
        );
    }
}
