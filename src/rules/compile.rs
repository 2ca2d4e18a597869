//! One rule definition validated and compiled into a [`Rule`]: its patterns, the
//! captures other keys name, its value sets and its summary template.
//!
//! Apart from loading (which files, which lists, duplicate ids) because everything here
//! looks at one rule alone; problems are reported at a [`Spot`] inside the rule, which the
//! loader turns into a `file:line:col`.

use super::pattern::compile_pattern;
use super::{
    DEFAULT_MAX_KEYS, DETECTION_SOURCE, Lists, PlainSummary, Rule, RuleContext, RuleDef,
    SUMMARY_VARIABLES, ValueSet, kinds,
};
use crate::base::yaml;
use regex::bytes::Regex;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Where in a rule a problem is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Spot<'a> {
    /// At this key of the rule; `""`: the rule as a whole, about something it lacks.
    Key(&'a str),
    /// At a character (0-based, when known) inside one of the rule's patterns.
    Pattern(PatternRef, Option<usize>),
}

/// One of a rule's patterns.
#[derive(Debug, Clone, Copy)]
pub(super) enum PatternRef {
    Match,
    Ignore,
    Step(usize),
}

impl PatternRef {
    /// The rule key the pattern sits under.
    pub(super) fn key(self) -> &'static str {
        match self {
            PatternRef::Match => "match",
            PatternRef::Ignore => "ignore",
            PatternRef::Step(_) => "sequence",
        }
    }

    /// The pattern's scalar in a rule item.
    pub(super) fn node(self, item: &yaml::Node) -> Option<&yaml::Node> {
        match self {
            PatternRef::Match => item.get("match"),
            PatternRef::Ignore => item.get("ignore"),
            PatternRef::Step(i) => item
                .get("sequence")?
                .get("steps")?
                .items()
                .get(i)?
                .get("match"),
        }
    }
}

/// One rule definition and what it may refer to.
pub(super) struct RuleInput<'a> {
    pub(super) def: RuleDef,
    pub(super) file: &'a Path,
    pub(super) ctx: &'a RuleContext,
    pub(super) lists: &'a Lists,
}

/// Validates and compiles one rule; every problem goes to `report`, and `None` comes back
/// when there was any.
pub(super) fn compile_rule(
    input: RuleInput<'_>,
    used_lists: &mut BTreeSet<String>,
    templates: &mut minijinja::Environment<'static>,
    report: &mut dyn FnMut(Spot<'_>, String),
) -> Option<Rule> {
    let RuleInput {
        def,
        file,
        ctx,
        lists,
    } = input;
    let mut ok = true;
    let mut fail = |spot: Spot<'_>, message: String| {
        ok = false;
        report(spot, message);
    };
    if !valid_id(&def.id) {
        fail(
            Spot::Key("id"),
            format!("rule id {:?} must match [a-z0-9-]+", def.id),
        );
    }
    let kind = kinds::compile_kind(&def, &mut |key, message| fail(Spot::Key(key), message));
    let (patterns, ignore, pattern_ok) = compile_patterns(&def, &mut fail);
    if pattern_ok && !patterns.is_empty() {
        check_capture_names(&def, &patterns, &mut fail);
    }
    let mut value_sets = |key: &str, map: &BTreeMap<String, Vec<String>>| {
        let mut sets = Vec::new();
        for (field, entries) in map {
            match ValueSet::parse(entries, lists, used_lists) {
                Ok(set) => sets.push((field.clone(), set)),
                Err(e) => fail(Spot::Key(key), format!("{key}.{field}: {e}")),
            }
        }
        sets
    };
    let allow = value_sets("allow", &def.allow);
    let only = value_sets("only", &def.only);
    if def.max_keys == Some(0) {
        fail(Spot::Key("max_keys"), "max_keys must be at least 1".into());
    }
    check_names(&def, ctx, &mut fail);
    if let Some(summary) = &def.summary {
        // Captures are only known when every pattern compiled.
        let captures = pattern_ok.then_some(&patterns[..]);
        check_summary(&def.id, summary, captures, templates, &mut fail);
    }
    if !ok {
        return None;
    }
    let hash = rule_hash(&def, lists);
    Some(Rule {
        max_keys: def.max_keys.unwrap_or(DEFAULT_MAX_KEYS),
        plain_summary: def
            .summary
            .as_deref()
            .and_then(|summary| PlainSummary::parse(&def.id, summary)),
        def,
        file: file.to_path_buf(),
        patterns,
        ignore,
        allow,
        only,
        kind: kind?,
        hash,
    })
}

/// The patterns (`match`, or one per sequence step, and then no `match`) and `ignore`;
/// the flag says whether every pattern compiled.
fn compile_patterns(
    def: &RuleDef,
    fail: &mut dyn FnMut(Spot<'_>, String),
) -> (Vec<Regex>, Option<Regex>, bool) {
    let mut patterns = Vec::new();
    let mut pattern_ok = true;
    if def.pattern.is_some() && def.sequence.is_some() {
        fail(
            Spot::Key("match"),
            "a sequence rule has no top-level match: each step has its own".into(),
        );
    }
    match (&def.pattern, &def.sequence) {
        (None, None) => fail(
            Spot::Key(""),
            format!("rule {:?} needs a match pattern", def.id),
        ),
        (_, Some(seq)) => {
            for (i, step) in seq.steps.iter().enumerate() {
                match compile_pattern(&step.pattern) {
                    Ok(r) => patterns.push(r),
                    Err(e) => {
                        pattern_ok = false;
                        fail(
                            Spot::Pattern(PatternRef::Step(i), e.offset),
                            format!("bad regex in sequence step {}: {e}", i + 1),
                        );
                    }
                }
            }
        }
        (Some(p), None) => match compile_pattern(p) {
            Ok(r) => patterns.push(r),
            Err(e) => {
                pattern_ok = false;
                fail(
                    Spot::Pattern(PatternRef::Match, e.offset),
                    format!("bad regex in match: {e}"),
                );
            }
        },
    }
    let ignore = match def.ignore.as_deref().map(compile_pattern) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            fail(
                Spot::Pattern(PatternRef::Ignore, e.offset),
                format!("bad regex in ignore: {e}"),
            );
            None
        }
        None => None,
    };
    (patterns, ignore, pattern_ok)
}

/// `group_by` must name a capture of every pattern; `distinct`, `allow` and `only` one of
/// any pattern.
fn check_capture_names(def: &RuleDef, patterns: &[Regex], fail: &mut dyn FnMut(Spot<'_>, String)) {
    let names_of = |r: &Regex| -> HashSet<String> {
        r.capture_names().flatten().map(str::to_string).collect()
    };
    let per_pattern: Vec<HashSet<String>> = patterns.iter().map(names_of).collect();
    let what = |i: usize| {
        if def.sequence.is_some() {
            format!("sequence step {}", i + 1)
        } else {
            "match".to_string()
        }
    };
    for field in &def.group_by {
        if let Some(i) = per_pattern.iter().position(|n| !n.contains(field)) {
            fail(
                Spot::Key("group_by"),
                format!(
                    "group_by names {field:?}, which is not a named capture of {}",
                    what(i)
                ),
            );
        }
    }
    let any_has = |field: &str| per_pattern.iter().any(|n| n.contains(field));
    if let Some(d) = &def.distinct
        && !any_has(&d.field)
    {
        fail(
            Spot::Key("distinct"),
            format!(
                "distinct field {:?} is not a named capture of match",
                d.field
            ),
        );
    }
    for (key, map) in [("allow", &def.allow), ("only", &def.only)] {
        for field in map.keys() {
            if !any_has(field) {
                fail(
                    Spot::Key(key),
                    format!("{key} names {field:?}, which is not a named capture of the rule"),
                );
            }
        }
    }
}

/// The sources and escalation policy a rule names must exist in the config (when known).
fn check_names(def: &RuleDef, ctx: &RuleContext, fail: &mut dyn FnMut(Spot<'_>, String)) {
    if let Some(known) = &ctx.sources {
        for source in &def.sources {
            if !known.contains(source) && source != DETECTION_SOURCE {
                fail(
                    Spot::Key("sources"),
                    format!("rule names unknown source {source:?}"),
                );
            }
        }
    }
    if let (Some(known), Some(policy)) = (&ctx.escalation_policies, &def.escalation)
        && !known.contains(policy)
    {
        fail(
            Spot::Key("escalation"),
            format!("rule names unknown escalation policy {policy:?}"),
        );
    }
}

/// Adds the summary template and checks that it uses only the rule's captures and the
/// [`SUMMARY_VARIABLES`] (when the captures are known).
fn check_summary(
    id: &str,
    summary: &str,
    captures: Option<&[Regex]>,
    templates: &mut minijinja::Environment<'static>,
    fail: &mut dyn FnMut(Spot<'_>, String),
) {
    if let Err(e) = templates.add_template_owned(id.to_string(), summary.to_string()) {
        fail(Spot::Key("summary"), format!("bad summary template: {e}"));
        return;
    }
    let Some(patterns) = captures else { return };
    let captures: BTreeSet<&str> = patterns
        .iter()
        .flat_map(|r| r.capture_names().flatten())
        .collect();
    let used = templates
        .get_template(id)
        .map(|t| t.undeclared_variables(false))
        .unwrap_or_default();
    let mut unknown: Vec<&String> = used
        .iter()
        .filter(|v| !captures.contains(v.as_str()) && !SUMMARY_VARIABLES.contains(&v.as_str()))
        .collect();
    unknown.sort();
    for var in unknown {
        let known: Vec<&str> = captures.iter().copied().chain(SUMMARY_VARIABLES).collect();
        fail(
            Spot::Key("summary"),
            format!(
                "summary uses `{var}`, which the rule does not capture (known: {})",
                known.join(", ")
            ),
        );
    }
}

/// Hash of a rule's normalised definition plus the contents of the lists it refers to, so
/// editing a list counts as changing the rules that use it.
fn rule_hash(def: &RuleDef, lists: &Lists) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(def).expect("rule definitions serialise"));
    let referenced: BTreeMap<&str, &Vec<String>> = def
        .allow
        .values()
        .chain(def.only.values())
        .flatten()
        .filter_map(|e| e.strip_prefix('@'))
        .filter_map(|name| lists.get_key_value(name).map(|(k, v)| (k.as_str(), v)))
        .collect();
    if !referenced.is_empty() {
        hasher.update(b"\0lists\0");
        hasher.update(serde_json::to_vec(&referenced).expect("lists serialise"));
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles one rule from YAML, collecting where each problem was reported.
    fn compile(yaml: &str) -> (Option<Rule>, Vec<String>) {
        let def: RuleDef = serde_yaml::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        let mut report = |spot: Spot<'_>, message: String| {
            let at = match spot {
                Spot::Key(k) => k.to_string(),
                Spot::Pattern(which, offset) => format!("{}@{offset:?}", which.key()),
            };
            problems.push(format!("{at}: {message}"));
        };
        let input = RuleInput {
            def,
            file: Path::new("r.yaml"),
            ctx: &RuleContext::default(),
            lists: &Lists::new(),
        };
        let mut templates = minijinja::Environment::new();
        let rule = compile_rule(input, &mut BTreeSet::new(), &mut templates, &mut report);
        (rule, problems)
    }

    #[test]
    fn a_valid_rule_compiles_with_its_hash() {
        let (rule, problems) = compile(
            "{id: ssh, match: 'from (?P<ip>\\S+)', group_by: [ip], threshold: {count: 2, within: 1m}, severity: low, summary: '{{ ip }} {{ count }}'}",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let rule = rule.unwrap();
        assert_eq!(rule.patterns.len(), 1);
        assert_eq!(rule.hash.len(), 64);
        assert_eq!(rule.max_keys, DEFAULT_MAX_KEYS);
    }

    #[test]
    fn every_problem_of_a_rule_is_reported_at_its_spot() {
        let (rule, problems) = compile(
            "{id: Bad_Id, match: 'a(b', ignore: 'x)', group_by: [user], max_keys: 0, threshold: {count: 2, within: 1m}, severity: low}",
        );
        assert!(rule.is_none());
        assert!(
            problems.iter().any(|p| p.starts_with("id: rule id")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("match@Some(1): bad regex in match")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("ignore@")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("max_keys:")),
            "{problems:?}"
        );
        // With a broken pattern the captures are unknown: group_by is not judged.
        assert!(
            !problems.iter().any(|p| p.starts_with("group_by")),
            "{problems:?}"
        );
    }

    #[test]
    fn names_a_rule_uses_must_be_captures() {
        let (_, problems) = compile(
            "{id: a, match: 'from (?P<ip>\\S+)', group_by: [user], allow: {host: [x]}, threshold: {count: 2, within: 1m}, severity: low, summary: '{{ who }}'}",
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("group_by:") && p.contains("\"user\"")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("allow:") && p.contains("\"host\"")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("summary:") && p.contains("`who`")),
            "{problems:?}"
        );
    }
}
