//! Detection: which rules a line matches, and when matches cross a rule's threshold.
//!
//! Per line, one multi-pattern pass ([`regex::bytes::RegexSet`], one per source) finds the
//! candidate rules; only those run their own regex for captures. Windows run on the lines'
//! own timestamps. The detector is pure and synchronous so the daemon, `replay` and `test`
//! all evaluate lines the same way.

pub mod window;

use crate::rules::{Rule, RuleKind, RuleSet};
use crate::sources::LogLine;
use chrono::{DateTime, Utc};
use regex::bytes::{RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use window::SlidingWindow;

/// Compiled-size budget of one source's combined pattern set.
const SET_SIZE_LIMIT: usize = 512 << 20;

/// Longest line text kept as evidence.
pub const EVIDENCE_LINE_BYTES: usize = 1024;

/// The values of a rule's `group_by` captures: what incidents are deduplicated on.
pub type Key = BTreeMap<String, String>;

/// A log line kept as evidence on an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Source name.
    pub source: String,
    /// File path, or `-`.
    pub path: String,
    /// Byte offset of the line in the file.
    pub offset: u64,
    /// The line's own time (or arrival time).
    pub time: DateTime<Utc>,
    /// The line as text (invalid UTF-8 replaced), cut at [`EVIDENCE_LINE_BYTES`].
    pub line: String,
}

impl Evidence {
    fn from_line(line: &LogLine, time: DateTime<Utc>) -> Self {
        let cut = &line.bytes[..line.bytes.len().min(EVIDENCE_LINE_BYTES)];
        Evidence {
            source: line.source.to_string(),
            path: line.path.to_string(),
            offset: line.offset,
            time,
            line: String::from_utf8_lossy(cut).into_owned(),
        }
    }
}

/// A counted match of a rule, or a condition the clock noticed (an absence).
#[derive(Debug, Clone)]
pub struct Hit {
    /// The rule.
    pub rule: Arc<Rule>,
    /// Its key values.
    pub key: Key,
    /// Every named capture of the match (for summaries); the key values for an absence.
    pub captures: BTreeMap<String, String>,
    /// The line's own time, or the clock time an absence was noticed at.
    pub time: DateTime<Utc>,
    /// The matching line; `None` when no line caused the hit (an absence).
    pub evidence: Option<Evidence>,
    /// Set when this hit completed the rule's condition. The rule's state for the key
    /// starts again empty.
    pub crossed: Option<Crossing>,
    /// Absence: matches came back after a gap, at this (line) time.
    pub resumed: Option<DateTime<Utc>>,
}

/// What completed a rule's condition: how much it counted and the lines that show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    /// The count the incident starts with (matches in the window, distinct values, ...).
    pub count: u64,
    /// Lines that show it, oldest first (bounded; may be empty for an absence).
    pub evidence: Vec<Evidence>,
}

/// Candidate rules for one source, found in one pass.
struct SourceMatcher {
    /// `None` when the combined set exceeded its budget: every rule is then a candidate.
    set: Option<RegexSet>,
    rules: Vec<Arc<Rule>>,
}

/// Window state of one rule and key.
type Windows = HashMap<Key, SlidingWindow<Evidence>>;

/// A window's place in the store: rule id, rule definition hash, key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowId {
    /// Rule id.
    pub rule: String,
    /// Hash of the rule definition the window was counted under.
    pub rule_hash: String,
    /// Key values.
    pub key: Key,
}

/// A window as stored: its identity and its events.
pub type SavedWindow = (WindowId, SlidingWindow<Evidence>);

/// Evaluates lines against a rule set and keeps every rule's windows.
pub struct Detector {
    rules: Arc<RuleSet>,
    matchers: HashMap<String, SourceMatcher>,
    windows: HashMap<String, Windows>,
    dirty: HashSet<(String, Key)>,
}

impl Detector {
    /// A detector for these rules and the named sources.
    pub fn new(rules: Arc<RuleSet>, sources: &[String]) -> Self {
        let matchers = sources
            .iter()
            .map(|s| (s.clone(), SourceMatcher::new(&rules, s)))
            .collect();
        Detector {
            rules,
            matchers,
            windows: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    /// The rules being evaluated.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Evaluates one line at time `time`, appending counted matches to `hits`.
    pub fn observe(&mut self, line: &LogLine, time: DateTime<Utc>, hits: &mut Vec<Hit>) {
        let source = line.source.as_ref();
        if !self.matchers.contains_key(source) {
            let matcher = SourceMatcher::new(&self.rules, source);
            self.matchers.insert(source.to_string(), matcher);
        }
        let matcher = &self.matchers[source];
        if matcher.rules.is_empty() {
            return;
        }
        let candidates: Vec<usize> = match &matcher.set {
            Some(set) => set.matches(&line.bytes).into_iter().collect(),
            None => (0..matcher.rules.len()).collect(),
        };
        for index in candidates {
            let rule = &matcher.rules[index];
            let Some(caps) = rule.regex.captures(&line.bytes) else {
                continue;
            };
            if rule
                .ignore
                .as_ref()
                .is_some_and(|r| r.is_match(&line.bytes))
            {
                continue;
            }
            let captures: BTreeMap<String, String> = rule
                .regex
                .capture_names()
                .flatten()
                .filter_map(|name| {
                    caps.name(name).map(|m| {
                        (
                            name.to_string(),
                            String::from_utf8_lossy(m.as_bytes()).into_owned(),
                        )
                    })
                })
                .collect();
            let key: Key = rule
                .def
                .group_by
                .iter()
                .map(|f| (f.clone(), captures.get(f).cloned().unwrap_or_default()))
                .collect();
            let evidence = Evidence::from_line(line, time);
            let crossed = match rule.kind {
                RuleKind::Threshold { count, within_ms } => {
                    let windows = self.windows.entry(rule.id().to_string()).or_default();
                    let window = windows.entry(key.clone()).or_default();
                    let held = window.push(time.timestamp_millis(), evidence.clone(), within_ms);
                    self.dirty.insert((rule.id().to_string(), key.clone()));
                    match held {
                        Some(n) if n as u64 >= count => {
                            let evidence = window.drain();
                            Some(Crossing {
                                count: evidence.len() as u64,
                                evidence,
                            })
                        }
                        Some(_) => None,
                        // Older than the window: not counted.
                        None => continue,
                    }
                }
            };
            hits.push(Hit {
                rule: rule.clone(),
                key,
                captures,
                time,
                evidence: Some(evidence),
                crossed,
                resumed: None,
            });
        }
    }

    /// Drops windows whose newest event is older than `now` minus their length, so memory
    /// follows live keys rather than every key ever seen.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        for rule in &self.rules.rules {
            let RuleKind::Threshold { within_ms, .. } = rule.kind;
            let Some(windows) = self.windows.get_mut(rule.id()) else {
                continue;
            };
            windows.retain(|key, window| {
                window.expire(now_ms - within_ms);
                if window.is_empty() {
                    self.dirty.insert((rule.id().to_string(), key.clone()));
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Windows changed since the last call: `None` means the window is gone.
    pub fn take_dirty(&mut self) -> Vec<(WindowId, Option<&SlidingWindow<Evidence>>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|(rule_id, key)| {
                let rule = self.rules.rule(&rule_id)?;
                let window = self
                    .windows
                    .get(&rule_id)
                    .and_then(|w| w.get(&key))
                    .filter(|w| !w.is_empty());
                Some((
                    WindowId {
                        rule: rule_id,
                        rule_hash: rule.hash.clone(),
                        key,
                    },
                    window,
                ))
            })
            .collect()
    }

    /// Restores windows saved earlier; windows of rules whose definition changed are dropped
    /// (returned, so the caller can delete them).
    pub fn restore(&mut self, saved: impl IntoIterator<Item = SavedWindow>) -> Vec<WindowId> {
        let mut stale = Vec::new();
        for (id, window) in saved {
            match self.rules.rule(&id.rule) {
                Some(rule) if rule.hash == id.rule_hash => {
                    self.windows
                        .entry(id.rule.clone())
                        .or_default()
                        .insert(id.key, window);
                }
                _ => stale.push(id),
            }
        }
        stale
    }

    /// Number of live keys across all rules.
    pub fn live_keys(&self) -> usize {
        self.windows.values().map(HashMap::len).sum()
    }
}

impl SourceMatcher {
    fn new(rules: &RuleSet, source: &str) -> Self {
        let rules: Vec<Arc<Rule>> = rules
            .rules
            .iter()
            .filter(|r| r.applies_to(source))
            .cloned()
            .collect();
        // Each pattern already compiled within its own bounds; the set gets their sum.
        let set = RegexSetBuilder::new(rules.iter().map(|r| r.def.pattern.as_str()))
            .unicode(false)
            .size_limit(SET_SIZE_LIMIT)
            .dfa_size_limit(SET_SIZE_LIMIT)
            .build()
            .map_err(|e| tracing::warn!(source, error = %e, "rules too large for one combined pass; matching them one by one"))
            .ok();
        SourceMatcher { set, rules }
    }
}
