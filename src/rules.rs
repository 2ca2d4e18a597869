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

use crate::diag::{Diagnostic, Position};
use crate::yaml;
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
/// What a summary template may use besides the rule's named captures (the incident's
/// context, see `incidents::summary_context`).
pub const SUMMARY_VARIABLES: [&str; 4] = ["count", "rule", "severity", "key"];
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

/// The severities as written, lowest first.
const SEVERITY_NAMES: &[&str] = &["low", "moderate", "high", "critical"];

impl<'de> Deserialize<'de> for SeveritySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_yaml::Value::deserialize(d)?;
        match value {
            serde_yaml::Value::String(name) => serde_yaml::from_value(name.clone().into())
                .map(SeveritySpec::Fixed)
                .map_err(|_| D::Error::unknown_variant(&name, SEVERITY_NAMES)),
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

    /// Whether the rule reads lines of this source. The incident lines of
    /// [`crate::recidive::SOURCE`] are read only by rules that name it.
    pub fn applies_to(&self, source: &str) -> bool {
        if self.def.sources.is_empty() {
            return source != crate::recidive::SOURCE;
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
            let Some(parsed) = read_rule_file(file, &mut problems) else {
                continue;
            };
            for (name_node, values) in parsed.lists() {
                let at = name_node.at;
                let name = name_node.text().unwrap_or_default();
                let (values, found) = yaml::de::collect::<Vec<String>>(values);
                problems.extend(found.iter().map(|f| Diagnostic::at(file, f.at, &f.message)));
                let Some(values) = values else { continue };
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
                for value in &values {
                    if let Err(e) = ValueSet::default().add(value) {
                        problems.push(Diagnostic::at(file, at, format!("in list {name:?}: {e}")));
                    }
                }
                list_places.insert(name.to_string(), (file.clone(), at));
                lists.insert(name.to_string(), values);
            }
            parsed_files.push(parsed);
        }
        let mut rules = Vec::new();
        let mut places = Vec::new();
        let mut used_lists = BTreeSet::new();
        let mut seen_ids: HashMap<String, PathBuf> = HashMap::new();
        let mut templates = minijinja::Environment::new();
        templates.set_fuel(Some(TEMPLATE_FUEL));
        for parsed in &parsed_files {
            let file = &parsed.path;
            for item in parsed.rules() {
                let (def, found) = yaml::de::collect::<RuleDef>(item);
                problems.extend(found.iter().map(|f| Diagnostic::at(file, f.at, &f.message)));
                let Some(def) = def else { continue };
                // Keys whose values already had an error hold placeholders: no second report.
                let reported: HashSet<usize> = found.iter().map(|f| f.node).collect();
                let mut report = |spot: Spot<'_>, message: String| {
                    // What a rule lacks may be a key written wrong, already reported.
                    if matches!(spot, Spot::Key("")) && !found.is_empty() {
                        return;
                    }
                    let (key, at) = match spot {
                        Spot::Key(key) => (key, item.entry(key).map(|(k, _)| k.at)),
                        Spot::Pattern(which, offset) => {
                            let node = which.node(item);
                            let at = node.and_then(|n| match offset {
                                Some(o) => n.char_position(&parsed.text, o),
                                None => Some(n.at),
                            });
                            (which.key(), at)
                        }
                    };
                    if let Some((k, v)) = item.entry(key) {
                        let mut ids = Vec::new();
                        k.walk(&mut ids);
                        v.walk(&mut ids);
                        if ids.iter().any(|id| reported.contains(id)) {
                            return;
                        }
                    }
                    problems.push(Diagnostic::at(file, at.unwrap_or(item.at), message));
                };
                if let Some(first) = seen_ids.get(&def.id) {
                    report(
                        Spot::Key("id"),
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
                    def,
                    file,
                    ctx,
                    lists: &lists,
                };
                if let Some(rule) =
                    compile_rule(input, &mut used_lists, &mut templates, &mut report)
                {
                    places.push(lint::Place {
                        file: file.clone(),
                        item: item.at,
                        keys: item
                            .entries()
                            .iter()
                            .map(|(k, _)| (k.text().unwrap_or_default().to_string(), k.at))
                            .collect(),
                    });
                    rules.push(Arc::new(rule));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let unused = list_places
            .iter()
            .filter(|(name, _)| !used_lists.contains(*name))
            .map(|(name, (file, at))| (name.as_str(), file.as_path(), *at));
        let warnings = lint::warnings(&rules, &places, ctx, unused);
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

/// Largest rule file read: rule packs are a few kB; a huge file is a mistake or an attack.
const MAX_RULE_FILE_BYTES: usize = 4 << 20;

/// A rule file read into a tree: its rules and lists are taken from `root`.
struct ParsedFile {
    path: PathBuf,
    text: String,
    root: yaml::Node,
}

impl ParsedFile {
    /// The items of `rules:`.
    fn rules(&self) -> &[yaml::Node] {
        self.root.get("rules").map_or(&[], |n| n.items())
    }

    /// The entries of `lists:`: name node and values node.
    fn lists(&self) -> impl Iterator<Item = (&yaml::Node, &yaml::Node)> {
        self.root
            .get("lists")
            .map_or(&[][..], |n| n.entries())
            .iter()
            .map(|(k, v)| (k, v))
    }
}

/// Reads one rule file and checks its shape: a mapping of `rules:` (a list) and `lists:` (a
/// mapping) that defines at least one of them. Problems go to `problems`; `None` when the
/// file cannot be used at all.
fn read_rule_file(path: &Path, problems: &mut Vec<Diagnostic>) -> Option<ParsedFile> {
    let start = Position { line: 1, col: 1 };
    let bytes = match std::fs::read(path) {
        Ok(b) if b.len() > MAX_RULE_FILE_BYTES => {
            problems.push(Diagnostic::at(
                path,
                start,
                format!(
                    "rule file is {} bytes; at most {MAX_RULE_FILE_BYTES} are read",
                    b.len()
                ),
            ));
            return None;
        }
        Ok(b) => b,
        Err(e) => {
            problems.push(Diagnostic::at(
                path,
                start,
                format!("cannot read rule file: {e}"),
            ));
            return None;
        }
    };
    let root = match yaml::parse(&bytes) {
        Ok(root) => root,
        Err(e) => {
            problems.push(Diagnostic::at(path, e.at, e.message));
            return None;
        }
    };
    let text = String::from_utf8(bytes).ok()?;
    let before = problems.len();
    let shape = "a rule file is a mapping with `rules:` (a list of rules) and/or `lists:`";
    if !root.is_null() && !matches!(root.kind, yaml::Kind::Map(_)) {
        problems.push(Diagnostic::at(path, root.at, shape));
        return None;
    }
    for (key, value) in root.entries() {
        let name = key.text().unwrap_or_default();
        let wanted = match name {
            "rules" => matches!(value.kind, yaml::Kind::Seq(_)),
            "lists" => matches!(value.kind, yaml::Kind::Map(_)),
            other => {
                let hint = yaml::de::did_you_mean(other, ["rules", "lists"])
                    .map_or(String::new(), |k| format!("; did you mean `{k}`?"));
                problems.push(Diagnostic::at(
                    path,
                    key.at,
                    format!("unknown field `{other}`{hint}"),
                ));
                continue;
            }
        };
        if !wanted && !value.is_null() {
            problems.push(Diagnostic::at(path, value.at, shape));
        }
    }
    let file = ParsedFile {
        path: path.to_path_buf(),
        text,
        root,
    };
    if problems.len() == before && file.rules().is_empty() && file.lists().next().is_none() {
        problems.push(Diagnostic::at(
            path,
            file.root.at,
            "defines no rules; delete the file to remove its rules",
        ));
        return None;
    }
    Some(file)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Longest pattern compiled: the regex parser's memory grows with the text before the
/// compiled-size limit can refuse it.
pub const MAX_PATTERN_BYTES: usize = 64 * 1024;

/// A pattern that does not compile: why, and at which character when the parser says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// The regex crate's reason, on one line.
    pub message: String,
    /// 0-based character offset of the problem inside the pattern.
    pub offset: Option<usize>,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Compiles a user regex with the resource bounds every pattern gets.
///
/// Patterns run on raw bytes with Unicode classes off (`\S`, `.` and `\w` work byte-wise,
/// as grep in the C locale): with Unicode on, `\S` would not match invalid UTF-8, and an
/// attacker could slip past a rule by putting such bytes in a user name. `(?u)` turns
/// Unicode back on inside a pattern.
pub fn compile_pattern(pattern: &str) -> Result<Regex, PatternError> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(PatternError {
            message: format!(
                "pattern is {} bytes; at most {MAX_PATTERN_BYTES} are allowed",
                pattern.len()
            ),
            offset: None,
        });
    }
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map_err(|e| PatternError {
            message: regex_message(&e),
            offset: syntax_error_offset(pattern),
        })
}

/// The regex crate's own message on one line (its syntax errors span several lines).
fn regex_message(err: &regex::Error) -> String {
    let text = err.to_string();
    match text.lines().find_map(|l| l.trim().strip_prefix("error: ")) {
        Some(reason) => reason.to_string(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Where the regex parser places a syntax error, as a character offset into the pattern.
fn syntax_error_offset(pattern: &str) -> Option<usize> {
    let err = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .err()?;
    let span = match &err {
        regex_syntax::Error::Parse(e) => e.span(),
        regex_syntax::Error::Translate(e) => e.span(),
        _ => return None,
    };
    Some(pattern.get(..span.start.offset)?.chars().count())
}

/// Where in a rule a problem is.
#[derive(Debug, Clone, Copy)]
enum Spot<'a> {
    /// At this key of the rule; `""`: the rule as a whole, about something it lacks.
    Key(&'a str),
    /// At a character (0-based, when known) inside one of the rule's patterns.
    Pattern(PatternRef, Option<usize>),
}

/// One of a rule's patterns.
#[derive(Debug, Clone, Copy)]
enum PatternRef {
    Match,
    Ignore,
    Step(usize),
}

impl PatternRef {
    /// The rule key the pattern sits under.
    fn key(self) -> &'static str {
        match self {
            PatternRef::Match => "match",
            PatternRef::Ignore => "ignore",
            PatternRef::Step(_) => "sequence",
        }
    }

    /// The pattern's scalar in a rule item.
    fn node(self, item: &yaml::Node) -> Option<&yaml::Node> {
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
    // The patterns: `match`, or one per sequence step (and then no `match`).
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
    if let Some(known) = &ctx.sources {
        for source in &def.sources {
            if !known.contains(source) && source != crate::recidive::SOURCE {
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
    if let Some(summary) = &def.summary {
        match templates.add_template_owned(def.id.clone(), summary.clone()) {
            Err(e) => fail(Spot::Key("summary"), format!("bad summary template: {e}")),
            Ok(()) if pattern_ok => {
                let captures: BTreeSet<&str> = patterns
                    .iter()
                    .flat_map(|r| r.capture_names().flatten())
                    .collect();
                let used = templates
                    .get_template(&def.id)
                    .map(|t| t.undeclared_variables(false))
                    .unwrap_or_default();
                let mut unknown: Vec<&String> = used
                    .iter()
                    .filter(|v| {
                        !captures.contains(v.as_str()) && !SUMMARY_VARIABLES.contains(&v.as_str())
                    })
                    .collect();
                unknown.sort();
                for var in unknown {
                    let known: Vec<&str> =
                        captures.iter().copied().chain(SUMMARY_VARIABLES).collect();
                    fail(
                        Spot::Key("summary"),
                        format!(
                            "summary uses `{var}`, which the rule does not capture (known: {})",
                            known.join(", ")
                        ),
                    );
                }
            }
            Ok(()) => {}
        }
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
