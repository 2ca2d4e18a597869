//! Which incidents a silence covers, and the check that refuses matchers that could never
//! match under the loaded rules.
//!
//! It stands apart from the silences' book because matching is a pure question about one
//! incident (asked for every event that could notify), while the book keeps state, time
//! and windows.

use super::SilenceError;
use crate::incidents::Incident;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which incidents a silence covers; every given matcher must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matchers {
    /// Rule id: the usual scope, one noisy rule during maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// group_by values the incident key must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub key: BTreeMap<String, String>,
    /// Rule labels the incident must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Refuses matchers that can never match under these rules: a rule id that does not exist,
/// or a key field that is not in the `group_by` of the rule (or of any rule), naming the
/// known ones.
pub fn check_matchers(m: &Matchers, rules: &crate::rules::RuleSet) -> Result<(), SilenceError> {
    let scope: Vec<&crate::rules::Rule> = match &m.rule {
        Some(id) => match rules.rule(id) {
            Some(rule) => vec![rule.as_ref()],
            None => {
                let known: Vec<&str> = rules.rules.iter().map(|r| r.id()).collect();
                let hint = crate::base::yaml::de::did_you_mean(id, known.iter().copied())
                    .map_or(String::new(), |k| format!("did you mean {k:?}? "));
                return Err(SilenceError::UnknownRule {
                    rule: id.clone(),
                    hint,
                    known: known.join(", "),
                });
            }
        },
        None => rules.rules.iter().map(|r| r.as_ref()).collect(),
    };
    let fields: std::collections::BTreeSet<&str> = scope
        .iter()
        .flat_map(|r| r.def.group_by.iter().map(String::as_str))
        .collect();
    for name in m.key.keys() {
        if !fields.contains(name.as_str()) {
            let whose = m
                .rule
                .as_deref()
                .map_or("any rule".to_string(), |r| format!("rule {r:?}"));
            let known: Vec<&str> = fields.iter().copied().collect();
            return Err(SilenceError::UnknownKeyField {
                field: name.clone(),
                whose,
                known: if known.is_empty() {
                    "(none)".to_string()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    Ok(())
}

impl Matchers {
    /// Whether the incident is covered.
    pub fn matches(&self, incident: &Incident) -> bool {
        self.rule.as_ref().is_none_or(|r| *r == incident.rule)
            && self.key.iter().all(|(k, v)| incident.key.get(k) == Some(v))
            && self
                .labels
                .iter()
                .all(|(k, v)| incident.labels.get(k) == Some(v))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rule.is_none() && self.key.is_empty() && self.labels.is_empty()
    }
}
