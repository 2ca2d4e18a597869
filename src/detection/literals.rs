//! Required literals of a pattern: a set of byte strings one of which every match of the
//! pattern contains. They let the matcher skip a pattern on a line that holds none of them
//! (the literal gate), which is most lines for most patterns.
//!
//! Derived from the pattern's syntax tree, parsed the way [`crate::rules::compile_pattern`]
//! compiles it (bytes, no Unicode classes). The derivation only ever under-claims: a node it
//! cannot reason about yields no requirement, and a pattern without one is run on every
//! line. So the gate can cost time but never a match.

use regex_syntax::hir::{Class, Hir, HirKind};

/// Most strings a finite piece of a pattern may stand for before it is treated as
/// unknown (`[Pp]assword` is 2, `(?i)failed` 64).
const MAX_STRINGS: usize = 64;
/// Shortest literal worth gating on: shorter ones are on almost every line.
const MIN_LITERAL: usize = 3;

/// What is known about the strings a piece of a pattern matches.
#[derive(Debug, Clone, Default)]
struct Facts {
    /// Every string it can match, when that is a small finite set.
    exact: Option<Vec<Vec<u8>>>,
    /// A set of strings one of which every match contains (none empty).
    required: Option<Vec<Vec<u8>>>,
}

/// The literals one of which every match of `pattern` contains, or `None` when the pattern
/// has no such set worth gating on (it must then run on every line).
pub fn required(pattern: &str) -> Option<Vec<Vec<u8>>> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    let mut set = facts(&hir).required?;
    if set.iter().any(|s| s.len() < MIN_LITERAL) {
        return None;
    }
    set.sort();
    set.dedup();
    Some(set)
}

fn facts(hir: &Hir) -> Facts {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Facts {
            exact: Some(vec![Vec::new()]),
            required: None,
        },
        HirKind::Literal(lit) => {
            let bytes = lit.0.to_vec();
            Facts {
                exact: Some(vec![bytes.clone()]),
                required: Some(vec![bytes]),
            }
        }
        HirKind::Class(class) => {
            let exact = class_strings(class);
            Facts {
                required: exact.clone(),
                exact,
            }
        }
        HirKind::Capture(capture) => facts(&capture.sub),
        HirKind::Repetition(rep) => {
            let sub = facts(&rep.sub);
            if rep.min == 1 && rep.max == Some(1) {
                sub
            } else if rep.min >= 1 {
                Facts {
                    exact: None,
                    required: sub.required,
                }
            } else {
                Facts::default()
            }
        }
        HirKind::Alternation(branches) => {
            let all: Vec<Facts> = branches.iter().map(facts).collect();
            Facts {
                exact: union(all.iter().map(|f| f.exact.as_ref())),
                required: union(all.iter().map(|f| f.required.as_ref())),
            }
        }
        HirKind::Concat(children) => concat(children),
    }
}

/// A concatenation: adjacent finite pieces multiply into longer literals (`Failed ` then
/// `[Pp]assword` is two strings of 15 bytes); the best of those runs and of the children's
/// own requirements is the requirement.
fn concat(children: &[Hir]) -> Facts {
    let mut candidates: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut run: Vec<Vec<u8>> = vec![Vec::new()];
    let mut whole: Option<Vec<Vec<u8>>> = Some(vec![Vec::new()]);
    for child in children {
        let child = facts(child);
        if let Some(required) = child.required {
            candidates.push(required);
        }
        match child.exact {
            Some(exact) => {
                whole = whole.and_then(|w| product(&w, &exact));
                match product(&run, &exact) {
                    Some(longer) => run = longer,
                    None => {
                        candidates.push(std::mem::replace(&mut run, exact));
                    }
                }
            }
            None => {
                whole = None;
                candidates.push(std::mem::replace(&mut run, vec![Vec::new()]));
            }
        }
    }
    candidates.push(run);
    Facts {
        exact: whole,
        required: candidates
            .into_iter()
            .filter(|c| c.iter().all(|s| !s.is_empty()))
            .max_by_key(|c| (c.iter().map(Vec::len).min(), std::cmp::Reverse(c.len()))),
    }
}

/// Every pairing of a string of `a` followed by one of `b`, if not too many.
fn product(a: &[Vec<u8>], b: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    if a.len() * b.len() > MAX_STRINGS {
        return None;
    }
    Some(
        a.iter()
            .flat_map(|x| {
                b.iter().map(move |y| {
                    let mut s = x.clone();
                    s.extend_from_slice(y);
                    s
                })
            })
            .collect(),
    )
}

/// All of the sets together, if each is known and they are not too many.
fn union<'a>(sets: impl Iterator<Item = Option<&'a Vec<Vec<u8>>>>) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for set in sets {
        out.extend(set?.iter().cloned());
        if out.len() > MAX_STRINGS {
            return None;
        }
    }
    Some(out)
}

/// The strings a small class matches (each byte, or each character's UTF-8 encoding).
fn class_strings(class: &Class) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    match class {
        Class::Bytes(bytes) => {
            for range in bytes.iter() {
                for b in range.start()..=range.end() {
                    out.push(vec![b]);
                    if out.len() > MAX_STRINGS {
                        return None;
                    }
                }
            }
        }
        Class::Unicode(chars) => {
            for range in chars.iter() {
                if u32::from(range.end()) - u32::from(range.start()) >= MAX_STRINGS as u32 {
                    return None;
                }
                for c in range.start()..=range.end() {
                    out.push(c.to_string().into_bytes());
                    if out.len() > MAX_STRINGS {
                        return None;
                    }
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(pattern: &str) -> Option<Vec<String>> {
        required(pattern).map(|set| {
            set.into_iter()
                .map(|s| String::from_utf8(s).unwrap())
                .collect()
        })
    }

    #[test]
    fn the_longest_required_run_is_chosen() {
        assert_eq!(
            strings(r"sshd\[\d+\]: Failed password for (?P<u>.*) from (?P<ip>\S+)"),
            Some(vec!["]: Failed password for ".into()])
        );
        assert_eq!(
            strings(r"Failed [Pp]assword for"),
            Some(vec![
                "Failed Password for".into(),
                "Failed password for".into()
            ])
        );
    }

    #[test]
    fn alternatives_each_bring_their_own_literal() {
        assert_eq!(
            strings(r"x(?:Invalid user|Failed \S+ for) (?P<u>.*)"),
            Some(vec!["Failed ".into(), "Invalid user".into()])
        );
        assert_eq!(
            strings(r"(?i)fail"),
            Some(
                [
                    "FAIL", "FAIl", "FAiL", "FAil", "FaIL", "FaIl", "FaiL", "Fail"
                ]
                .iter()
                .chain(&[
                    "fAIL", "fAIl", "fAiL", "fAil", "faIL", "faIl", "faiL", "fail"
                ])
                .map(|s| s.to_string())
                .collect()
            )
        );
    }

    #[test]
    fn optional_or_unknown_pieces_require_nothing() {
        for pattern in [r"\S+", r"(?:abc)?\d+", r"abc|\d+", r"a.b", r"(?:xyz)*"] {
            assert_eq!(strings(pattern), None, "{pattern}");
        }
        assert_eq!(strings(r"(?:abc)+\d"), Some(vec!["abc".into()]));
    }
}
