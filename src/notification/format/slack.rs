//! Slack incoming-webhook messages (Block Kit), with log text escaped for mrkdwn and cut
//! to Slack's limits.
//!
//! One file per receiver format: each is a schema of its own, tested against it.

use super::{EventContext, cut, key_text, rfc3339};
use serde_json::{Value, json};

/// Slack limits: header text, section text, field text, number of fields.
const SLACK_HEADER_CHARS: usize = 150;
const SLACK_SECTION_CHARS: usize = 3000;
const SLACK_FIELD_CHARS: usize = 2000;

/// Slack mrkdwn: `&`, `<` and `>` are control characters (links, @channel mentions) and
/// must be escaped in text taken from logs.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::EventKind;
    use crate::incidents::sample_incident;
    use crate::notification::format::testing::{ctx, origin};

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
}
