//! The literal gate of [`super::Front::Gate`]: which distinct patterns may match a line,
//! from the required literals ([`crate::detection::literals`]) it holds.
//!
//! Apart from the matcher because it is a self-contained searcher with its own invariants
//! (the literals it names on a line are exactly those aho-corasick's overlapping iterator
//! reports; the screen's newline rule) and knows nothing of rules, captures or the combined
//! set: it maps pattern texts to pattern ids, and the matcher maps those ids to rules.

use crate::detection::literals;
use aho_corasick::packed;
use aho_corasick::{AhoCorasick, Input, MatchKind as LiteralMatchKind};
use std::ops::Range;
use std::sync::Arc;

/// Finds literals by where they start: from a position, the leftmost occurrence of any
/// literal, the longest one starting there. Every literal occurring at that start is a
/// prefix of that longest one, so restarting one byte after each start names every
/// literal a line holds with one search per occurrence start, where an automaton walk
/// pays a dependent table load per byte (docs/performance.md).
///
/// Up to 64 literals this is aho-corasick's packed SIMD searcher (Teddy), which skips
/// whole blocks of bytes no literal can start in; beyond, or on a CPU without the vector
/// instructions, the crate's automaton with its own prefilter. Both report the same.
#[derive(Clone)]
enum LiteralFinder {
    Packed(Arc<packed::Searcher>),
    Automaton(Arc<AhoCorasick>),
}

impl LiteralFinder {
    /// The finder over `literals` (pattern ids are their indexes); an error for an empty
    /// literal (it would match everywhere, which the callers express as "no finder") or
    /// beyond the crate's limits.
    fn new(literals: &[Vec<u8>]) -> Result<Self, String> {
        if literals.is_empty() || literals.iter().any(Vec::is_empty) {
            return Err("no literal, or an empty one".to_string());
        }
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(literals)
            .build();
        if let Some(searcher) = packed {
            return Ok(LiteralFinder::Packed(Arc::new(searcher)));
        }
        Self::automaton(literals)
    }

    /// The automaton kind alone (what [`LiteralFinder::new`] falls back to).
    fn automaton(literals: &[Vec<u8>]) -> Result<Self, String> {
        let automaton = AhoCorasick::builder()
            .match_kind(LiteralMatchKind::LeftmostLongest)
            .build(literals)
            .map_err(|e| e.to_string())?;
        Ok(LiteralFinder::Automaton(Arc::new(automaton)))
    }

    /// The leftmost literal occurrence inside `hay[span]` (the longest of those starting
    /// there): its literal and where it starts.
    #[inline]
    fn find(&self, hay: &[u8], span: Range<usize>) -> Option<(usize, usize)> {
        let found = match self {
            LiteralFinder::Packed(searcher) => searcher.find_in(hay, span.into()),
            LiteralFinder::Automaton(automaton) => automaton.find(Input::new(hay).span(span)),
        };
        found.map(|m| (m.pattern().as_usize(), m.start()))
    }

    /// Calls `found` with the longest literal starting at each position of `hay` where
    /// one starts, in order: every literal `hay` holds is a prefix of one of them.
    #[inline]
    fn each_start(&self, hay: &[u8], mut found: impl FnMut(usize)) {
        let mut at = 0;
        while let Some((literal, start)) = self.find(hay, at..hay.len()) {
            found(literal);
            at = start + 1;
        }
    }
}

/// The literal gate of one source: a pattern is a candidate on a line that holds a string
/// of each of its required sets.
#[derive(Clone)]
pub(super) struct Gate {
    /// Over every distinct required literal; `None` when no pattern has one.
    literals: Option<LiteralFinder>,
    /// Per literal (finder pattern id): the distinct patterns it and the literals that are
    /// prefixes of it count for ([`LiteralFinder::each_start`] reports only the longest
    /// literal at a start), each with the bit of the pattern's required set it belongs to.
    admits: Vec<Vec<(usize, u8)>>,
    /// Per distinct pattern: the bits of all its required sets (a line must show each).
    needed: Vec<u8>,
    /// Patterns without a required literal: candidates on every line.
    always: Vec<usize>,
    /// Per distinct pattern: the line its sets were last seen on, and which were.
    seen: Vec<(u64, u8)>,
    /// One required set per pattern ([`Gate::screen_finder`]): one search over a whole
    /// run of lines names the lines that may hold a candidate ([`Gate::screen`]). `None`
    /// when some pattern has no literal or a literal holds a newline (it could span two
    /// lines).
    screen: Option<Screen>,
}

/// The screen's finder, and per literal of it the length of its shortest prefix among
/// them (the shortest literal that occurs wherever it does, at the same start).
#[derive(Clone)]
struct Screen {
    finder: LiteralFinder,
    shortest: Vec<usize>,
}

impl Gate {
    pub(super) fn new(texts: &[&str]) -> Self {
        let mut literal_ids: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        let mut literal_list: Vec<Vec<u8>> = Vec::new();
        let mut own: Vec<Vec<(usize, u8)>> = Vec::new();
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
                                own.push(Vec::new());
                                own.len() - 1
                            });
                            own[at].push((id, bit));
                        }
                    }
                }
                None => always.push(id),
            }
        }
        let mut admits = Vec::new();
        let literals = if literal_list.is_empty() {
            None
        } else {
            match LiteralFinder::new(&literal_list) {
                Ok(finder) => {
                    admits = with_prefixes(&literal_list, &own);
                    Some(finder)
                }
                Err(e) => {
                    // Cannot happen within the crate's limits; if it does, every pattern
                    // runs, which is slower but never wrong.
                    tracing::warn!(error = %e, "literal gate not built; running every pattern");
                    always = (0..texts.len()).collect();
                    None
                }
            }
        };
        let screen = Self::screen_finder(texts, &always);
        Gate {
            literals,
            admits,
            needed,
            always,
            seen: vec![(u64::MAX, 0); texts.len()],
            screen,
        }
    }

    /// The screen's finder: per pattern, only its most selective required set (the one
    /// whose shortest literal is longest: a line must hold one of each set, so one set is
    /// enough to rule a line out), so that common literals of a pattern's other sets
    /// (` from `, ` port `) do not name nearly every line. `None` when some pattern has no
    /// literal (every line is a candidate) or a literal holds a newline.
    fn screen_finder(texts: &[&str], always: &[usize]) -> Option<Screen> {
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
        let shortest = chosen
            .iter()
            .map(|literal| {
                let prefixes = chosen.iter().filter(|other| literal.starts_with(other));
                prefixes.map(Vec::len).min().unwrap_or(literal.len())
            })
            .collect();
        Some(Screen {
            finder: LiteralFinder::new(&chosen).ok()?,
            shortest,
        })
    }

    /// Marks in `marked` (one flag per range of `lines`) the lines of `text` that may hold
    /// a candidate: every line when there is no screen, else the lines whose range holds a
    /// literal of the screen, found by searches over `text` from the first line's start to
    /// the last line's end, each going on from the line after the last one marked (the
    /// rest of a marked line is the gate's). `lines` must be in order and each followed in
    /// `text` by a newline before the next starts: no literal holds one, so a literal that
    /// starts inside a line's range and ends by its end lies inside it.
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
        while let Some((literal, start)) = screen.finder.find(text, at..text.len()) {
            // The first line whose range ends after the literal's start holds it, if it
            // starts there and the shortest literal starting there ends by the range's end
            // (else it lies in a gap between lines, or runs past a line cut short of its
            // newline: look on after that start).
            while line < lines.len() && lines[line].end <= start {
                line += 1;
            }
            let Some(range) = lines.get(line) else { break };
            if start < range.start || start + screen.shortest[literal] > range.end {
                at = start + 1;
                continue;
            }
            marked[line] = true;
            line += 1;
            match lines.get(line) {
                Some(next) => at = next.start,
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
        literals.each_start(line, |literal| {
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

/// Per literal of `literals`: what `own` lists for it and for every other literal that is
/// a prefix of it (they occur wherever it does, at the same start).
fn with_prefixes(literals: &[Vec<u8>], own: &[Vec<(usize, u8)>]) -> Vec<Vec<(usize, u8)>> {
    literals
        .iter()
        .map(|literal| {
            let mut all: Vec<(usize, u8)> = literals
                .iter()
                .zip(own)
                .filter(|(other, _)| literal.starts_with(other))
                .flat_map(|(_, admits)| admits.iter().copied())
                .collect();
            all.sort_unstable();
            all.dedup();
            all
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Whether aho-corasick's packed searcher can run on this CPU (its SIMD code is for
    /// x86-64 with SSSE3 and for aarch64): the tests then require that it did.
    fn simd() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("ssse3");
        #[cfg(not(target_arch = "x86_64"))]
        return cfg!(target_arch = "aarch64");
    }

    /// Random short strings over a small alphabet, so that literals overlap, nest and are
    /// prefixes of each other often.
    fn random_bytes(rng: &mut fastrand::Rng, alphabet: &[u8], len: Range<usize>) -> Vec<u8> {
        (0..rng.usize(len))
            .map(|_| alphabet[rng.usize(0..alphabet.len())])
            .collect()
    }

    /// Both kinds of finder, restarted after each start and with each literal's prefixes
    /// added, name exactly the distinct literals aho-corasick's overlapping iterator
    /// reports, on random haystacks (long enough for the SIMD path and short enough for
    /// its fallback).
    #[test]
    fn the_finder_names_every_literal_the_overlapping_iterator_finds() {
        let mut rng = fastrand::Rng::with_seed(22);
        let mut packed = 0;
        for _ in 0..400 {
            let mut literals: Vec<Vec<u8>> = (0..rng.usize(1..20))
                .map(|_| random_bytes(&mut rng, b"abc d", 1..6))
                .collect();
            literals.sort();
            literals.dedup();
            let reference = AhoCorasick::builder()
                .match_kind(LiteralMatchKind::Standard)
                .build(&literals)
                .unwrap();
            let own: Vec<Vec<(usize, u8)>> = (0..literals.len()).map(|i| vec![(i, 1)]).collect();
            let expand = with_prefixes(&literals, &own);
            let finders = [
                LiteralFinder::new(&literals).unwrap(),
                LiteralFinder::automaton(&literals).unwrap(),
            ];
            packed += usize::from(matches!(finders[0], LiteralFinder::Packed(_)));
            for _ in 0..30 {
                let hay = random_bytes(&mut rng, b"abc d\n", 0..120);
                let expected: BTreeSet<usize> = reference
                    .find_overlapping_iter(&hay)
                    .map(|m| m.pattern().as_usize())
                    .collect();
                for finder in &finders {
                    let mut named = BTreeSet::new();
                    finder.each_start(&hay, |l| named.extend(expand[l].iter().map(|x| x.0)));
                    assert_eq!(named, expected, "{literals:?} on {hay:?}");
                }
            }
        }
        assert!(
            !simd() || packed > 100,
            "the SIMD searcher ran {packed} times"
        );
        assert!(LiteralFinder::new(&[b"a".to_vec(), Vec::new()]).is_err());
        assert!(LiteralFinder::new(&[]).is_err());
    }

    /// Random patterns built from literals (concatenated with gaps, alternated, optional
    /// pieces) and their candidates by definition: a pattern without required literals
    /// on every line, any other on the lines that contain a string of each of its sets.
    fn random_patterns(rng: &mut fastrand::Rng, count: usize) -> Vec<String> {
        let word =
            |rng: &mut fastrand::Rng| String::from_utf8(random_bytes(rng, b"abcdx", 3..7)).unwrap();
        (0..count)
            .map(|_| {
                let pieces: Vec<String> = (0..rng.usize(1..4))
                    .map(|_| match rng.usize(0..4) {
                        0 => format!("(?:{}|{})", word(rng), word(rng)),
                        1 => format!("(?:{})?", word(rng)),
                        2 => "[a-d]+".to_string(),
                        _ => word(rng),
                    })
                    .collect();
                pieces.join(".*")
            })
            .collect()
    }

    fn by_definition(texts: &[String], line: &[u8]) -> BTreeSet<usize> {
        let holds = |s: &Vec<u8>| line.windows(s.len()).any(|w| w == s.as_slice());
        texts
            .iter()
            .enumerate()
            .filter(|(_, text)| match literals::required(text) {
                None => true,
                Some(sets) => sets.iter().all(|set| set.iter().any(holds)),
            })
            .map(|(id, _)| id)
            .collect()
    }

    /// The gate admits exactly the patterns whose every required set the line holds (no
    /// candidate dropped, none added), each once, over many random pattern sets, few
    /// literals (the SIMD searcher) and many (the automaton); and its screen marks every
    /// line that has a candidate, and with newline-separated lines exactly the lines that
    /// hold a screen literal.
    #[test]
    fn the_gate_admits_exactly_the_patterns_whose_sets_a_line_holds() {
        let mut rng = fastrand::Rng::with_seed(2022);
        let mut kinds = BTreeSet::new();
        for round in 0..300 {
            let count = if round % 10 == 0 { 40 } else { rng.usize(1..8) };
            let texts = random_patterns(&mut rng, count);
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let mut gate = Gate::new(&refs);
            if let Some(finder) = &gate.literals {
                kinds.insert(matches!(finder, LiteralFinder::Packed(_)));
            }
            let lines: Vec<Vec<u8>> = (0..40)
                .map(|_| random_bytes(&mut rng, b"abcdx ", 0..60))
                .collect();
            let mut text = Vec::new();
            let mut ranges = Vec::new();
            for line in &lines {
                let start = text.len();
                text.extend_from_slice(line);
                ranges.push(start..text.len());
                text.push(b'\n');
            }
            let mut marked = Vec::new();
            gate.screen(&text, &ranges, &mut marked);
            for (at, line) in lines.iter().enumerate() {
                let mut admitted = Vec::new();
                gate.admit(line, at as u64, |id| admitted.push(id));
                let set: BTreeSet<usize> = admitted.iter().copied().collect();
                assert_eq!(set.len(), admitted.len(), "each admitted once");
                assert_eq!(set, by_definition(&texts, line), "{texts:?} on {line:?}");
                if !set.is_empty() {
                    assert!(marked[at], "{texts:?}: line {line:?} has candidates");
                }
            }
            if let Some(screen) = &gate.screen {
                for (at, line) in lines.iter().enumerate() {
                    let mut any = false;
                    screen.finder.each_start(line, |_| any = true);
                    assert_eq!(marked[at], any, "{texts:?}: screen of {line:?}");
                }
            }
        }
        assert_eq!(kinds.len(), 1 + usize::from(simd()), "both finder kinds");
    }

    /// A line cut short of its newline (a gap of other bytes before the next line) is
    /// marked only by a literal inside it, and a literal in the gap marks nothing.
    #[test]
    fn the_screen_reads_only_the_lines_ranges() {
        let gate = Gate::new(&["needle"]);
        let text = b"xx needle\nab needle\r\nneedlen";
        let lines = [0..9, 10..12, 21..24];
        let mut marked = Vec::new();
        gate.screen(text, &lines, &mut marked);
        assert_eq!(marked, [true, false, false]);
    }
}
