//! The literal gate of [`super::Front::Gate`]: which distinct patterns may match a line,
//! from the required literals ([`crate::detection::literals`]) it holds.
//!
//! Apart from the matcher because it is a self-contained searcher with its own invariants
//! (the literals it names on a line are exactly those aho-corasick's overlapping iterator
//! reports; the screen's newline rule) and knows nothing of rules, captures or the combined
//! set: it maps pattern texts to pattern ids, and the matcher maps those ids to rules.

use crate::detection::literals::{self, contains};
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
    /// there): its literal and where it lies.
    #[inline]
    fn find(&self, hay: &[u8], span: Range<usize>) -> Option<(usize, Range<usize>)> {
        let found = match self {
            LiteralFinder::Packed(searcher) => searcher.find_in(hay, span.into()),
            LiteralFinder::Automaton(automaton) => automaton.find(Input::new(hay).span(span)),
        };
        found.map(|m| (m.pattern().as_usize(), m.range()))
    }

    /// Calls `found` with the longest literal starting at each position of `hay` where
    /// one starts, in order, until it returns false: every literal `hay` holds is a prefix
    /// of one of them.
    #[inline]
    fn each_start(&self, hay: &[u8], mut found: impl FnMut(usize) -> bool) {
        let mut at = 0;
        while let Some((literal, place)) = self.find(hay, at..hay.len()) {
            if !found(literal) {
                return;
            }
            at = place.start + 1;
        }
    }
}

/// The literal gate of one source: a pattern is a candidate on a line that holds a string
/// of each of its required sets.
///
/// Two steps, so that the common case costs one SIMD search per screen literal on a run
/// of lines: the screen, over one required set per pattern (few literals, so the packed
/// searcher takes them), names the patterns a line may hold; then each of those alone is
/// checked for its other sets (those the screen literal found does not already prove).
#[derive(Clone)]
pub(super) struct Gate {
    /// Patterns without a required literal, or whose literals no finder took: candidates
    /// on every line.
    always: Vec<usize>,
    /// Every distinct required set of the patterns with a check (patterns often share
    /// one: `sshd`, ` from `).
    sets: Vec<SetCheck>,
    /// Over one required set of each pattern with a [`Check`]; `None` when there is none.
    screen: Option<Screen>,
    /// Whether [`Gate::screen`] may pass over lines: no pattern runs on every line and no
    /// screen literal holds a newline (it could span two lines).
    skips: bool,
    /// Per distinct pattern: the line it was last checked on, so that it is checked once
    /// per line whichever screen literals name it.
    seen: Vec<u64>,
    /// What the screen is made from, to make it again by measure ([`Gate::tune`]); `None`
    /// when there is no screen to tune.
    plan: Option<Arc<ScreenPlan>>,
}

/// What a screen is made from: each screened pattern's chosen set, every pattern's check,
/// and the distinct sets (which a screen literal may prove).
struct ScreenPlan {
    chosen: Vec<(usize, Vec<Vec<u8>>)>,
    checks: Vec<Option<Check>>,
    table: SetTable,
}

/// Bytes of the first run screened that [`Gate::screen`] measures byte frequencies on.
const TUNING_SAMPLE: usize = 1 << 20;
/// The least text a run must hold for [`Gate::screen`] to measure on it: on less, the
/// frequencies say little about the log.
const TUNING_MIN: usize = 64 << 10;
/// Shortest screen literal [`rarer_part`] cuts a literal down to.
const TUNED_MIN_LITERAL: usize = 5;

/// What [`Gate::screen`] found in a run of lines, in buffers reused from run to run.
#[derive(Debug, Default, Clone)]
pub struct Screened {
    /// Whether the run was screened; if not, every line is to be read in full.
    screened: bool,
    /// Per line: the end of its screen literals in `literals`.
    ends: Vec<u32>,
    /// The screen literals inside each line, line after line, in the order they start.
    literals: Vec<u32>,
}

/// What the screen says of one line ([`Screened::line`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screening<'a> {
    /// It holds no screen literal: no pattern can match it.
    Nothing,
    /// The screen literals inside it ([`Gate::admit`] takes them).
    Literals(&'a [u32]),
    /// Not screened: read it in full.
    Unscreened,
}

impl Screened {
    /// Every line of a run is to be read in full.
    pub fn unscreened(&mut self) {
        self.screened = false;
        self.ends.clear();
        self.literals.clear();
    }

    /// What the screen says of line `i` of the run.
    pub fn line(&self, i: usize) -> Screening<'_> {
        if !self.screened {
            return Screening::Unscreened;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        match &self.literals[start..self.ends[i] as usize] {
            [] => Screening::Nothing,
            found => Screening::Literals(found),
        }
    }
}

/// The screen: one required set per pattern, reduced to the literals that hold no other
/// ([`screen_literals`]), and per literal the patterns it stands for.
#[derive(Clone)]
struct Screen {
    finder: LiteralFinder,
    /// Per screen literal: the patterns one of whose chosen literals holds it.
    patterns: Vec<Vec<Named>>,
    /// Whether a screen literal holds a newline.
    holds_newline: bool,
}

/// Whether a line holds a string of each of one pattern's required sets, checked set by
/// set in the order [`literals::required`] gives them (most selective first), so that a
/// pattern the screen named on a line it does not match is mostly ruled out by the first.
#[derive(Clone)]
struct Check {
    /// Indexes into [`Gate::sets`].
    sets: Vec<usize>,
}

/// Whether a line holds one of a set's strings: one or two searched one by one (a single
/// substring search is cheaper than a multi-literal one), more all at once (three
/// substring searches over a line that holds none of them cost more than one SIMD
/// search for all three: docs/performance.md).
#[derive(Clone)]
enum SetCheck {
    Each(Vec<memchr::memmem::Finder<'static>>),
    Any(LiteralFinder),
}

/// Most strings of a set searched one by one.
const SEARCHED_ONE_BY_ONE: usize = 2;

impl SetCheck {
    fn new(set: &[Vec<u8>]) -> Option<SetCheck> {
        if set.len() <= SEARCHED_ONE_BY_ONE {
            if set.is_empty() || set.iter().any(Vec::is_empty) {
                return None;
            }
            let finders = set
                .iter()
                .map(|s| memchr::memmem::Finder::new(s).into_owned());
            return Some(SetCheck::Each(finders.collect()));
        }
        LiteralFinder::new(set).ok().map(SetCheck::Any)
    }

    #[inline]
    fn found_in(&self, line: &[u8]) -> bool {
        match self {
            SetCheck::Each(finders) => finders.iter().any(|f| f.find(line).is_some()),
            SetCheck::Any(finder) => finder.find(line, 0..line.len()).is_some(),
        }
    }
}

/// A pattern a screen literal names, and the sets of [`Gate::sets`] still to search for on
/// a line the literal was found in: those of its [`Check`] that the literal does not prove
/// (a line holding the literal holds a string of every set one of whose strings the
/// literal holds: `sshd` proves `sshd`, not ` from `).
#[derive(Clone)]
struct Named {
    pattern: usize,
    search: Vec<usize>,
}

/// Distinct required sets, each with its index: what [`Check`]s and screen proofs name.
#[derive(Default)]
struct SetTable {
    index: std::collections::HashMap<Vec<Vec<u8>>, usize>,
    sets: Vec<SetCheck>,
}

impl SetTable {
    /// The checks of `sets` (their indexes, in order); `None` when some set is empty or
    /// holds an empty string, or no finder takes its literals.
    fn check(&mut self, sets: &[Vec<Vec<u8>>]) -> Option<Check> {
        let mut ids = Vec::with_capacity(sets.len());
        for set in sets {
            let mut sorted = set.clone();
            sorted.sort();
            sorted.dedup();
            let id = match self.index.get(&sorted) {
                Some(&id) => id,
                None => {
                    let check = SetCheck::new(&sorted)?;
                    self.sets.push(check);
                    self.index.insert(sorted, self.sets.len() - 1);
                    self.sets.len() - 1
                }
            };
            ids.push(id);
        }
        Some(Check { sets: ids })
    }

    /// The sets one of whose strings `literal` holds.
    fn proved_by(&self, literal: &[u8]) -> Vec<usize> {
        let mut proved: Vec<usize> = self
            .index
            .iter()
            .filter(|(set, _)| set.iter().any(|s| contains(literal, s)))
            .map(|(_, &id)| id)
            .collect();
        proved.sort_unstable();
        proved
    }
}

impl Gate {
    pub(super) fn new(texts: &[&str]) -> Self {
        let mut always = Vec::new();
        let mut checks = Vec::new();
        let mut chosen = Vec::new();
        let mut table = SetTable::default();
        for (id, text) in texts.iter().enumerate() {
            let sets = literals::required(text);
            let check = sets.as_deref().and_then(|sets| table.check(sets));
            match (sets, &check) {
                (Some(sets), Some(_)) => chosen.push((id, screen_set(sets))),
                _ => always.push(id),
            }
            checks.push(check);
        }
        let screen = Screen::new(&chosen, &checks, &table, None).or_else(|| {
            // Cannot happen within the crate's limits; if it does, every pattern runs,
            // which is slower but never wrong.
            if !chosen.is_empty() {
                tracing::warn!("literal gate not built; running every pattern");
                always = (0..texts.len()).collect();
            }
            None
        });
        let skips = always.is_empty() && screen.as_ref().is_some_and(|s| !s.holds_newline);
        let sets = std::mem::take(&mut table.sets);
        let plan = screen.is_some().then(|| {
            Arc::new(ScreenPlan {
                chosen,
                checks,
                table,
            })
        });
        Gate {
            always,
            sets,
            screen,
            skips,
            seen: vec![u64::MAX; texts.len()],
            plan,
        }
    }

    /// Makes the screen again from the same sets, each literal cut down to the part whose
    /// first bytes are rarest in `sample` (the log's first run): the packed searcher's
    /// filter reads a literal's first three bytes, and every spot where some literal's
    /// could begin is then compared, so a screen of `rejected`, `client`, `authenticat…`
    /// stops at most words of a line where `jected`, `ient`, `cator f…` do not. A part of
    /// a required literal is in every line the literal is in, and which patterns a line
    /// holds is still decided by [`Gate::admit`] from the sets, so only the cost changes:
    /// a shorter literal is found on a few more lines and proves fewer sets. Done once.
    pub(super) fn tune(&mut self, sample: &[u8]) {
        let Some(plan) = self.plan.take() else {
            return;
        };
        let mut counts = [1u64; 256];
        for &b in sample {
            counts[usize::from(b)] += 1;
        }
        if let Some(screen) = Screen::new(&plan.chosen, &plan.checks, &plan.table, Some(&counts)) {
            self.skips = self.always.is_empty() && !screen.holds_newline;
            self.screen = Some(screen);
        }
    }

    /// Records in `screened` the screen literals inside each line of `text` (`lines`, in
    /// order, each followed in `text` by a newline before the next starts), found by
    /// searches over `text` from the first line's start to the last line's end, each going
    /// on one byte after the last start: a line that holds none has no candidate, and
    /// [`Gate::admit`] takes the others' without searching the line again. Records
    /// nothing (every line to be read in full) when the screen cannot pass over lines.
    /// No screen literal holds a newline, so one that starts inside a line's range and
    /// ends by its end is inside it; and none holds another, so the one found at a start
    /// is the only one there.
    /// The first run of at least [`TUNING_MIN`] bytes first tunes the screen on its first
    /// [`TUNING_SAMPLE`] bytes ([`Gate::tune`]).
    pub(super) fn screen(&mut self, text: &[u8], lines: &[Range<usize>], screened: &mut Screened) {
        if self.plan.is_some() && text.len() >= TUNING_MIN {
            self.tune(&text[..text.len().min(TUNING_SAMPLE)]);
        }
        screened.unscreened();
        let (Some(screen), Some(first), Some(last), true) =
            (&self.screen, lines.first(), lines.last(), self.skips)
        else {
            return;
        };
        screened.screened = true;
        let text = &text[..last.end];
        let mut line = 0;
        let mut at = first.start;
        while let Some((literal, place)) = screen.finder.find(text, at..text.len()) {
            at = place.start + 1;
            // The first line whose range ends after the literal's start holds it, if it
            // starts there and ends by the range's end (else it lies in a gap between
            // lines, or runs past a line cut short of its newline).
            while line < lines.len() && lines[line].end <= place.start {
                screened.ends.push(screened.literals.len() as u32);
                line += 1;
            }
            let Some(range) = lines.get(line) else { break };
            if range.start <= place.start && place.end <= range.end {
                screened.literals.push(literal as u32);
            }
        }
        screened
            .ends
            .resize(lines.len(), screened.literals.len() as u32);
    }

    /// Calls `admit` once for each distinct pattern that may match `line` (number `at`),
    /// given the screen literals inside it when [`Gate::screen`] found them (else the line
    /// is searched for them). A set one of whose strings the screen literal holds is not
    /// searched.
    pub(super) fn admit(
        &mut self,
        line: &[u8],
        at: u64,
        screened: Option<&[u32]>,
        mut admit: impl FnMut(usize),
    ) {
        for &id in &self.always {
            admit(id);
        }
        let Some(screen) = &self.screen else {
            return;
        };
        let (sets, seen) = (&self.sets, &mut self.seen);
        let mut named = |literal: usize| {
            for named in &screen.patterns[literal] {
                if seen[named.pattern] == at {
                    continue;
                }
                seen[named.pattern] = at;
                if named.search.iter().all(|&set| sets[set].found_in(line)) {
                    admit(named.pattern);
                }
            }
            true
        };
        match screened {
            Some(literals) => literals.iter().for_each(|&l| {
                named(l as usize);
            }),
            None => screen.finder.each_start(line, named),
        }
    }
}

impl Screen {
    /// The screen over each pattern's chosen set (`(pattern id, set)`), its literals cut
    /// down to their rarest part by byte counts `counts` if given ([`Gate::tune`]); `None`
    /// when there is none or no finder takes them.
    fn new(
        chosen: &[(usize, Vec<Vec<u8>>)],
        checks: &[Option<Check>],
        table: &SetTable,
        counts: Option<&[u64; 256]>,
    ) -> Option<Screen> {
        let mut literals = screen_literals(chosen.iter().flat_map(|(_, set)| set.iter().cloned()));
        if let Some(counts) = counts {
            literals = screen_literals(literals.iter().map(|l| rarer_part(l, counts)));
        }
        let patterns = literals
            .iter()
            .map(|literal| {
                let proved = table.proved_by(literal);
                let named = chosen
                    .iter()
                    .filter(|(_, set)| set.iter().any(|held| contains(held, literal)));
                named
                    .filter_map(|(id, _)| {
                        let check = checks[*id].as_ref()?;
                        let search = check.sets.iter().filter(|set| !proved.contains(set));
                        Some(Named {
                            pattern: *id,
                            search: search.copied().collect(),
                        })
                    })
                    .collect()
            })
            .collect();
        Some(Screen {
            finder: LiteralFinder::new(&literals).ok()?,
            patterns,
            holds_newline: literals.iter().any(|l| l.contains(&b'\n')),
        })
    }
}

/// The required set a pattern is screened on: the one with the fewest literals once those
/// holding another are dropped (the screen's searcher takes few literals, at most 64),
/// then the one whose shortest literal is longest (rarer).
fn screen_set(sets: Vec<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
    let score = |set: &Vec<Vec<u8>>| {
        let shortest = set.iter().map(Vec::len).min().unwrap_or(0);
        (
            screen_literals(set.iter().cloned()).len(),
            std::cmp::Reverse(shortest),
        )
    };
    sets.into_iter().min_by_key(score).unwrap_or_default()
}

/// `literals` trimmed of spaces at either end, without duplicates and without those that
/// hold another: a line holding one of `literals` holds one of these, and none is a prefix
/// of another. (The packed searcher's first filter reads a literal's first bytes; a space
/// there matches between most words of a line, and each such spot is then compared.)
fn screen_literals(literals: impl Iterator<Item = Vec<u8>>) -> Vec<Vec<u8>> {
    let trim = |literal: Vec<u8>| {
        let trimmed = literal.trim_ascii_start().trim_ascii_end();
        if trimmed.len() >= literals::MIN_LITERAL {
            trimmed.to_vec()
        } else {
            literal
        }
    };
    let mut all: Vec<Vec<u8>> = literals.map(trim).collect();
    all.sort();
    all.dedup();
    let holds_another = |literal: &Vec<u8>| {
        all.iter()
            .any(|other| other != literal && contains(literal, other))
    };
    all.iter().filter(|l| !holds_another(l)).cloned().collect()
}

/// The part of `literal` from the position where its first three bytes are rarest by byte
/// counts `counts` (their product; the earliest such position, so the longest part), at
/// least [`TUNED_MIN_LITERAL`] bytes long and not starting with a space; shorter literals
/// whole.
fn rarer_part(literal: &[u8], counts: &[u64; 256]) -> Vec<u8> {
    let rarity = |at: usize| {
        literal[at..at + 3]
            .iter()
            .map(|&b| counts[usize::from(b)])
            .fold(1u64, u64::saturating_mul)
    };
    let start = (0..literal.len().saturating_sub(TUNED_MIN_LITERAL - 1))
        .filter(|&at| literal[at] != b' ')
        .min_by_key(|&at| (rarity(at), at));
    match start {
        Some(at) if literal.len() >= TUNED_MIN_LITERAL => literal[at..].to_vec(),
        _ => literal.to_vec(),
    }
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
            // The literals found at a start: the one reported and its prefixes.
            let at_start: Vec<Vec<usize>> = literals
                .iter()
                .map(|longest| {
                    let all = literals.iter().enumerate();
                    all.filter(|(_, p)| longest.starts_with(p))
                        .map(|(i, _)| i)
                        .collect()
                })
                .collect();
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
                    finder.each_start(&hay, |l| {
                        named.extend(at_start[l].iter().copied());
                        true
                    });
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
                    .map(|_| match rng.usize(0..5) {
                        0 => format!("(?:{}|{})", word(rng), word(rng)),
                        // Branches with two literals each, one part of another's.
                        4 => {
                            let (a, b) = (word(rng), word(rng));
                            format!("(?:{a}.*{b}|x{b}|{}.*{a})", word(rng))
                        }
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
    /// literals (the SIMD searcher) and many (the automaton), with the screen as built and
    /// as tuned on a sample ([`Gate::tune`]); and its screen marks every line that has a
    /// candidate, and with newline-separated lines exactly the lines that hold a screen
    /// literal.
    #[test]
    fn the_gate_admits_exactly_the_patterns_whose_sets_a_line_holds() {
        let mut rng = fastrand::Rng::with_seed(2022);
        let mut kinds = BTreeSet::new();
        for round in 0..300 {
            let count = if round % 10 == 0 {
                150
            } else {
                rng.usize(1..8)
            };
            let texts = random_patterns(&mut rng, count);
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let mut gate = Gate::new(&refs);
            if round % 2 == 1 {
                // Skewed counts, so that literals are cut at different places.
                let sample = random_bytes(&mut rng, b"aaaabbcdx  ", 0..3000);
                gate.tune(&sample);
                assert!(gate.plan.is_none(), "tuned once");
            }
            if let Some(screen) = &gate.screen {
                kinds.insert(matches!(screen.finder, LiteralFinder::Packed(_)));
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
            let mut screened = Screened::default();
            gate.screen(&text, &ranges, &mut screened);
            for (at, line) in lines.iter().enumerate() {
                let expected = by_definition(&texts, line);
                // Read in full, and with the literals the screen found in it: the same.
                let mut given = vec![None];
                match screened.line(at) {
                    Screening::Nothing => assert!(expected.is_empty(), "{texts:?} {line:?}"),
                    Screening::Literals(found) => given.push(Some(found)),
                    Screening::Unscreened => assert!(!gate.skips),
                }
                for (n, literals) in given.into_iter().enumerate() {
                    let mut admitted = Vec::new();
                    let number = (2 * at + n) as u64;
                    gate.admit(line, number, literals, |id| admitted.push(id));
                    let set: BTreeSet<usize> = admitted.iter().copied().collect();
                    assert_eq!(set.len(), admitted.len(), "each admitted once");
                    assert_eq!(set, expected, "{texts:?} on {line:?} given {literals:?}");
                }
            }
            // The screen found exactly the literals a search of each line alone finds.
            if let (Some(screen), true) = (&gate.screen, gate.skips) {
                for (at, line) in lines.iter().enumerate() {
                    let mut alone = Vec::new();
                    screen.finder.each_start(line, |l| {
                        alone.push(l as u32);
                        true
                    });
                    let found = match screened.line(at) {
                        Screening::Literals(found) => found,
                        _ => &[],
                    };
                    assert_eq!(found, alone, "{texts:?}: screen of {line:?}");
                }
            }
        }
        assert_eq!(kinds.len(), 1 + usize::from(simd()), "both finder kinds");
    }

    /// A screen literal that holds a string of a set proves it: the set is not searched
    /// again on a line the literal was found in; a set it does not prove is. Patterns
    /// sharing a set share one search for it.
    #[test]
    fn a_screen_literal_spares_the_search_of_the_sets_it_proves() {
        let texts = ["sshd.* from (x|y)", "sshd.*Failed", "Accepted.* from "];
        let mut gate = Gate::new(&texts);
        let screen = gate.screen.as_ref().expect("a screen");
        let required = |text: &str| literals::required(text).unwrap().len();
        let mut spared = 0;
        for named in screen.patterns.iter().flatten() {
            let all = required(texts[named.pattern]);
            assert!(named.search.len() <= all);
            spared += all - named.search.len();
        }
        assert!(spared > 0, "some set is proved by its screen literal");
        // ` from ` (a set of the first and third) is one search.
        assert!(gate.sets.len() < texts.iter().map(|t| required(t)).sum::<usize>());
        for (at, (line, expected)) in [
            (&b"sshd[1]: x from y"[..], &[0][..]),
            (b"sshd[1]: Failed from x", &[0, 1]),
            (b"sshd[1]: Failed fromx", &[1]),
            (b"Accepted key from x", &[2]),
            (b"Accepted key fromx sshd", &[]),
        ]
        .into_iter()
        .enumerate()
        {
            let mut screened = Screened::default();
            let whole = std::iter::once(0..line.len()).collect::<Vec<_>>();
            gate.screen(line, &whole, &mut screened);
            let found = match screened.line(0) {
                Screening::Literals(found) => Some(found.to_vec()),
                _ => None,
            };
            let mut admitted = Vec::new();
            gate.admit(line, at as u64, found.as_deref(), |id| admitted.push(id));
            admitted.sort();
            assert_eq!(admitted, expected, "{:?}", String::from_utf8_lossy(line));
        }
    }

    /// A literal is cut to the part starting at its rarest three bytes, at least five
    /// bytes long, never at a space; short literals stay whole.
    #[test]
    fn tuning_cuts_a_literal_at_its_rarest_bytes() {
        let mut counts = [1u64; 256];
        for &b in b"the quick brown fox jumps over the lazy dog, twice: the quick brown fox" {
            counts[usize::from(b)] += 100;
        }
        assert_eq!(rarer_part(b"authentication FAILED", &counts), b"FAILED");
        assert_eq!(
            rarer_part(b"quick brown FOX", &counts),
            b"n FOX",
            "FOX is too short"
        );
        assert_eq!(rarer_part(b"sshd", &counts), b"sshd");
        assert_eq!(rarer_part(b"Z the quick", &counts), b"Z the quick");
        assert_eq!(rarer_part(b"quick Zebra", &counts), b"Zebra");
    }

    /// A line cut short of its newline (a gap of other bytes before the next line) is
    /// marked only by a literal inside it, and a literal in the gap marks nothing.
    #[test]
    fn the_screen_reads_only_the_lines_ranges() {
        let mut gate = Gate::new(&["needle"]);
        let text = b"xx needle\nab needle\r\nneedlen";
        let lines = [0..9, 10..12, 21..24];
        let mut screened = Screened::default();
        gate.screen(text, &lines, &mut screened);
        let marked: Vec<bool> = (0..lines.len())
            .map(|i| matches!(screened.line(i), Screening::Literals(_)))
            .collect();
        assert_eq!(marked, [true, false, false]);
    }

    /// The shipped rules' screen fits the SIMD searcher (at most 64 literals): the
    /// automaton it would otherwise fall back to costs several times more per line.
    #[test]
    fn the_shipped_rules_screen_on_the_simd_searcher() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let set = crate::rules::RuleSet::load(&[dir], &Default::default()).expect("rules");
        let mut texts: Vec<&str> = Vec::new();
        for rule in &set.rules {
            for text in rule.pattern_texts() {
                if !texts.contains(&text) {
                    texts.push(text);
                }
            }
        }
        assert!(texts.len() > 20, "{} patterns", texts.len());
        let mut gate = Gate::new(&texts);
        assert!(gate.always.is_empty() && gate.skips);
        let screen = gate.screen.as_ref().expect("a screen");
        assert!(!simd() || matches!(screen.finder, LiteralFinder::Packed(_)));
        let built = screen.patterns.len();
        let sample = b"Nov  1 00:00:00 web1 sshd[24557]: Failed password for invalid user admin from 203.0.113.9 port 49407 ssh2\n".repeat(700);
        gate.tune(&sample);
        assert!(gate.skips);
        let screen = gate.screen.expect("a screen");
        assert!(!simd() || matches!(screen.finder, LiteralFinder::Packed(_)));
        assert!(screen.patterns.len() <= built, "tuning never adds literals");
        for set in &gate.sets {
            if let SetCheck::Any(finder) = set {
                assert!(!simd() || matches!(finder, LiteralFinder::Packed(_)));
            }
        }
    }
}
