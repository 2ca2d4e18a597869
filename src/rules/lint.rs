//! Warnings: rule sets that load but are probably not what their author meant — rules that
//! can never fire, two rules counting the same lines under the same key, lists nothing uses.
//!
//! They never stop a load; `check` prints them (`warning: path:line:col: message`) and exits 0.

use super::{Rule, RuleContext, RuleKind};
use crate::base::diag::{Diagnostic, Position};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a rule counts: its patterns, its key fields and its sources (sorted).
type Counts<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);

/// Where a rule was defined: its file, its item and the keys written in it.
pub struct Place {
    /// The rule file, as the warning's `path` names it.
    pub file: PathBuf,
    /// Position of the rule's mapping.
    pub item: Position,
    /// Each key of the rule and its position.
    pub keys: Vec<(String, Position)>,
}

impl Place {
    /// The position of `key` in the rule, else of the rule.
    fn of(&self, key: &str) -> Position {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map_or(self.item, |(_, at)| *at)
    }
}

/// Every warning for a loaded rule set. `places[i]` is where `rules[i]` was defined;
/// `unused_lists` are the lists no rule refers to, with their places.
pub fn warnings<'a>(
    rules: &[Arc<Rule>],
    places: &[Place],
    ctx: &RuleContext,
    unused_lists: impl Iterator<Item = (&'a str, &'a Path, Position)>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut seen: HashMap<Counts<'_>, usize> = HashMap::new();
    for (i, (rule, place)) in rules.iter().zip(places).enumerate() {
        let mut warn = |key: &str, message: String| {
            out.push(Diagnostic::at(&place.file, place.of(key), message));
        };
        for (key, message) in never_fires(rule, ctx) {
            warn(
                key,
                format!("rule {:?} can never fire: {message}", rule.id()),
            );
        }
        let mut group_by: Vec<&str> = rule.def.group_by.iter().map(String::as_str).collect();
        group_by.sort_unstable();
        let mut sources: Vec<&str> = rule.def.sources.iter().map(String::as_str).collect();
        sources.sort_unstable();
        match seen.get(&(rule.pattern_texts(), group_by.clone(), sources.clone())) {
            Some(&first) => {
                let key = if rule.def.pattern.is_some() {
                    "match"
                } else {
                    "sequence"
                };
                warn(
                    key,
                    format!(
                        "rule {:?} has the same match and key as rule {:?} ({}): both count the same lines",
                        rule.id(),
                        rules[first].id(),
                        places[first].file.display()
                    ),
                );
            }
            None => {
                seen.insert((rule.pattern_texts(), group_by, sources), i);
            }
        }
    }
    for (name, file, at) in unused_lists {
        out.push(Diagnostic::at(
            file,
            at,
            format!("list {name:?} is not used by any rule"),
        ));
    }
    out
}

/// Reasons a rule can never open an incident, each with the key to point at.
fn never_fires(rule: &Rule, ctx: &RuleContext) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if ctx.sources.as_ref().is_some_and(|s| s.is_empty()) {
        out.push(("id", "the config defines no source to read".to_string()));
    }
    for (field, only) in &rule.only {
        if only.is_empty() {
            out.push(("only", format!("only.{field} admits no value")));
        } else if rule
            .allow
            .iter()
            .any(|(f, allow)| f == field && allow.covers(only))
        {
            out.push((
                "only",
                format!("every value only.{field} admits is excluded by allow.{field}"),
            ));
        }
    }
    if let RuleKind::Distinct { field, count, .. } = &rule.kind {
        if *count >= 2 && rule.def.group_by.contains(field) {
            out.push((
                "distinct",
                format!(
                    "distinct counts {field:?}, which is also in group_by: each key has one value, never {count}"
                ),
            ));
        }
        let admitted = rule
            .only
            .iter()
            .find(|(f, _)| f == field)
            .and_then(|(_, set)| set.finite_len());
        if let Some(n) = admitted
            && (n as u64) < *count
        {
            out.push((
                "distinct",
                format!("only.{field} admits {n} value(s), fewer than distinct count {count}"),
            ));
        }
    }
    if rule.def.sequence.is_some() {
        // `only` excludes a line whose capture is missing: a step without the capture can
        // never count, so the sequence can never complete.
        for (field, _) in &rule.only {
            for (i, pattern) in rule.patterns.iter().enumerate() {
                if !pattern.capture_names().flatten().any(|n| n == field) {
                    out.push((
                        "only",
                        format!(
                            "sequence step {} has no capture {field:?}, so only.{field} excludes all its lines",
                            i + 1
                        ),
                    ));
                }
            }
        }
    }
    out
}
