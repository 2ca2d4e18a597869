//! Rule files: what ops teams write, validated into rules the detector can run.
//!
//! Loading never half-succeeds: either every file parses and validates and a whole new
//! [`RuleSet`] exists, or the caller gets every problem with its `path:line:col` and keeps
//! whatever rules it had. The rule-set version is a hash of the normalised definitions, so
//! an incident can always be traced to the exact rules that opened it.
//!
//! This file holds what a loaded rule set is; how it comes to be is split by concern:
//! `file` (which files, their YAML shape), `load` (lists and rules across files, the
//! version), `compile` (one rule validated), `pattern` (one regex with its bounds),
//! `severity`, `kinds` (detection kinds), `values` (allow/only sets) and `lint` (warnings).

mod compile;
mod file;
pub mod kinds;
mod lint;
mod load;
mod pattern;
mod severity;
mod summary;
pub mod values;

pub use kinds::{
    AbsenceSpec, DistinctSpec, RuleKind, SequenceSpec, SpikeSpec, StepSpec, ThresholdSpec,
};
pub use pattern::{MAX_PATTERN_BYTES, PatternError, compile_pattern};
pub use severity::{Severity, SeveritySpec};
pub use summary::{PlainSummary, SummaryValues, minijinja_context};
pub use values::{Lists, ValueSet};

use crate::base::diag::Diagnostic;
use regex::bytes::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Keys a rule tracks at most unless it sets `max_keys`: a flood of spoofed addresses must
/// not exhaust memory.
pub const DEFAULT_MAX_KEYS: usize = 40_000;
/// The built-in source that carries logwarden's own detections (one line per threshold
/// crossing, see `crate::response::recidive`): rules that name it in `sources:` count detections, for
/// repeat offenders; no configured source may take its name.
pub const DETECTION_SOURCE: &str = "logwarden";
/// What a summary template may use besides the rule's named captures (the incident's
/// context, see `incidents::summary_context`).
pub const SUMMARY_VARIABLES: [&str; 4] = ["count", "rule", "severity", "key"];

/// A rule as written in YAML. Serialised back (with sorted maps) it is the normalised form
/// the rule-set version is computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Unique id across all files: `[a-z0-9-]+`.
    pub id: String,
    /// What the rule detects, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Sources the rule reads; empty means every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Pattern a line must match (regex on bytes); sequences have one per step instead.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// A line matching this is not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<String>,
    /// Named captures whose values make the incident key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// Count-in-window detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<ThresholdSpec>,
    /// Rate against the rule's own recent baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike: Option<SpikeSpec>,
    /// Matches that stop coming (heartbeats, backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absence: Option<AbsenceSpec>,
    /// Ordered steps for one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<SequenceSpec>,
    /// Different values of a capture for one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<DistinctSpec>,
    /// Not counted when a capture is in these values / CIDRs / `@lists`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allow: BTreeMap<String, Vec<String>>,
    /// Counted only when a capture is in these values / CIDRs / `@lists`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub only: BTreeMap<String, Vec<String>>,
    /// Most keys tracked at once; the least recently used are dropped at the bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<usize>,
    /// Severity, fixed or by count.
    pub severity: SeveritySpec,
    /// Free-text class (unauthorized-access, service-interruption, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub category: String,
    /// SOC 2 control references copied onto incidents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controls: Vec<String>,
    /// Escalation policy; `default` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
    /// minijinja template over the captures, `count`, `rule` and `severity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Labels copied onto incidents (routing, ownership).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Where responders find the procedure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
}

/// A validated rule, ready to run.
#[derive(Debug)]
pub struct Rule {
    /// The definition as written: its normalised form is what the hash covers and the API
    /// lists; incidents take severity, category and controls from it.
    pub def: RuleDef,
    /// The rule file it came from, named in messages and the API; a reload that moves a rule
    /// to another file counts as a change.
    pub file: PathBuf,
    /// Patterns found by the multi-pattern pass: the `match`, or each sequence step's
    /// (pattern `i` is step `i`).
    pub patterns: Vec<Regex>,
    /// Compiled `ignore`: a line it matches is not counted, whatever the captures.
    pub ignore: Option<Regex>,
    /// Compiled `allow`, by capture name: a match whose capture is in the set is not counted.
    pub allow: Vec<(String, ValueSet)>,
    /// Compiled `only`, by capture name: a match whose capture is outside the set is not
    /// counted.
    pub only: Vec<(String, ValueSet)>,
    /// How matches make an incident, validated from the rule's one kind block.
    pub kind: RuleKind,
    /// Most keys tracked at once.
    pub max_keys: usize,
    /// Hash of this rule's normalised definition: window state is only reused while it holds.
    pub hash: String,
    /// The summary template when it is text and `{{ name }}` only, rendered without
    /// minijinja ([`PlainSummary`]); `None` renders through [`RuleSet::summary`].
    pub plain_summary: Option<PlainSummary>,
}

impl Rule {
    /// The rule id from its definition: unique in the set, and the name incidents, windows
    /// and metrics carry.
    pub fn id(&self) -> &str {
        &self.def.id
    }

    /// Whether the rule reads lines of this source. The incident lines of
    /// [`DETECTION_SOURCE`] are read only by rules that name it.
    pub fn applies_to(&self, source: &str) -> bool {
        if self.def.sources.is_empty() {
            return source != DETECTION_SOURCE;
        }
        self.def.sources.iter().any(|s| s == source)
    }

    /// The escalation policy name incidents of this rule follow.
    pub fn escalation(&self) -> &str {
        self.def.escalation.as_deref().unwrap_or("default")
    }

    /// The pattern texts, in pattern order (for the combined multi-pattern pass).
    pub fn pattern_texts(&self) -> Vec<&str> {
        match (&self.def.pattern, &self.def.sequence) {
            (Some(p), _) => vec![p.as_str()],
            (None, Some(seq)) => seq.steps.iter().map(|s| s.pattern.as_str()).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Why a matching line is not counted, if it is not: its `ignore`, `allow` or `only`.
    /// `capture` gives a named capture's value: rules do not depend on how detection keeps
    /// its captures.
    pub fn excluded_by<'a>(
        &self,
        line: &[u8],
        capture: impl Fn(&str) -> Option<&'a str>,
    ) -> Option<Exclusion> {
        if self.ignore.as_ref().is_some_and(|r| r.is_match(line)) {
            return Some(Exclusion::Ignore);
        }
        for (field, set) in &self.allow {
            if capture(field).is_some_and(|v| set.contains(v)) {
                return Some(Exclusion::Allow(field.clone()));
            }
        }
        for (field, set) in &self.only {
            if !capture(field).is_some_and(|v| set.contains(v)) {
                return Some(Exclusion::Only(field.clone()));
            }
        }
        None
    }
}

/// Why a matching line was not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// The rule's `ignore` pattern matched.
    Ignore,
    /// This capture's value is in `allow`.
    Allow(String),
    /// This capture's value is not in `only`.
    Only(String),
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Ignore => f.write_str("ignore"),
            Exclusion::Allow(field) => write!(f, "allow.{field}"),
            Exclusion::Only(field) => write!(f, "only.{field}"),
        }
    }
}

/// Names a rule may refer to, taken from the daemon config; `None` skips those checks
/// (rule tests run without a config).
#[derive(Debug, Default, Clone)]
pub struct RuleContext {
    /// Names of the configured sources a rule may name in `sources`; `None` skips the check.
    pub sources: Option<HashSet<String>>,
    /// Names of the configured escalation policies a rule may name; `None` skips the check.
    pub escalation_policies: Option<HashSet<String>>,
}

/// Every loaded rule plus what belongs to the set as a whole.
pub struct RuleSet {
    /// Rules in load order (files sorted by path, rules in file order).
    pub rules: Vec<Arc<Rule>>,
    /// Files the rules came from.
    pub files: Vec<PathBuf>,
    /// Hash over all normalised definitions.
    pub version: String,
    /// Named lists from every file.
    pub lists: Lists,
    /// Things that are valid but probably wrong (rules that can never fire, duplicates,
    /// unused lists); `check` prints them, loading still succeeds.
    pub warnings: Vec<Diagnostic>,
    templates: minijinja::Environment<'static>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("version", &self.version)
            .finish()
    }
}

impl RuleSet {
    /// The rule with this id.
    pub fn rule(&self, id: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.id() == id)
    }

    /// Renders a rule's summary for an incident; falls back to the description or a
    /// generic sentence, and never fails (a broken render is logged, not fatal).
    pub fn summary(&self, rule: &Rule, context: &BTreeMap<String, serde_json::Value>) -> String {
        if rule.def.summary.is_some() {
            match self
                .templates
                .get_template(rule.id())
                .and_then(|t| t.render(context))
            {
                Ok(text) => return text,
                Err(e) => tracing::warn!(rule = rule.id(), error = %e, "summary template failed"),
            }
        }
        if !rule.def.description.is_empty() {
            return rule.def.description.clone();
        }
        format!("rule {} matched", rule.id())
    }
}

#[cfg(test)]
impl RuleSet {
    /// The rules of one YAML text (written to a temporary file, as rules always come from
    /// files), for tests; panics with the diagnostics when they do not load.
    pub(crate) fn from_yaml(yaml: &str) -> std::sync::Arc<RuleSet> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yaml");
        std::fs::write(&path, yaml).unwrap();
        std::sync::Arc::new(
            RuleSet::load(&[path], &RuleContext::default()).unwrap_or_else(|e| panic!("{e:?}")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Writes a rule file for a test.
    pub(super) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// One threshold rule with tiers and a summary.
    pub(super) const SSH: &str = "rules:\n  - id: ssh\n    match: 'Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 5, within: 1m}\n    severity: {moderate: 5, high: 20}\n    summary: '{{ count }} failures from {{ ip }}'\n";

    #[test]
    fn summary_renders_captures_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let set = RuleSet::load(&[write(dir.path(), "a.yaml", SSH)], &Default::default()).unwrap();
        let ctx = BTreeMap::from([
            ("count".to_string(), serde_json::json!(7)),
            ("ip".to_string(), serde_json::json!("203.0.113.9")),
        ]);
        assert_eq!(
            set.summary(&set.rules[0], &ctx),
            "7 failures from 203.0.113.9"
        );
    }
}
