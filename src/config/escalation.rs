//! Escalation policies as configured: their YAML forms and their checks against the roles.
//! The runtime that fires them is [`crate::response::escalation`].

use super::Config;
use crate::base::diag::{Diagnostic, YamlLocator};
use crate::base::duration::HumanDuration;
use crate::rules::Severity;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

/// State at which a policy stops firing steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// Steps fire while the incident is open (the default).
    #[default]
    Acknowledged,
    /// Steps fire while it is open or acknowledged.
    Contained,
}

/// One step of an escalation policy, as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationStep {
    /// Time after the opening at which the step fires (default: at once).
    #[serde(default)]
    pub after: Option<HumanDuration>,
    /// Roles notified by this step.
    #[serde(default)]
    pub notify: Vec<String>,
    /// Containment actions this step carries out (by action name).
    #[serde(default)]
    pub contain: Vec<String>,
    /// Fire again this often while the policy's `until` state is not reached.
    #[serde(default)]
    pub repeat: Option<HumanDuration>,
    /// Fire only for incidents at this severity or above.
    #[serde(default)]
    pub if_severity: Option<Severity>,
}

impl EscalationStep {
    /// Milliseconds after the opening at which the step fires.
    pub fn after_millis(&self) -> i64 {
        self.after.map_or(0, HumanDuration::millis)
    }
}

/// An escalation policy: either a plain list of steps (`until: acknowledged`), or
/// `{until, steps}`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// State at which steps stop firing.
    pub until: Until,
    /// The steps, in order, each due its `after` from when the incident opened; at least one.
    pub steps: Vec<EscalationStep>,
}

impl<'de> Deserialize<'de> for PolicyConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PolicyVisitor;
        impl<'de> Visitor<'de> for PolicyVisitor {
            type Value = PolicyConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of steps, or a map with `steps` and `until`")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PolicyConfig, A::Error> {
                let mut steps = Vec::new();
                while let Some(step) = seq.next_element()? {
                    steps.push(step);
                }
                Ok(PolicyConfig {
                    until: Until::default(),
                    steps,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PolicyConfig, A::Error> {
                let (mut until, mut steps) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "until" => until = Some(map.next_value()?),
                        "steps" => steps = Some(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["until", "steps"])),
                    }
                }
                Ok(PolicyConfig {
                    until: until.unwrap_or_default(),
                    steps: steps.ok_or_else(|| de::Error::missing_field("steps"))?,
                })
            }
        }
        d.deserialize_any(PolicyVisitor)
    }
}

/// Checks policies against roles and roles against each other; problems at their
/// `path:line:col`.
pub fn validate(config: &Config, path: &Path, loc: &YamlLocator) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let policies_at = loc.top_key("escalation_policies");
    for (name, policy) in &config.escalation_policies {
        let at = loc.key_in_block(policies_at, name);
        if policy.steps.is_empty() {
            problems.push(Diagnostic::at(
                path,
                at,
                format!("escalation policy {name:?} has no steps"),
            ));
        }
        for step in &policy.steps {
            for role in &step.notify {
                if !config.roles.contains_key(role) {
                    problems.push(Diagnostic::at(
                        path,
                        loc.key_in_block(at, "notify"),
                        format!("escalation policy {name:?} names unknown role {role:?}"),
                    ));
                }
            }
            if step.notify.is_empty() && step.contain.is_empty() {
                problems.push(Diagnostic::at(
                    path,
                    at,
                    format!(
                        "a step of escalation policy {name:?} notifies nobody and contains nothing"
                    ),
                ));
            }
        }
    }
    // A receiver shared by an external and an internal role would defeat the approval.
    let roles_at = loc.top_key("roles");
    let internal: BTreeSet<&str> = config
        .roles
        .values()
        .filter(|r| !r.external)
        .flat_map(|r| r.receivers.iter().map(String::as_str))
        .collect();
    for (name, role) in config.roles.iter().filter(|(_, r)| r.external) {
        for receiver in &role.receivers {
            if internal.contains(receiver.as_str()) {
                problems.push(Diagnostic::at(
                    path,
                    loc.key_in_block(roles_at, name),
                    format!(
                        "external role {name:?} shares receiver {receiver:?} with an internal role; \
                         external receivers must only be reached after approval"
                    ),
                ));
            }
        }
    }
    problems
}
