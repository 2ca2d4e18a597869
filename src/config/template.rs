//! Receiver templates as config: the template language's limits, and the check that a
//! template compiles and renders a complete sample event into JSON.
//!
//! In the config stage so that a broken template is a config error with its place (at
//! `check`, at start, at reload) without the config reaching up into notification, which
//! renders the same templates per event with what is defined here.

use serde_json::Value;

/// Fuel for one template render: stops a runaway loop from stalling the pipeline.
pub(crate) const TEMPLATE_FUEL: u64 = 100_000;
/// Name under which a receiver's template is compiled; `.json` turns on JSON auto-escaping.
pub(crate) const TEMPLATE_NAME: &str = "body.json";

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
    /// The template engine's error, with its line.
    pub(crate) fn of(e: &minijinja::Error) -> Self {
        TemplateError {
            line: e.line().unwrap_or(0),
            message: describe(e),
        }
    }

    /// A rendered body that is not JSON.
    pub(crate) fn not_json(what: &str, e: serde_json::Error) -> Self {
        TemplateError {
            line: 0,
            message: format!("{what}: {e}"),
        }
    }
}

/// Compiles a receiver template with its fuel and JSON auto-escaping.
pub fn compile(source: &str) -> Result<minijinja::Environment<'static>, TemplateError> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_template_owned(TEMPLATE_NAME, source.to_string())
        .map_err(|e| TemplateError::of(&e))?;
    Ok(env)
}

/// The template engine's error kind and detail on one line.
fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// Checks a receiver template: it must compile and render the sample event into JSON. The
/// error carries the template line (1-based, 0 when unknown).
pub fn check_template(source: &str) -> Result<(), TemplateError> {
    let env = compile(source)?;
    let body = env
        .get_template(TEMPLATE_NAME)
        .and_then(|t| t.render(sample_context()))
        .map_err(|e| TemplateError::of(&e))?;
    serde_json::from_str::<Value>(&body)
        .map_err(|e| TemplateError::not_json("the template must produce JSON", e))?;
    Ok(())
}

/// What a template sees when it is checked: an `opened` event of a complete incident, so a
/// template that reads a field fails at `check` and reload rather than on the first real
/// incident. Notification builds its sample incident from this one (and a test there holds
/// it to what a real event renders), so the two cannot drift apart.
pub fn sample_context() -> Value {
    serde_json::json!({
      "at": "2026-11-22T10:00:05.000Z",
      "event": "opened",
      "host": "host",
      "idempotency_key": "INC-1-1",
      "incident": {
        "category": "unauthorized-access",
        "controls": [
          "CC7.2"
        ],
        "count": 5,
        "description": "Repeated failed SSH logins from one address",
        "escalation": "default",
        "evidence": [],
        "first_seen": "2026-11-22T10:00:05Z",
        "id": "INC-1",
        "key": {
          "ip": "203.0.113.9"
        },
        "labels": {
          "team": "security"
        },
        "last_seen": "2026-11-22T10:00:05Z",
        "opened_at": "2026-11-22T10:00:05Z",
        "rule": "ssh-bruteforce",
        "ruleset_version": "0123456789abcdef",
        "runbook": "https://wiki.example/ssh",
        "severity": "high",
        "state": "open",
        "summary": "5 failed SSH logins from 203.0.113.9",
        "timeline": [],
        "uid": "web1/INC-1",
        "updated_at": "2026-11-22T10:00:05Z"
      }
    })
}
