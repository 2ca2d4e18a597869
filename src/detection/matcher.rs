//! Which rules' patterns run on a line: the front end of detection.
//!
//! The literal gate ([`Front::Gate`], what the detector uses): from every pattern's
//! required literals ([`super::literals`]), one SIMD literal search per source over a run
//! of lines (the screen) names the lines, and in them the patterns, that may match; the
//! patterns whose every required set the line holds, plus the patterns without one, run
//! their capture run ([`super::capture`]), which is also the match test.
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

mod gate;

use super::capture::{CaptureRegex, Engine, Slots};
use super::fields::LineText;
use crate::rules::{Rule, RuleSet};
use gate::Gate;
pub use gate::{Screened, Screening};
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
    key: KeyFields,
}

/// A rule's key fields by name, each with its group index in a pattern, if it has one.
type KeyFields = Vec<(String, Option<usize>)>;

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
        let mut key: KeyFields = rule
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
        let mut line = LineText::new(line);
        self.push_captures(&locations, &mut line, captures);
        self.push_key(&locations, &mut line, key);
    }

    /// Appends the encoded captures that took part to `out`: the same for every rule of
    /// one pattern text, whose named groups are the same.
    fn push_captures(
        &self,
        locations: &impl Fn(usize) -> Option<(usize, usize)>,
        line: &mut LineText<'_>,
        out: &mut String,
    ) {
        for (name, group) in &self.captures {
            if let Some((start, end)) = locations(*group) {
                line.push_value(out, name, start, end);
            }
        }
    }

    /// Appends the encoded key to `out`.
    fn push_key(
        &self,
        locations: &impl Fn(usize) -> Option<(usize, usize)>,
        line: &mut LineText<'_>,
        out: &mut String,
    ) {
        for (name, group) in &self.key {
            let (start, end) = group.and_then(locations).unwrap_or((0, 0));
            line.push_value(out, name, start, end);
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
    /// Where its captures, and the last key, were written for line [`Written::at`].
    written: Written,
}

/// Where a shared pattern's encoded captures and last key lie in the text
/// [`SourceMatcher::read`] appends to, so the other rules of the pattern take the same
/// ranges instead of encoding and copying them again (the ssh failure pattern serves
/// three rules, two of them with the same key).
#[derive(Clone)]
struct Written {
    /// Line number ([`SourceMatcher::line`]) the ranges belong to.
    at: u64,
    captures: std::ops::Range<usize>,
    /// Which key fields ([`Reads::key_fields`]) `key` holds.
    key_fields: usize,
    key: std::ops::Range<usize>,
}

/// How one rule's pattern is read: its distinct pattern, the fields it reports, and which
/// of the distinct pattern's key layouts its key has (rules with the same `group_by`
/// fields in this pattern share one).
#[derive(Clone)]
struct Reads {
    shared: usize,
    fields: PatternFields,
    key_fields: usize,
}

/// How a detector's matchers work: how candidate patterns are found, and which engine
/// runs their captures. Every design counts exactly the same hits (`tests/front_end.rs`);
/// they differ in cost (docs/performance.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Design {
    /// How candidate patterns are found for a line (gate or combined set).
    pub front: Front,
    /// Which regex engine runs the candidates' captures.
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
    /// The rules that [`Rule::applies_to`] this source, in the rule set's load order.
    pub rules: Vec<Arc<Rule>>,
    /// The distinct pattern texts of the rules.
    shared: Vec<SharedPattern>,
    /// Per rule and pattern index: how its matches are read.
    patterns: Vec<Vec<Reads>>,
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
        let mut key_layouts: std::collections::HashMap<usize, Vec<KeyFields>> =
            std::collections::HashMap::new();
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
                            written: Written {
                                at: u64::MAX,
                                captures: 0..0,
                                key_fields: usize::MAX,
                                key: 0..0,
                            },
                        });
                        texts.len() - 1
                    }
                };
                shared[id].slots.push((r, p));
                let fields = PatternFields::new(rule, p);
                let layouts = key_layouts.entry(id).or_default();
                let key_fields = match layouts.iter().position(|k| *k == fields.key) {
                    Some(i) => i,
                    None => {
                        layouts.push(fields.key.clone());
                        layouts.len() - 1
                    }
                };
                of_rule.push(Reads {
                    shared: id,
                    fields,
                    key_fields,
                });
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

    /// Finds which lines of a run may have candidates, and what [`Self::candidates`] needs
    /// of them (see [`gate::Gate::screen`]): with the combined set, nothing (every line is
    /// read in full).
    pub fn screen(&mut self, text: &[u8], lines: &[Range<usize>], screened: &mut Screened) {
        match &mut self.gate {
            Some(gate) => gate.screen(text, lines, screened),
            None => screened.unscreened(),
        }
    }

    /// Fills `out` with the (rule, pattern) pairs whose pattern matches `line`: rules in
    /// order, and within a rule later patterns (sequence steps) first. `screened`: the
    /// screen literals [`Self::screen`] found inside the line, if it screened it.
    pub fn candidates(
        &mut self,
        line: &[u8],
        screened: Option<&[u32]>,
        out: &mut Vec<(usize, usize)>,
    ) {
        out.clear();
        self.line += 1;
        if let Some(gate) = &mut self.gate {
            let shared = &self.shared;
            gate.admit(line, self.line, screened, |id| {
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
    /// matches, returns where its captures that took part and the rule's key, encoded as
    /// [`super::fields`], lie in `text`: appended to it, or written there by an earlier
    /// read of the same line (the same pattern's captures are the same for every rule, and
    /// so is the key of rules with the same key fields). So every read of one line must
    /// append to the same `text`, which keeps what they wrote until the line is done.
    pub fn read(
        &mut self,
        index: usize,
        step: usize,
        line: &mut LineText<'_>,
        text: &mut String,
    ) -> Option<(Range<usize>, Range<usize>)> {
        let reads = &self.patterns[index][step];
        let shared = &mut self.shared[reads.shared];
        if shared.read_at != self.line {
            shared.read_at = self.line;
            shared.matched = shared.regex.captures(&mut shared.groups, line.bytes());
        }
        if !shared.matched {
            return None;
        }
        let groups = &shared.groups;
        let locations = |group| groups.get(group);
        let written = &mut shared.written;
        if written.at != self.line || written.captures.end.max(written.key.end) > text.len() {
            let start = text.len();
            reads.fields.push_captures(&locations, line, text);
            *written = Written {
                at: self.line,
                captures: start..text.len(),
                key_fields: usize::MAX,
                key: 0..0,
            };
        }
        if written.key_fields != reads.key_fields {
            let start = text.len();
            reads.fields.push_key(&locations, line, text);
            written.key_fields = reads.key_fields;
            written.key = start..text.len();
        }
        Some((written.captures.clone(), written.key.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read before any `candidates` call, and a read of a new line, run the pattern:
    /// no answer is taken from another line.
    #[test]
    fn a_shared_pattern_never_answers_for_another_line() {
        let set = RuleSet::from_yaml(
            "rules:\n  - id: a\n    match: 'user (?P<u>\\S+)'\n    group_by: [u]\n    threshold: {count: 9, within: 1m}\n    severity: low\n",
        );
        let mut m = SourceMatcher::new(&set, "auth");
        let mut text = String::new();
        let (_, key) = m
            .read(0, 0, &mut LineText::new(b"user bob"), &mut text)
            .expect("a match");
        assert_eq!(
            crate::detection::FieldsView::new(&text[key]).get("u"),
            Some("bob")
        );
        let mut out = Vec::new();
        for (line, who) in [(&b"user amy"[..], Some("amy")), (b"nobody", None)] {
            m.candidates(line, None, &mut out);
            let matched = m.read(0, 0, &mut LineText::new(line), &mut text);
            assert_eq!(matched.is_some(), who.is_some());
            if let (Some(who), Some((_, key))) = (who, matched) {
                assert_eq!(
                    crate::detection::FieldsView::new(&text[key]).get("u"),
                    Some(who)
                );
            }
        }
    }
}
