//! The literal gate of [`super::Front::Gate`]: which distinct patterns may match a line,
//! from the required literals ([`crate::detection::literals`]) it holds.
//!
//! Apart from the matcher because it is a self-contained automaton with its own invariants
//! (the hand-walked DFA must report what aho-corasick's iterator reports; the screen's
//! newline rule) and knows nothing of rules, captures or the combined set: it maps pattern
//! texts to pattern ids, and the matcher maps those ids to rules.

use crate::detection::literals;
use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{Anchored, MatchKind as LiteralMatchKind};
use std::ops::Range;
use std::sync::Arc;

/// A literal automaton (Aho-Corasick, full DFA, every match reported) walked byte by byte
/// through its transition table. The crate's own search loops ask per byte whether a
/// prefilter, an overlapping state or a match index is pending; on lines that hold a
/// literal every few dozen bytes that bookkeeping cost three times the table walk
/// (docs/performance.md). The walk reports exactly what `find_overlapping_iter` would.
#[derive(Clone)]
struct LiteralDfa {
    dfa: Arc<aho_corasick::dfa::DFA>,
    start: StateID,
}

impl LiteralDfa {
    /// The automaton over `literals`; an error for an empty literal (it would match
    /// everywhere, which the callers express as "no automaton") or beyond the crate's
    /// limits.
    fn new(literals: &[Vec<u8>]) -> Result<Self, String> {
        if literals.iter().any(Vec::is_empty) {
            return Err("an empty literal".to_string());
        }
        let dfa = aho_corasick::dfa::Builder::new()
            .match_kind(LiteralMatchKind::Standard)
            // The walk below uses no prefilter; without one the start state is plain.
            .prefilter(false)
            .build(literals)
            .map_err(|e| e.to_string())?;
        let start = dfa.start_state(Anchored::No).map_err(|e| e.to_string())?;
        Ok(LiteralDfa {
            dfa: Arc::new(dfa),
            start,
        })
    }

    /// The state after `byte` in state `sid`, and whether literals end there.
    #[inline(always)]
    fn step(&self, sid: StateID, byte: u8) -> (StateID, bool) {
        let next = self.dfa.next_state(Anchored::No, sid, byte);
        (next, self.dfa.is_special(next) && self.dfa.is_match(next))
    }

    /// Calls `found` with the automaton pattern id of every literal occurrence in `hay`,
    /// in the order their ends come (and within one end, the automaton's order).
    fn each_match(&self, hay: &[u8], mut found: impl FnMut(usize)) {
        let mut sid = self.start;
        for &byte in hay {
            let (next, matched) = self.step(sid, byte);
            sid = next;
            if matched {
                for i in 0..self.dfa.match_len(sid) {
                    found(self.dfa.match_pattern(sid, i).as_usize());
                }
            }
        }
    }
}

/// The literal gate of one source: a pattern is a candidate on a line that holds a string
/// of each of its required sets.
#[derive(Clone)]
pub(super) struct Gate {
    /// Over every distinct required literal; `None` when no pattern has one.
    literals: Option<LiteralDfa>,
    /// Per literal (automaton pattern id): the distinct patterns it counts for, each with
    /// the bit of the pattern's required set it belongs to.
    admits: Vec<Vec<(usize, u8)>>,
    /// Per distinct pattern: the bits of all its required sets (a line must show each).
    needed: Vec<u8>,
    /// Patterns without a required literal: candidates on every line.
    always: Vec<usize>,
    /// Per distinct pattern: the line its sets were last seen on, and which were.
    seen: Vec<(u64, u8)>,
    /// One required set per pattern ([`Gate::screen_automaton`]): one pass over a whole
    /// run of lines names the lines that may hold a candidate ([`Gate::screen`]). `None`
    /// when some pattern has no literal or a literal holds a newline (it could span two
    /// lines).
    screen: Option<LiteralDfa>,
}

impl Gate {
    pub(super) fn new(texts: &[&str]) -> Self {
        let mut literal_ids: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        let mut literal_list: Vec<Vec<u8>> = Vec::new();
        let mut admits: Vec<Vec<(usize, u8)>> = Vec::new();
        let mut needed = vec![0u8; texts.len()];
        let mut always = Vec::new();
        for (id, text) in texts.iter().enumerate() {
            match literals::required(text) {
                Some(sets) => {
                    for (bit, set) in sets.into_iter().enumerate() {
                        let bit = 1u8 << bit;
                        needed[id] |= bit;
                        for literal in set {
                            let at = *literal_ids.entry(literal.clone()).or_insert_with(|| {
                                literal_list.push(literal);
                                admits.push(Vec::new());
                                admits.len() - 1
                            });
                            admits[at].push((id, bit));
                        }
                    }
                }
                None => always.push(id),
            }
        }
        let literals = if literal_list.is_empty() {
            None
        } else {
            match LiteralDfa::new(&literal_list) {
                Ok(automaton) => Some(automaton),
                Err(e) => {
                    // Cannot happen within the automaton's limits; if it does, every
                    // pattern runs, which is slower but never wrong.
                    tracing::warn!(error = %e, "literal gate not built; running every pattern");
                    always = (0..texts.len()).collect();
                    admits.clear();
                    None
                }
            }
        };
        let screen = Self::screen_automaton(texts, &always);
        Gate {
            literals,
            admits,
            needed,
            always,
            seen: vec![(u64::MAX, 0); texts.len()],
            screen,
        }
    }

    /// The screen's automaton: per pattern, only its most selective required set (the one
    /// whose shortest literal is longest: a line must hold one of each set, so one set is
    /// enough to rule a line out), so that common literals of a pattern's other sets
    /// (` from `, ` port `) do not name nearly every line. `None` when some pattern has no
    /// literal (every line is a candidate) or a literal holds a newline.
    fn screen_automaton(texts: &[&str], always: &[usize]) -> Option<LiteralDfa> {
        if !always.is_empty() {
            return None;
        }
        let mut chosen: Vec<Vec<u8>> = Vec::new();
        for text in texts {
            let sets = literals::required(text)?;
            let best = sets
                .into_iter()
                .max_by_key(|set| set.iter().map(Vec::len).min().unwrap_or(0))?;
            chosen.extend(best);
        }
        chosen.sort();
        chosen.dedup();
        if chosen.iter().any(|l| l.contains(&b'\n')) {
            return None;
        }
        LiteralDfa::new(&chosen).ok()
    }

    /// Marks in `marked` (one flag per range of `lines`) the lines of `text` that may hold
    /// a candidate: every line when there is no screen, else the lines whose range holds a
    /// literal of the screen, found in one walk over `text` from the first line's start to
    /// the last line's end (a marked line's rest is skipped: the gate reads it). `lines`
    /// must be in order and each followed in `text` by a newline before the next starts:
    /// no literal holds one, so a literal that ends inside a line's range starts inside it.
    pub(super) fn screen(&self, text: &[u8], lines: &[Range<usize>], marked: &mut Vec<bool>) {
        marked.clear();
        let (Some(screen), Some(first), Some(last)) = (&self.screen, lines.first(), lines.last())
        else {
            marked.resize(lines.len(), true);
            return;
        };
        marked.resize(lines.len(), false);
        let text = &text[..last.end];
        let mut line = 0;
        let mut at = first.start;
        let mut sid = screen.start;
        while at < text.len() {
            let (next, matched) = screen.step(sid, text[at]);
            sid = next;
            at += 1;
            if !matched {
                continue;
            }
            // A literal ends at `at`: in the first line whose range ends at or after it,
            // if it ends after that range's start (else it lies in the gap before it).
            while line < lines.len() && lines[line].end < at {
                line += 1;
            }
            let Some(range) = lines.get(line) else { break };
            if at <= range.start {
                continue;
            }
            marked[line] = true;
            // The rest of a marked line is the gate's: go on from the next line.
            line += 1;
            match lines.get(line) {
                Some(next) => {
                    at = next.start;
                    sid = screen.start;
                }
                None => break,
            }
        }
    }

    /// Calls `admit` once for each distinct pattern that may match `line` (number `at`).
    pub(super) fn admit(&mut self, line: &[u8], at: u64, mut admit: impl FnMut(usize)) {
        for &id in &self.always {
            admit(id);
        }
        let Some(literals) = &self.literals else {
            return;
        };
        let (admits, seen, needed) = (&self.admits, &mut self.seen, &self.needed);
        literals.each_match(line, |literal| {
            for &(id, bit) in &admits[literal] {
                let seen = &mut seen[id];
                if seen.0 != at {
                    *seen = (at, 0);
                }
                let before = seen.1;
                seen.1 |= bit;
                // Admitted once: when the last of its sets shows up.
                if seen.1 != before && seen.1 == needed[id] {
                    admit(id);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DFA walk reports exactly the overlapping matches aho-corasick's own iterator
    /// reports, in the same order, on random haystacks over the literals' bytes.
    #[test]
    fn the_dfa_walk_finds_what_the_overlapping_iterator_finds() {
        let mut rng = fastrand::Rng::with_seed(22);
        for _ in 0..200 {
            let literals: Vec<Vec<u8>> = (0..rng.usize(1..12))
                .map(|_| {
                    (0..rng.usize(1..5))
                        .map(|_| b"abc d"[rng.usize(0..5)])
                        .collect()
                })
                .collect();
            let walk = LiteralDfa::new(&literals).unwrap();
            let reference = aho_corasick::AhoCorasick::builder()
                .match_kind(LiteralMatchKind::Standard)
                .build(&literals)
                .unwrap();
            for _ in 0..20 {
                let hay: Vec<u8> = (0..rng.usize(0..60))
                    .map(|_| b"abc d\n"[rng.usize(0..6)])
                    .collect();
                let mut walked = Vec::new();
                walk.each_match(&hay, |id| walked.push(id));
                let expected: Vec<usize> = reference
                    .find_overlapping_iter(&hay)
                    .map(|m| m.pattern().as_usize())
                    .collect();
                assert_eq!(walked, expected, "{literals:?} on {hay:?}");
            }
        }
        assert!(LiteralDfa::new(&[b"a".to_vec(), Vec::new()]).is_err());
    }
}
