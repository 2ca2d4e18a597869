//! Loading a whole rule set: every file, then every list (so a rule may use a list of
//! another file), then every rule, all or nothing.
//!
//! Apart from single-rule compilation because what is checked here spans files: duplicate
//! ids and list names, unused lists, and the version hash of the set.

use super::compile::{PatternRef, RuleInput, Spot, compile_rule, valid_id};
use super::file::{ParsedFile, read_rule_file, rule_files_under};
use super::{Lists, Rule, RuleContext, RuleDef, RuleSet, ValueSet, lint};
use crate::base::diag::{Diagnostic, Position};
use crate::base::yaml;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Template evaluation budget, so a summary template cannot loop the daemon.
const TEMPLATE_FUEL: u64 = 50_000;

/// Where each list was first defined, for duplicate and unused-list reports.
type ListPlaces = BTreeMap<String, (PathBuf, Position)>;

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
        let (parsed_files, lists, list_places) = read_files_and_lists(&files, &mut problems);
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
                let mut report = |spot: Spot<'_>, message: String| {
                    if let Some(d) = place_problem(parsed, item, &found, spot, message) {
                        problems.push(d);
                    }
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
}

/// Reads every rule file and collects the lists they define; a list name may be defined
/// once across all files.
fn read_files_and_lists(
    files: &[PathBuf],
    problems: &mut Vec<Diagnostic>,
) -> (Vec<ParsedFile>, Lists, ListPlaces) {
    let mut parsed_files = Vec::new();
    let mut lists = Lists::new();
    let mut list_places = ListPlaces::new();
    for file in files {
        let Some(parsed) = read_rule_file(file, problems) else {
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
    (parsed_files, lists, list_places)
}

/// Turns a problem at a spot of one rule item into a diagnostic at its `file:line:col`;
/// `None` when it repeats a problem the YAML decoding of the item already reported.
fn place_problem(
    parsed: &ParsedFile,
    item: &yaml::Node,
    found: &[yaml::de::Found],
    spot: Spot<'_>,
    message: String,
) -> Option<Diagnostic> {
    // What a rule lacks may be a key written wrong, already reported.
    if matches!(spot, Spot::Key("")) && !found.is_empty() {
        return None;
    }
    let (key, at) = match spot {
        Spot::Key(key) => (key, item.entry(key).map(|(k, _)| k.at)),
        Spot::Pattern(which, offset) => {
            (which.key(), pattern_position(parsed, item, which, offset))
        }
    };
    // Keys whose values already had an error hold placeholders: no second report.
    if let Some((k, v)) = item.entry(key) {
        let reported: HashSet<usize> = found.iter().map(|f| f.node).collect();
        let mut ids = Vec::new();
        k.walk(&mut ids);
        v.walk(&mut ids);
        if ids.iter().any(|id| reported.contains(id)) {
            return None;
        }
    }
    Some(Diagnostic::at(&parsed.path, at.unwrap_or(item.at), message))
}

/// Where in the file a character of one of a rule's patterns is.
fn pattern_position(
    parsed: &ParsedFile,
    item: &yaml::Node,
    which: PatternRef,
    offset: Option<usize>,
) -> Option<Position> {
    let node = which.node(item)?;
    match offset {
        Some(o) => node.char_position(&parsed.text, o),
        None => Some(node.at),
    }
}

/// Hash of the rule ids and their definitions' hashes, in id order: the version an
/// incident records, so it can be traced to the exact rules that opened it.
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
mod tests {
    use super::*;
    use crate::rules::tests::{SSH, write};

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
}

#[cfg(test)]
mod list_tests {
    use super::*;
    use std::path::Path;

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
