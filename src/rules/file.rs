//! Rule files on disk: which files a configured path stands for, and each one read into a
//! YAML tree of the right shape.
//!
//! Apart from compilation so that what can go wrong with a file (too big, not YAML, not a
//! mapping of `rules:` and `lists:`) is reported once per file, before any rule in it is
//! looked at.

use crate::base::diag::{Diagnostic, Position};
use crate::base::yaml;
use std::path::{Path, PathBuf};

/// Lists the rule files a configured path stands for.
pub(super) fn rule_files_under(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
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
pub(super) struct ParsedFile {
    pub(super) path: PathBuf,
    pub(super) text: String,
    root: yaml::Node,
}

impl ParsedFile {
    /// The items of `rules:`, each one rule's mapping; empty when the file has no `rules:`.
    pub(super) fn rules(&self) -> &[yaml::Node] {
        self.root.get("rules").map_or(&[], |n| n.items())
    }

    /// The entries of `lists:`: name node and values node.
    pub(super) fn lists(&self) -> impl Iterator<Item = (&yaml::Node, &yaml::Node)> {
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
pub(super) fn read_rule_file(path: &Path, problems: &mut Vec<Diagnostic>) -> Option<ParsedFile> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> (Option<ParsedFile>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yaml");
        std::fs::write(&path, text).unwrap();
        let mut problems = Vec::new();
        let parsed = read_rule_file(&path, &mut problems);
        (parsed, problems.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn a_file_of_rules_and_lists_is_read() {
        let (parsed, problems) = problems_of("rules:\n  - id: a\nlists:\n  nets: [10.0.0.0/8]\n");
        assert!(problems.is_empty(), "{problems:?}");
        let parsed = parsed.unwrap();
        assert_eq!(parsed.rules().len(), 1);
        assert_eq!(parsed.lists().count(), 1);
    }

    #[test]
    fn a_file_of_the_wrong_shape_names_its_line_and_reason() {
        let (parsed, problems) = problems_of("- id: a\n");
        assert!(parsed.is_none());
        assert!(problems[0].contains("r.yaml:1:1"), "{problems:?}");
        assert!(
            problems[0].contains("a rule file is a mapping"),
            "{problems:?}"
        );
        let (_, problems) = problems_of("rules: []\nrulez: []\n");
        assert!(
            problems
                .iter()
                .any(|p| p.contains(":2:1") && p.contains("did you mean `rules`")),
            "{problems:?}"
        );
        let (parsed, problems) = problems_of("rules: []\n");
        assert!(parsed.is_none());
        assert!(problems[0].contains("defines no rules"), "{problems:?}");
    }

    #[test]
    fn a_directory_stands_for_its_yaml_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.yml", "a.yaml", "notes.txt"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found = rule_files_under(dir.path()).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yml"]);
        let missing = rule_files_under(&dir.path().join("none")).unwrap_err();
        assert!(
            missing.to_string().contains("cannot read rules path"),
            "{missing}"
        );
    }
}
