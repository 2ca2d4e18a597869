//! Routing: which receivers hear an event, and the formatter that renders each one's body.
//!
//! Apart from the outbox (which stores what routing decides) because it is decided from the
//! config alone: receivers, the events they chose, and their compiled templates.

use super::format::{self, Formatter, Origin, TemplateError};
use crate::config::{Config, ReceiverConfig};
use crate::incidents::EventKind;
use std::collections::HashMap;

/// A receiver whose template does not compile: the daemon refuses to start with it (`check`
/// reports the same template with its place in the config).
#[derive(Debug, thiserror::Error)]
#[error("receiver {receiver:?}: template: {cause}")]
pub struct RouterError {
    /// The receiver's name as configured (its place in the config is reported by `check`).
    pub receiver: String,
    /// What is wrong with its template.
    pub cause: TemplateError,
}

/// A receiver as routing sees it.
pub(super) struct Target {
    pub(super) config: ReceiverConfig,
    pub(super) formatter: Formatter,
    /// Its alerts of open incidents are re-sent (format alertmanager), so the latest one
    /// of each is kept in [`Space::Firing`].
    pub(super) resends: bool,
}

/// Decides who hears of an event and renders what they get.
pub struct Router {
    pub(super) targets: HashMap<String, Target>,
    pub(super) origin: Origin,
}

impl Router {
    /// Compiles every receiver's formatter (templates) once, at start.
    pub fn new(config: &Config) -> Result<Self, RouterError> {
        let mut targets = HashMap::new();
        for receiver in &config.receivers {
            let formatter = match receiver {
                ReceiverConfig::Webhook(w) => Formatter::new(w.format, w.template.as_deref())
                    .map_err(|cause| RouterError {
                        receiver: w.name.clone(),
                        cause,
                    })?,
                ReceiverConfig::File(_) => Formatter::builtin(format::WebhookFormat::Json),
            };
            let resends =
                matches!(receiver, ReceiverConfig::Webhook(w) if w.resend_interval().is_some());
            targets.insert(
                receiver.name().to_string(),
                Target {
                    config: receiver.clone(),
                    formatter,
                    resends,
                },
            );
        }
        Ok(Router {
            targets,
            origin: Origin::new(&config.host, &config.listen),
        })
    }

    /// Which of `candidates` get an event: a receiver hears the events it chose; a receiver
    /// that can resolve (PagerDuty, Alertmanager) always hears `closed`, also when `muted`
    /// (a silence) kept everything else from it, so no page is left open.
    pub fn deliverable<'a>(
        &self,
        kind: EventKind,
        candidates: impl IntoIterator<Item = &'a str>,
        muted: bool,
    ) -> Vec<&'a str> {
        let mut names: Vec<&str> = candidates
            .into_iter()
            .filter(|name| {
                let Some(target) = self.targets.get(*name) else {
                    return false;
                };
                let resolve = kind == EventKind::Closed && target.config.resolves();
                (resolve || (!muted && target.config.events().contains(&kind)))
                    && target.formatter.speaks(kind)
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Whether a receiver of this name is configured.
    pub fn knows(&self, receiver: &str) -> bool {
        self.targets.contains_key(receiver)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Four receivers of two roles, one of them PagerDuty choosing only `opened`.
    pub(in crate::notification) const CONFIG: &str = r#"state_dir: s
receivers:
  - {name: hook, type: webhook, url: 'http://127.0.0.1:1/'}
  - {name: all, type: file, path: '-', events: [opened, severity_changed, acknowledged, closed]}
  - {name: pd, type: webhook, url: 'http://127.0.0.1:1/', format: pagerduty, routing_key_env: K, events: [opened]}
  - {name: lead, type: webhook, url: 'http://127.0.0.1:1/'}
roles:
  analysts: {receivers: [hook, all, pd]}
  boss: {receivers: [lead]}
escalation_policies:
  default:
    - notify: [analysts]
    - notify: [boss]
"#;

    #[test]
    fn receivers_hear_what_they_chose_and_resolvers_always_hear_the_close() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&dir.path().join("c.yaml"), CONFIG).unwrap();
        let r = Router::new(&config).unwrap();
        let names = |kind, muted| r.deliverable(kind, ["all", "hook", "lead", "pd"], muted);
        assert_eq!(
            names(EventKind::Opened, false),
            ["all", "hook", "lead", "pd"]
        );
        assert_eq!(names(EventKind::SeverityChanged, false), ["all"]);
        assert_eq!(names(EventKind::Escalated, false), ["hook", "lead"]);
        assert_eq!(names(EventKind::Acknowledged, false), ["all"]);
        assert!(names(EventKind::Updated, false).is_empty());
        // pd did not choose `closed`, but it resolves: it hears it anyway.
        assert_eq!(
            names(EventKind::Closed, false),
            ["all", "hook", "lead", "pd"]
        );
        // A silence mutes everything except the resolve.
        assert!(names(EventKind::Opened, true).is_empty());
        assert_eq!(names(EventKind::Closed, true), ["pd"]);
    }

    #[test]
    fn a_broken_template_names_its_receiver() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse(&dir.path().join("c.yaml"), CONFIG).unwrap();
        if let ReceiverConfig::Webhook(w) = &mut config.receivers[0] {
            w.template = Some("{{ incident.id ".into());
        }
        let e = Router::new(&config).err().unwrap();
        assert_eq!(e.receiver, "hook");
        assert!(
            e.to_string().starts_with("receiver \"hook\": template: "),
            "{e}"
        );
    }
}
