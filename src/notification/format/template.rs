//! Receiver templates: a minijinja template that replaces a receiver's whole JSON body,
//! compiled once, rendered per event and checked against a complete sample incident.
//!
//! Apart from the built-in formats because a template is user code: it is bounded by fuel,
//! checked at `check` and reload, and falls back to the default body when it fails.

use super::{EventContext, Origin, rfc3339};
use crate::incidents::{EventKind, Incident};
use crate::rules::Severity;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Fuel for one template render: stops a runaway loop from stalling the pipeline.
const TEMPLATE_FUEL: u64 = 100_000;
/// Name under which a receiver's template is compiled; `.json` turns on JSON auto-escaping.
const TEMPLATE_NAME: &str = "body.json";

/// A receiver template that does not compile, render, or produce JSON: why, and on which
/// line of the template (1-based, 0 when unknown) so `check` can point into the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// Line of the template, 1-based; 0 when the template engine does not say.
    pub line: usize,
    /// What is wrong, on one line.
    pub message: String,
}

impl TemplateError {
    fn of(e: &minijinja::Error) -> Self {
        TemplateError {
            line: e.line().unwrap_or(0),
            message: describe(e),
        }
    }

    fn not_json(what: &str, e: serde_json::Error) -> Self {
        TemplateError {
            line: 0,
            message: format!("{what}: {e}"),
        }
    }
}

/// What a template sees: the default body's fields plus the host and the time.
fn template_context(ctx: &EventContext) -> Value {
    json!({
        "event": ctx.event.as_str(),
        "idempotency_key": ctx.idempotency_key,
        "incident": ctx.incident,
        "host": ctx.origin.host,
        "at": rfc3339(ctx.at),
    })
}

/// Compiles a receiver template with its fuel and JSON auto-escaping.
pub(super) fn compile(source: &str) -> Result<minijinja::Environment<'static>, TemplateError> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_template_owned(TEMPLATE_NAME, source.to_string())
        .map_err(|e| TemplateError::of(&e))?;
    Ok(env)
}

/// Renders one event through a compiled template; the body must be JSON.
pub(super) fn render_template(
    env: &minijinja::Environment<'static>,
    ctx: &EventContext,
) -> Result<String, TemplateError> {
    let body = env
        .get_template(TEMPLATE_NAME)
        .and_then(|t| t.render(template_context(ctx)))
        .map_err(|e| TemplateError::of(&e))?;
    serde_json::from_str::<Value>(&body)
        .map_err(|e| TemplateError::not_json("the template did not produce JSON", e))?;
    Ok(body)
}

/// The template engine's error kind and detail on one line.
fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// Checks a receiver template: it must compile and render a sample event into JSON. The
/// error carries the template line (1-based, 0 when unknown).
pub fn check_template(source: &str) -> Result<(), TemplateError> {
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
    let body = result.map_err(|e| TemplateError::of(&e))?;
    serde_json::from_str::<Value>(&body)
        .map_err(|e| TemplateError::not_json("the template must produce JSON", e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::format::testing::{ctx, origin};
    use crate::notification::format::{Formatter, WebhookFormat, sample_incident};

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
        let TemplateError { line, message: msg } =
            check_template("{\"a\": 1,\n \"b\": {{ incident.id }\n}").unwrap_err();
        assert_eq!(line, 2, "{msg}");
        let msg = check_template("not json {{ incident.id }}")
            .unwrap_err()
            .message;
        assert!(msg.contains("must produce JSON"), "{msg}");
        let msg = check_template("{{ incident.id | nosuchfilter }}")
            .unwrap_err()
            .message;
        assert!(
            msg.contains("nosuchfilter") || msg.contains("unknown filter"),
            "{msg}"
        );
    }
}
