//! YAML read with the position of every key and value, for config and rule files.
//!
//! Operators fix files by the positions errors name, so the loader keeps a tree in which every
//! node knows its line and column, and deserialises the typed structs from that tree
//! ([`de::collect`]) — continuing past an error to report every problem of a file in one run.
//!
//! The text is bounded before the expensive step: invalid UTF-8 and control characters are
//! reported at their place, flow nesting deeper than [`MAX_DEPTH`] is refused by a linear scan
//! before the parser sees it, and aliases cannot expand a file beyond [`MAX_NODES`].

pub mod de;

use crate::base::diag::Position;
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// Deepest nesting of mappings and sequences accepted (config and rules need about 6).
pub const MAX_DEPTH: usize = 64;
/// Most nodes one file may have, aliases expanded.
pub const MAX_NODES: usize = 1_000_000;

/// One YAML node with its place in the text.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique within its document, so an error can name the node it belongs to.
    pub id: usize,
    /// Where the node starts (a quoted scalar: its opening quote).
    pub at: Position,
    /// What it holds: a scalar with its quoting style, a sequence or a mapping.
    pub kind: Kind,
}

/// The kinds of YAML node.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A scalar as written, with its style (a plain `5` is a number, a quoted `'5'` a string).
    Scalar(String, Style),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<(Node, Node)>),
}

/// How a scalar was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Unquoted: subject to null / bool / number resolution.
    Plain,
    /// `'…'`.
    SingleQuoted,
    /// `"…"`.
    DoubleQuoted,
    /// `|` or `>` block.
    Block,
}

impl Node {
    /// The scalar text, if this is a scalar.
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// Whether this is a plain null (`~`, `null`, or nothing at all).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar(s, Style::Plain) if is_null_text(s))
    }

    /// The entries of a mapping (none for other kinds).
    pub fn entries(&self) -> &[(Node, Node)] {
        match &self.kind {
            Kind::Map(entries) => entries,
            _ => &[],
        }
    }

    /// The items of a sequence (none for other kinds).
    pub fn items(&self) -> &[Node] {
        match &self.kind {
            Kind::Seq(items) => items,
            _ => &[],
        }
    }

    /// The key node and value node of `key` in a mapping.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.entries()
            .iter()
            .find(|(k, _)| k.text() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// Every node of this subtree, this one first.
    pub fn walk(&self, out: &mut Vec<usize>) {
        out.push(self.id);
        match &self.kind {
            Kind::Scalar(..) => {}
            Kind::Seq(items) => items.iter().for_each(|n| n.walk(out)),
            Kind::Map(entries) => entries.iter().for_each(|(k, v)| {
                k.walk(out);
                v.walk(out);
            }),
        }
    }

    /// The positions of the collections that enclose any of `ids` (not the nodes themselves).
    pub fn enclosing(&self, ids: &std::collections::HashSet<usize>) -> Vec<Position> {
        fn visit(
            n: &Node,
            ids: &std::collections::HashSet<usize>,
            path: &mut Vec<Position>,
            out: &mut Vec<Position>,
        ) {
            if ids.contains(&n.id) {
                out.extend(path.iter().copied());
            }
            path.push(n.at);
            match &n.kind {
                Kind::Scalar(..) => {}
                Kind::Seq(items) => items.iter().for_each(|c| visit(c, ids, path, out)),
                Kind::Map(entries) => entries.iter().for_each(|(k, v)| {
                    visit(k, ids, path, out);
                    visit(v, ids, path, out);
                }),
            }
            path.pop();
        }
        let mut out = Vec::new();
        visit(self, ids, &mut Vec::new(), &mut out);
        out
    }

    /// Where character `offset` of this scalar's value sits in the text, when the scalar is on
    /// one line (plain or quoted); `None` for block and multi-line scalars.
    pub fn char_position(&self, source: &str, offset: usize) -> Option<Position> {
        let Kind::Scalar(value, style) = &self.kind else {
            return None;
        };
        if value.contains('\n') {
            return None;
        }
        let line = source.lines().nth(self.at.line.checked_sub(1)?)?;
        let mut chars = line.chars().skip(self.at.col - 1).peekable();
        let mut col = self.at.col;
        if matches!(style, Style::SingleQuoted | Style::DoubleQuoted) {
            chars.next();
            col += 1;
        }
        for _ in 0..offset {
            let width = match (style, chars.next()?) {
                (Style::SingleQuoted, '\'') => 2,
                (Style::DoubleQuoted, '\\') => match chars.peek() {
                    Some('x') => 4,
                    Some('u') => 6,
                    Some('U') => 10,
                    _ => 2,
                },
                (Style::Block, _) => return None,
                _ => 1,
            };
            for _ in 1..width {
                chars.next();
            }
            col += width;
        }
        Some(Position {
            line: self.at.line,
            col,
        })
    }
}

fn is_null_text(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// A problem that stops a text from being read as YAML at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Line and column, so the error points into the file rather than at the file.
    pub at: Position,
    /// The parser's reason, in the words shown to the operator.
    pub message: String,
}

/// Reads a file's bytes into a tree: one document; an empty file is a null scalar.
pub fn parse(bytes: &[u8]) -> Result<Node, SyntaxError> {
    let text = std::str::from_utf8(bytes).map_err(|e| SyntaxError {
        at: position_of_byte(bytes, e.valid_up_to()),
        message: format!(
            "invalid UTF-8 (byte 0x{:02x}); the file must be UTF-8 text",
            bytes[e.valid_up_to()]
        ),
    })?;
    check_characters(text)?;
    check_flow_depth(text)?;
    Builder::default().build(text)
}

/// The line and column (1-based, in characters) of a byte offset.
pub fn position_of_byte(bytes: &[u8], offset: usize) -> Position {
    let before = &bytes[..offset.min(bytes.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Position { line, col }
}

/// Control characters other than tab, newline and carriage return are refused at their place
/// (YAML forbids them, and they would reach terminals raw).
fn check_characters(text: &str) -> Result<(), SyntaxError> {
    for (i, line) in text.split('\n').enumerate() {
        let found = line
            .chars()
            .enumerate()
            .find(|(_, c)| (c.is_control() && !matches!(c, '\t' | '\r')) || *c == '\u{feff}');
        if let Some((col, c)) = found
            && !(i == 0 && col == 0 && c == '\u{feff}')
        {
            return Err(SyntaxError {
                at: Position {
                    line: i + 1,
                    col: col + 1,
                },
                message: format!("control character U+{:04X} is not allowed", c as u32),
            });
        }
    }
    Ok(())
}

/// Refuses flow collections (`[[[…` / `{{{…`) nested deeper than [`MAX_DEPTH`] in one linear
/// pass, before the parser, whose cost grows with the nesting. A bracket opens a collection
/// only inside another one or where a value starts; inside a plain scalar it is text.
fn check_flow_depth(text: &str) -> Result<(), SyntaxError> {
    let mut depth = 0usize;
    let (mut line, mut col) = (1, 0);
    let mut quote: Option<char> = None;
    let mut comment = false;
    // The last character that was not white space on this line; '\n' at a line's start.
    let mut prev = '\n';
    // The character just before this one.
    let mut last = '\n';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        col += 1;
        if c == '\n' {
            (line, col, comment, last) = (line + 1, 0, false, c);
            if quote.is_none() {
                prev = c;
            }
            continue;
        }
        let value_starts = depth > 0 || matches!(prev, '\n' | ':' | '-' | '?');
        match quote {
            _ if comment => {}
            Some('\'') if c == '\'' => {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    col += 1;
                } else {
                    quote = None;
                }
            }
            Some('"') if c == '\\' => {
                chars.next();
                col += 1;
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '#' if last.is_whitespace() => comment = true,
                '\'' | '"'
                    if value_starts && matches!(prev, '\n' | ':' | '-' | '?' | '[' | '{' | ',') =>
                {
                    quote = Some(c)
                }
                '[' | '{'
                    if value_starts && matches!(prev, '\n' | ':' | '-' | '?' | '[' | '{' | ',') =>
                {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(SyntaxError {
                            at: Position { line, col },
                            message: format!("nesting deeper than {MAX_DEPTH} levels"),
                        });
                    }
                }
                ']' | '}' if depth > 0 => depth -= 1,
                _ => {}
            },
        }
        if !c.is_whitespace() {
            prev = c;
        }
        last = c;
    }
    Ok(())
}

fn position(span: &Span) -> Position {
    Position {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

/// Builds the tree from the parser's events.
#[derive(Default)]
struct Builder {
    next_id: usize,
    anchors: HashMap<usize, Node>,
}

/// A collection being filled.
enum Open {
    Seq(Node),
    Map(Node, Option<Node>),
}

impl Builder {
    /// The tree of `text`, or the first syntax error at its place.
    ///
    /// Over 100 lines because it is one loop over the parser's events with one arm per
    /// event, each pushing or closing a collection on the one stack: split, the stack's
    /// invariants would be spread over several functions.
    fn build(mut self, text: &str) -> Result<Node, SyntaxError> {
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<(Open, usize)> = Vec::new();
        let mut root: Option<Node> = None;
        let mut documents = 0;
        while let Some(event) = parser.next_event() {
            let (event, span) = event.map_err(|e| SyntaxError {
                at: Position {
                    line: e.marker().line(),
                    col: e.marker().col() + 1,
                },
                message: e.info().to_string(),
            })?;
            let at = position(&span);
            let done = match event {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(SyntaxError {
                            at,
                            message: "only one YAML document per file".into(),
                        });
                    }
                    continue;
                }
                Event::Scalar(value, style, anchor, _) => {
                    let style = match style {
                        ScalarStyle::Plain => Style::Plain,
                        ScalarStyle::SingleQuoted => Style::SingleQuoted,
                        ScalarStyle::DoubleQuoted => Style::DoubleQuoted,
                        ScalarStyle::Literal | ScalarStyle::Folded => Style::Block,
                    };
                    let node = self.node(at, Kind::Scalar(value.into_owned(), style))?;
                    self.anchor(anchor, &node);
                    node
                }
                Event::Alias(anchor) => {
                    let Some(target) = self.anchors.get(&anchor).cloned() else {
                        return Err(SyntaxError {
                            at,
                            message: "alias to an unknown anchor".into(),
                        });
                    };
                    self.renumber(target, at)?
                }
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(SyntaxError {
                            at,
                            message: format!("nesting deeper than {MAX_DEPTH} levels"),
                        });
                    }
                    let open = if matches!(event, Event::SequenceStart(..)) {
                        Open::Seq(self.node(at, Kind::Seq(Vec::new()))?)
                    } else {
                        Open::Map(self.node(at, Kind::Map(Vec::new()))?, None)
                    };
                    stack.push((open, anchor));
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let Some((open, anchor)) = stack.pop() else {
                        continue;
                    };
                    let node = match open {
                        Open::Seq(n) | Open::Map(n, _) => n,
                    };
                    self.anchor(anchor, &node);
                    node
                }
                _ => continue,
            };
            match stack.last_mut() {
                None => root = Some(done),
                Some((Open::Seq(seq), _)) => {
                    if let Kind::Seq(items) = &mut seq.kind {
                        items.push(done);
                    }
                }
                Some((Open::Map(map, pending), _)) => match pending.take() {
                    None => *pending = Some(done),
                    Some(key) => {
                        if let Kind::Map(entries) = &mut map.kind {
                            if let Some(text) = key.text()
                                && let Some((first, _)) =
                                    entries.iter().find(|(k, _)| k.text() == Some(text))
                            {
                                return Err(SyntaxError {
                                    at: key.at,
                                    message: format!(
                                        "duplicate key `{text}` (first at line {})",
                                        first.at.line
                                    ),
                                });
                            }
                            entries.push((key, done));
                        }
                    }
                },
            }
        }
        Ok(root.unwrap_or(Node {
            id: self.next_id,
            at: Position { line: 1, col: 1 },
            kind: Kind::Scalar(String::new(), Style::Plain),
        }))
    }

    fn node(&mut self, at: Position, kind: Kind) -> Result<Node, SyntaxError> {
        self.next_id += 1;
        if self.next_id > MAX_NODES {
            return Err(SyntaxError {
                at,
                message: format!("more than {MAX_NODES} nodes"),
            });
        }
        Ok(Node {
            id: self.next_id,
            at,
            kind,
        })
    }

    fn anchor(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    /// A copy of an anchored subtree for an alias, with fresh ids, placed at the alias.
    fn renumber(&mut self, node: Node, at: Position) -> Result<Node, SyntaxError> {
        let kind = match node.kind {
            Kind::Scalar(..) => node.kind,
            Kind::Seq(items) => Kind::Seq(
                items
                    .into_iter()
                    .map(|n| self.renumber(n, at))
                    .collect::<Result<_, _>>()?,
            ),
            Kind::Map(entries) => Kind::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| Ok((self.renumber(k, at)?, self.renumber(v, at)?)))
                    .collect::<Result<_, _>>()?,
            ),
        };
        self.node(at, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_knows_its_place() {
        let root = parse(b"a: 1\nb:\n  - x\n  - {c: 'd'}\n").unwrap();
        let (k, v) = root.entry("b").unwrap();
        assert_eq!((k.at.line, k.at.col), (2, 1));
        let item = &v.items()[1];
        assert_eq!((item.at.line, item.at.col), (4, 5));
        let d = item.get("c").unwrap();
        assert_eq!((d.at.line, d.at.col), (4, 9));
        assert_eq!(d.text(), Some("d"));
    }

    #[test]
    fn invalid_utf8_and_control_characters_are_placed() {
        let e = parse(b"a: 1\nb: x\xffy\n").unwrap_err();
        assert_eq!((e.at.line, e.at.col), (2, 5), "{e:?}");
        let e = parse(b"a: 1\nbb: x\x07\n").unwrap_err();
        assert_eq!((e.at.line, e.at.col), (2, 6), "{e:?}");
        assert!(e.message.contains("U+0007"));
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let deep = "[".repeat(100_000);
        let started = std::time::Instant::now();
        let e = parse(format!("a: {deep}").as_bytes()).unwrap_err();
        assert!(e.message.contains("nesting"), "{e:?}");
        assert_eq!(e.at.line, 1);
        // A pathology (the parser on the whole text) takes seconds to minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let blocks: String = (0..80).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        assert!(parse(blocks.as_bytes()).is_err());
    }

    #[test]
    fn positions_inside_quoted_scalars_count_escapes() {
        let src = "m: 'it''s (x'\nn: \"a\\\\b(\"\n";
        let root = parse(src.as_bytes()).unwrap();
        // `(` is character 5 of `it's (x`: col 4 (quote) + 1 + 4 + 1 for the doubled quote.
        let p = root.get("m").unwrap().char_position(src, 5).unwrap();
        assert_eq!((p.line, p.col), (1, 11));
        let p = root.get("n").unwrap().char_position(src, 3).unwrap();
        assert_eq!((p.line, p.col), (2, 9));
    }
}
