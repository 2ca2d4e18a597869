//! Detection: which rules a line matches, and when matches cross a rule's threshold.
//!
//! Per line, a literal gate ([`matcher`]) finds the candidate rules; only those run their
//! pattern for captures ([`capture`]: PCRE2's JIT where it reads the pattern identically,
//! else the `regex` crate). That matching stage ([`matching`]) holds no state, so it can
//! run on worker threads; the window stage ([`Detector::apply`]) counts matches in line
//! order. Windows run on the lines' own timestamps. The detector is pure and synchronous so the daemon, `replay` and `test`
//! all evaluate lines the same way.

pub mod capture;
pub mod fields;
pub mod in_order;
pub mod keys;
pub mod kinds;
pub mod literals;
pub mod matcher;
pub mod matching;
pub mod stored;
pub mod window;

use crate::line::LogLine;
use crate::rules::{Rule, RuleKind, RuleSet};
use chrono::{DateTime, Utc};
pub use fields::{Fields, FieldsView};
use keys::{Expired, KeyTable};
use kinds::{Event, KeyState, Observed};
use matcher::{Design, PatternFields};
pub use matching::{Found, FoundLine, Matched, Matchers};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
pub use stored::{decode_window, encode_window, window_key};

/// Maps looked up per line or per hit: hashed with foldhash (seeded per process, as the key
/// tables are) rather than SipHash, which showed in profiles.
type FastMap<K, V> = foldhash::HashMap<K, V>;
/// See [`FastMap`].
type FastSet<K> = foldhash::HashSet<K>;

/// Longest line text kept as evidence.
pub const EVIDENCE_LINE_BYTES: usize = 1024;

/// The values of a rule's `group_by` captures: what incidents are deduplicated on, as
/// people and the store see them (the detector works on the same pairs as [`Fields`]).
pub type Key = BTreeMap<String, String>;

pub use crate::evidence::Evidence;

impl Evidence {
    /// Evidence for a line read at `time`.
    pub fn from_line(line: &LogLine, time: DateTime<Utc>) -> Self {
        let cut = &line.bytes[..line.bytes.len().min(EVIDENCE_LINE_BYTES)];
        Evidence {
            source: line.source.clone(),
            path: line.path.clone(),
            offset: line.offset,
            time,
            line: matcher::lossy_text(cut),
        }
    }
}

/// A counted match of a rule, or a condition the clock noticed (an absence).
#[derive(Debug, Clone)]
pub struct Hit {
    /// The rule.
    pub rule: Arc<Rule>,
    /// Its key values.
    pub key: Fields,
    /// Every named capture of the match (for summaries); the key values for an absence.
    pub captures: Fields,
    /// Which of the rule's patterns matched (a sequence's step; 0 for other kinds).
    pub step: usize,
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
    /// The matching stage (per line, no state).
    matchers: Matchers,
    /// The current line's matches, reused for every line.
    found: Found,
    tables: FastMap<String, KeyTable<KeyState>>,
    /// Keys whose state changed since the last store commit, by rule id.
    dirty: FastMap<String, FastSet<Fields>>,
    evicted: BTreeMap<String, u64>,
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
        Self::with_design(rules, sources, Design::CURRENT)
    }

    /// A detector whose matchers are of `design` (benchmarks and differential tests compare
    /// the designs; they count exactly the same hits).
    pub fn with_design(rules: Arc<RuleSet>, sources: &[String], design: Design) -> Self {
        Detector {
            matchers: Matchers::new(rules.clone(), sources, design),
            found: Found::default(),
            rules,
            tables: FastMap::default(),
            dirty: FastMap::default(),
            evicted: BTreeMap::new(),
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
                    mark(&mut self.dirty, &id, key);
                }
            }
        }
        self.matchers = self.matchers.for_rules(rules.clone());
        self.rules = rules;
        change
    }

    fn table<'a>(
        tables: &'a mut FastMap<String, KeyTable<KeyState>>,
        rule: &Rule,
    ) -> &'a mut KeyTable<KeyState> {
        // Looked up by `&str` first: no rule id copied per hit.
        if !tables.contains_key(rule.id()) {
            tables.insert(rule.id().to_string(), KeyTable::new(rule.max_keys));
        }
        tables.get_mut(rule.id()).expect("present")
    }

    /// Evaluates one line at time `time`, appending counted matches to `hits`.
    pub fn observe(&mut self, line: &LogLine, time: DateTime<Utc>, hits: &mut Vec<Hit>) {
        let mut found = std::mem::take(&mut self.found);
        found.clear();
        self.matchers.find(line, &mut found);
        self.apply(line, time, found.line(0), hits);
        self.found = found;
    }

    /// A copy of this detector's matching stage, for a worker thread: what it finds on a
    /// line, [`Detector::apply`] counts exactly as [`Detector::observe`] would.
    pub fn matchers(&self) -> Matchers {
        self.matchers.clone()
    }

    /// The window stage: counts the matches `found` on `line` at time `time` (by this
    /// detector's [`Matchers`], or a copy of them), appending counted matches to `hits`.
    /// Lines must come in the order they would be observed.
    pub fn apply(
        &mut self,
        line: &LogLine,
        time: DateTime<Utc>,
        found: FoundLine<'_>,
        hits: &mut Vec<Hit>,
    ) {
        let Detector {
            tables,
            dirty,
            evicted: evictions,
            ..
        } = self;
        let time_ms = time.timestamp_millis();
        // Made at the line's first counted match and shared by the others.
        let mut line_evidence: Option<Evidence> = None;
        for matched in found.matches {
            let rule = &matched.rule;
            let step = matched.step;
            let capture_text = &found.text[matched.captures.clone()];
            let key_text = &found.text[matched.key.clone()];
            let captures = FieldsView::new(capture_text);
            let evidence = line_evidence
                .get_or_insert_with(|| Evidence::from_line(line, time))
                .clone();
            let mut touched =
                Self::table(tables, rule).touch(key_text, || KeyState::new(&rule.kind, time_ms));
            let key = touched.key.clone();
            let evicted = std::mem::take(&mut touched.evicted);
            // Already in the dirty set since the last store: no set operation per hit.
            let newly_dirty = touched.newly_dirty;
            let observed = touched.state.observe(
                &rule.kind,
                Event {
                    time_ms,
                    step,
                    evidence: &evidence,
                    captures,
                },
            );
            let expires = touched.state.expiry_ms(&rule.kind);
            touched.expires_at(expires);
            if !evicted.is_empty() {
                *evictions.entry(rule.id().to_string()).or_default() += evicted.len() as u64;
                for old in &evicted {
                    mark(dirty, rule.id(), old);
                }
            }
            if newly_dirty {
                mark(dirty, rule.id(), &key);
            }
            let (crossed, resumed) = match observed {
                // Older than the state can count.
                Observed::Late => continue,
                Observed::Counted => (None, None),
                Observed::Crossed(c) => (Some(c), None),
                Observed::Resumed => (None, Some(time)),
            };
            // Captures that are the key's values (only `group_by` names captured) share it.
            let captures = if capture_text == key_text {
                key.clone()
            } else {
                Fields::from_encoded(capture_text)
            };
            hits.push(Hit {
                rule: rule.clone(),
                key,
                captures,
                step,
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
                table.touch("", || KeyState::new(&rule.kind, now_ms));
                mark(&mut self.dirty, rule.id(), &Fields::default());
            }
            // Reported in key order: the table's own order is arbitrary, and sorting only
            // what crossed costs nothing on the ticks where nothing does.
            let first = hits.len();
            for (key, state) in table.iter_mut() {
                if let Some(crossed) = state.advance(&rule.kind, now_ms) {
                    mark(&mut self.dirty, rule.id(), key);
                    hits.push(Hit {
                        rule: rule.clone(),
                        key: key.clone(),
                        captures: key.clone(),
                        step: 0,
                        time: now,
                        evidence: None,
                        crossed: Some(crossed),
                        resumed: None,
                    });
                }
            }
            hits[first..].sort_unstable_by(|a, b| a.key.cmp(&b.key));
        }
    }

    /// The earliest clock time at which [`Detector::advance`] would open an absence gap if
    /// no further lines matched, so a replay can advance exactly there instead of in ticks.
    pub fn next_absence_due(&self) -> Option<DateTime<Utc>> {
        let mut due: Option<i64> = None;
        let absences = self
            .rules
            .rules
            .iter()
            .filter(|r| matches!(r.kind, RuleKind::Absence { .. }));
        for rule in absences {
            let Some(table) = self.tables.get(rule.id()) else {
                continue;
            };
            for state in table.states() {
                if let Some(at) = state.absence_due_ms(&rule.kind) {
                    due = Some(due.map_or(at, |d| d.min(at)));
                }
            }
        }
        due.and_then(DateTime::from_timestamp_millis)
    }

    /// Forgets state that can no longer contribute at event time `now`, so memory follows
    /// live keys rather than every key ever seen. Visits only the keys whose state has
    /// something to forget by `now` (queued by [`KeyState::expiry_ms`]): a tick costs the
    /// keys that expire, not the keys that live.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        for rule in &self.rules.rules {
            let Some(table) = self.tables.get_mut(rule.id()) else {
                continue;
            };
            let gone = table.expire(now_ms, |state| {
                if state.expire(&rule.kind, now_ms) {
                    Expired::Gone
                } else {
                    Expired::Kept(state.expiry_ms(&rule.kind))
                }
            });
            for key in gone {
                mark(&mut self.dirty, rule.id(), &key);
            }
        }
    }

    /// State changed since the last call: `None` means the key's state is gone.
    pub fn take_dirty(&mut self) -> Vec<(WindowId, Option<&KeyState>)> {
        let dirty: Vec<(String, Fields)> = self
            .clean_dirty()
            .into_iter()
            .flat_map(|(rule_id, keys)| keys.into_iter().map(move |k| (rule_id.clone(), k)))
            .collect();
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
                        key: key.to_map(),
                    },
                    state,
                )
            })
            .collect()
    }

    /// Like [`Detector::take_dirty`] for an evaluation that stores no windows (a replay):
    /// the changed keys are marked stored without a window id made for each (which cost a
    /// replay of a busy log more per line than its captures).
    pub fn forget_dirty(&mut self) {
        self.clean_dirty();
    }

    /// Marks every changed key stored (the next change marks it dirty again) and returns
    /// them by rule.
    fn clean_dirty(&mut self) -> FastMap<String, FastSet<Fields>> {
        let dirty = std::mem::take(&mut self.dirty);
        for (rule_id, keys) in &dirty {
            if let Some(table) = self.tables.get_mut(rule_id) {
                for key in keys {
                    table.mark_clean(key);
                }
            }
        }
        dirty
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
            let key = Fields::from_map(&id.key);
            // More saved keys than max_keys allows now: the oldest go.
            let expires = state.expiry_ms(&rule.kind);
            for old in Self::table(&mut self.tables, &rule).insert(key, state, expires) {
                stale.push(WindowId {
                    rule: id.rule.clone(),
                    rule_hash: id.rule_hash.clone(),
                    key: old.to_map(),
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

/// Pattern `step` of `rule` on `line`: the captures that took part and the key, or `None`
/// when it does not match. Read the way the detector reads them (for `explain`).
pub fn read_match(rule: &Rule, step: usize, line: &[u8]) -> Option<(Fields, Fields)> {
    let regex = &rule.patterns[step];
    let mut locations = regex.capture_locations();
    regex.captures_read(&mut locations, line)?;
    let (mut captures, mut key) = (String::new(), String::new());
    PatternFields::new(rule, step).write(|g| locations.get(g), line, &mut captures, &mut key);
    Some((Fields::from_encoded(&captures), Fields::from_encoded(&key)))
}

/// Marks a key's state as changed, cloning the key only the first time per commit.
fn mark(dirty: &mut FastMap<String, FastSet<Fields>>, rule: &str, key: &Fields) {
    match dirty.get_mut(rule) {
        Some(keys) => {
            if !keys.contains(key) {
                keys.insert(key.clone());
            }
        }
        None => {
            dirty.insert(rule.to_string(), FastSet::from_iter([key.clone()]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn rules(yaml: &str) -> Arc<RuleSet> {
        RuleSet::from_yaml(yaml)
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    fn line(text: &str) -> LogLine {
        LogLine {
            source: "auth".into(),
            path: "auth.log".into(),
            offset: 0,
            bytes: text.as_bytes().to_vec(),
            arrival: at(T0),
            time: None,
        }
    }

    /// What a commit would store of `d`'s changed state, as a restart reads it back.
    fn saved(d: &mut Detector) -> Vec<SavedWindow> {
        d.take_dirty()
            .into_iter()
            .map(|(id, s)| (id, s.cloned().unwrap()))
            .collect()
    }

    /// Feeds `text` at `ms`; returns the hits.
    fn feed(d: &mut Detector, ms: i64, text: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        d.observe(&line(text), at(ms), &mut hits);
        hits
    }

    fn opened(hits: &[Hit]) -> Vec<(&str, u64)> {
        hits.iter()
            .filter_map(|h| h.crossed.as_ref().map(|c| (h.rule.id(), c.count)))
            .collect()
    }

    const EXCEPTIONS: &str = r#"
lists:
  trusted: [10.0.0.0/8, "::1"]
  admins: [root, admin]
rules:
  - id: allowed
    match: 'fail user=(?P<user>\S+) ip=(?P<ip>\S+)'
    allow: {ip: ["@trusted", 192.168.1.1]}
    threshold: {count: 1, within: 1m}
    severity: low
  - id: admins-only
    match: 'fail user=(?P<user>\S+) ip=(?P<ip>\S+)'
    group_by: [user]
    only: {user: ["@admins"]}
    threshold: {count: 1, within: 1m}
    severity: low
"#;

    #[test]
    fn allow_and_only_decide_what_is_counted() {
        let mut d = Detector::new(rules(EXCEPTIONS), &["auth".into()]);
        let ids = |hits: Vec<Hit>| -> Vec<String> {
            hits.iter().map(|h| h.rule.id().to_string()).collect()
        };
        assert_eq!(
            ids(feed(&mut d, T0, "fail user=bob ip=10.2.3.4")),
            Vec::<String>::new()
        );
        assert_eq!(
            ids(feed(&mut d, T0, "fail user=bob ip=0:0::1")),
            Vec::<String>::new()
        );
        assert_eq!(
            ids(feed(&mut d, T0, "fail user=bob ip=192.168.1.1")),
            Vec::<String>::new()
        );
        assert_eq!(
            ids(feed(&mut d, T0, "fail user=bob ip=11.0.0.1")),
            vec!["allowed"]
        );
        assert_eq!(
            ids(feed(&mut d, T0, "fail user=root ip=10.0.0.1")),
            vec!["admins-only"],
            "allow of one rule does not apply to another"
        );
        assert_eq!(
            ids(feed(&mut d, T0, "fail user=admin ip=203.0.113.9")),
            vec!["allowed", "admins-only"]
        );
    }

    const SEQUENCE: &str = r#"
rules:
  - id: breach
    group_by: [ip]
    sequence:
      within: 10m
      steps:
        - {match: 'Failed password for \S+ from (?P<ip>\S+)', count: 2}
        - {match: 'Accepted \w+ for \S+ from (?P<ip>\S+)'}
    severity: critical
"#;

    /// Two rules and a sequence step with one pattern: it runs once per line, yet each rule
    /// counts under its own key, and the next line is read afresh.
    #[test]
    fn rules_sharing_a_pattern_each_count_under_their_own_key() {
        const PATTERN: &str = r"Failed for (?P<user>\S+) from (?P<ip>\S+)";
        let d = &mut Detector::new(
            rules(&format!(
                r#"
rules:
  - id: by-ip
    match: '{PATTERN}'
    group_by: [ip]
    threshold: {{count: 2, within: 1m}}
    severity: low
  - id: by-user
    match: '{PATTERN}'
    group_by: [user]
    threshold: {{count: 2, within: 1m}}
    severity: low
  - id: then-accepted
    group_by: [ip]
    sequence:
      within: 1m
      steps:
        - {{match: '{PATTERN}', count: 1}}
        - {{match: 'Accepted for \S+ from (?P<ip>\S+)'}}
    severity: high
"#
            )),
            &["auth".into()],
        );
        let keys = |hits: &[Hit]| -> Vec<(String, Key)> {
            hits.iter()
                .map(|h| (h.rule.id().to_string(), h.key.to_map()))
                .collect()
        };
        let key = |field: &str, value: &str| Key::from([(field.into(), value.into())]);
        let hits = feed(d, T0, "Failed for root from 1.1.1.1");
        assert_eq!(
            keys(&hits),
            vec![
                ("by-ip".into(), key("ip", "1.1.1.1")),
                ("by-user".into(), key("user", "root")),
                ("then-accepted".into(), key("ip", "1.1.1.1")),
            ]
        );
        assert_eq!(hits[1].captures.get("ip"), Some("1.1.1.1"));
        let hits = feed(d, T0 + 1, "Failed for admin from 2.2.2.2");
        assert_eq!(keys(&hits)[0], ("by-ip".into(), key("ip", "2.2.2.2")));
        assert_eq!(keys(&hits)[1], ("by-user".into(), key("user", "admin")));
        assert!(feed(d, T0 + 2, "Failed for nobody").is_empty());
        let hits = feed(d, T0 + 3, "Failed for root from 3.3.3.3");
        assert_eq!(opened(&hits), vec![("by-user", 2)]);
        assert_eq!(
            opened(&feed(d, T0 + 4, "Accepted for root from 3.3.3.3")),
            vec![("then-accepted", 2)]
        );
    }

    #[test]
    fn sequence_steps_are_found_by_the_combined_pass_and_keyed() {
        let mut d = Detector::new(rules(SEQUENCE), &["auth".into()]);
        feed(&mut d, T0, "Failed password for a from 1.1.1.1");
        feed(&mut d, T0 + 1, "Failed password for a from 2.2.2.2");
        assert!(
            opened(&feed(
                &mut d,
                T0 + 2,
                "Accepted password for a from 1.1.1.1"
            ))
            .is_empty()
        );
        feed(&mut d, T0 + 3, "Failed password for a from 1.1.1.1");
        let hits = feed(&mut d, T0 + 4, "Accepted publickey for a from 1.1.1.1");
        assert_eq!(opened(&hits), vec![("breach", 3)]);
        assert_eq!(
            hits[0].key.to_map(),
            Key::from([("ip".into(), "1.1.1.1".into())])
        );
    }

    const FLOOD: &str = r#"
rules:
  - id: flood
    match: 'from (?P<ip>\S+)'
    group_by: [ip]
    threshold: {count: 3, within: 1h}
    max_keys: 50
    severity: low
"#;

    #[test]
    fn a_key_flood_evicts_one_time_keys_first_and_is_counted() {
        let mut d = Detector::new(rules(FLOOD), &["auth".into()]);
        feed(&mut d, T0, "from victim");
        feed(&mut d, T0, "from victim");
        for n in 0..1000 {
            feed(
                &mut d,
                T0 + n,
                &format!("from 198.51.{}.{}", n / 256, n % 256),
            );
        }
        // 1001 keys (victim and 1000 flood addresses) into 50 places: every key is either
        // held or counted as evicted.
        let live = d.live_keys();
        assert!((47..=50).contains(&live), "{live} keys");
        let evicted = d.take_evictions()["flood"] as usize;
        assert_eq!(live + evicted, 1001);
        // Evicted keys are deleted from the store with the next commit.
        let gone = d.take_dirty().iter().filter(|(_, s)| s.is_none()).count();
        assert_eq!(gone, evicted);
        // The victim, oldest of all but with two matches, outlived twenty times its table
        // of one-time keys: its third match opens the incident.
        assert_eq!(opened(&feed(&mut d, T0 + 2000, "from victim")).len(), 1);
    }

    #[test]
    fn reload_keeps_state_of_unchanged_rules_only() {
        let two = format!(
            "{FLOOD}  - id: other\n    match: 'other (?P<ip>\\S+)'\n    threshold: {{count: 3, within: 1h}}\n    severity: low\n"
        );
        let mut d = Detector::new(rules(&two), &["auth".into()]);
        for _ in 0..2 {
            feed(&mut d, T0, "from 1.1.1.1");
            feed(&mut d, T0, "other 1.1.1.1");
        }
        d.take_dirty();
        let changed = two.replace("other (?P<ip>", "other  ?(?P<ip>");
        let change = d.replace_rules(rules(&changed));
        assert_eq!(
            (change.changed, change.added, change.removed),
            (vec!["other".to_string()], vec![], vec![])
        );
        assert_ne!(change.old_version, change.new_version);
        let deleted: Vec<String> = d.take_dirty().into_iter().map(|(id, _)| id.rule).collect();
        assert_eq!(deleted, vec!["other".to_string()]);
        assert_eq!(
            opened(&feed(&mut d, T0, "from 1.1.1.1")),
            vec![("flood", 3)]
        );
        assert!(
            opened(&feed(&mut d, T0, "other 1.1.1.1")).is_empty(),
            "other starts again"
        );
    }

    const ABSENCE: &str = r#"
rules:
  - id: heartbeat
    match: 'heartbeat'
    absence: {within: 1m}
    severity: high
  - id: per-host
    match: 'backup done on (?P<host>\S+)'
    group_by: [host]
    absence: {within: 1m, count: 1}
    severity: high
"#;

    #[test]
    fn absence_clock_starts_at_first_load_and_survives_a_restart() {
        let set = rules(ABSENCE);
        let mut d = Detector::new(set.clone(), &["auth".into()]);
        let mut hits = Vec::new();
        d.advance(at(T0), &mut hits);
        feed(&mut d, T0 + 10_000, "backup done on db1");
        let saved = saved(&mut d);
        assert_eq!(saved.len(), 2);
        // Restart 59 s later: the stored clock start holds, so nothing yet...
        let mut d = Detector::new(set, &["auth".into()]);
        let json = serde_json::to_string(&saved).unwrap();
        assert!(
            d.restore(serde_json::from_str::<Vec<SavedWindow>>(&json).unwrap())
                .is_empty()
        );
        d.advance(at(T0 + 59_999), &mut hits);
        assert!(hits.is_empty());
        // ... and at one minute the whole-rule heartbeat is absent, the host not yet.
        d.advance(at(T0 + 60_000), &mut hits);
        assert_eq!(opened(&hits), vec![("heartbeat", 0)]);
        assert!(hits[0].evidence.is_none() && hits[0].key.is_empty());
        hits.clear();
        d.advance(at(T0 + 70_001), &mut hits);
        assert_eq!(opened(&hits), vec![("per-host", 0)]);
        assert_eq!(
            &*hits[0].crossed.as_ref().unwrap().evidence[0].line,
            "backup done on db1"
        );
        // Lines come back: the gap ends, recorded on the hit.
        let back = feed(&mut d, T0 + 80_000, "backup done on db1");
        assert_eq!(back[0].resumed, Some(at(T0 + 80_000)));
    }

    #[test]
    fn restore_drops_state_of_changed_rules() {
        let mut d = Detector::new(rules(FLOOD), &["auth".into()]);
        feed(&mut d, T0, "from 1.1.1.1");
        let saved = saved(&mut d);
        let mut changed = Detector::new(
            rules(&FLOOD.replace("count: 3", "count: 2")),
            &["auth".into()],
        );
        assert_eq!(changed.restore(saved.clone()).len(), 1);
        let mut same = Detector::new(rules(FLOOD), &["auth".into()]);
        assert!(same.restore(saved).is_empty());
        feed(&mut same, T0, "from 1.1.1.1");
        assert_eq!(
            opened(&feed(&mut same, T0, "from 1.1.1.1")),
            vec![("flood", 3)]
        );
    }

    /// Every expiring kind on one line format, with a small key bound so eviction (which
    /// ranks keys by what expiry left them) takes part too.
    const EXPIRING: &str = r#"
rules:
  - id: threshold
    match: 'a (?P<ip>\S+) (?P<user>\S+)'
    group_by: [ip]
    threshold: {count: 4, within: 30s}
    max_keys: 12
    severity: low
  - id: distinct
    match: 'a (?P<ip>\S+) (?P<user>\S+)'
    group_by: [ip]
    distinct: {field: user, count: 4, within: 20s}
    severity: low
  - id: spike
    match: 'a (?P<ip>\S+) (?P<user>\S+)'
    group_by: [user]
    spike: {window: 10s, baseline: 2, factor: 3, min_count: 3}
    severity: low
  - id: sequence
    group_by: [ip]
    sequence:
      within: 40s
      steps:
        - {match: 'a (?P<ip>\S+) ', count: 2}
        - {match: 'b (?P<ip>\S+)'}
    severity: low
"#;

    /// The expiry this replaced, kept as the reference: every key of every rule, each tick.
    fn expire_every_key(d: &mut Detector, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        for rule in &d.rules.rules {
            let Some(table) = d.tables.get_mut(rule.id()) else {
                continue;
            };
            for key in table.retain(|_, state| !state.expire(&rule.kind, now_ms)) {
                mark(&mut d.dirty, rule.id(), &key);
            }
        }
    }

    /// Every rule's keys and states, in order.
    fn snapshot(d: &Detector) -> BTreeMap<(String, Fields), KeyState> {
        d.tables
            .iter()
            .flat_map(|(rule, table)| {
                table
                    .keys()
                    .map(|k| ((rule.clone(), k.clone()), table.get(k).unwrap().clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// What a commit would store: each changed key with its state (`None`: deleted).
    fn dirty(d: &mut Detector) -> Vec<(String, Key, Option<KeyState>)> {
        let mut dirty: Vec<_> = d
            .take_dirty()
            .into_iter()
            .map(|(id, s)| (id.rule, id.key, s.cloned()))
            .collect();
        dirty.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        dirty
    }

    /// Random lines (a fifth of them late, some past every window) and clock ticks (now and
    /// then a step back) into a detector expiring through its queue and one expiring every
    /// key: the same keys go at the same ticks, with the same states, hits, stored changes
    /// and evictions.
    #[test]
    fn queued_expiry_forgets_exactly_what_a_pass_over_every_key_forgets() {
        for seed in 0..12 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let set = rules(EXPIRING);
            let mut queued = Detector::new(set.clone(), &["auth".into()]);
            let mut every = Detector::new(set, &["auth".into()]);
            let (ips, users) = (rng.u32(2..40), rng.u32(1..8));
            let mut clock = T0;
            let mut expired = 0;
            for _ in 0..1_500 {
                if rng.u8(0..10) == 0 {
                    clock += rng.i64(-2_000..8_000);
                    queued.expire(at(clock));
                    expire_every_key(&mut every, at(clock));
                    assert_eq!(snapshot(&queued), snapshot(&every), "seed {seed}");
                    let changed = dirty(&mut queued);
                    expired += changed.iter().filter(|c| c.2.is_none()).count();
                    assert_eq!(changed, dirty(&mut every), "seed {seed}");
                    continue;
                }
                let time = match rng.u8(0..10) {
                    0 => clock - rng.i64(0..60_000),
                    1 => clock - rng.i64(0..5_000),
                    _ => clock + rng.i64(0..1_000),
                };
                let text = if rng.u8(0..6) == 0 {
                    format!("b 10.0.0.{}", rng.u32(0..ips))
                } else {
                    format!("a 10.0.0.{} u{}", rng.u32(0..ips), rng.u32(0..users))
                };
                let key = |h: &Hit| (h.rule.id().to_string(), h.key.clone(), h.crossed.clone());
                let (a, b) = (
                    feed(&mut queued, time, &text),
                    feed(&mut every, time, &text),
                );
                assert_eq!(
                    a.iter().map(key).collect::<Vec<_>>(),
                    b.iter().map(key).collect::<Vec<_>>(),
                    "seed {seed}"
                );
            }
            assert_eq!(queued.take_evictions(), every.take_evictions());
            assert!(expired > 0, "seed {seed}: the run expired keys");
        }
    }

    /// A detector restored from the store queues its keys too: they expire on time.
    #[test]
    fn restored_keys_expire_at_their_time() {
        let mut d = Detector::new(rules(EXPIRING), &["auth".into()]);
        feed(&mut d, T0, "a 10.0.0.1 u1");
        let saved = saved(&mut d);
        let mut d = Detector::new(rules(EXPIRING), &["auth".into()]);
        assert!(d.restore(saved).is_empty());
        let live = d.live_keys();
        d.expire(at(T0 + 20_000));
        assert_eq!(d.live_keys(), live, "nothing is older than its window yet");
        d.expire(at(T0 + 30_001));
        assert_eq!(d.live_keys(), 1, "only the sequence's 40 s are left");
        d.expire(at(T0 + 40_001));
        assert_eq!(d.live_keys(), 0);
    }
}
