//! Detection: which rules a line matches, and when matches cross a rule's threshold.
//!
//! Per line, one multi-pattern pass ([`regex::bytes::RegexSet`], one per source) finds the
//! candidate rules; only those run their own regex for captures. Windows run on the lines'
//! own timestamps. The detector is pure and synchronous so the daemon, `replay` and `test`
//! all evaluate lines the same way.

pub mod keys;
pub mod kinds;
pub mod matcher;
pub mod window;

use crate::rules::{Rule, RuleKind, RuleSet};
use crate::sources::LogLine;
use chrono::{DateTime, Utc};
use keys::KeyTable;
use kinds::{Event, KeyState, Observed};
use matcher::SourceMatcher;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

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
    /// Evidence for a line read at `time`.
    pub fn from_line(line: &LogLine, time: DateTime<Utc>) -> Self {
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

/// A key's state's place in the store: rule id, rule definition hash, key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowId {
    /// Rule id.
    pub rule: String,
    /// Hash of the rule definition the state was counted under.
    pub rule_hash: String,
    /// Key values.
    pub key: Key,
}

/// A key's state as stored: its identity and its state.
pub type SavedWindow = (WindowId, KeyState);

/// Evaluates lines against a rule set and keeps every rule's per-key state.
pub struct Detector {
    rules: Arc<RuleSet>,
    matchers: HashMap<String, SourceMatcher>,
    tables: HashMap<String, KeyTable<KeyState>>,
    dirty: HashSet<(String, Key)>,
    evicted: BTreeMap<String, u64>,
    candidates: Vec<(usize, usize)>,
}

/// What a rule-set swap changed, for the log and (later) the audit trail of rule changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleChange {
    /// Version that ran before.
    pub old_version: String,
    /// Version that runs now.
    pub new_version: String,
    /// Rule ids only in the new set.
    pub added: Vec<String>,
    /// Rule ids only in the old set.
    pub removed: Vec<String>,
    /// Rule ids in both whose definition changed (their state starts again).
    pub changed: Vec<String>,
}

impl RuleChange {
    /// Compares two rule sets by rule id and definition hash.
    pub fn between(old: &RuleSet, new: &RuleSet) -> Self {
        let old_hashes: HashMap<&str, &str> = old
            .rules
            .iter()
            .map(|r| (r.id(), r.hash.as_str()))
            .collect();
        let new_hashes: HashMap<&str, &str> = new
            .rules
            .iter()
            .map(|r| (r.id(), r.hash.as_str()))
            .collect();
        let mut added: Vec<String> = new_hashes
            .keys()
            .filter(|id| !old_hashes.contains_key(*id))
            .map(|id| id.to_string())
            .collect();
        let mut removed: Vec<String> = old_hashes
            .keys()
            .filter(|id| !new_hashes.contains_key(*id))
            .map(|id| id.to_string())
            .collect();
        let mut changed: Vec<String> = new_hashes
            .iter()
            .filter(|(id, h)| old_hashes.get(*id).is_some_and(|old| old != *h))
            .map(|(id, _)| id.to_string())
            .collect();
        added.sort();
        removed.sort();
        changed.sort();
        RuleChange {
            old_version: old.version.clone(),
            new_version: new.version.clone(),
            added,
            removed,
            changed,
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
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
            tables: HashMap::new(),
            dirty: HashSet::new(),
            evicted: BTreeMap::new(),
            candidates: Vec::new(),
        }
    }

    /// The rules being evaluated.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Swaps in a new rule set. State of rules whose definition (hash) is unchanged is
    /// kept; state of changed and removed rules is dropped (and deleted from the store with
    /// the next [`Detector::take_dirty`]).
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) -> RuleChange {
        let change = RuleChange::between(&self.rules, &rules);
        let keep: HashSet<&str> = rules
            .rules
            .iter()
            .filter(|r| {
                self.rules
                    .rule(r.id())
                    .is_some_and(|old| old.hash == r.hash)
            })
            .map(|r| r.id())
            .collect();
        let dropped: Vec<String> = self
            .tables
            .keys()
            .filter(|id| !keep.contains(id.as_str()))
            .cloned()
            .collect();
        for id in dropped {
            if let Some(table) = self.tables.remove(&id) {
                for key in table.keys() {
                    self.dirty.insert((id.clone(), key.clone()));
                }
            }
        }
        let sources: Vec<String> = self.matchers.keys().cloned().collect();
        self.matchers = sources
            .into_iter()
            .map(|s| {
                let m = SourceMatcher::new(&rules, &s);
                (s, m)
            })
            .collect();
        self.rules = rules;
        change
    }

    fn table<'a>(
        tables: &'a mut HashMap<String, KeyTable<KeyState>>,
        rule: &Rule,
    ) -> &'a mut KeyTable<KeyState> {
        tables
            .entry(rule.id().to_string())
            .or_insert_with(|| KeyTable::new(rule.max_keys))
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
        matcher.candidates(&line.bytes, &mut self.candidates);
        let time_ms = time.timestamp_millis();
        for &(index, step) in &self.candidates {
            let rule = &matcher.rules[index];
            let regex = &rule.patterns[step];
            let Some(caps) = regex.captures(&line.bytes) else {
                continue;
            };
            let captures: BTreeMap<String, String> = regex
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
            if rule.excluded_by(&line.bytes, &captures).is_some() {
                continue;
            }
            let key: Key = rule
                .def
                .group_by
                .iter()
                .map(|f| (f.clone(), captures.get(f).cloned().unwrap_or_default()))
                .collect();
            let evidence = Evidence::from_line(line, time);
            let (state, evicted) = Self::table(&mut self.tables, rule)
                .touch(&key, || KeyState::new(&rule.kind, time_ms));
            let observed = state.observe(
                &rule.kind,
                Event {
                    time_ms,
                    step,
                    evidence: &evidence,
                    captures: &captures,
                },
            );
            if let Some(old) = evicted {
                *self.evicted.entry(rule.id().to_string()).or_default() += 1;
                self.dirty.insert((rule.id().to_string(), old));
            }
            self.dirty.insert((rule.id().to_string(), key.clone()));
            let (crossed, resumed) = match observed {
                // Older than the state can count.
                Observed::Late => continue,
                Observed::Counted => (None, None),
                Observed::Crossed(c) => (Some(c), None),
                Observed::Resumed => (None, Some(time)),
            };
            hits.push(Hit {
                rule: rule.clone(),
                key,
                captures,
                time,
                evidence: Some(evidence),
                crossed,
                resumed,
            });
        }
    }

    /// Lets the clock run to `now` (the wall clock live; a watermark of the lines' times in
    /// a replay): absence rules whose matches stayed away cross, appending hits without a
    /// line. A rule without `group_by` starts its clock the first time this is called.
    pub fn advance(&mut self, now: DateTime<Utc>, hits: &mut Vec<Hit>) {
        let now_ms = now.timestamp_millis();
        for rule in &self.rules.rules {
            if !matches!(rule.kind, RuleKind::Absence { .. }) {
                continue;
            }
            let table = Self::table(&mut self.tables, rule);
            if rule.def.group_by.is_empty() && table.is_empty() {
                table.touch(&Key::new(), || KeyState::new(&rule.kind, now_ms));
                self.dirty.insert((rule.id().to_string(), Key::new()));
            }
            for (key, state) in table.iter_mut() {
                if let Some(crossed) = state.advance(&rule.kind, now_ms) {
                    self.dirty.insert((rule.id().to_string(), key.clone()));
                    hits.push(Hit {
                        rule: rule.clone(),
                        key: key.clone(),
                        captures: key.clone(),
                        time: now,
                        evidence: None,
                        crossed: Some(crossed),
                        resumed: None,
                    });
                }
            }
        }
    }

    /// Forgets state that can no longer contribute at event time `now`, so memory follows
    /// live keys rather than every key ever seen.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        for rule in &self.rules.rules {
            let Some(table) = self.tables.get_mut(rule.id()) else {
                continue;
            };
            for key in table.retain(|_, state| !state.expire(&rule.kind, now_ms)) {
                self.dirty.insert((rule.id().to_string(), key));
            }
        }
    }

    /// State changed since the last call: `None` means the key's state is gone.
    pub fn take_dirty(&mut self) -> Vec<(WindowId, Option<&KeyState>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|(rule_id, key)| {
                let rule_hash = self
                    .rules
                    .rule(&rule_id)
                    .map(|r| r.hash.clone())
                    .unwrap_or_default();
                let state = self.tables.get(&rule_id).and_then(|t| t.get(&key));
                (
                    WindowId {
                        rule: rule_id,
                        rule_hash,
                        key,
                    },
                    state,
                )
            })
            .collect()
    }

    /// Keys evicted per rule since the last call (for the eviction metric).
    pub fn take_evictions(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.evicted)
    }

    /// Restores state saved earlier, least recent first; state of rules whose definition
    /// changed is dropped (returned, so the caller can delete it).
    pub fn restore(&mut self, saved: impl IntoIterator<Item = SavedWindow>) -> Vec<WindowId> {
        let mut stale = Vec::new();
        let mut fresh = Vec::new();
        for (id, state) in saved {
            match self.rules.rule(&id.rule) {
                Some(rule) if rule.hash == id.rule_hash => fresh.push((rule.clone(), id, state)),
                _ => stale.push(id),
            }
        }
        fresh.sort_by_key(|(_, _, state)| state.last_ms());
        for (rule, id, state) in fresh {
            if let Some(old) = Self::table(&mut self.tables, &rule).insert(id.key, state) {
                // More saved keys than max_keys allows now: the oldest go.
                stale.push(WindowId {
                    rule: id.rule,
                    rule_hash: id.rule_hash,
                    key: old,
                });
            }
        }
        stale
    }

    /// Number of live keys across all rules.
    pub fn live_keys(&self) -> usize {
        self.tables.values().map(KeyTable::len).sum()
    }
}
