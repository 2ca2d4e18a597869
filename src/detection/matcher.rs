//! Which rules' patterns run on a line: the front end of detection.
//!
//! The literal gate ([`Front::Gate`], what the detector uses): every pattern's required
//! literals ([`super::literals`]) go into one Aho-Corasick automaton per source; one
//! overlapping scan of the line names the patterns that hold a literal of each of their
//! required sets, and only those, plus the patterns without one, run their capture run
//! ([`super::capture`]), which is also the match test.
//!
//! The combined set ([`Front::Set`], the previous front end): one `regex-automata` meta set
//! per source over every pattern (what `regex::bytes::RegexSet` wraps, configured the same
//! way, so its search cache and match set are reused from line to line), whose matches are
//! the candidates. Its search rejects most lines on its own prefilter, where the gate's scan
//! visits every byte; but with captures on PCRE2 the gate and the capture runs together
//! cost less than the set and the same runs (docs/performance.md). Both count exactly the
//! same hits (`tests/front_end.rs`); the set is kept, selectable, for that comparison.
//!
//! Rules often share a pattern (a threshold and a sequence step on the same failed login):
//! each distinct pattern text is gated once and runs its captures at most once per line,
//! whichever rules it serves.

use super::capture::{CaptureRegex, Engine, Slots};
use super::{fields, literals};
use crate::rules::{Rule, RuleSet};
use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{Anchored, MatchKind as LiteralMatchKind};
use regex_automata::meta::{Builder, Cache, Config, Regex};
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};
use std::cmp::Reverse;
use std::ops::Range;
use std::sync::Arc;

/// Compiled-size budget of one source's combined pattern set.
const SET_SIZE_LIMIT: usize = 512 << 20;

/// Which capture groups of one pattern a match reports, in the order [`fields`] encodes
/// them: the detector and `explain` both read matches through it, so they always agree.
#[derive(Debug, Clone)]
pub struct PatternFields {
    /// Every named group: name and group index, by name.
    captures: Vec<(String, usize)>,
    /// The rule's `group_by` fields by name, with their group index in this pattern (`None`:
    /// the pattern has no such group, the value is empty).
    key: Vec<(String, Option<usize>)>,
}

impl PatternFields {
    /// The fields of pattern `step` of `rule`.
    pub fn new(rule: &Rule, step: usize) -> Self {
        let regex = &rule.patterns[step];
        let mut captures: Vec<(String, usize)> = regex
            .capture_names()
            .enumerate()
            .filter_map(|(i, name)| name.map(|n| (n.to_string(), i)))
            .collect();
        captures.sort();
        let mut key: Vec<(String, Option<usize>)> = rule
            .def
            .group_by
            .iter()
            .map(|field| {
                let group = captures.iter().find(|(n, _)| n == field).map(|(_, i)| *i);
                (field.clone(), group)
            })
            .collect();
        key.sort();
        key.dedup();
        PatternFields { captures, key }
    }

    /// Encodes the captures that took part in the match into `captures` and the key into
    /// `key` (a `group_by` capture that did not take part counts as empty).
    /// `locations` gives each group's span in `line`, if it took part.
    pub fn write(
        &self,
        locations: impl Fn(usize) -> Option<(usize, usize)>,
        line: &[u8],
        captures: &mut String,
        key: &mut String,
    ) {
        captures.clear();
        key.clear();
        let value = |group: usize| locations(group).map(|(start, end)| &line[start..end]);
        for (name, group) in &self.captures {
            if let Some(bytes) = value(*group) {
                fields::push_bytes(captures, name, bytes);
            }
        }
        for (name, group) in &self.key {
            fields::push_bytes(key, name, group.and_then(value).unwrap_or_default());
        }
    }
}

/// One distinct pattern text: its regex, its capture slots reused for every line, and the
/// outcome of its capture run on the current line.
#[derive(Clone)]
struct SharedPattern {
    regex: CaptureRegex,
    groups: Slots,
    /// Line number ([`SourceMatcher::line`]) the run below belongs to.
    read_at: u64,
    matched: bool,
    /// Every (rule, pattern index) with this text.
    slots: Vec<(usize, usize)>,
}

/// How a detector's matchers work: how candidate patterns are found, and which engine
/// runs their captures. Every design counts exactly the same hits (`tests/front_end.rs`);
/// they differ in cost (docs/performance.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Design {
    /// How candidates are found.
    pub front: Front,
    /// Which engine runs captures.
    pub engine: Engine,
}

impl Design {
    /// The detector's design, chosen by measurement (docs/performance.md): with PCRE2's
    /// captures, the gate followed directly by the gated patterns' capture runs costs less
    /// than the combined set.
    pub const CURRENT: Design = Design {
        front: Front::Gate,
        engine: Engine::Pcre2,
    };
    /// The design before PCRE2 (benchmarks measure against it in the same run).
    pub const PREVIOUS: Design = Design {
        front: Front::Set,
        engine: Engine::Regex,
    };
}

/// How candidate patterns are found for a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// The literal gate: patterns whose required literals the line holds, and patterns
    /// without any.
    Gate,
    /// The combined set of every pattern (the detector's front end).
    Set,
}

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
struct Gate {
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
    fn new(texts: &[&str]) -> Self {
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
    fn screen(&self, text: &[u8], lines: &[Range<usize>], marked: &mut Vec<bool>) {
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
    fn admit(&mut self, line: &[u8], at: u64, mut admit: impl FnMut(usize)) {
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

/// Candidate rules for one source, found in one pass. A clone has its own caches and
/// slots (one per worker thread) and shares the compiled patterns.
#[derive(Clone)]
pub struct SourceMatcher {
    /// Front::Set: over the distinct patterns, in [`SourceMatcher::shared`] order. `None`
    /// with the gate, or when the combined set exceeded its budget (every pattern is then
    /// a candidate).
    set: Option<Regex>,
    /// Front::Gate: the literal gate.
    gate: Option<Gate>,
    /// Rules reading this source.
    pub rules: Vec<Arc<Rule>>,
    /// The distinct pattern texts of the rules.
    shared: Vec<SharedPattern>,
    /// Per rule and pattern index: its distinct pattern, and the fields it reports.
    patterns: Vec<Vec<(usize, PatternFields)>>,
    /// Counts lines, so a shared pattern knows whether it already ran on this one.
    line: u64,
    /// The set's search cache, reused for every line.
    cache: Option<Cache>,
    /// Which patterns matched the last line, reused for every line.
    found: PatternSet,
}

impl SourceMatcher {
    /// The matcher for the rules that read `source`, of the detector's design.
    pub fn new(rules: &RuleSet, source: &str) -> Self {
        Self::with_design(rules, source, Design::CURRENT)
    }

    /// The matcher for the rules that read `source`, of design `design`.
    pub fn with_design(rules: &RuleSet, source: &str, design: Design) -> Self {
        let Design { front, engine } = design;
        let rules: Vec<Arc<Rule>> = rules
            .rules
            .iter()
            .filter(|r| r.applies_to(source))
            .cloned()
            .collect();
        let mut shared: Vec<SharedPattern> = Vec::new();
        let mut texts: Vec<&str> = Vec::new();
        let mut ids: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut patterns = Vec::new();
        for (r, rule) in rules.iter().enumerate() {
            let mut of_rule = Vec::new();
            for (p, text) in rule.pattern_texts().into_iter().enumerate() {
                let id = match ids.get(text) {
                    Some(&id) => id,
                    None => {
                        ids.insert(text, texts.len());
                        texts.push(text);
                        let regex = CaptureRegex::new(&rule.patterns[p], engine);
                        shared.push(SharedPattern {
                            groups: regex.slots(),
                            regex,
                            // Never a line number: the first read always runs.
                            read_at: u64::MAX,
                            matched: false,
                            slots: Vec::new(),
                        });
                        texts.len() - 1
                    }
                };
                shared[id].slots.push((r, p));
                of_rule.push((id, PatternFields::new(rule, p)));
            }
            patterns.push(of_rule);
        }
        // Each pattern already compiled within its own bounds; the set gets their sum.
        // Configured as `regex::bytes::RegexSetBuilder::new(texts).unicode(false)` with both
        // size limits at `SET_SIZE_LIMIT`.
        if front == Front::Gate {
            let gate = Some(Gate::new(&texts));
            let found = PatternSet::new(shared.len());
            return SourceMatcher {
                set: None,
                gate,
                rules,
                shared,
                patterns,
                line: 0,
                cache: None,
                found,
            };
        }
        let set = Builder::new()
            .configure(
                Config::new()
                    .match_kind(MatchKind::All)
                    .utf8_empty(false)
                    .which_captures(WhichCaptures::None)
                    .nfa_size_limit(Some(SET_SIZE_LIMIT))
                    .hybrid_cache_capacity(SET_SIZE_LIMIT),
            )
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .build_many(&texts)
            .map_err(|e| tracing::warn!(source, error = %e, "rules too large for one combined pass; matching them one by one"))
            .ok();
        let cache = set.as_ref().map(Regex::create_cache);
        let found = PatternSet::new(shared.len());
        SourceMatcher {
            set,
            gate: None,
            rules,
            shared,
            patterns,
            line: 0,
            cache,
            found,
        }
    }

    /// Marks the lines of a run that may have candidates (see [`Gate::screen`]): with the
    /// combined set, every line.
    pub fn screen(&self, text: &[u8], lines: &[Range<usize>], marked: &mut Vec<bool>) {
        match &self.gate {
            Some(gate) if !self.rules.is_empty() => gate.screen(text, lines, marked),
            _ => {
                marked.clear();
                marked.resize(lines.len(), !self.rules.is_empty());
            }
        }
    }

    /// Fills `out` with the (rule, pattern) pairs whose pattern matches `line`: rules in
    /// order, and within a rule later patterns (sequence steps) first.
    pub fn candidates(&mut self, line: &[u8], out: &mut Vec<(usize, usize)>) {
        out.clear();
        self.line += 1;
        if let Some(gate) = &mut self.gate {
            let shared = &self.shared;
            gate.admit(line, self.line, |id| {
                out.extend_from_slice(&shared[id].slots)
            });
            if out.len() > 1 {
                out.sort_unstable_by_key(|&(r, p)| (r, Reverse(p)));
            }
            return;
        }
        match (&self.set, &mut self.cache) {
            (Some(set), Some(cache)) => {
                let input = Input::new(line);
                // Most lines match nothing; this search stops at the first match and can
                // skip ahead on the patterns' literals, which the overlapping one cannot.
                if !set.is_match(input.clone()) {
                    return;
                }
                self.found.clear();
                set.which_overlapping_matches_with(cache, &input, &mut self.found);
                if self.found.is_empty() {
                    return;
                }
                for id in self.found.iter() {
                    out.extend_from_slice(&self.shared[id.as_usize()].slots);
                }
            }
            _ => {
                for shared in &self.shared {
                    out.extend_from_slice(&shared.slots);
                }
            }
        }
        if out.len() > 1 {
            out.sort_unstable_by_key(|&(r, p)| (r, Reverse(p)));
        }
    }

    /// Runs pattern `step` of rule `index` on `line` (the line [`Self::candidates`] was last
    /// given; a pattern shared with a rule already read on it is not run again). When it
    /// matches, writes the captures that took part and the rule's key as encoded
    /// [`fields`] into the two buffers.
    pub fn read(
        &mut self,
        index: usize,
        step: usize,
        line: &[u8],
        captures: &mut String,
        key: &mut String,
    ) -> bool {
        let (id, fields) = &self.patterns[index][step];
        let shared = &mut self.shared[*id];
        if shared.read_at != self.line {
            shared.read_at = self.line;
            shared.matched = shared.regex.captures(&mut shared.groups, line);
        }
        if shared.matched {
            let groups = &shared.groups;
            fields.write(|group| groups.get(group), line, captures, key);
        }
        shared.matched
    }
}

/// A line's text as shared text (invalid UTF-8 replaced), with the common all-valid case
/// checked by the faster validator.
pub fn lossy_text(bytes: &[u8]) -> Arc<str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Arc::from(text),
        Err(_) => Arc::from(String::from_utf8_lossy(bytes).as_ref()),
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

    /// A read before any `candidates` call, and a read of a new line, run the pattern:
    /// no answer is taken from another line.
    #[test]
    fn a_shared_pattern_never_answers_for_another_line() {
        let set = RuleSet::from_yaml(
            "rules:\n  - id: a\n    match: 'user (?P<u>\\S+)'\n    group_by: [u]\n    threshold: {count: 9, within: 1m}\n    severity: low\n",
        );
        let mut m = SourceMatcher::new(&set, "auth");
        let (mut captures, mut key) = (String::new(), String::new());
        assert!(m.read(0, 0, b"user bob", &mut captures, &mut key));
        assert_eq!(
            crate::detection::FieldsView::new(&key).get("u"),
            Some("bob")
        );
        let mut out = Vec::new();
        for (line, who) in [(&b"user amy"[..], Some("amy")), (b"nobody", None)] {
            m.candidates(line, &mut out);
            let matched = m.read(0, 0, line, &mut captures, &mut key);
            assert_eq!(matched, who.is_some());
            if let Some(who) = who {
                assert_eq!(crate::detection::FieldsView::new(&key).get("u"), Some(who));
            }
        }
    }
}
