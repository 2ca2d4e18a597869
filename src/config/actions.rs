//! Containment actions as configured: `actions:`, `never_contain:`, `dry_run:`, and their
//! checks (names, kinds, templates, lists, the steps that name them). The runtime that
//! decides and carries them out is [`crate::response::containment`].

use super::Config;
use crate::base::diag::{Diagnostic, YamlLocator};
use crate::base::duration::HumanDuration;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// How an action contains a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Add the address to an nftables set whose elements time out (`ban4` / `ban6`).
    Nftables,
    /// Run a program (argv rendered from the incident, no shell), and its `undo` at the end.
    Command,
}

/// Whether an action waits for an approver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalPolicy {
    /// Acts as soon as a step calls for it.
    #[default]
    None,
    /// Held until an approver approves the incident.
    Required,
}

/// The netfilter hook of the drop rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Traffic to this host (the default).
    #[default]
    Input,
    /// Traffic routed through this host.
    Forward,
    /// Everything arriving, before routing.
    Prerouting,
}

impl Hook {
    /// The hook's and chain's name in nft.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Prerouting => "prerouting",
        }
    }
}

/// One containment action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// Name escalation steps use in `contain:`.
    pub name: String,
    /// What it does.
    #[serde(rename = "type")]
    pub kind: ActionKind,
    /// The incident key field holding the address (or other target).
    #[serde(default = "default_target")]
    pub target: String,
    /// How long the target stays contained.
    #[serde(default = "default_duration")]
    pub duration: HumanDuration,
    /// Whether an approver must approve the incident first.
    #[serde(default)]
    pub approval: ApprovalPolicy,
    /// nftables: the `inet` table (created if missing) holding sets `ban4` and `ban6`.
    #[serde(default = "default_table")]
    pub table: String,
    /// nftables: the hook of the drop rule's chain.
    #[serde(default)]
    pub hook: Hook,
    /// nftables: the chain's priority (lower runs earlier).
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// command: the program and its arguments, each a template over the incident.
    #[serde(default)]
    pub argv: Vec<String>,
    /// command: what lifts the containment (none: nothing to run at the end).
    #[serde(default)]
    pub undo: Vec<String>,
    /// command: longest a run may take before it is killed and counted as failed.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// command: environment variables (the program starts with only these and `PATH`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_target() -> String {
    "ip".into()
}
fn default_duration() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(3600))
}
fn default_table() -> String {
    "logwarden".into()
}
fn default_priority() -> i32 {
    -10
}
fn default_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

/// Longest ban accepted (nftables takes element timeouts well beyond, but a year is a
/// typo's size, not a policy).
const MAX_DURATION_SECS: u64 = 366 * 24 * 3600;

/// Whether `name` is safe as an nft identifier (no quoting, no injection into scripts).
fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Compiles an argv template (the same environment renders it: see
/// [`crate::response::containment::exec`]).
pub fn compile_template(source: &str) -> Result<minijinja::Environment<'static>, TemplateError> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(10_000));
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template_owned("arg", source.to_string())
        .map_err(TemplateError)?;
    Ok(env)
}

/// An argv template that does not compile. Shown as the kind of error and its detail only:
/// minijinja's own text repeats the template name, which means nothing to the operator.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe_template_error(.0))]
pub struct TemplateError(minijinja::Error);

fn describe_template_error(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// `never_contain`'s `@lists` not defined by any rule file, at the key's place.
pub fn never_contain_lists(
    config: &Config,
    lists: &crate::rules::values::Lists,
) -> Vec<Diagnostic> {
    let text = std::fs::read_to_string(&config.path).unwrap_or_default();
    let loc = YamlLocator::new(&text);
    config
        .never_contain
        .iter()
        .filter_map(|e| e.strip_prefix('@'))
        .filter(|name| !lists.contains_key(*name))
        .map(|name| {
            Diagnostic::at(
                &config.path,
                loc.top_key("never_contain"),
                format!("never_contain names unknown list \"@{name}\" (lists come from the rule files' `lists:`)"),
            )
        })
        .collect()
}

/// Problems of the settings that belong to an action's type (nftables or command).
fn kind_problems(action: &ActionConfig, problem: &mut dyn FnMut(&str, String)) {
    match action.kind {
        ActionKind::Nftables => {
            if !is_identifier(&action.table) {
                problem(
                    "table",
                    format!(
                        "action {:?}: table {:?} must be letters, digits, '_' or '-', starting with a letter",
                        action.name, action.table
                    ),
                );
            }
            if !(-400..=400).contains(&action.priority) {
                problem(
                    "priority",
                    format!("action {:?}: priority must be -400 to 400", action.name),
                );
            }
            for key in ["argv", "undo"] {
                let set = if key == "argv" {
                    &action.argv
                } else {
                    &action.undo
                };
                if !set.is_empty() {
                    problem(
                        key,
                        format!(
                            "action {:?}: {key} belongs to type: command, not nftables",
                            action.name
                        ),
                    );
                }
            }
        }
        ActionKind::Command => {
            if action.argv.is_empty() {
                problem(
                    "type",
                    format!("action {:?} of type command needs argv", action.name),
                );
            }
            let secs = action.timeout.0.as_millis();
            if !(1..=600_000).contains(&secs) {
                problem(
                    "timeout",
                    format!("action {:?}: timeout must be 1ms to 10m", action.name),
                );
            }
            for (key, argv) in [("argv", &action.argv), ("undo", &action.undo)] {
                for arg in argv {
                    if let Err(e) = compile_template(arg) {
                        problem(
                            key,
                            format!("action {:?}: bad template {arg:?}: {e}", action.name),
                        );
                    }
                }
            }
        }
    }
}

/// Checks actions, `never_contain` and the steps that name actions. `@name` entries of
/// `never_contain` refer to the rule files' lists and are checked with the rules (see
/// [`crate::response::containment::Protected::new`]).
pub fn validate(config: &Config, path: &Path, loc: &YamlLocator) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for (i, action) in config.actions.iter().enumerate() {
        let at = loc.item("actions", i);
        let mut problem = |key: &str, message: String| {
            problems.push(Diagnostic::at(path, loc.key_in_block(at, key), message))
        };
        if !names.insert(action.name.as_str()) {
            problem("name", format!("duplicate action name {:?}", action.name));
        }
        let secs = action.duration.0.as_secs();
        if secs == 0 || secs > MAX_DURATION_SECS {
            problem(
                "duration",
                format!(
                    "action {:?}: duration must be 1s to 366d (nftables counts whole seconds)",
                    action.name
                ),
            );
        }
        kind_problems(action, &mut problem);
    }
    let never_at = loc.top_key("never_contain");
    for entry in &config.never_contain {
        let problem = match entry.strip_prefix('@') {
            Some(_) => None,
            None => match crate::rules::values::Net::parse(entry) {
                Ok(Some(_)) => None,
                Ok(None) => Some(format!(
                    "never_contain entry {entry:?} is not an address, a network or an @list"
                )),
                Err(e) => Some(format!("never_contain: {e}")),
            },
        };
        if let Some(message) = problem {
            problems.push(Diagnostic::at(path, never_at, message));
        }
    }
    let policies_at = loc.top_key("escalation_policies");
    for (name, policy) in &config.escalation_policies {
        let at = loc.key_in_block(policies_at, name);
        for step in &policy.steps {
            for action in &step.contain {
                if !names.contains(action.as_str()) {
                    problems.push(Diagnostic::at(
                        path,
                        loc.key_in_block(at, "contain"),
                        format!("escalation policy {name:?} names unknown action {action:?}"),
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "state_dir: s\nreceivers:\n  - {name: a, type: file, path: '-'}\nroles:\n  r: {receivers: [a]}\n";

    fn problems(extra: &str) -> Vec<Diagnostic> {
        Config::parse(Path::new("/c.yaml"), &format!("{BASE}{extra}"))
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn actions_with_their_defaults_and_steps_that_only_contain() {
        let text = format!(
            "{BASE}actions:\n  - {{name: ban-ip, type: nftables}}\n  - name: block\n    type: command\n    argv: [/usr/sbin/block, '{{{{ key.ip }}}}']\n    undo: [/usr/sbin/unblock, '{{{{ target }}}}']\nnever_contain: [192.0.2.0/24, '@trusted']\nescalation_policies:\n  default:\n    - contain: [ban-ip, block]\n"
        );
        let c = Config::parse(Path::new("/c.yaml"), &text).unwrap();
        let ban = &c.actions[0];
        assert_eq!(
            (
                ban.table.as_str(),
                ban.hook,
                ban.priority,
                ban.duration.0.as_secs()
            ),
            ("logwarden", Hook::Input, -10, 3600)
        );
        assert_eq!(ban.approval, ApprovalPolicy::None);
        assert!(!c.dry_run && c.contain_moves_state);
        assert_eq!(
            c.escalation_policies["default"].steps[0].contain,
            ["ban-ip", "block"]
        );
    }

    #[test]
    fn bad_actions_are_reported_at_their_place() {
        let p = problems(
            "actions:\n  - {name: ban, type: nftables, table: 'x; flush ruleset'}\n  - name: run\n    type: command\n    argv: ['{{ key.ip ']\n",
        );
        let table = p.iter().find(|d| d.message.contains("table")).unwrap();
        assert_eq!((table.line, table.col), (7, 33), "{table}");
        let template = p
            .iter()
            .find(|d| d.message.contains("bad template"))
            .unwrap();
        assert_eq!(template.line, 10, "{template}");

        let p = problems(
            "actions:\n  - {name: ban, type: nftables}\nescalation_policies:\n  default:\n    - {notify: [r], contain: [bam]}\n",
        );
        assert!(p[0].message.contains("unknown action \"bam\""), "{}", p[0]);
        assert_eq!(p[0].line, 10, "{}", p[0]);

        let p = problems("never_contain: [10.0.0.0/33]\n");
        assert!(p[0].message.contains("prefix"), "{}", p[0]);
        assert_eq!(p[0].line, 6, "{}", p[0]);

        let p = problems(
            "actions:\n  - {name: c, type: command}\n  - {name: c, type: nftables, duration: 400d}\n",
        );
        let messages: Vec<&str> = p.iter().map(|d| d.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.contains("needs argv")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("duplicate action")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("duration")),
            "{messages:?}"
        );

        let p = problems("escalation_policies:\n  default:\n    - {after: 1m}\n");
        assert!(p[0].message.contains("contains nothing"), "{}", p[0]);
    }
}
