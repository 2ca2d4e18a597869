//! Diagnostics that point at a place in a file, printed as `path:line:col: message`.
//!
//! Config and rule errors must name the exact spot so an operator can fix a file without
//! guessing; every loader reports through this one type so `check`, reload and `run` agree.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a config or rule file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// File the problem is in.
    pub path: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub col: usize,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at a known position.
    pub fn at(path: &Path, pos: Position, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.to_path_buf(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        }
    }

    /// Turns a serde_yaml error into a diagnostic, keeping its line and column.
    pub fn from_yaml(path: &Path, err: &serde_yaml::Error) -> Self {
        let pos = err
            .location()
            .map(|l| Position {
                line: l.line(),
                col: l.column(),
            })
            .unwrap_or(Position { line: 1, col: 1 });
        // serde_yaml appends " at line N column M"; the position is printed in front instead.
        let text = err.to_string();
        let message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        Diagnostic::at(path, pos, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// A 1-based line and column in a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Line number, counted from 1 as editors show it.
    pub line: usize,
    /// Column, counted from 1; for a key, where its name starts after the indentation.
    pub col: usize,
}

/// Finds where keys sit in a block-style YAML text.
///
/// serde_yaml gives positions only for syntax and type errors; semantic errors (a bad regex,
/// an unknown capture) are found after deserialising. This locator recovers their position
/// from the text so those errors can name a line too.
pub struct YamlLocator<'a> {
    lines: Vec<&'a str>,
}

impl<'a> YamlLocator<'a> {
    /// Splits a YAML text into lines once, so each error located later is a scan of lines,
    /// not of the text again.
    pub fn new(text: &'a str) -> Self {
        YamlLocator {
            lines: text.lines().collect(),
        }
    }

    /// Position of the `n`-th (0-based) item of the top-level sequence under `section`
    /// (e.g. the third entry of `rules:`). Falls back to the section itself.
    pub fn item(&self, section: &str, n: usize) -> Position {
        let Some(start) = self.top_key_line(section) else {
            return Position { line: 1, col: 1 };
        };
        let mut seen = 0;
        let mut item_indent = None;
        for (i, line) in self.lines.iter().enumerate().skip(start + 1) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if indent == 0 && !trimmed.starts_with('-') {
                break;
            }
            if trimmed.starts_with("- ") || trimmed == "-" {
                if *item_indent.get_or_insert(indent) != indent {
                    continue;
                }
                if seen == n {
                    return Position {
                        line: i + 1,
                        col: indent + 1,
                    };
                }
                seen += 1;
            }
        }
        Position {
            line: start + 1,
            col: 1,
        }
    }

    /// Position of `key` inside the block that starts at `block` (an item found by [`Self::item`]
    /// or a mapping key), searching up to the next line indented at or left of the block.
    /// Falls back to the block's own position.
    pub fn key_in_block(&self, block: Position, key: &str) -> Position {
        let first = block.line.saturating_sub(1);
        let block_indent = block.col.saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate().skip(first) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if i > first && indent <= block_indent {
                break;
            }
            let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
            let body_indent = indent + (trimmed.len() - body.len());
            if let Some(rest) = body.strip_prefix(key)
                && (rest.starts_with(':'))
            {
                return Position {
                    line: i + 1,
                    col: body_indent + 1,
                };
            }
            // Flow mappings on one line: `- {id: x, match: y}`.
            if let Some(idx) = find_flow_key(body, key) {
                return Position {
                    line: i + 1,
                    col: body_indent + idx + 1,
                };
            }
        }
        block
    }

    /// Position of a top-level key.
    pub fn top_key(&self, key: &str) -> Position {
        match self.top_key_line(key) {
            Some(i) => Position {
                line: i + 1,
                col: 1,
            },
            None => Position { line: 1, col: 1 },
        }
    }

    fn top_key_line(&self, key: &str) -> Option<usize> {
        self.lines.iter().position(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
    }
}

fn find_flow_key(body: &str, key: &str) -> Option<usize> {
    if !body.starts_with('{') {
        return None;
    }
    let mut from = 0;
    while let Some(rel) = body[from..].find(key) {
        let idx = from + rel;
        let before = body[..idx].trim_end();
        let after = &body[idx + key.len()..];
        if (before.ends_with('{') || before.ends_with(',')) && after.trim_start().starts_with(':') {
            return Some(idx);
        }
        from = idx + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "rules:\n  - id: a\n    match: 'x'\n\n  - id: b\n    description: d\n    match: 'y'\n  - {id: c, match: z}\nlists: {}\n";

    #[test]
    fn finds_items_and_their_keys() {
        let loc = YamlLocator::new(TEXT);
        let b = loc.item("rules", 1);
        assert_eq!(b, Position { line: 5, col: 3 });
        assert_eq!(loc.key_in_block(b, "match"), Position { line: 7, col: 5 });
        assert_eq!(loc.key_in_block(b, "id"), Position { line: 5, col: 5 });
        let c = loc.item("rules", 2);
        assert_eq!(c.line, 8);
        assert_eq!(loc.key_in_block(c, "match"), Position { line: 8, col: 13 });
        // A key the block lacks falls back to the block.
        assert_eq!(loc.key_in_block(b, "threshold"), b);
        assert_eq!(loc.top_key("lists"), Position { line: 9, col: 1 });
    }
}
