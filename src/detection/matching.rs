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
        Self::find_in(matcher, &mut self.candidates, &line.bytes, None, found);
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
    /// screen literals found inside it ([`SourceMatcher::candidates`]). The captures and
    /// key are encoded straight into `found`'s text, shared by the rules of one pattern
    /// ([`SourceMatcher::read`]); an excluded match leaves its few bytes there unused.
    fn find_in(
        matcher: &mut SourceMatcher,
        candidates: &mut Vec<(usize, usize)>,
        bytes: &[u8],
        screened: Option<&[u32]>,
        found: &mut Found,
    ) {
        if !matcher.rules.is_empty() {
            matcher.candidates(bytes, screened, candidates);
            let mut line = LineText::new(bytes);
            for &(index, step) in candidates.iter() {
                let Some((captures, key)) = matcher.read(index, step, &mut line, &mut found.text)
                else {
                    continue;
                };
                let rule = &matcher.rules[index];
                let view = FieldsView::new(&found.text[captures.clone()]);
                if rule.excluded_by(bytes, |name| view.get(name)).is_some() {
                    continue;
                }
                found.matches.push(Matched {
                    rule: rule.clone(),
                    step,
                    captures,
                    key,
                });
            }
        }
        found.ends.push(found.matches.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::{Fields, read_match};

    /// A run of `lines`, each followed by a newline, and their ranges in it.
    pub(super) fn piece<'a>(
        lines: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut text = Vec::new();
        let mut ranges = Vec::new();
        for line in lines {
            let start = text.len();
            text.extend_from_slice(line);
            ranges.push(start..text.len());
            text.push(b'\n');
        }
        (text, ranges)
    }

    /// Rules sharing a pattern share its encoded captures, and a key only with rules of
    /// the same key fields: every match still reads exactly the captures and key its own
    /// rule reads alone (`read_match`, what `explain` shows), whatever the order the rules
    /// come in, with an excluded match between them, on line after line of one run.
    #[test]
    fn rules_sharing_a_pattern_read_their_own_captures_and_keys() {
        let pattern = r"user (?P<u>\S+) from (?P<ip>\S+)";
        let rule = |id: &str, group_by: &str, extra: &str| {
            format!(
                "  - id: {id}\n    match: '{pattern}'\n    group_by: [{group_by}]\n{extra}    threshold: {{count: 9, within: 1m}}\n    severity: low\n"
            )
        };
        let yaml = [
            rule("by-ip", "ip", ""),
            rule("by-user", "u", "    ignore: 'root'\n"),
            rule("by-ip-again", "ip", ""),
            rule("by-both", "u, ip", ""),
            rule("by-user-again", "u", ""),
            "  - id: other\n    match: 'from (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 9, within: 1m}\n    severity: low\n".to_string(),
        ]
        .concat();
        let rules = RuleSet::from_yaml(&format!("rules:\n{yaml}"));
        let mut matchers = Matchers::new(rules.clone(), &["auth".to_string()], Design::CURRENT);
        let lines: [&[u8]; 4] = [
            b"sshd: user bob from 10.0.0.1",
            b"sshd: user root from 10.0.0.2",
            b"nothing here",
            b"sshd: user \xffamy from 10.0.0.3 from 10.0.0.4",
        ];
        let (text, ranges) = piece(lines);
        let mut found = Found::default();
        matchers.find_run("auth", &text, &ranges, &mut found);
        assert_eq!(found.lines(), lines.len());
        let mut matched = 0;
        for (i, line) in lines.iter().enumerate() {
            let got = found.line(i);
            let expected: Vec<(&str, Fields, Fields)> = rules
                .rules
                .iter()
                .filter_map(|rule| {
                    let (captures, key) = read_match(rule, 0, line)?;
                    let excluded = rule.excluded_by(line, |name| captures.get(name));
                    excluded
                        .is_none()
                        .then_some((rule.def.id.as_str(), captures, key))
                })
                .collect();
            let actual: Vec<(&str, Fields, Fields)> = got
                .matches
                .iter()
                .map(|m| {
                    (
                        m.rule.def.id.as_str(),
                        Fields::from_encoded(&got.text[m.captures.clone()]),
                        Fields::from_encoded(&got.text[m.key.clone()]),
                    )
                })
                .collect();
            assert_eq!(actual, expected, "line {i}");
            matched += actual.len();
        }
        assert_eq!(
            matched,
            6 + 5 + 6,
            "bob: all six; root: not by-user; amy: all six"
        );
    }
}

#[cfg(test)]
mod shortcut_tests {
    use super::*;
    use crate::detection::Fields;

    /// Every (rule, step, captures, key) of each line of a run, read by `design`.
    fn hits(
        rules: &Arc<RuleSet>,
        design: Design,
        text: &[u8],
        ranges: &[Range<usize>],
    ) -> Vec<Vec<(String, usize, Fields, Fields)>> {
        let mut matchers = Matchers::new(rules.clone(), &["auth".to_string()], design);
        let mut found = Found::default();
        matchers.find_run("auth", text, ranges, &mut found);
        (0..found.lines())
            .map(|i| {
                let line = found.line(i);
                line.matches
                    .iter()
                    .map(|m| {
                        (
                            m.rule.def.id.clone(),
                            m.step,
                            Fields::from_encoded(&line.text[m.captures.clone()]),
                            Fields::from_encoded(&line.text[m.key.clone()]),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    /// The hits of `variants` repeated over a run of more than 64 KiB (so that the screen
    /// is tuned on the run before it reads it), required to be the same with the current
    /// front end as with the combined set and `regex` captures.
    fn hits_as_before(
        rules: &Arc<RuleSet>,
        variants: &[&[u8]],
    ) -> Vec<Vec<(String, usize, Fields, Fields)>> {
        let (text, ranges) = super::tests::piece((0..1500).map(|i| variants[i % variants.len()]));
        assert!(text.len() > 64 << 10);
        let now = hits(rules, Design::CURRENT, &text, &ranges);
        let before = hits(rules, Design::PREVIOUS, &text, &ranges);
        assert_eq!(now, before);
        now
    }

    /// The front end's shortcuts (the screen, tuned on the run's first bytes; sets proved
    /// by a screen literal; captures shared by the rules of a pattern) find exactly what
    /// the combined set and the `regex` crate find, on lines where a required literal
    /// appears before and after the real match, where a capture starts before the
    /// literal the screen finds, where the literal is only part of a longer word, and
    /// where a pattern's literals are all there but out of order.
    #[test]
    fn the_shortcuts_find_what_the_previous_front_end_finds() {
        let rules = Arc::new(RuleSet::from_yaml(concat!(
            "rules:\n",
            "  - id: failed\n",
            "    match: 'sshd\\[\\d+\\]: Failed password for (?P<user>\\S+) from (?P<ip>[0-9.]+) port \\d+'\n",
            "    group_by: [ip]\n",
            "    threshold: {count: 9, within: 1m}\n",
            "    severity: low\n",
            "  - id: failed-user\n",
            "    match: 'sshd\\[\\d+\\]: Failed password for (?P<user>\\S+) from (?P<ip>[0-9.]+) port \\d+'\n",
            "    group_by: [user]\n",
            "    threshold: {count: 9, within: 1m}\n",
            "    severity: low\n",
            "  - id: host-before\n",
            "    match: '(?P<host>[a-z0-9]+) sshd\\[\\d+\\]: Accepted (?P<method>\\S+) for'\n",
            "    group_by: [host]\n",
            "    threshold: {count: 9, within: 1m}\n",
            "    severity: low\n",
            "  - id: rejected\n",
            "    match: 'postfix/smtpd\\[\\d+\\]: NOQUEUE: rejected RCPT from \\S+\\[(?P<ip>[0-9.]+)\\]'\n",
            "    group_by: [ip]\n",
            "    threshold: {count: 9, within: 1m}\n",
            "    severity: low\n",
        )));
        let variants: [&[u8]; 9] = [
            b"Nov  1 00:00:00 web1 sshd[1]: Failed password for bob from 10.0.0.1 port 22 ssh2",
            b"Nov  1 00:00:00 web1 sshd from Failed password for x sshd[2]: Failed password for amy from 10.0.0.2 port 1 then Failed password for eve from 10.0.0.3 port 2",
            b"Nov  1 00:00:00 web1 sshd[3]: Failed password for from 10.0.0.4 port x; sshd[4]: Failed password for joe from 10.0.0.5 port 4",
            b"Nov  1 00:00:00 host7 sshd[5]: Accepted publickey for deploy from 10.0.0.6 port 5 ssh2",
            b"Nov  1 00:00:00 a sshd[6]: Accepted password for root; b sshd[7]: Accepted key for x",
            b"Nov  1 00:00:00 web1 sshdx[8]: Accepted publickey for deploy; port from Failed password for",
            b"Nov  1 00:00:00 mx postfix/smtpd[9]: NOQUEUE: rejected RCPT from unknown[10.0.0.7]: 554",
            b"Nov  1 00:00:00 mx postfix/smtpd[9]: rejected RCPT from x[10.0.0.8] NOQUEUE: postfix/smtpd[1]:",
            b"Nov  1 00:00:00 web1 CRON[10]: pam_unix(cron:session): session opened for user root",
        ];
        let now = hits_as_before(&rules, &variants);
        let per_variant: Vec<usize> = now[..variants.len()].iter().map(Vec::len).collect();
        assert_eq!(
            per_variant,
            [2, 2, 2, 1, 1, 0, 1, 0, 0],
            "{:?}",
            &now[..variants.len()]
        );
        // The capture before the literal, and the first of two matches, are read whole.
        assert_eq!(now[3][0].2.get("host"), Some("host7"));
        assert_eq!(now[1][0].3.get("ip"), Some("10.0.0.2"));
        assert_eq!(now[2][1].2.get("user"), Some("joe"));
    }

    /// An alternation whose branches require different literals (the gate takes `User `
    /// for the second branch, not the ` from ` that `Received disconnect from ` also
    /// holds) finds what the combined set and the `regex` crate find: on lines holding one
    /// branch's literal in the other's shape, both literals out of place, and the literal
    /// a branch no longer brings (` from `) without the branch's own.
    #[test]
    fn branches_gated_on_their_own_literals_find_what_the_previous_front_end_finds() {
        let rules = Arc::new(RuleSet::from_yaml(concat!(
            "rules:\n",
            "  - id: branches\n",
            "    match: 'sshd\\[\\d+\\]: (?:Received disconnect from |User (?P<user>\\S+) from )(?P<ip>[0-9.]+)(?: port \\d+)?$'\n",
            "    group_by: [ip]\n",
            "    threshold: {count: 9, within: 1m}\n",
            "    severity: low\n",
        )));
        let variants: [&[u8]; 8] = [
            b"Nov  1 00:00:00 web1 sshd[1]: User root from 10.0.0.1",
            b"Nov  1 00:00:00 web1 sshd[2]: Received disconnect from 10.0.0.2 port 22",
            b"Nov  1 00:00:00 web1 sshd[3]: Accepted publickey for x from 10.0.0.3 port 22",
            b"Nov  1 00:00:00 web1 sshd[4]: Received disconnect for User x from 10.0.0.4",
            b"Nov  1 00:00:00 web1 sshd[5]: User x from Received disconnect from 10.0.0.5",
            b"Nov  1 00:00:00 web1 sshd[6]: User from from 10.0.0.6 port 6",
            b"Nov  1 00:00:00 web1 sshd[7]: Disconnected from User 10.0.0.7",
            b"Nov  1 00:00:00 web1 CRON[8]: User root from 10.0.0.8",
        ];
        let now = hits_as_before(&rules, &variants);
        let per_variant: Vec<usize> = now[..variants.len()].iter().map(Vec::len).collect();
        assert_eq!(per_variant, [1, 1, 0, 0, 0, 1, 0, 0], "{:?}", &now[..8]);
        assert_eq!(now[5][0].2.get("user"), Some("from"));
        assert_eq!(now[1][0].3.get("ip"), Some("10.0.0.2"));
    }
}
