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
pub mod held;
pub mod in_order;
pub mod keys;
pub mod kinds;
pub mod literals;
pub mod matcher;
pub mod matching;
pub mod stored;
pub mod window;

use crate::base::line::LogLine;
use crate::rules::{Rule, RuleKind, RuleSet};
use chrono::{DateTime, Utc};
pub use fields::{Fields, FieldsView};
pub use held::{HeldLine, LineRef};
use keys::{Expired, KeyTable, KeyText};
use kinds::{Event, KeyState, Observed};
use matcher::{Design, PatternFields};
pub use matching::{Found, FoundLine, Matched, Matchers};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use stored::{Changed, mark};
pub use stored::{SavedWindow, WindowId, decode_window, encode_window, window_key};

/// Maps looked up per line or per hit: hashed with foldhash (seeded per process, as the key
/// tables are) rather than SipHash, which showed in profiles.
type FastMap<K, V> = foldhash::HashMap<K, V>;
/// See [`FastMap`].
type FastSet<K> = foldhash::HashSet<K>;
/// The key tables of the rules, by rule id, each at an index that stays while the rule set
/// does (tables are added at the end and removed only by a swap).
type Tables = indexmap::IndexMap<String, KeyTable<KeyState>, foldhash::fast::RandomState>;

/// The index in [`Tables`] of each rule counted since the last swap, by the rule's address:
/// a match hashes one integer to find its table, not its rule's id. The rule is kept, so
/// no other rule can take its address while it is listed.
type TableOf = FastMap<usize, (Arc<Rule>, usize)>;

/// Longest line text kept as evidence.
pub const EVIDENCE_LINE_BYTES: usize = 1024;

/// The values of a rule's `group_by` captures: what incidents are deduplicated on, as
/// people and the store see them (the detector works on the same pairs as [`Fields`]).
pub type Key = BTreeMap<String, String>;

pub use crate::base::evidence::Evidence;

/// A counted match of a rule, or a condition the clock noticed (an absence).
#[derive(Debug, Clone)]
pub struct Hit {
    /// The rule that counted it; its `kind` says what `crossed` means.
    pub rule: Arc<Rule>,
    /// The rule's `group_by` values: which key's state counted it, and which incident it
    /// belongs to (empty without `group_by`).
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

/// Evaluates lines against a rule set and keeps every rule's per-key state.
pub struct Detector {
    rules: Arc<RuleSet>,
    /// The matching stage (per line, no state).
    matchers: Matchers,
    /// The current line's matches, reused for every line.
    found: Found,
    /// Per rule id.
    tables: Tables,
    /// Where a match finds its rule's table ([`Detector::table_of`]).
    table_of: TableOf,
    /// Keys whose state changed since the last store commit, by rule id; `None` for an
    /// evaluation that stores no windows ([`Detector::without_change_tracking`]).
    dirty: Option<Changed>,
    evicted: BTreeMap<String, u64>,
    /// Where the lines held by the windows are written.
    arena: held::Arena,
}

/// What a rule-set swap changed, for the log and (later) the audit trail of rule changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleChange {
    /// Version ([`RuleSet::version`](crate::rules::RuleSet::version)) of the set replaced.
    pub old_version: String,
    /// Version of the set now evaluated.
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

    /// Whether the swap added, removed and redefined no rule (the same files reloaded):
    /// nothing to log.
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
            tables: Tables::default(),
            table_of: TableOf::default(),
            dirty: Some(Changed::default()),
            evicted: BTreeMap::new(),
            arena: held::Arena::default(),
        }
    }

    /// The rule set the detector counts with; replaced only by [`Detector::replace_rules`], which
    /// drops the state of changed rules with it.
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
        // Indices move with the removals below, and the old rules go.
        self.table_of.clear();
        for id in dropped {
            if let Some(table) = self.tables.shift_remove(&id) {
                for key in table.keys() {
                    mark(&mut self.dirty, &id, &key);
                }
            }
        }
        self.matchers = self.matchers.for_rules(rules.clone());
        self.rules = rules;
        change
    }

    /// The key table of `rule`, made on its first match: one lookup by `&str`, no rule id
    /// copied per hit.
    fn table<'a>(tables: &'a mut Tables, rule: &Rule) -> &'a mut KeyTable<KeyState> {
        let index = Self::table_index(tables, rule);
        &mut tables[index]
    }

    /// The index of `rule`'s key table, made on its first match.
    fn table_index(tables: &mut Tables, rule: &Rule) -> usize {
        match tables.get_index_of(rule.id()) {
            Some(index) => index,
            None => {
                tables
                    .insert_full(rule.id().to_string(), KeyTable::new(rule.max_keys))
                    .0
            }
        }
    }

    /// [`Detector::table`] for a match's rule, found by its address after the first time.
    fn table_of<'a>(
        tables: &'a mut Tables,
        table_of: &mut TableOf,
        rule: &Arc<Rule>,
    ) -> &'a mut KeyTable<KeyState> {
        let address = Arc::as_ptr(rule) as usize;
        let index = match table_of.get(&address) {
            Some((_, index)) => *index,
            None => {
                let index = Self::table_index(tables, rule);
                table_of.insert(address, (rule.clone(), index));
                index
            }
        };
        &mut tables[index]
    }

    /// Evaluates one line at time `time`, appending counted matches to `hits`.
    pub fn observe(&mut self, line: &LogLine, time: DateTime<Utc>, hits: &mut Vec<Hit>) {
        self.observe_where(line, time, hits, &|_, _| true);
    }

    /// Like [`Detector::observe`], making hits of plain counted matches only where
    /// `wanted` (see [`Detector::apply`]).
    pub fn observe_where(
        &mut self,
        line: &LogLine,
        time: DateTime<Utc>,
        hits: &mut Vec<Hit>,
        wanted: &dyn Fn(&Rule, &str) -> bool,
    ) {
        let mut found = std::mem::take(&mut self.found);
        found.clear();
        self.matchers.find(line, &mut found);
        self.apply(line.into(), time, found.line(0), hits, wanted);
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
    ///
    /// Every match counts in its key's state; `wanted(rule, key)` says whether one that
    /// neither completed its rule's condition nor resumed after an absence is worth a hit.
    /// Under attack nearly every match is such a one, for a key with no incident: a caller
    /// that only folds hits into incidents need not have them made (the captures copied,
    /// the evidence shared) and dropped again. After a match of the line that completed a
    /// condition, every later match of the line is a hit: the caller has not seen the
    /// incident it may open yet.
    pub fn apply(
        &mut self,
        line: LineRef<'_>,
        time: DateTime<Utc>,
        found: FoundLine<'_>,
        hits: &mut Vec<Hit>,
        wanted: &dyn Fn(&Rule, &str) -> bool,
    ) {
        let Detector {
            tables,
            table_of,
            dirty,
            evicted: evictions,
            arena,
            ..
        } = self;
        let time_ms = time.timestamp_millis();
        // Made at the line's first counted match and shared by the others (and by the
        // windows that keep it: one reference count each).
        let mut line_evidence: Option<HeldLine> = None;
        let mut line_crossed = false;
        for matched in found.matches {
            let rule = &matched.rule;
            let step = matched.step;
            let capture_text = &found.text[matched.captures.clone()];
            let key_text = &found.text[matched.key.clone()];
            let captures = FieldsView::new(capture_text);
            let evidence = &*line_evidence.get_or_insert_with(|| {
                // A detector that stores its windows makes evidence of every line it holds.
                arena.hold(line, time, dirty.is_some())
            });
            let counted = arena.counted(evidence);
            let mut touched = Self::table_of(tables, table_of, rule)
                .touch(key_text, || KeyState::new(&rule.kind, time_ms));
            let evicted = std::mem::take(&mut touched.evicted);
            // Already in the dirty set since the last store: no set operation per hit.
            let newly_dirty = touched.newly_dirty;
            let observed = touched.state.observe(
                &rule.kind,
                Event {
                    time_ms,
                    step,
                    evidence: counted,
                    captures,
                },
            );
            let expires = touched.state.expiry_ms(&rule.kind);
            touched.expires_at(expires);
            if !evicted.is_empty() {
                *evictions.entry(rule.id().to_string()).or_default() += evicted.len() as u64;
                for old in evicted {
                    mark_held(dirty, rule.id(), old);
                }
            }
            if newly_dirty && dirty.is_some() {
                mark(dirty, rule.id(), &touched.key());
            }
            let (crossed, resumed) = match observed {
                // Older than the state can count.
                Observed::Late => continue,
                Observed::Counted => (None, None),
                Observed::Crossed(c) => (Some(c), None),
                Observed::Resumed => (None, Some(time)),
            };
            if crossed.is_none() && resumed.is_none() && !line_crossed && !wanted(rule, key_text) {
                continue;
            }
            line_crossed |= crossed.is_some();
            let key = touched.key();
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
                evidence: Some(evidence.evidence().clone()),
                crossed,
                resumed,
            });
        }
        if let Some(line) = line_evidence {
            // The stage's own handle, as a credit (no atomic operation).
            arena.give_back(line);
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
                    let key = key.share();
                    mark(&mut self.dirty, rule.id(), &key);
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
        let Detector {
            rules,
            tables,
            dirty,
            ..
        } = self;
        for rule in &rules.rules {
            let Some(table) = tables.get_mut(rule.id()) else {
                continue;
            };
            table.expire_each(
                now_ms,
                |state| {
                    if state.expire(&rule.kind, now_ms) {
                        Expired::Gone
                    } else {
                        Expired::Kept(state.expiry_ms(&rule.kind))
                    }
                },
                |key| mark_held(dirty, rule.id(), key),
            );
        }
    }

    /// Keys evicted per rule since the last call (for the eviction metric).
    pub fn take_evictions(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.evicted)
    }

    /// Number of live keys across all rules.
    pub fn live_keys(&self) -> usize {
        self.tables.values().map(KeyTable::len).sum()
    }
}

/// Marks a key a table let go of (evicted, expired) as changed; an evaluation that tracks
/// no changes does not copy out a key held inline.
fn mark_held(dirty: &mut Option<Changed>, rule_id: &str, key: KeyText) {
    if dirty.is_some() {
        mark(dirty, rule_id, &key.into_fields());
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

#[cfg(test)]
mod tests;
