//! Required literals of a pattern: sets of byte strings such that every match of the
//! pattern contains one string of each set. They let the matcher skip a pattern on a line
//! that lacks one of the sets (the literal gate), which is most lines for most patterns.
//! Several sets together are what make a gate selective: ` from ` alone is on most sshd
//! lines, ` from ` and `Failed ` together only on failed logins.
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
pub const MIN_LITERAL: usize = 3;
/// Most sets a pattern is gated on (each costs a little per line it is found on).
const MAX_SETS: usize = 4;

/// Strings one of which a match contains.
type Set = Vec<Vec<u8>>;

/// What is known about the strings a piece of a pattern matches.
#[derive(Debug, Clone)]
struct Facts {
    /// Every string it can match, when that is a small finite set.
    exact: Option<Vec<Vec<u8>>>,
    /// Sets of strings, one string of each of which every match contains (none empty),
    /// best first.
    required: Vec<Set>,
}

/// How selective a set is: its shortest string's length, then fewer strings.
fn score(set: &Set) -> (usize, std::cmp::Reverse<usize>) {
    (
        set.iter().map(Vec::len).min().unwrap_or(0),
        std::cmp::Reverse(set.len()),
    )
}

/// The best `MAX_SETS` of `sets`, best first, without duplicates or sets holding an empty
/// string (which every line contains).
fn best(mut sets: Vec<Set>) -> Vec<Set> {
    sets.retain(|s| !s.is_empty() && s.iter().all(|x| !x.is_empty()));
    for set in &mut sets {
        set.sort();
        set.dedup();
    }
    sets.sort_by(|a, b| score(b).cmp(&score(a)).then_with(|| a.cmp(b)));
    sets.dedup();
    sets.truncate(MAX_SETS);
    sets
}

/// Sets of literals such that every match of `pattern` contains one of each set, or
/// `None` when the pattern has no such set worth gating on (it must then run on every
/// line).
pub fn required(pattern: &str) -> Option<Vec<Set>> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    let mut sets = facts(&hir).required;
    sets.retain(|set| set.iter().all(|s| s.len() >= MIN_LITERAL));
    (!sets.is_empty()).then_some(sets)
}

fn facts(hir: &Hir) -> Facts {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Facts {
            exact: Some(vec![Vec::new()]),
            required: Vec::new(),
        },
        HirKind::Literal(lit) => {
            let bytes = lit.0.to_vec();
            Facts {
                exact: Some(vec![bytes.clone()]),
                required: vec![vec![bytes]],
            }
        }
        HirKind::Class(class) => {
            let exact = class_strings(class);
            Facts {
                required: best(exact.iter().cloned().collect()),
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
                Facts {
                    exact: None,
                    required: Vec::new(),
                }
            }
        }
        HirKind::Alternation(branches) => {
            // A match contains a string of one set of the branch it took: the union of
            // one set of each branch.
            let all: Vec<Facts> = branches.iter().map(facts).collect();
            let chosen = branch_sets(&all);
            Facts {
                exact: union(all.iter().map(|f| f.exact.as_ref())),
                required: union(chosen.into_iter()).map_or_else(Vec::new, |set| best(vec![set])),
            }
        }
        HirKind::Concat(children) => concat(children),
    }
}

/// The set each branch of an alternation brings to their union (`None` for a branch that
/// requires nothing, which leaves the union without a requirement): the branch's best,
/// unless one of its strings is held by another branch's string and a later set of the
/// branch has none such. A string held by another branch's literal is at least as common
/// as that literal, and in the union it stands for both: `User .* from ` choosing
/// ` from ` would let every line holding ` from ` pass for `Received disconnect from `
/// too, where `User ` passes only lines that hold the branch's own literal. Either set is
/// required by every match of the branch, so the choice only changes how many lines the
/// gate lets through, never a match.
fn branch_sets(all: &[Facts]) -> Vec<Option<&Set>> {
    let firsts: Vec<Option<&Set>> = all.iter().map(|f| f.required.first()).collect();
    let held_by_another = |branch: usize, set: &Set| {
        set.iter().any(|s| {
            firsts.iter().enumerate().any(|(other, theirs)| {
                other != branch
                    && theirs.is_some_and(|theirs| theirs.iter().any(|t| t != s && contains(t, s)))
            })
        })
    };
    firsts
        .iter()
        .enumerate()
        .map(|(branch, first)| {
            let first = (*first)?;
            if !held_by_another(branch, first) {
                return Some(first);
            }
            let own = all[branch].required[1..].iter().find(|set| {
                set.iter().all(|s| s.len() >= MIN_LITERAL) && !held_by_another(branch, set)
            });
            Some(own.unwrap_or(first))
        })
        .collect()
}

/// Whether `hay` holds `needle`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// A concatenation: adjacent finite pieces multiply into longer literals (`Failed ` then
/// `[Pp]assword` is two strings of 15 bytes); the best of those runs and of the children's
/// own requirements is the requirement.
fn concat(children: &[Hir]) -> Facts {
    let mut candidates: Vec<Set> = Vec::new();
    let mut run: Vec<Vec<u8>> = vec![Vec::new()];
    let mut whole: Option<Vec<Vec<u8>>> = Some(vec![Vec::new()]);
    for child in children {
        let child = facts(child);
        candidates.extend(child.required);
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
        required: best(candidates),
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
    // Counted first: most classes (`\S`, `\w`, `[^"]`) are far too large to list.
    let count: usize = match class {
        Class::Bytes(bytes) => bytes
            .iter()
            .map(|r| usize::from(r.end() - r.start()) + 1)
            .sum(),
        Class::Unicode(chars) => chars
            .iter()
            .map(|r| (u32::from(r.end()) - u32::from(r.start())) as usize + 1)
            .sum(),
    };
    if count > MAX_STRINGS {
        return None;
    }
    let mut out = Vec::with_capacity(count);
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

    /// The best required set.
    fn strings(pattern: &str) -> Option<Vec<String>> {
        required(pattern).map(|sets| {
            sets[0]
                .iter()
                .map(|s| String::from_utf8(s.clone()).unwrap())
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
    fn every_required_run_is_a_set_of_its_own() {
        let sets =
            required(r"sshd\[\d+\]: (?:User|Failed \S+ for) .* from (?P<ip>\S+) port").unwrap();
        let sets: Vec<Vec<&str>> = sets
            .iter()
            .map(|set| {
                set.iter()
                    .map(|s| std::str::from_utf8(s).unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(
            sets,
            vec![
                vec![" from "],
                vec![" port"],
                vec!["sshd["],
                vec!["Failed ", "User"]
            ]
        );
    }

    /// A branch whose best literal another branch's literal holds (` from ` in `Received
    /// disconnect from `) brings its own literal to the union instead (`User `), when it
    /// has one that no other branch's literal holds; a branch without one keeps its best.
    #[test]
    fn a_branch_brings_its_own_literal_rather_than_one_another_branch_holds() {
        assert_eq!(
            strings(r"x(?:Received disconnect from |User .* from )(?P<ip>\S+)"),
            Some(vec!["Received disconnect from ".into(), "User ".into()])
        );
        // `port` is held by `Failed port`, but its branch has no other literal.
        assert_eq!(
            strings(r"(?:Failed port|x*port)"),
            Some(vec!["Failed port".into(), "port".into()])
        );
        // An alternative no longer than two bytes is not taken (it would be dropped).
        assert_eq!(
            strings(r"(?:Received disconnect from |ab.* from )"),
            Some(vec![" from ".into(), "Received disconnect from ".into()])
        );
        // The shipped ssh failure pattern: an `Accepted … from` line holds none of its
        // union's strings.
        let sets = required(concat!(
            r"sshd(?:\[\d+\])?: (?:Failed \S+ for .* from |(?:Invalid|Illegal) user .* from |",
            r"User .* from |Received disconnect from )(?P<ip>\S+)"
        ))
        .unwrap();
        let line = b"sshd[1]: Accepted publickey for deploy from 10.0.0.1 port 22 ssh2";
        assert!(
            sets.iter()
                .any(|set| set.iter().all(|s| !contains(line, s))),
            "{sets:?}"
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
