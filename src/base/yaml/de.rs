//! serde over a [`Node`] tree, and [`collect`]: every error of a document, each at its node.
//!
//! serde stops at the first error. [`collect`] deserialises again after each one with the
//! offending node set aside — an unknown key skipped, a bad value replaced by a placeholder
//! that type-checks — so one run finds every problem, and the typed value built with the
//! placeholders still lets later checks (regexes, captures) look at the rest of the file.
//! Every error it reports is the first one seen at its node; errors caused by its own
//! placeholders are never reported.

mod access;

use super::{Kind, Node, Style, is_null_text};
use crate::base::diag::Position;
use access::{EnumDe, MapDe, SeqDe};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Unexpected, Visitor};
use std::collections::HashMap;
use std::fmt;

/// Stand-ins for a bad value, tried in order until the document type-checks there: a
/// duration, a severity, a number, a name, a flag.
const PLACEHOLDERS: &[&str] = &["1m", "low", "1", "x", "false"];
/// Rounds of [`collect`] at most (each round is one cheap pass over a small tree).
const MAX_ROUNDS: usize = 200;

/// A deserialisation error and the node it belongs to.
#[derive(Debug)]
pub struct Error {
    message: String,
    node: Option<usize>,
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            message: msg.to_string(),
            node: None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// What [`collect`] does to a node that had an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// Read it as `PLACEHOLDERS[i]`.
    Replace(usize),
    /// Leave its entry or item out.
    Skip,
}

type Fixes = HashMap<usize, Fix>;

/// One problem found in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The node's line and column: every problem of a document is reported at its place in
    /// one run, not the first one alone.
    pub at: Position,
    /// What, with "did you mean" where a known name is close.
    pub message: String,
    /// The node, so later checks can leave alone what was already reported.
    pub node: usize,
}

/// Deserialises `root` as a `T`, collecting every error. The value is `None` when an error
/// could not be set aside (the root itself is wrong); with errors it holds placeholders and
/// serves only to check the rest.
pub fn collect<T: DeserializeOwned>(root: &Node) -> (Option<T>, Vec<Found>) {
    let mut index = HashMap::new();
    index_nodes(root, Role::Root, None, &mut index);
    let mut fixes = Fixes::new();
    let mut found = Vec::new();
    // Key names whose entries were set aside, by mapping: a "missing field" there is ours.
    let mut set_aside: HashMap<usize, Vec<String>> = HashMap::new();
    for _ in 0..MAX_ROUNDS {
        let error = match T::deserialize(De {
            node: root,
            fixes: &fixes,
        }) {
            Ok(value) => return (Some(value), found),
            Err(e) => e,
        };
        let id = refine(
            &index,
            error.node.unwrap_or(root.id),
            &error.message,
            &fixes,
        );
        let Some((node, role, parent)) = index.get(&id) else {
            return (None, found);
        };
        let next = match fixes.get(&id) {
            Some(Fix::Replace(i)) if i + 1 < PLACEHOLDERS.len() => Fix::Replace(i + 1),
            Some(Fix::Replace(_)) => Fix::Skip,
            Some(Fix::Skip) => return (None, found),
            None => {
                let ours = missing_field(&error.message)
                    .is_some_and(|f| set_aside.get(&id).is_some_and(|k| k.iter().any(|k| k == f)));
                if !ours {
                    found.push(Found {
                        at: node.at,
                        message: explain(&error.message),
                        node: id,
                    });
                }
                match *role {
                    Role::Root => return (None, found),
                    Role::Key => Fix::Skip,
                    Role::Value | Role::Item => Fix::Replace(0),
                }
            }
        };
        if next == Fix::Skip
            && let Some((map, key)) = parent
        {
            set_aside.entry(*map).or_default().push(key.clone());
        }
        fixes.insert(id, next);
    }
    (None, found)
}

/// Where a node sits in its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Root,
    Key,
    Value,
    Item,
}

type Index<'a> = HashMap<usize, (&'a Node, Role, Option<(usize, String)>)>;

fn index_nodes<'a>(
    node: &'a Node,
    role: Role,
    parent: Option<(usize, String)>,
    index: &mut Index<'a>,
) {
    index.insert(node.id, (node, role, parent));
    match &node.kind {
        Kind::Scalar(..) => {}
        Kind::Seq(items) => items
            .iter()
            .for_each(|n| index_nodes(n, Role::Item, None, index)),
        Kind::Map(entries) => {
            for (k, v) in entries {
                let name = k.text().unwrap_or_default().to_string();
                index_nodes(k, Role::Key, Some((node.id, name.clone())), index);
                index_nodes(v, Role::Value, Some((node.id, name)), index);
            }
        }
    }
}

/// Errors raised on a buffered mapping (internally tagged enums) belong to the key or value
/// they name: `unknown field `x`` to key `x`, `unknown variant `y`` to the value `y`.
fn refine(index: &Index<'_>, id: usize, message: &str, fixes: &Fixes) -> usize {
    let Some((node, ..)) = index.get(&id) else {
        return id;
    };
    let named = |prefix: &str| {
        message
            .split(prefix)
            .nth(1)
            .and_then(|rest| rest.split('`').next())
    };
    let effective = |n: &Node| match fixes.get(&n.id) {
        Some(Fix::Replace(i)) => Some(PLACEHOLDERS[*i].to_string()),
        _ => n.text().map(str::to_string),
    };
    if let Some(field) = named("unknown field `")
        && let Some((k, _)) = node.entry(field)
    {
        return k.id;
    }
    if let Some(variant) = named("unknown variant `")
        && let Some((_, v)) = node
            .entries()
            .iter()
            .find(|(_, v)| effective(v).as_deref() == Some(variant))
    {
        return v.id;
    }
    id
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

/// serde's message, with "did you mean" for an unknown field or variant close to a known one.
pub fn explain(message: &str) -> String {
    for what in ["unknown field", "unknown variant"] {
        let Some(rest) = message.strip_prefix(&format!("{what} `")) else {
            continue;
        };
        let Some((word, tail)) = rest.split_once('`') else {
            continue;
        };
        let known: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        if let Some(best) = did_you_mean(word, known.iter().copied()) {
            return format!("{what} `{word}`; did you mean `{best}`?");
        }
    }
    message.to_string()
}

/// The known name closest to `word`, when it is close enough to be a typo of it.
pub fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    known
        .into_iter()
        .map(|k| (edit_distance(word, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, with a transposition counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2 = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// What a node reads as, placeholders applied.
enum View<'a> {
    Scalar(&'a str, Style),
    Seq(&'a [Node]),
    Map(&'a [(Node, Node)]),
}

/// serde's view of one node.
struct De<'a> {
    node: &'a Node,
    fixes: &'a Fixes,
}

impl<'a> De<'a> {
    fn view(&self) -> View<'a> {
        if let Some(Fix::Replace(i)) = self.fixes.get(&self.node.id) {
            return View::Scalar(PLACEHOLDERS[*i], Style::Plain);
        }
        match &self.node.kind {
            Kind::Scalar(s, style) => View::Scalar(s, *style),
            Kind::Seq(items) => View::Seq(items),
            Kind::Map(entries) => View::Map(entries),
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.view(), View::Scalar(s, Style::Plain) if is_null_text(s))
    }

    fn unexpected(&self) -> Unexpected<'a> {
        match self.view() {
            View::Scalar(s, _) => Unexpected::Str(s),
            View::Seq(_) => Unexpected::Seq,
            View::Map(_) => Unexpected::Map,
        }
    }

    /// Gives an error without a node this one.
    fn here<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|mut e| {
            e.node.get_or_insert(self.node.id);
            e
        })
    }

    fn seq(&self, items: &'a [Node]) -> SeqDe<'a> {
        SeqDe {
            items: items.iter(),
            fixes: self.fixes,
        }
    }

    fn map(&self, entries: &'a [(Node, Node)]) -> MapDe<'a> {
        MapDe {
            entries: entries.iter(),
            value: None,
            fixes: self.fixes,
        }
    }
}

fn visit_scalar<'de, V: Visitor<'de>>(text: &str, style: Style, v: V) -> Result<V::Value, Error> {
    if style != Style::Plain {
        return v.visit_str(text);
    }
    if is_null_text(text) {
        return v.visit_unit();
    }
    match text {
        "true" | "True" | "TRUE" => return v.visit_bool(true),
        "false" | "False" | "FALSE" => return v.visit_bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return v.visit_f64(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return v.visit_f64(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return v.visit_f64(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<u64>() {
            return v.visit_u64(n);
        }
        if let Ok(n) = text.parse::<i64>() {
            return v.visit_i64(n);
        }
    }
    for (prefix, radix) in [("0x", 16), ("0o", 8)] {
        if let Some(n) = text
            .strip_prefix(prefix)
            .and_then(|h| u64::from_str_radix(h, radix).ok())
        {
            return v.visit_u64(n);
        }
    }
    let numeric = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if numeric && let Ok(f) = text.parse::<f64>() {
        return v.visit_f64(f);
    }
    v.visit_str(text)
}

impl<'de> de::Deserializer<'de> for De<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let result = match self.view() {
            View::Scalar(s, style) => visit_scalar(s, style, v),
            View::Seq(items) => v.visit_seq(self.seq(items)),
            View::Map(entries) => v.visit_map(self.map(entries)),
        };
        self.here(result)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        if self.is_null() {
            return self.here(v.visit_none());
        }
        let node = self.node;
        let fixes = self.fixes;
        v.visit_some(De { node, fixes })
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let result = match self.view() {
            View::Scalar(s, _) => v.visit_str(s),
            _ => Err(de::Error::invalid_type(self.unexpected(), &v)),
        };
        self.here(result)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let result = if self.is_null() {
            v.visit_unit()
        } else {
            Err(de::Error::invalid_type(self.unexpected(), &v))
        };
        self.here(result)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let result = match self.view() {
            View::Seq(items) => v.visit_seq(self.seq(items)),
            _ if self.is_null() => v.visit_seq(self.seq(&[])),
            _ => Err(de::Error::invalid_type(self.unexpected(), &v)),
        };
        self.here(result)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let result = match self.view() {
            View::Map(entries) => v.visit_map(self.map(entries)),
            _ if self.is_null() => v.visit_map(self.map(&[])),
            _ => Err(de::Error::invalid_type(self.unexpected(), &v)),
        };
        self.here(result)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let result = match self.view() {
            View::Scalar(s, _) => v.visit_enum(s.into_deserializer()),
            View::Map([(key, value)]) => v.visit_enum(EnumDe {
                key,
                value,
                fixes: self.fixes,
            }),
            _ => Err(de::Error::invalid_type(self.unexpected(), &v)),
        };
        self.here(result)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        let node = self.node;
        let fixes = self.fixes;
        v.visit_newtype_struct(De { node, fixes })
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 bytes byte_buf unit_struct
        tuple_struct
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        count: u64,
        #[serde(default)]
        tags: Vec<String>,
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Fast,
        Slow,
    }

    #[test]
    fn every_error_is_found_in_one_run_at_its_node() {
        let text = "nmae: a\nname: b\ncount: many\ntags: [x, {y: 1}]\nmode: fsat\n";
        let root = super::super::parse(text.as_bytes()).unwrap();
        let (value, found) = collect::<Doc>(&root);
        let places: Vec<(usize, usize)> = found.iter().map(|f| (f.at.line, f.at.col)).collect();
        assert_eq!(places, [(1, 1), (3, 8), (4, 11), (5, 7)], "{found:#?}");
        assert_eq!(
            found[0].message,
            "unknown field `nmae`; did you mean `name`?"
        );
        assert_eq!(
            found[3].message,
            "unknown variant `fsat`; did you mean `fast`?"
        );
        assert!(found[1].message.contains("invalid type"), "{found:?}");
        // The rest still deserialised, with placeholders where the errors were.
        assert_eq!(value.unwrap().name, "b");
    }

    #[test]
    fn a_missing_field_is_reported_at_its_mapping() {
        let root = super::super::parse(b"name: a\n").unwrap();
        let (value, found) = collect::<Doc>(&root);
        assert!(value.is_none());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].message, "missing field `count`");
    }

    #[test]
    fn typos_are_matched_to_near_names_only() {
        assert_eq!(
            did_you_mean("treshold", ["threshold", "spike"]),
            Some("threshold")
        );
        assert_eq!(did_you_mean("syslgo", ["syslog", "paths"]), Some("syslog"));
        assert_eq!(did_you_mean("zzz", ["threshold", "spike"]), None);
    }
}
