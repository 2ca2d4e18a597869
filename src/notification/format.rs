//! Turning an incident event into the body one receiver expects.
//!
//! Bodies are rendered once, when the notification is written to the outbox, and stored:
//! every retry then sends the same bytes under the same idempotency key. Text from logs is
//! untrusted, so every format escapes it for its target (JSON encoding, Slack mrkdwn
//! escaping, JSON auto-escaping in templates).

//!
//! One file per built-in format (`slack`, `pagerduty`, `alertmanager`), `template` for
//! receiver templates; this file holds what they share and the [`Formatter`] that picks.

mod alertmanager;
mod pagerduty;
mod slack;
mod template;

/// The format is chosen in the config, so the config owns its type.
pub use crate::config::WebhookFormat;
pub use crate::config::{TemplateError, check_template};
pub use alertmanager::{
    FIRING_HORIZON_DAYS, alertmanager_body, alertmanager_endpoint, firing_alert, resend_body,
};
pub use pagerduty::{pagerduty_body, pagerduty_severity};
pub use slack::slack_body;

use crate::incidents::{EventKind, Incident};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

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

/// Everything a body is rendered from, for the built-in formats and templates alike; a
/// body is rendered once, when the notification is written, and stored.
pub struct EventContext<'a> {
    /// Which lifecycle event the body announces (opened, escalated, closed, ...).
    pub event: EventKind,
    /// The incident as it is after the event, so the body shows its new state and counts.
    pub incident: &'a Incident,
    /// Stable key of this event, also sent as `Idempotency-Key`.
    pub idempotency_key: &'a str,
    /// When the event happened (resolve time for `closed`).
    pub at: DateTime<Utc>,
    /// The host name the body names, and the base URL its links to the API start with.
    pub origin: &'a Origin,
}

/// Renders bodies for one receiver.
pub struct Formatter {
    format: WebhookFormat,
    template: Option<minijinja::Environment<'static>>,
}

impl Formatter {
    /// Compiles the template, if any; a broken template is refused here (and by `check`).
    pub fn new(format: WebhookFormat, template: Option<&str>) -> Result<Self, TemplateError> {
        let template = template.map(crate::config::template::compile).transpose()?;
        Ok(Formatter { format, template })
    }

    /// A built-in format without a template, which cannot fail.
    pub fn builtin(format: WebhookFormat) -> Self {
        Formatter {
            format,
            template: None,
        }
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
            match template::render_template(env, ctx) {
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

/// Times as every format writes them: RFC 3339 in UTC with milliseconds.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `text` cut to at most `chars` characters, with an ellipsis when cut.
fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let mut out: String = text.chars().take(chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The incident key as `name=value, ...`.
fn key_text(incident: &Incident) -> String {
    incident
        .key
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the format tests render with: one origin and one event context, shared so every
/// format is tested against the same event.
#[cfg(test)]
pub(crate) mod testing {
    use super::{EventContext, Origin};
    use crate::incidents::{EventKind, Incident};

    /// The host `web1` with the default API address.
    pub(crate) fn origin() -> Origin {
        Origin {
            host: "web1".into(),
            api_base: "http://127.0.0.1:9733".into(),
        }
    }

    /// `event` of `incident`, a minute after it opened, with a fixed idempotency key.
    pub(crate) fn ctx<'a>(
        event: EventKind,
        incident: &'a Incident,
        origin: &'a Origin,
    ) -> EventContext<'a> {
        EventContext {
            event,
            incident,
            idempotency_key: "INC-1-7",
            at: incident.opened_at + chrono::Duration::seconds(60),
            origin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::sample_incident;
    use crate::notification::format::testing::{ctx, origin};

    #[test]
    fn json_carries_event_key_and_incident() {
        let (i, o) = (sample_incident(), origin());
        let body = json_body(&ctx(EventKind::Opened, &i, &o));
        assert_eq!(body["event"], "opened");
        assert_eq!(body["idempotency_key"], "INC-1-7");
        assert_eq!(body["incident"]["id"], "INC-1");
        assert_eq!(body["incident"]["key"]["ip"], "203.0.113.9");
    }
}
