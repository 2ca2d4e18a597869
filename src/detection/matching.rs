//! The matching stage of detection: per line, which rules' patterns matched, with their
//! captures and key, and none of the window state. It depends on nothing but the line, so
//! copies of it run on worker threads over chunks of lines while one stage
//! ([`super::Detector::apply`]) counts their matches in input order: the result is the
//! same as one thread's.

use super::fields::LineText;
use super::matcher::{Design, Screened, Screening, SourceMatcher};
use super::{FastMap, FieldsView};
use crate::base::line::LogLine;
use crate::rules::{Rule, RuleSet};
use std::ops::Range;
use std::sync::Arc;

/// One counted-to-be match: its rule, which of its patterns, and its encoded captures and
/// key as ranges of [`Found`]'s text.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The rule whose pattern matched; shared with the rule set, so a match costs no copy.
    pub rule: Arc<Rule>,
    /// Which of the rule's patterns matched (a sequence's step).
    pub step: usize,
    /// The captures that took part, encoded as [`super::fields`].
    pub captures: Range<usize>,
    /// The rule's key, encoded the same way.
    pub key: Range<usize>,
}

/// The matches of a run of lines, line by line, in buffers reused from run to run.
///
/// It holds no evidence text: the window stage makes a line's text when it counts the
/// line's first match. Made here on a worker and freed on the window stage's thread at
/// expiry, it cost that thread more in cache misses and cross-thread frees than making it
/// there (replay on two threads 0.50 -> 0.42 s).
#[derive(Debug, Default)]
pub struct Found {
    text: String,
    matches: Vec<Matched>,
    /// Per line: the end of its matches in `matches`.
    ends: Vec<usize>,
}

/// The matches of one line, as [`Found::line`] hands them out.
#[derive(Debug, Clone, Copy)]
pub struct FoundLine<'a> {
    /// Its matches, in the order the detector counts them.
    pub matches: &'a [Matched],
    /// The text their ranges point into.
    pub text: &'a str,
}

impl Found {
    /// Empties it, keeping its buffers.
    pub fn clear(&mut self) {
        self.text.clear();
        self.matches.clear();
        self.ends.clear();
    }

    /// Lines recorded since [`Found::clear`], with or without matches: [`Found::line`]
    /// takes an index below this.
    pub fn lines(&self) -> usize {
        self.ends.len()
    }

    /// The matches of the `i`-th line recorded.
    pub fn line(&self, i: usize) -> FoundLine<'_> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        FoundLine {
            matches: &self.matches[start..self.ends[i]],
            text: &self.text,
        }
    }
}

/// Finds the matches of lines of any source: one [`SourceMatcher`] per source, made on the
/// first line of that source.
#[derive(Clone)]
pub struct Matchers {
    rules: Arc<RuleSet>,
    design: Design,
    by_source: FastMap<String, SourceMatcher>,
    candidates: Vec<(usize, usize)>,
    /// Encoded captures and key of the current match, reused for every match.
    capture_text: String,
    key_text: String,
    /// What the screen found in a run's lines, reused for every run.
    screened: Screened,
}

impl Matchers {
    /// Matchers of `design` for `rules`, made ahead for the named sources.
    pub fn new(rules: Arc<RuleSet>, sources: &[String], design: Design) -> Self {
        let by_source = sources
            .iter()
            .map(|s| (s.clone(), SourceMatcher::with_design(&rules, s, design)))
            .collect();
        Matchers {
            rules,
            design,
            by_source,
            candidates: Vec::new(),
            capture_text: String::new(),
            key_text: String::new(),
            screened: Screened::default(),
        }
    }

    /// The same sources' matchers for another rule set.
    pub fn for_rules(&self, rules: Arc<RuleSet>) -> Self {
        let sources: Vec<String> = self.by_source.keys().cloned().collect();
        Self::new(rules, &sources, self.design)
    }

    /// Records the matches of `line` as the next line of `found`: every candidate pattern
    /// that matches and whose rule's exceptions (`ignore`, `allow`, `only`) do not exclude
    /// it, in the order the detector counts them.
    pub fn find(&mut self, line: &LogLine, found: &mut Found) {
        let matcher =
            Self::source_matcher(&mut self.by_source, &self.rules, self.design, &line.source);
        Self::find_in(
            matcher,
            &mut self.candidates,
            &mut self.capture_text,
            &mut self.key_text,
            &line.bytes,
            None,
            found,
        );
    }

    /// Records the matches of a run of lines of one source as the next lines of `found`,
    /// as [`Matchers::find`] would one by one: one pass over the run's text first names the
    /// lines that hold a literal of some pattern, and only those are read further (the
    /// others cost that pass alone). `lines` are the lines' ranges in `text`, in order,
    /// each followed by a newline before the next starts (as a log's lines are).
    pub fn find_run(
        &mut self,
        source: &str,
        text: &[u8],
        lines: &[Range<usize>],
        found: &mut Found,
    ) {
        let matcher = Self::source_matcher(&mut self.by_source, &self.rules, self.design, source);
        matcher.screen(text, lines, &mut self.screened);
        for (i, range) in lines.iter().enumerate() {
            let screened = match self.screened.line(i) {
                Screening::Nothing => {
                    found.ends.push(found.matches.len());
                    continue;
                }
                Screening::Literals(literals) => Some(literals),
                Screening::Unscreened => None,
            };
            Self::find_in(
                matcher,
                &mut self.candidates,
                &mut self.capture_text,
                &mut self.key_text,
                &text[range.clone()],
                screened,
                found,
            );
        }
    }

    /// The matcher of `source`, made on its first line.
    fn source_matcher<'a>(
        by_source: &'a mut FastMap<String, SourceMatcher>,
        rules: &RuleSet,
        design: Design,
        source: &str,
    ) -> &'a mut SourceMatcher {
        if !by_source.contains_key(source) {
            let matcher = SourceMatcher::with_design(rules, source, design);
            by_source.insert(source.to_string(), matcher);
        }
        by_source.get_mut(source).expect("present")
    }

    /// [`Matchers::find`] of `bytes` with `matcher`, in reused buffers; `screened`: the
    /// screen literals found inside it ([`SourceMatcher::candidates`]).
    #[allow(clippy::too_many_arguments)]
    fn find_in(
        matcher: &mut SourceMatcher,
        candidates: &mut Vec<(usize, usize)>,
        captures: &mut String,
        key: &mut String,
        bytes: &[u8],
        screened: Option<&[u32]>,
        found: &mut Found,
    ) {
        if !matcher.rules.is_empty() {
            matcher.candidates(bytes, screened, candidates);
            let mut text = LineText::new(bytes);
            for &(index, step) in candidates.iter() {
                if !matcher.read(index, step, &mut text, captures, key) {
                    continue;
                }
                let rule = &matcher.rules[index];
                let view = FieldsView::new(captures);
                if rule.excluded_by(bytes, |name| view.get(name)).is_some() {
                    continue;
                }
                let start = found.text.len();
                found.text.push_str(captures);
                let middle = found.text.len();
                found.text.push_str(key);
                found.matches.push(Matched {
                    rule: rule.clone(),
                    step,
                    captures: start..middle,
                    key: middle..found.text.len(),
                });
            }
        }
        found.ends.push(found.matches.len());
    }
}
