//! Rule files: what ops teams write, validated into rules the detector can run.
//!
//! Loading never half-succeeds: either every file parses and validates and a whole new
//! [`RuleSet`] exists, or the caller gets every problem with its `path:line:col` and keeps
//! whatever rules it had. The rule-set version is a hash of the normalised definitions, so
//! an incident can always be traced to the exact rules that opened it.

pub mod kinds;
mod lint;
pub mod values;

pub use kinds::{
    AbsenceSpec, DistinctSpec, RuleKind, SequenceSpec, SpikeSpec, StepSpec, ThresholdSpec,
};
pub use values::{Lists, ValueSet};

use crate::diag::{Diagnostic, Position, YamlLocator};
use regex::bytes::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Compiled-program budget for one user pattern: a pathological rule must fail to load,
/// not exhaust memory.
const REGEX_SIZE_LIMIT: usize = 8 << 20;
/// Budget for the lazy DFA cache of one pattern.
const REGEX_DFA_LIMIT: usize = 8 << 20;
/// Keys a rule tracks at most unless it sets `max_keys`: a flood of spoofed addresses must
/// not exhaust memory.
pub const DEFAULT_MAX_KEYS: usize = 40_000;
/// Template evaluation budget, so a summary template cannot loop the daemon.
const TEMPLATE_FUEL: u64 = 50_000;

/// How bad an incident is. Ordered: a tier can only go up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Needs a response today.
    Moderate,
    /// Needs a response now.
    High,
    /// All hands.
    Critical,
}

impl Severity {
    /// Every severity, lowest first (for metrics that must show zeroes).
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Moderate,
        Severity::High,
        Severity::Critical,
    ];

    /// The lowercase name used in YAML, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Moderate => "moderate",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fixed severity, or tiers chosen by how many matches the incident has counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SeveritySpec {
    /// Always this severity.
    Fixed(Severity),
    /// The highest tier whose count has been reached; never below the lowest tier.
    Tiers(BTreeMap<Severity, u64>),
}

impl SeveritySpec {
    /// Severity for an incident that has counted `count` matches.
    pub fn for_count(&self, count: u64) -> Severity {
        match self {
            SeveritySpec::Fixed(s) => *s,
            SeveritySpec::Tiers(tiers) => {
                let lowest = tiers.keys().next().copied().unwrap_or(Severity::Low);
                tiers
                    .iter()
                    .filter(|(_, at)| count >= **at)
                    .map(|(s, _)| *s)
                    .max()
                    .unwrap_or(lowest)
            }
        }
    }
}

impl<'de> Deserialize<'de> for SeveritySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_yaml::Value::deserialize(d)?;
        match value {
            serde_yaml::Value::String(_) => serde_yaml::from_value(value)
                .map(SeveritySpec::Fixed)
                .map_err(|_| D::Error::custom("severity must be low, moderate, high or critical")),
            serde_yaml::Value::Mapping(_) => {
                let tiers: BTreeMap<Severity, u64> = serde_yaml::from_value(value).map_err(|_| {
                    D::Error::custom(
                        "severity tiers map low/moderate/high/critical to match counts, e.g. {moderate: 5, high: 20}",
                    )
                })?;
                if tiers.is_empty() {
                    return Err(D::Error::custom(
                        "severity tiers must name at least one tier",
                    ));
                }
                Ok(SeveritySpec::Tiers(tiers))
            }
            _ => Err(D::Error::custom(
                "severity must be one of low, moderate, high, critical, or a map of tiers to counts",
            )),
        }
    }
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rules: Vec<RuleDef>,
    #[serde(default)]
    lists: Lists,
}

/// A validated rule, ready to run.
#[derive(Debug)]
pub struct Rule {
    /// The definition as written.
    pub def: RuleDef,
    /// File it came from.
    pub file: PathBuf,
    /// Patterns found by the multi-pattern pass: the `match`, or each sequence step's
    /// (pattern `i` is step `i`).
    pub patterns: Vec<Regex>,
    /// Compiled `ignore`.
    pub ignore: Option<Regex>,
    /// `allow` by capture name.
    pub allow: Vec<(String, ValueSet)>,
    /// `only` by capture name.
    pub only: Vec<(String, ValueSet)>,
    /// Detection kind.
    pub kind: RuleKind,
    /// Most keys tracked at once.
    pub max_keys: usize,
    /// Hash of this rule's normalised definition: window state is only reused while it holds.
    pub hash: String,
}

impl Rule {
    /// The rule id.
    pub fn id(&self) -> &str {
        &self.def.id
    }

    /// Whether the rule reads lines of this source.
    pub fn applies_to(&self, source: &str) -> bool {
        self.def.sources.is_empty() || self.def.sources.iter().any(|s| s == source)
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
    /// Source names.
    pub sources: Option<HashSet<String>>,
    /// Escalation policy names.
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
    /// Loads every rule file under `paths` (files, or directories of `*.yaml`/`*.yml`).
    pub fn load(paths: &[PathBuf], ctx: &RuleContext) -> Result<RuleSet, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let mut files = Vec::new();
        for path in paths {
            match rule_files_under(path) {
                Ok(found) => files.extend(found),
                Err(d) => problems.push(d),
            }
        }
        // First every file, so lists defined in any file are known to rules of all files.
        let mut parsed_files = Vec::new();
        let mut lists = Lists::new();
        let mut list_places: BTreeMap<String, (PathBuf, Position)> = BTreeMap::new();
        for file in &files {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Diagnostic::at(
                        file,
                        Position { line: 1, col: 1 },
                        format!("cannot read rule file: {e}"),
                    ));
                    continue;
                }
            };
            let parsed: RuleFile = match serde_yaml::from_str(&text) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(Diagnostic::from_yaml(file, &e));
                    continue;
                }
            };
            let loc = YamlLocator::new(&text);
            for (name, values) in &parsed.lists {
                let at = loc.key_in_block(loc.top_key("lists"), name);
                if let Some((first, _)) = list_places.get(name) {
                    problems.push(Diagnostic::at(
                        file,
                        at,
                        format!(
                            "duplicate list {name:?} (first defined in {})",
                            first.display()
                        ),
                    ));
                    continue;
                }
                if !valid_id(name) {
                    problems.push(Diagnostic::at(
                        file,
                        at,
                        format!("list name {name:?} must match [a-z0-9-]+"),
                    ));
                }
                for value in values {
                    if let Err(e) = ValueSet::default().add(value) {
                        problems.push(Diagnostic::at(file, at, format!("in list {name:?}: {e}")));
                    }
                }
                list_places.insert(name.clone(), (file.clone(), at));
                lists.insert(name.clone(), values.clone());
            }
            parsed_files.push((file.clone(), text, parsed.rules));
        }
        let mut rules = Vec::new();
        let mut places = Vec::new();
        let mut used_lists = BTreeSet::new();
        let mut seen_ids: HashMap<String, PathBuf> = HashMap::new();
        let mut templates = minijinja::Environment::new();
        templates.set_fuel(Some(TEMPLATE_FUEL));
        for (file, text, defs) in &parsed_files {
            let loc = YamlLocator::new(text);
            for (i, def) in defs.iter().enumerate() {
                let at = loc.item("rules", i);
                let mut report = |key: &str, message: String| {
                    problems.push(Diagnostic::at(file, loc.key_in_block(at, key), message));
                };
                if let Some(first) = seen_ids.get(&def.id) {
                    report(
                        "id",
                        format!(
                            "duplicate rule id {:?} (first defined in {})",
                            def.id,
                            first.display()
                        ),
                    );
                    continue;
                }
                seen_ids.insert(def.id.clone(), file.clone());
                let input = RuleInput {
                    def: def.clone(),
                    file,
                    ctx,
                    lists: &lists,
                };
                if let Some(rule) =
                    compile_rule(input, &mut used_lists, &mut templates, &mut report)
                {
                    places.push(lint::Place {
                        file: file.clone(),
                        item: at,
                    });
                    rules.push(Arc::new(rule));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let texts: HashMap<&Path, &str> = parsed_files
            .iter()
            .map(|(f, t, _)| (f.as_path(), t.as_str()))
            .collect();
        let unused = list_places
            .iter()
            .filter(|(name, _)| !used_lists.contains(*name))
            .map(|(name, (file, at))| (name.as_str(), file.as_path(), *at));
        let warnings = lint::warnings(&rules, &places, &texts, ctx, unused);
        let version = ruleset_version(&rules);
        Ok(RuleSet {
            rules,
            files,
            version,
            lists,
            warnings,
            templates,
        })
    }

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

/// Lists the rule files a configured path stands for.
fn rule_files_under(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let here = Position { line: 0, col: 0 };
    let meta = std::fs::metadata(path)
        .map_err(|e| Diagnostic::at(path, here, format!("cannot read rules path: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Diagnostic::at(path, here, format!("cannot list rules directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    Ok(files)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Compiles a user regex with the resource bounds every pattern gets.
///
/// Patterns run on raw bytes with Unicode classes off (`\S`, `.` and `\w` work byte-wise,
/// as grep in the C locale): with Unicode on, `\S` would not match invalid UTF-8, and an
/// attacker could slip past a rule by putting such bytes in a user name. `(?u)` turns
/// Unicode back on inside a pattern.
pub fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map_err(|e| regex_message(&e))
}

/// The regex crate's own message on one line (its syntax errors span several lines).
fn regex_message(err: &regex::Error) -> String {
    let text = err.to_string();
    match text.lines().find_map(|l| l.trim().strip_prefix("error: ")) {
        Some(reason) => reason.to_string(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// One rule definition and what it may refer to.
struct RuleInput<'a> {
    def: RuleDef,
    file: &'a Path,
    ctx: &'a RuleContext,
    lists: &'a Lists,
}

fn compile_rule(
    input: RuleInput<'_>,
    used_lists: &mut BTreeSet<String>,
    templates: &mut minijinja::Environment<'static>,
    report: &mut dyn FnMut(&str, String),
) -> Option<Rule> {
    let RuleInput {
        def,
        file,
        ctx,
        lists,
    } = input;
    let mut ok = true;
    let mut fail = |key: &str, message: String| {
        ok = false;
        report(key, message);
    };
    if !valid_id(&def.id) {
        fail("id", format!("rule id {:?} must match [a-z0-9-]+", def.id));
    }
    let kind = kinds::compile_kind(&def, &mut fail);
    // The patterns: `match`, or one per sequence step (and then no `match`).
    let mut patterns = Vec::new();
    let mut pattern_ok = true;
    if def.pattern.is_some() && def.sequence.is_some() {
        fail(
            "match",
            "a sequence rule has no top-level match: each step has its own".into(),
        );
    }
    match (&def.pattern, &def.sequence) {
        (None, None) => fail("id", format!("rule {:?} needs a match pattern", def.id)),
        (_, Some(seq)) => {
            for (i, step) in seq.steps.iter().enumerate() {
                match compile_pattern(&step.pattern) {
                    Ok(r) => patterns.push(r),
                    Err(e) => {
                        pattern_ok = false;
                        fail(
                            "sequence",
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
                fail("match", format!("bad regex in match: {e}"));
            }
        },
    }
    let ignore = match def.ignore.as_deref().map(compile_pattern) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            fail("ignore", format!("bad regex in ignore: {e}"));
            None
        }
        None => None,
    };
    if pattern_ok && !patterns.is_empty() {
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
                    "group_by",
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
                "distinct",
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
                        key,
                        format!("{key} names {field:?}, which is not a named capture of the rule"),
                    );
                }
            }
        }
    }
    let mut value_sets = |key: &str, map: &BTreeMap<String, Vec<String>>| {
        let mut sets = Vec::new();
        for (field, entries) in map {
            match ValueSet::parse(entries, lists, used_lists) {
                Ok(set) => sets.push((field.clone(), set)),
                Err(e) => fail(key, format!("{key}.{field}: {e}")),
            }
        }
        sets
    };
    let allow = value_sets("allow", &def.allow);
    let only = value_sets("only", &def.only);
    if def.max_keys == Some(0) {
        fail("max_keys", "max_keys must be at least 1".into());
    }
    if let Some(known) = &ctx.sources {
        for source in &def.sources {
            if !known.contains(source) {
                fail("sources", format!("rule names unknown source {source:?}"));
            }
        }
    }
    if let (Some(known), Some(policy)) = (&ctx.escalation_policies, &def.escalation)
        && !known.contains(policy)
    {
        fail(
            "escalation",
            format!("rule names unknown escalation policy {policy:?}"),
        );
    }
    if let Some(summary) = &def.summary
        && let Err(e) = templates.add_template_owned(def.id.clone(), summary.clone())
    {
        fail("summary", format!("bad summary template: {e}"));
    }
    if !ok {
        return None;
    }
    let hash = rule_hash(&def, lists);
    Some(Rule {
        max_keys: def.max_keys.unwrap_or(DEFAULT_MAX_KEYS),
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

fn ruleset_version(rules: &[Arc<Rule>]) -> String {
    let mut pairs: Vec<(&str, &str)> = rules.iter().map(|r| (r.id(), r.hash.as_str())).collect();
    pairs.sort_unstable();
    let mut hasher = Sha256::new();
    for (id, hash) in pairs {
        hasher.update(id.as_bytes());
        hasher.update(b"\0");
        hasher.update(hash.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(&hasher.finalize()[..8])
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

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const SSH: &str = "rules:\n  - id: ssh\n    match: 'Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 5, within: 1m}\n    severity: {moderate: 5, high: 20}\n    summary: '{{ count }} failures from {{ ip }}'\n";

    #[test]
    fn version_changes_with_a_definition_and_not_with_formatting() {
        let dir = tempfile::tempdir().unwrap();
        let a = RuleSet::load(&[write(dir.path(), "a.yaml", SSH)], &Default::default()).unwrap();
        let reformatted = SSH.replace(
            "{moderate: 5, high: 20}",
            "\n      high: 20\n      moderate: 5",
        );
        let b = RuleSet::load(
            &[write(dir.path(), "b.yaml", &reformatted)],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(a.version, b.version);
        let changed = SSH.replace("count: 5", "count: 6");
        let c = RuleSet::load(
            &[write(dir.path(), "c.yaml", &changed)],
            &Default::default(),
        )
        .unwrap();
        assert_ne!(a.version, c.version);
    }

    #[test]
    fn tiers_pick_the_highest_reached_and_never_fall_below_the_lowest() {
        let tiers = SeveritySpec::Tiers(BTreeMap::from([
            (Severity::Moderate, 5),
            (Severity::High, 20),
            (Severity::Critical, 100),
        ]));
        assert_eq!(tiers.for_count(1), Severity::Moderate);
        assert_eq!(tiers.for_count(19), Severity::Moderate);
        assert_eq!(tiers.for_count(20), Severity::High);
        assert_eq!(tiers.for_count(1000), Severity::Critical);
    }

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

#[cfg(test)]
mod list_tests {
    use super::*;

    const RULES: &str = "rules:\n  - id: a\n    match: 'from (?P<ip>\\S+)'\n    allow: {ip: ['@nets']}\n    threshold: {count: 1, within: 1m}\n    severity: low\n  - id: b\n    match: 'to (?P<ip>\\S+)'\n    threshold: {count: 1, within: 1m}\n    severity: low\n";

    fn load(dir: &Path, lists: &str) -> RuleSet {
        std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
        std::fs::write(dir.join("lists.yaml"), lists).unwrap();
        RuleSet::load(&[dir.to_path_buf()], &Default::default()).unwrap()
    }

    #[test]
    fn lists_from_another_file_work_and_editing_one_changes_only_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let before = load(dir.path(), "lists:\n  nets: [10.0.0.0/8]\n");
        let after = load(dir.path(), "lists:\n  nets: [10.0.0.0/16]\n");
        let hash = |set: &RuleSet, id: &str| set.rule(id).unwrap().hash.clone();
        assert_ne!(hash(&before, "a"), hash(&after, "a"));
        assert_eq!(hash(&before, "b"), hash(&after, "b"));
        assert_ne!(before.version, after.version);
        assert!(after.rule("a").unwrap().allow[0].1.contains("10.0.255.1"));
        assert!(!after.rule("a").unwrap().allow[0].1.contains("10.1.0.1"));
    }
}
