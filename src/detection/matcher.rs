//! The multi-pattern pass: one [`RegexSet`] per source over every pattern of every rule
//! that reads it (sequence steps included), so the per-line cost does not grow with one
//! scan per rule. Only the rules it finds run their own regex for captures.

use crate::rules::{Rule, RuleSet};
use regex::bytes::{RegexSet, RegexSetBuilder};
use std::cmp::Reverse;
use std::sync::Arc;

/// Compiled-size budget of one source's combined pattern set.
const SET_SIZE_LIMIT: usize = 512 << 20;

/// Candidate rules for one source, found in one pass.
pub struct SourceMatcher {
    /// `None` when the combined set exceeded its budget: every pattern is then a candidate.
    set: Option<RegexSet>,
    /// Rules reading this source.
    pub rules: Vec<Arc<Rule>>,
    /// For each pattern of the set: the rule (index into `rules`) and its pattern index.
    slots: Vec<(usize, usize)>,
}

impl SourceMatcher {
    /// The matcher for the rules that read `source`.
    pub fn new(rules: &RuleSet, source: &str) -> Self {
        let rules: Vec<Arc<Rule>> = rules
            .rules
            .iter()
            .filter(|r| r.applies_to(source))
            .cloned()
            .collect();
        let mut slots = Vec::new();
        let mut texts = Vec::new();
        for (r, rule) in rules.iter().enumerate() {
            for (p, text) in rule.pattern_texts().into_iter().enumerate() {
                slots.push((r, p));
                texts.push(text);
            }
        }
        // Each pattern already compiled within its own bounds; the set gets their sum.
        let set = RegexSetBuilder::new(texts)
            .unicode(false)
            .size_limit(SET_SIZE_LIMIT)
            .dfa_size_limit(SET_SIZE_LIMIT)
            .build()
            .map_err(|e| tracing::warn!(source, error = %e, "rules too large for one combined pass; matching them one by one"))
            .ok();
        SourceMatcher { set, rules, slots }
    }

    /// Fills `out` with the (rule, pattern) pairs whose pattern matches `line`: rules in
    /// order, and within a rule later patterns (sequence steps) first.
    pub fn candidates(&self, line: &[u8], out: &mut Vec<(usize, usize)>) {
        out.clear();
        match &self.set {
            Some(set) => {
                if !set.is_match(line) {
                    return;
                }
                out.extend(set.matches(line).into_iter().map(|i| self.slots[i]));
            }
            None => out.extend_from_slice(&self.slots),
        }
        if out.len() > 1 {
            out.sort_unstable_by_key(|&(r, p)| (r, Reverse(p)));
        }
    }
}
