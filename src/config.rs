//! The daemon's YAML config: what to tail, where to keep state, who to tell.
//!
//! Every struct denies unknown fields so a typo is an error instead of a silently ignored
//! setting. Relative paths are resolved against the config file's directory, so the same
//! config works whatever directory the daemon is started from.
//!
//! Config is the lowest stage: it imports no stage above it. The plain types the inputs
//! and notification read (source settings, timestamp formats, line-time bounds, webhook
//! formats) are defined here, in `sources` and `receivers`, and used from there.

use crate::base::diag::{Diagnostic, YamlLocator};
use crate::base::duration::HumanDuration;
pub use actions::{
    ActionConfig, ActionKind, ApprovalPolicy, Hook, compile_template, never_contain_lists,
};
pub use audit::AuditConfig;
pub use escalation::{EscalationStep, PolicyConfig, Until};
pub use events::EventKind;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

mod actions;
mod audit;
mod escalation;
mod events;
mod receivers;
pub mod slas;
mod sources;
pub mod template;
pub use receivers::{
    FileReceiverConfig, RateLimit, ReceiverConfig, RetryConfig, SecretError, WebhookConfig,
    WebhookFormat, read_secret,
};
pub use sources::{
    BadTimestampFormat, JournalConfig, LineTimeBounds, SourceConfig, StartAt, SyslogListen,
    TimestampFormat,
};
pub use template::{TemplateError, check_template};

/// Where the daemon looks for its config when neither `--config` nor `$LOGWARDEN_CONFIG` is set.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/logwarden/logwarden.yaml";

/// Default cap on one log line; longer lines are truncated and counted.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

/// The whole daemon config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This host's name in everything that leaves it (Alertmanager `host` label, PagerDuty
    /// source, fleet-unique incident ids); default: the kernel host name.
    #[serde(default = "kernel_host_name")]
    pub host: String,
    /// Directory of the sled database.
    pub state_dir: PathBuf,
    /// Rule files or directories of `*.yaml` / `*.yml`.
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    /// Address of the HTTP server (metrics, health, API).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Timeouts and the connection limit of the HTTP server.
    #[serde(default)]
    pub http: HttpConfig,
    /// API authentication.
    #[serde(default)]
    pub api: ApiConfig,
    /// Log inputs.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Notification destinations.
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
    /// Named groups of people, each reached through receivers.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
    /// Who is notified for an incident, and when, by policy name.
    #[serde(default)]
    pub escalation_policies: BTreeMap<String, PolicyConfig>,
    /// How far lines' own times are trusted (ahead of and behind the wall clock).
    #[serde(default)]
    pub line_time: LineTimeBounds,
    /// Containment actions escalation steps can call for (`contain: [NAME]`).
    #[serde(default)]
    pub actions: Vec<ActionConfig>,
    /// Addresses and networks (or `@lists` of the rule files) never contained, besides
    /// loopback, link-local and the host's own addresses, which never are.
    #[serde(default)]
    pub never_contain: Vec<String>,
    /// Record and notify what actions would do, without doing it.
    #[serde(default)]
    pub dry_run: bool,
    /// Whether a successful containment moves an open or acknowledged incident to
    /// `contained` (actor `logwarden`).
    #[serde(default = "yes")]
    pub contain_moves_state: bool,
    /// Signed chain heads: the key, how often, and where the last one is kept.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Response SLAs per severity (acknowledge, contain, resolve), judged in the population
    /// export and counted in `logwarden_incident_sla_outcomes_total`.
    #[serde(default)]
    pub slas: slas::Slas,
    /// The file this config was read from; relative paths were resolved against its directory.
    #[serde(skip)]
    pub path: PathBuf,
}

pub use crate::base::host::kernel_host_name;

/// Longest host name accepted (DNS's limit for a full name).
const MAX_HOST_CHARS: usize = 253;

/// Why `host` cannot name this host in a fleet-unique id (`HOST/INC-7`), if it cannot: it
/// must be a host-name-like word, so the `/` that separates it from the id stays unambiguous.
pub fn host_problem(host: &str) -> Option<String> {
    if host.is_empty() || host.len() > MAX_HOST_CHARS {
        return Some(format!(
            "host {host:?} must be 1 to {MAX_HOST_CHARS} characters"
        ));
    }
    let bad = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    bad.map(|c| {
        format!(
            "host {host:?} may only hold letters, digits, '.', '-' and '_' (found {c:?}); set `host:` in the config"
        )
    })
}

fn yes() -> bool {
    true
}

fn default_listen() -> String {
    "127.0.0.1:9733".to_string()
}

/// API settings: who may call the API, since it can acknowledge and close incidents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer tokens and the role each grants.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// What a token may do; each role includes everything of the roles below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    /// Read incidents, rules, dead letters and the audit log.
    Viewer,
    /// Work incidents through their lifecycle.
    Responder,
    /// Approve external notifications; create, list and expire silences.
    Approver,
    /// Everything.
    Admin,
}

/// One API token. The secret itself comes from a file or the environment, never the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name recorded as the actor of everything done with this token.
    pub name: String,
    /// What the token may do.
    pub role: ApiRole,
    /// File holding the token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
}

/// Limits of the HTTP server (metrics, health, API), so slow or idle clients cannot use
/// up its connections or the process's descriptors.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Most connections served at once; more wait in the kernel's accept queue.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// A request's headers must arrive whole within this long (also the longest wait for
    /// the next request on a kept-alive connection), else the connection is closed.
    #[serde(default = "default_http_header_timeout")]
    pub header_timeout: HumanDuration,
    /// A connection on which no byte moves either way for this long is closed (a client
    /// that stops reading a response or sending a body).
    #[serde(default = "default_http_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: default_http_max_connections(),
            header_timeout: default_http_header_timeout(),
            idle_timeout: default_http_idle_timeout(),
        }
    }
}

fn default_http_max_connections() -> usize {
    256
}

fn default_http_header_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

fn default_http_idle_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}

/// A role: the people behind it are reached through these receivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Receivers that reach this role.
    pub receivers: Vec<String>,
    /// People outside the organisation (customers, regulators): notified only after an
    /// approver approves the incident.
    #[serde(default)]
    pub external: bool,
}

impl Config {
    /// Receivers of roles marked `external`: held for approval by escalation, and their
    /// deliveries marked as CC2.3 evidence by the outbox.
    pub fn external_receivers(&self) -> BTreeSet<String> {
        self.roles
            .values()
            .filter(|r| r.external)
            .flat_map(|r| r.receivers.iter().cloned())
            .collect()
    }

    /// Reads and validates a config file; every problem found is returned, each with its place.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        match Self::load_all(path) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(problems),
        }
    }

    /// Parses and validates config text that was read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
        match Self::parse_all(path, text.as_bytes()) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(problems),
        }
    }

    /// Every problem of a config file, and the config as far as it could be read (values
    /// that had an error hold placeholders), so `check` can go on to the rule files.
    pub fn load_all(path: &Path) -> (Option<Config>, Vec<Diagnostic>) {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse_all(path, &bytes),
            Err(e) => (
                None,
                vec![Diagnostic::at(
                    path,
                    crate::base::diag::Position { line: 1, col: 1 },
                    format!("cannot read config: {e}"),
                )],
            ),
        }
    }

    /// Parses, resolves and validates; problems of values that had an error are not repeated.
    fn parse_all(path: &Path, bytes: &[u8]) -> (Option<Config>, Vec<Diagnostic>) {
        let root = match crate::base::yaml::parse(bytes) {
            Ok(root) => root,
            Err(e) => return (None, vec![Diagnostic::at(path, e.at, e.message)]),
        };
        let (config, found) = crate::base::yaml::de::collect::<Config>(&root);
        let mut problems: Vec<Diagnostic> = found
            .iter()
            .map(|f| Diagnostic::at(path, f.at, &f.message))
            .collect();
        let Some(mut config) = config else {
            return (None, problems);
        };
        config.path = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        // Lines that already had an error hold placeholders, and an item with an error
        // inside lacks what was written wrong: checks of those would repeat the error.
        let lines: HashSet<usize> = problems.iter().map(|d| d.line).collect();
        let ids: HashSet<usize> = found.iter().map(|f| f.node).collect();
        let items: HashSet<usize> = root.enclosing(&ids).into_iter().map(|p| p.line).collect();
        let text = String::from_utf8_lossy(bytes);
        problems.extend(
            config
                .validate(path, &text)
                .into_iter()
                .filter(|d| !lines.contains(&d.line) && !items.contains(&d.line)),
        );
        (Some(config), problems)
    }

    /// Makes every path absolute against the config file's directory.
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.as_os_str() != "-" {
                *p = absolute_clean(base, p);
            }
        };
        resolve(&mut self.state_dir);
        self.rules.iter_mut().for_each(resolve);
        for source in &mut self.sources {
            source.paths.iter_mut().for_each(resolve);
            if let Some(dir) = source.journal.as_mut().and_then(|j| j.directory.as_mut()) {
                resolve(dir);
            }
        }
        for receiver in &mut self.receivers {
            receiver.resolve_paths(resolve);
        }
        for token in &mut self.api.tokens {
            if let Some(p) = &mut token.token_file {
                resolve(p);
            }
        }
        if let Some(audit) = &mut self.audit {
            audit.resolve_paths(resolve);
        }
    }

    /// Checks what deserialising cannot: names, references between sections, ranges.
    fn validate(&self, path: &Path, text: &str) -> Vec<Diagnostic> {
        let loc = YamlLocator::new(text);
        let mut problems = Vec::new();
        if let Some(problem) = host_problem(&self.host) {
            problems.push(Diagnostic::at(path, loc.top_key("host"), problem));
        }
        problems.extend(sources::validate(&self.sources, path, &loc));
        let (receiver_problems, receiver_names) =
            receivers::validate(&self.receivers, path, text, &loc);
        problems.extend(receiver_problems);
        let roles_at = loc.top_key("roles");
        for (role, cfg) in &self.roles {
            let at = loc.key_in_block(roles_at, role);
            for receiver in &cfg.receivers {
                if !receiver_names.contains(receiver.as_str()) {
                    problems.push(Diagnostic::at(
                        path,
                        at,
                        format!("role {role:?} names unknown receiver {receiver:?}"),
                    ));
                }
            }
        }
        problems.extend(escalation::validate(self, path, &loc));
        problems.extend(actions::validate(self, path, &loc));
        problems.extend(audit::validate(self, path, &loc));
        for (i, token) in self.api.tokens.iter().enumerate() {
            if token.token_file.is_some() == token.token_env.is_some() {
                problems.push(Diagnostic::at(
                    path,
                    loc.item("tokens", i),
                    format!(
                        "token {:?} needs exactly one of token_file or token_env",
                        token.name
                    ),
                ));
            }
        }
        let slas_at = loc.top_key("slas");
        for (severity, problem) in slas::problems(&self.slas) {
            let at = loc.key_in_block(slas_at, severity.as_str());
            problems.push(Diagnostic::at(path, at, problem));
        }
        if self.http.max_connections == 0 {
            problems.push(Diagnostic::at(
                path,
                loc.top_key("http"),
                "http: max_connections must be at least 1".to_string(),
            ));
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(Diagnostic::at(
                path,
                loc.top_key("listen"),
                format!("listen address {:?} is not host:port", self.listen),
            ));
        }
        problems
    }

    /// The source with this name.
    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }
}

/// `path` made absolute against `base` with `.` and `..` removed lexically, so logs, metrics
/// and evidence show one readable spelling of each path.
pub fn absolute_clean(base: &Path, path: &Path) -> PathBuf {
    let joined = base.join(path);
    let absolute = std::path::absolute(&joined).unwrap_or(joined);
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
        Config::parse(Path::new("/etc/lw/logwarden.yaml"), text)
    }

    #[test]
    fn resolves_relative_paths_against_the_config_directory() {
        let c = parse("state_dir: ./state\nrules: [../rules, /abs/rules]\nsources:\n  - {name: a, paths: [a.log, '-']}\n").unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/lw/state"));
        assert_eq!(c.rules[0], Path::new("/etc/rules"));
        assert_eq!(c.rules[1], Path::new("/abs/rules"));
        assert_eq!(c.sources[0].paths[1], Path::new("-"));
    }

    #[test]
    fn an_unknown_key_is_an_error_with_its_place() {
        let errs = parse("state_dir: s\nsources:\n  - name: a\n    pathz: [x]\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].line, errs[0].col), (4, 5));
        assert!(
            errs[0].message.contains("unknown field `pathz`"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn slas_parse_by_severity_and_are_range_checked() {
        let config = parse(
            "state_dir: s\nslas:\n  critical: {acknowledge: 15m, contain: 1h, resolve: 24h}\n  high: {resolve: 3d}\n",
        )
        .unwrap();
        let critical = config.slas[&crate::rules::Severity::Critical];
        assert_eq!(critical.contain.unwrap().to_string(), "1h");
        assert_eq!(config.slas[&crate::rules::Severity::High].acknowledge, None);
        for (bad, why) in [
            (
                "slas:\n  critical: {acknowledge: 2h, contain: 1h}\n",
                "shorter than",
            ),
            (
                "slas:\n  critical: {acknowledge: 0m}\n",
                "greater than zero",
            ),
            ("slas:\n  urgent: {acknowledge: 1m}\n", "urgent"),
            ("slas:\n  low: {respond: 1m}\n", "respond"),
        ] {
            let errs = parse(&format!("state_dir: s\n{bad}")).unwrap_err();
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].line, 3, "{bad}: {errs:?}");
            assert!(errs[0].message.contains(why), "{bad}: {}", errs[0]);
        }
    }

    #[test]
    fn host_defaults_to_the_kernel_name_and_must_be_a_host_name() {
        assert_eq!(parse("state_dir: s\n").unwrap().host, kernel_host_name());
        assert_eq!(
            parse("host: web-1.dc2\nstate_dir: s\n").unwrap().host,
            "web-1.dc2"
        );
        for bad in ["''", "a/b", "'web 1'", &"x".repeat(254)] {
            let errs = parse(&format!("state_dir: s\nhost: {bad}\n")).unwrap_err();
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].line, 2, "{bad}");
            assert!(errs[0].message.contains("host"), "{}", errs[0]);
        }
    }

    #[test]
    fn cluster_receivers_list_members_and_resend_only_alerts() {
        let receiver = |body: &str| {
            parse(&format!(
                "state_dir: s\nreceivers:\n  - {{name: am, type: webhook, {body}}}\n"
            ))
        };
        let c = receiver("format: alertmanager, urls: ['http://a:9093', 'http://b:9093']").unwrap();
        let ReceiverConfig::Webhook(w) = &c.receivers[0] else {
            panic!("a webhook");
        };
        assert_eq!(w.members(), ["http://a:9093", "http://b:9093"]);
        assert!(w.per_member());
        assert_eq!(
            w.resend_interval(),
            Some(std::time::Duration::from_secs(60))
        );
        let c = receiver("url: 'http://h/', format: json").unwrap();
        let ReceiverConfig::Webhook(w) = &c.receivers[0] else {
            panic!("a webhook");
        };
        assert!(!w.per_member() && w.resend_interval().is_none());
        for (body, says) in [
            ("format: alertmanager", "needs a url"),
            (
                "format: alertmanager, url: 'http://a', urls: ['http://b']",
                "not both",
            ),
            (
                "format: json, urls: ['http://a', 'http://b']",
                "Alertmanager cluster",
            ),
            (
                "format: alertmanager, urls: ['http://a', 'http://a']",
                "twice",
            ),
            ("format: alertmanager, urls: ['ftp://a']", "invalid url"),
            (
                "format: json, url: 'http://a', resend: 1m",
                "resend is for format alertmanager",
            ),
            (
                "format: alertmanager, url: 'http://a', resend: 500ms",
                "between 1s and 1h",
            ),
            (
                "format: alertmanager, url: 'http://a', resend: 2h",
                "between 1s and 1h",
            ),
        ] {
            let errs = receiver(body).unwrap_err();
            assert!(
                errs.iter().any(|e| e.message.contains(says)),
                "{body}: {errs:?}"
            );
        }
    }

    #[test]
    fn a_role_naming_an_unknown_receiver_is_reported_at_the_role() {
        let text = "state_dir: s\nreceivers:\n  - {name: console, type: file, path: '-'}\nroles:\n  analysts: {receivers: [console, pager]}\n";
        let errs = parse(text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, 5);
        assert!(errs[0].message.contains("unknown receiver \"pager\""));
    }
}
