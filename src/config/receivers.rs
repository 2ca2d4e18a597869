//! Receiver config: where notifications go, in which format, and how hard delivery tries.
//!
//! Kept apart from the rest of the config because it is the largest block and the only one
//! the delivery code reads; every struct still denies unknown fields.

use super::EventKind;
use crate::base::diag::{Diagnostic, Position, YamlLocator};
use crate::base::duration::HumanDuration;
use serde::{Deserialize, Deserializer};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// A notification destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ReceiverConfig {
    /// HTTP POST of a body in one of the [`WebhookFormat`]s.
    Webhook(Box<WebhookConfig>),
    /// JSON lines appended to a file; `-` is stdout.
    File(FileReceiverConfig),
}

/// An HTTP receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Name `roles` list this receiver under; unique among receivers, and the `receiver`
    /// label of its metrics.
    pub name: String,
    /// Where to POST (for `alertmanager`, the Alertmanager's base URL or its `/api/v2/alerts`).
    /// Exactly one of `url` and `urls` is given.
    #[serde(default)]
    pub url: Option<String>,
    /// Every member of an Alertmanager cluster (format `alertmanager`): each notification
    /// goes to all of them, with its delivery tracked per member.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Format `alertmanager`: re-send the alerts of open incidents at this interval, since
    /// Alertmanager keeps none across a restart (default 1m).
    #[serde(default)]
    pub resend: Option<HumanDuration>,
    /// Body format: each receiving service (Slack, PagerDuty, Alertmanager…) only accepts
    /// its own shape of body.
    #[serde(default)]
    pub format: WebhookFormat,
    /// minijinja template replacing the body (only with `format: json`).
    #[serde(default)]
    pub template: Option<String>,
    /// Events this receiver hears about.
    #[serde(default = "default_events")]
    pub events: Vec<EventKind>,
    /// Whole-attempt timeout (connect, send, response).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Connect timeout of one attempt.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// File holding the HMAC signing secret.
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the HMAC signing secret.
    pub secret_env: Option<String>,
    /// File holding the PagerDuty integration (routing) key.
    pub routing_key_file: Option<PathBuf>,
    /// Environment variable holding the PagerDuty integration (routing) key.
    pub routing_key_env: Option<String>,
    /// Backoff between attempts and how long to keep trying.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Most attempts in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most attempts started per period, e.g. `120/m`.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// A file receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReceiverConfig {
    /// Name `roles` list this receiver under; unique among receivers, and the `receiver`
    /// label of its metrics.
    pub name: String,
    /// File to append to, or `-`.
    pub path: PathBuf,
    /// Events this receiver hears about.
    #[serde(default = "default_events")]
    pub events: Vec<EventKind>,
    /// Backoff between attempts (a full disk) and how long to keep trying.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// Retry policy of one receiver.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Wait after the first failure; doubles after each further one.
    #[serde(default = "default_initial")]
    pub initial: HumanDuration,
    /// Longest wait between two attempts.
    #[serde(default = "default_max")]
    pub max: HumanDuration,
    /// Age after which a notification stops being retried and becomes a dead letter.
    #[serde(default = "default_max_age")]
    pub max_age: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: default_initial(),
            max: default_max(),
            max_age: default_max_age(),
        }
    }
}

/// `N/s`, `N/m` or `N/h`: at most N attempts started per second, minute or hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Attempts allowed per period (also the burst).
    pub count: u32,
    /// The period `count` applies to: one second, minute or hour.
    pub per: Duration,
}

/// A `rate_limit` that cannot be used, quoted as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate_limit {0:?} must be N/s, N/m or N/h (e.g. 120/m)")]
    Form(String),
    /// A limit of 0 would hold every notification forever.
    #[error("rate_limit {0:?} must allow at least 1")]
    Zero(String),
}

impl RateLimit {
    /// Parses `N/s`, `N/m` or `N/h` (e.g. `120/m`); a count of 0 is refused, since it would
    /// hold every notification forever.
    pub fn parse(text: &str) -> Result<Self, RateLimitError> {
        let bad = || RateLimitError::Form(text.to_string());
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(RateLimitError::Zero(text.to_string()));
        }
        Ok(RateLimit { count, per })
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        RateLimit::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Default of `resend`: what Alertmanager's clients documentation asks of its clients.
pub const DEFAULT_RESEND: Duration = Duration::from_secs(60);
/// Bounds of `resend`: often enough that a restarted member shows the alerts within its
/// group_wait's order of magnitude, seldom enough to stay cheap.
const RESEND_MIN: Duration = Duration::from_secs(1);
const RESEND_MAX: Duration = Duration::from_secs(3600);

impl WebhookConfig {
    /// The URLs each notification goes to, as configured: `url`, or every one of `urls`.
    pub fn members(&self) -> Vec<&str> {
        match &self.url {
            Some(url) => vec![url.as_str()],
            None => self.urls.iter().map(String::as_str).collect(),
        }
    }

    /// Whether notifications carry the member they are for (a cluster listed with `urls`).
    pub fn per_member(&self) -> bool {
        self.url.is_none()
    }

    /// The interval at which open incidents' alerts are re-sent (format alertmanager only).
    pub fn resend_interval(&self) -> Option<Duration> {
        (self.format == WebhookFormat::Alertmanager)
            .then(|| self.resend.map_or(DEFAULT_RESEND, |r| r.0))
    }
}

fn default_events() -> Vec<EventKind> {
    vec![EventKind::Opened, EventKind::Escalated, EventKind::Closed]
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_concurrency() -> usize {
    4
}
fn default_initial() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}

impl ReceiverConfig {
    /// The name roles use for this receiver.
    pub fn name(&self) -> &str {
        match self {
            ReceiverConfig::Webhook(w) => &w.name,
            ReceiverConfig::File(f) => &f.name,
        }
    }

    /// Events the receiver asked for.
    pub fn events(&self) -> &[EventKind] {
        match self {
            ReceiverConfig::Webhook(w) => &w.events,
            ReceiverConfig::File(f) => &f.events,
        }
    }

    /// Its retry policy, the same for either kind of receiver, so delivery does not need to
    /// know which kind it is.
    pub fn retry(&self) -> RetryConfig {
        match self {
            ReceiverConfig::Webhook(w) => w.retry,
            ReceiverConfig::File(f) => f.retry,
        }
    }

    /// Whether a close must reach it whatever `events` says (it can resolve a page).
    pub fn resolves(&self) -> bool {
        matches!(self, ReceiverConfig::Webhook(w) if w.format.resolves())
    }

    /// Makes relative paths absolute with `resolve`.
    pub(crate) fn resolve_paths(&mut self, resolve: impl Fn(&mut PathBuf)) {
        match self {
            ReceiverConfig::File(f) => resolve(&mut f.path),
            ReceiverConfig::Webhook(w) => {
                w.secret_file.iter_mut().for_each(&resolve);
                w.routing_key_file.iter_mut().for_each(&resolve);
            }
        }
    }
}

/// Reads a secret from a file or an environment variable (surrounding whitespace ignored).
/// The error names where it looked, never the value.
pub fn read_secret(file: Option<&Path>, env: Option<&str>) -> Result<String, SecretError> {
    let value = match (file, env) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|error| SecretError::Read {
            path: path.to_path_buf(),
            error,
        })?,
        (None, Some(var)) => std::env::var(var).map_err(|_| SecretError::Unset(var.to_string()))?,
        (None, None) => return Err(SecretError::Nowhere),
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(match (file, env) {
            (Some(path), _) => SecretError::EmptyFile(path.to_path_buf()),
            _ => SecretError::EmptyVar(env.unwrap_or_default().to_string()),
        });
    }
    Ok(value.to_string())
}

/// Why a secret could not be read. It names where the secret was looked for and never holds
/// any of its text, so it can be logged and shown.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("no file or environment variable given")]
    Nowhere,
    /// An empty secret would sign with an empty key, which anyone can forge.
    #[error("{} is empty", .0.display())]
    EmptyFile(std::path::PathBuf),
    #[error("environment variable {0} is empty")]
    EmptyVar(String),
}

/// Checks the receivers; returns the problems and the set of receiver names.
pub(crate) fn validate<'a>(
    receivers: &'a [ReceiverConfig],
    path: &Path,
    text: &str,
    loc: &YamlLocator,
) -> (Vec<Diagnostic>, HashSet<&'a str>) {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for (i, receiver) in receivers.iter().enumerate() {
        let at = loc.item("receivers", i);
        let mut fail = |key: &str, message: String| {
            problems.push(Diagnostic::at(path, loc.key_in_block(at, key), message));
        };
        let name = receiver.name();
        if !names.insert(name) {
            fail("name", format!("duplicate receiver name {name:?}"));
        }
        if receiver.events().contains(&EventKind::Updated) {
            fail(
                "events",
                format!(
                    "receiver {name:?}: `updated` is not a notification event (use opened, severity_changed, escalated, acknowledged, state_changed, closed)"
                ),
            );
        }
        if let ReceiverConfig::Webhook(w) = receiver
            && receiver.events().contains(&EventKind::AuditHead)
            && (w.format != WebhookFormat::Json || w.template.is_some())
        {
            fail(
                "events",
                format!(
                    "receiver {name:?}: audit_head goes to format json receivers without a template (or file receivers), which carry the signed head unchanged"
                ),
            );
        }
        let retry = receiver.retry();
        if retry.initial > retry.max {
            fail(
                "retry",
                format!(
                    "receiver {name:?}: retry.initial ({}) is longer than retry.max ({})",
                    retry.initial, retry.max
                ),
            );
        }
        let ReceiverConfig::Webhook(w) = receiver else {
            continue;
        };
        webhook_problems(w, name, &mut fail);
        if let Some(template) = &w.template {
            if w.format != WebhookFormat::Json {
                fail(
                    "template",
                    format!(
                        "receiver {name:?}: a template replaces the whole body, so it goes with format json only"
                    ),
                );
            } else if let Err(e) = super::template::check_template(template) {
                let key = loc.key_in_block(at, "template");
                let pos = template_position(text, key, e.line);
                problems.push(Diagnostic::at(
                    path,
                    pos,
                    format!("receiver {name:?}: template: {}", e.message),
                ));
            }
        }
    }
    (problems, names)
}

/// Problems of one webhook's own settings (urls, resend, secrets, routing key, limits),
/// reported at their keys through `fail`.
fn webhook_problems(w: &WebhookConfig, name: &str, fail: &mut dyn FnMut(&str, String)) {
    match (&w.url, w.urls.is_empty()) {
        (Some(_), false) => fail(
            "urls",
            format!("receiver {name:?}: give url (one) or urls (every cluster member), not both"),
        ),
        (None, true) => fail("name", format!("receiver {name:?} needs a url")),
        _ => {}
    }
    if !w.urls.is_empty() && w.format != WebhookFormat::Alertmanager {
        fail(
            "urls",
            format!(
                "receiver {name:?}: urls lists the members of an Alertmanager cluster (format alertmanager); other formats take one url"
            ),
        );
    }
    let mut seen = HashSet::new();
    for url in w.members() {
        let key = if w.url.is_some() { "url" } else { "urls" };
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => fail(key, format!("receiver {name:?} has an invalid url {url:?}")),
        }
        if !seen.insert(url) {
            fail(key, format!("receiver {name:?} lists {url:?} twice"));
        }
    }
    if let Some(resend) = w.resend {
        if w.format != WebhookFormat::Alertmanager {
            fail(
                "resend",
                format!(
                    "receiver {name:?}: resend is for format alertmanager (whose alerts must be re-sent)"
                ),
            );
        } else if resend.0 < RESEND_MIN || resend.0 > RESEND_MAX {
            fail(
                "resend",
                format!("receiver {name:?}: resend {resend} must be between 1s and 1h"),
            );
        }
    }
    if w.secret_file.is_some() && w.secret_env.is_some() {
        fail(
            "secret_file",
            format!("receiver {name:?}: give secret_file or secret_env, not both"),
        );
    }
    let has_key = w.routing_key_file.is_some() || w.routing_key_env.is_some();
    if w.format == WebhookFormat::Pagerduty {
        if w.routing_key_file.is_some() == w.routing_key_env.is_some() {
            fail(
                "format",
                format!(
                    "receiver {name:?}: format pagerduty needs exactly one of routing_key_file or routing_key_env"
                ),
            );
        }
    } else if has_key {
        let key = if w.routing_key_file.is_some() {
            "routing_key_file"
        } else {
            "routing_key_env"
        };
        fail(
            key,
            format!("receiver {name:?}: {key} is only used with format pagerduty"),
        );
    }
    if w.concurrency == 0 {
        fail(
            "concurrency",
            format!("receiver {name:?}: concurrency must be at least 1"),
        );
    }
    if w.timeout < w.connect_timeout {
        fail(
            "connect_timeout",
            format!(
                "receiver {name:?}: connect_timeout ({}) is longer than timeout ({})",
                w.connect_timeout, w.timeout
            ),
        );
    }
}

/// Where line `line` (1-based, 0 unknown) of a template sits in the config file: for a block
/// scalar (`template: |`) that is the key's line plus `line`, else the key itself.
fn template_position(text: &str, key: Position, line: usize) -> Position {
    let Some(key_line) = text.lines().nth(key.line.saturating_sub(1)) else {
        return key;
    };
    let after = key_line
        .get(key.col.saturating_sub(1)..)
        .and_then(|s| s.strip_prefix("template"))
        .map(|s| s.trim_start_matches([':', ' ']))
        .unwrap_or("");
    if line == 0 || !(after.starts_with('|') || after.starts_with('>')) {
        return key;
    }
    let target = key.line + line;
    let col = text
        .lines()
        .nth(target - 1)
        .map(|l| l.len() - l.trim_start().len() + 1)
        .unwrap_or(1);
    Position { line: target, col }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_and_explain_themselves() {
        assert_eq!(
            RateLimit::parse("120/m").unwrap(),
            RateLimit {
                count: 120,
                per: Duration::from_secs(60)
            }
        );
        assert_eq!(RateLimit::parse("5/s").unwrap().per, Duration::from_secs(1));
        for bad in ["120", "120/d", "x/m", "0/m", "/m"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_block_template_error_points_into_the_block() {
        let text = "receivers:\n  - name: a\n    template: |\n      {\"a\": 1}\n      {{ oops(\n";
        let key = Position { line: 3, col: 5 };
        assert_eq!(
            template_position(text, key, 2),
            Position { line: 5, col: 7 }
        );
        let inline = "receivers:\n  - name: a\n    template: '{{ x'\n";
        assert_eq!(template_position(inline, key, 1), key);
    }
}
