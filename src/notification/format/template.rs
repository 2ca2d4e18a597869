//! Receiver templates rendered per event: a minijinja template that replaces a receiver's
//! whole JSON body. Compiling and checking one is config (`config::template`).
//!
//! Apart from the built-in formats because a template is user code: it is bounded by fuel,
//! and falls back to the default body when it fails.

use super::{EventContext, rfc3339};
use crate::config::template::{TEMPLATE_NAME, TemplateError};
use serde_json::{Value, json};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check_template;
    use crate::config::template::sample_context;
    use crate::incidents::EventKind;
    use crate::incidents::sample_incident;
    use crate::notification::format::testing::{ctx, origin};
    use crate::notification::format::{Formatter, Origin, WebhookFormat};

    #[test]
    fn the_checked_sample_is_what_an_opened_event_of_the_sample_incident_renders() {
        let incident = sample_incident();
        let origin = Origin {
            host: "host".into(),
            api_base: "http://127.0.0.1:9733".into(),
        };
        let event = EventContext {
            event: EventKind::Opened,
            incident: &incident,
            idempotency_key: "INC-1-1",
            at: incident.opened_at,
            origin: &origin,
        };
        assert_eq!(template_context(&event), sample_context());
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
