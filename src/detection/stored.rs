//! Detection state and the store: which keys changed since the last commit, under what
//! identity a key's state is stored (rule, rule hash, key values) and in which codec
//! (evidence lines as references), and how saved state comes back after a restart.
//!
//! Kept apart from the window stage ([`super::Detector::apply`]) because only the daemon
//! stores windows: its commits take what changed ([`Detector::take_dirty`]), while an
//! evaluation that stores nothing (a replay) turns the tracking off and pays nothing for
//! it per match.

use super::fields::Fields;
use super::held::HeldLine;
use super::kinds::KeyState;
use super::{Detector, Evidence, FastMap, FastSet, Key};
use crate::store::codec::{CodecError, Dec, Enc, HeldEvidence, Loc, PlaceMemo, placeholder};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Store key of a window: rule, NUL, then the key values as JSON (the rule hash is in the
/// value).
pub fn window_key(id: &WindowId) -> Vec<u8> {
    store_key(
        &id.rule,
        id.key.iter().map(|(n, v)| (n.as_str(), v.as_str())),
    )
}

/// The one writer of [`window_key`]'s format, from the key's pairs in any order: a JSON
/// object in name order, as a `BTreeMap` serializes. The daemon's commits write keys from
/// [`Fields`] through this without building a map per changed window.
fn store_key<'a>(rule: &str, pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Vec<u8> {
    let mut k = Vec::new();
    write_store_key(&mut k, rule, pairs);
    k
}

/// [`store_key`] appended to `k` (a buffer reused from key to key). Pairs already in
/// strict name order (names unique), as a detection key holds them, are written as they
/// come, without collecting and sorting them first.
fn write_store_key<'a>(
    k: &mut Vec<u8>,
    rule: &str,
    pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) {
    if strictly_sorted(pairs.clone()) {
        return write_sorted_key(k, rule, || pairs.clone());
    }
    let mut sorted: Vec<(&str, &str)> = pairs.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    // A repeated name keeps its last value, as a map would.
    sorted.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 = later.1;
        }
        same
    });
    write_sorted_key(k, rule, || sorted.iter().copied());
}

/// [`write_store_key`] for pairs in strict name order.
fn write_sorted_key<'a, I: Iterator<Item = (&'a str, &'a str)>>(
    k: &mut Vec<u8>,
    rule: &str,
    pairs: impl Fn() -> I,
) {
    // Quotes, colon and comma or braces: 4 bytes a pair, 2 for the object.
    let size = pairs().map(|(n, v)| n.len() + v.len() + 6).sum::<usize>();
    k.reserve(rule.len() + 3 + size);
    k.extend_from_slice(rule.as_bytes());
    k.push(0);
    k.push(b'{');
    for (i, (name, value)) in pairs().enumerate() {
        if i > 0 {
            k.push(b',');
        }
        json_string(k, name);
        k.push(b':');
        json_string(k, value);
    }
    k.push(b'}');
}

/// Whether `pairs`' names are in strict order (sorted, none repeated).
fn strictly_sorted<'a>(mut pairs: impl Iterator<Item = (&'a str, &'a str)>) -> bool {
    let Some((mut last, _)) = pairs.next() else {
        return true;
    };
    pairs.all(|(name, _)| std::mem::replace(&mut last, name) < name)
}

/// `s` as a JSON string, byte for byte what `serde_json` writes: text without a quote,
/// backslash or control character (nearly every key value) is copied as it is, any other
/// goes through `serde_json`'s escaping.
fn json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        serde_json::to_writer(&mut *out, s).unwrap_or_default();
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// A window's stored value; every evidence line it references goes to `sink`. Encoded in
/// `scratch` (kept grown for the next window) and copied out at its exact size, shared
/// (a commit's batch is cloned for retries without copying it again). `generation`: the
/// sink is the evidence writer of that generation, and the window's held lines remember
/// the places it gives ([`PlaceMemo`]), so a window stored again does not ask it for its
/// older lines.
pub fn encode_window(
    rule_hash: &str,
    state: &KeyState,
    scratch: &mut Vec<u8>,
    sink: &mut dyn FnMut(&Evidence) -> Loc,
    generation: Option<u32>,
) -> Arc<[u8]> {
    let buf = std::mem::take(scratch);
    let mut w = match generation {
        Some(generation) => Enc::reusing_remembering(buf, sink, generation),
        None => Enc::reusing(buf, sink),
    };
    w.str(rule_hash);
    state.encode(&mut w);
    *scratch = w.finish();
    Arc::from(scratch.as_slice())
}

/// A window read back from its key and value, its lines looked up with `resolve`.
pub fn decode_window(
    key: &[u8],
    value: &[u8],
    resolve: &mut dyn FnMut(Loc) -> Result<Evidence, CodecError>,
) -> Result<SavedWindow, CodecError> {
    let split = key
        .iter()
        .position(|b| *b == 0)
        .ok_or(CodecError::Malformed("window key without a rule"))?;
    let rule = std::str::from_utf8(&key[..split])
        .map_err(|_| CodecError::Malformed("window rule"))?
        .to_string();
    let key: Key = serde_json::from_slice(&key[split + 1..])
        .map_err(|_| CodecError::Malformed("window key values"))?;
    let mut r = Dec::new(value, resolve);
    let rule_hash = r.str()?.to_string();
    let state = KeyState::decode(&mut r)?;
    Ok((
        WindowId {
            rule,
            rule_hash,
            key,
        },
        state,
    ))
}

impl HeldEvidence for HeldLine {
    fn evidence(&self) -> &Evidence {
        HeldLine::evidence(self)
    }

    fn place_memo(&self) -> &PlaceMemo {
        HeldLine::place_memo(self)
    }
}

/// The evidence lines a stored window references (read without looking them up).
pub fn window_refs(key: &[u8], value: &[u8]) -> Result<Vec<Loc>, CodecError> {
    let mut refs = Vec::new();
    decode_window(key, value, &mut |r| {
        refs.push(r);
        Ok(placeholder(r))
    })?;
    Ok(refs)
}

/// A key's state's place in the store: rule id, rule definition hash, key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowId {
    /// Id of the rule that owns the state.
    pub rule: String,
    /// Hash of the rule definition the state was counted under.
    pub rule_hash: String,
    /// The key's `group_by` values as a map (stable in the store, unlike the encoded form).
    pub key: Key,
}

/// A key's state as stored: its identity and its state.
pub type SavedWindow = (WindowId, KeyState);

impl Detector {
    /// This detector, keeping no record of which keys changed: for an evaluation that
    /// stores no windows (a replay), where marking every new and expired key changed, then
    /// stored, cost more per line than a capture. [`Detector::take_dirty`] then returns
    /// nothing.
    pub fn without_change_tracking(mut self) -> Self {
        self.dirty = None;
        self
    }

    /// State changed since the last call: `None` means the key's state is gone.
    pub fn take_dirty(&mut self) -> Vec<(WindowId, Option<&KeyState>)> {
        let dirty = self.clean_dirty();
        let mut taken = Vec::new();
        for (rule_id, keys) in &dirty {
            for key in keys {
                let (rule_hash, state) = self.stored_as(rule_id, key);
                let id = WindowId {
                    rule: rule_id.clone(),
                    rule_hash: rule_hash.to_string(),
                    key: key.to_map(),
                };
                taken.push((id, state));
            }
        }
        taken
    }

    /// What changed since the last call, for a commit: each changed key's store key
    /// ([`window_key`]'s format), its rule's hash and its state (`None`: gone). Unlike
    /// [`Detector::take_dirty`] it makes no map or id per key: a busy step changes
    /// thousands (the key is written in one reused buffer).
    pub fn each_dirty(&mut self, mut store: impl FnMut(&[u8], &str, Option<&KeyState>)) {
        let dirty = self.dirty.as_mut().map(std::mem::take).unwrap_or_default();
        let mut store_key = Vec::new();
        for (rule_id, keys) in &dirty {
            // Looked up once a rule, not once a key.
            let rule_hash = self
                .rules
                .rule(rule_id)
                .map_or("", |r| stored_hash(&r.hash));
            let mut table = self.tables.get_mut(rule_id.as_str());
            for key in keys {
                // One probe a key: marked stored and read together.
                let state = table.as_mut().and_then(|t| t.clean(key));
                store_key.clear();
                write_store_key(&mut store_key, rule_id, key.view().iter());
                store(&store_key, rule_hash, state.map(|s| &*s));
            }
        }
    }

    /// The hash of `rule_id`'s definition and the state of its `key`, if any.
    fn stored_as(&self, rule_id: &str, key: &Fields) -> (&str, Option<&KeyState>) {
        let state = self.tables.get(rule_id).and_then(|t| t.get(key));
        (self.rule_hash(rule_id), state)
    }

    /// The hash of `rule_id`'s definition as its windows are stored ([`stored_hash`];
    /// empty for a rule no longer loaded).
    fn rule_hash(&self, rule_id: &str) -> &str {
        self.rules
            .rule(rule_id)
            .map_or("", |r| stored_hash(&r.hash))
    }

    /// Marks every changed key stored (the next change marks it dirty again) and returns
    /// them by rule.
    fn clean_dirty(&mut self) -> Changed {
        let dirty = self.dirty.as_mut().map(std::mem::take).unwrap_or_default();
        for (rule_id, keys) in &dirty {
            if let Some(table) = self.tables.get_mut(rule_id) {
                for key in keys {
                    table.mark_clean(key);
                }
            }
        }
        dirty
    }

    /// Restores state saved earlier, least recent first; state of rules whose definition
    /// changed is dropped (returned, so the caller can delete it).
    pub fn restore(&mut self, saved: impl IntoIterator<Item = SavedWindow>) -> Vec<WindowId> {
        let mut stale = Vec::new();
        let mut fresh = Vec::new();
        for (id, state) in saved {
            match self.rules.rule(&id.rule) {
                Some(rule) if same_definition(&rule.hash, &id.rule_hash) => {
                    fresh.push((rule.clone(), id, state))
                }
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
}

/// Characters of a rule's definition hash (hex SHA-256) a stored window keeps: 64 bits tell
/// one definition of a rule from another as surely as the whole hash does (nobody picks
/// definitions to collide), and the whole hash was half of what a commit wrote for each
/// changed window (the window record's deflate read it every time).
const STORED_HASH_CHARS: usize = 16;

/// What a window stores of its rule's definition hash `hash`.
fn stored_hash(hash: &str) -> &str {
    hash.get(..STORED_HASH_CHARS).unwrap_or(hash)
}

/// Whether a window stored under `stored` was counted under the definition hashed `hash`:
/// the whole hash (as releases before [`STORED_HASH_CHARS`] stored it) or its stored
/// prefix; anything shorter (a rule that was not loaded) matches nothing.
fn same_definition(hash: &str, stored: &str) -> bool {
    !stored.is_empty()
        && (stored == hash || (stored.len() >= STORED_HASH_CHARS && hash.starts_with(stored)))
}

/// Keys whose state changed, by rule id.
pub(super) type Changed = FastMap<String, FastSet<Fields>>;

/// Records that `key` of `rule` changed, when changes are tracked (the key is cloned only
/// the first time per commit).
pub(super) fn mark(dirty: &mut Option<Changed>, rule: &str, key: &Fields) {
    let Some(dirty) = dirty else { return };
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
    use crate::store::evidence::EvidenceLog;
    use crate::store::{Batch, Store};
    use std::collections::BTreeMap;

    fn held(ms: i64, text: &str) -> HeldLine {
        HeldLine::from_evidence(Evidence {
            source: "auth".into(),
            path: "/var/log/auth.log".into(),
            offset: ms as u64,
            time: chrono::DateTime::from_timestamp_millis(ms).unwrap(),
            line: text.into(),
        })
    }

    /// `lines` as [`Enc::held_list`] writes them with `log` as the sink (remembering places
    /// for its generation), and how many lines the sink was asked for.
    fn encode_held(
        lines: &[HeldLine],
        log: &mut EvidenceLog,
        store: &Store,
        batch: &mut Batch,
    ) -> (Vec<u8>, usize) {
        let generation = log.generation();
        let mut asked = 0;
        let mut sink = |e: &Evidence| {
            asked += 1;
            log.store(store, batch, e)
        };
        let mut w = Enc::reusing_remembering(Vec::new(), &mut sink, generation);
        w.held_list(lines.iter());
        (w.finish(), asked)
    }

    /// The places the bytes of [`encode_held`] reference.
    fn places(bytes: &[u8]) -> Vec<Loc> {
        let mut refs = Vec::new();
        Dec::new(bytes, &mut |loc| {
            refs.push(loc);
            Ok(placeholder(loc))
        })
        .evidence_list()
        .unwrap();
        refs
    }

    /// A held line remembers where the writer stored it: stored again by a later commit, its
    /// place is written without asking the writer, byte for byte what asking writes; a place
    /// from before a batch was abandoned or blocks were collected is never used again (the
    /// line is stored anew), so a window can never reference a line that is not stored.
    #[test]
    fn a_held_line_remembers_its_place_only_for_the_writer_generation_that_stored_it() {
        let store = Store::memory();
        let mut log = EvidenceLog::default();
        let lines = [held(1_000, "a"), held(2_000, "b"), held(3_000, "c")];

        let mut batch = Batch::new();
        let (first, asked) = encode_held(&lines, &mut log, &store, &mut batch);
        assert_eq!(asked, 3, "new lines are stored");
        let stored = places(&first);
        store.commit(batch).unwrap();
        log.committed();

        // A later commit: remembered, not asked, and the same bytes as asking writes.
        let mut batch = Batch::new();
        let (again, asked) = encode_held(&lines, &mut log, &store, &mut batch);
        assert_eq!((again.as_slice(), asked), (first.as_slice(), 0));
        let mut sink = |e: &Evidence| log.store(&store, &mut batch, e);
        let mut w = Enc::new(&mut sink);
        w.evidence_list(lines.iter().map(HeldLine::evidence));
        assert_eq!(
            w.finish(),
            first,
            "asking the writer gives the remembered places"
        );
        for (loc, line) in stored.iter().zip(&lines) {
            assert_eq!(store.evidence(*loc).unwrap(), *line.evidence());
        }

        // A batch abandoned: places it gave are gone, and none remembered before is used.
        let mut abandoned = Batch::new();
        let fresh = [held(4_000, "d")];
        let (gone, _) = encode_held(&fresh, &mut log, &store, &mut abandoned);
        drop(abandoned);
        log.abandoned();
        let mut batch = Batch::new();
        let (now, asked) = encode_held(&fresh, &mut log, &store, &mut batch);
        assert_eq!(
            asked, 1,
            "a place from an abandoned batch is not remembered"
        );
        assert_ne!(places(&now), places(&gone));
        let (old, asked) = encode_held(&lines, &mut log, &store, &mut batch);
        assert_eq!(
            asked, 3,
            "the generation changed: every line is asked again"
        );
        assert_eq!(
            places(&old),
            stored,
            "the writer still knows where they are"
        );
        let (_, asked) = encode_held(&lines, &mut log, &store, &mut batch);
        assert_eq!(asked, 0, "remembered again under the new generation");
        store.commit(batch).unwrap();
        log.committed();

        // Blocks collected: the lines they held are stored anew when shown again.
        let mut batch = Batch::new();
        let referenced = std::collections::HashSet::from_iter(places(&now));
        assert_eq!(
            log.collect(&store, &referenced, i64::MAX, &mut batch)
                .unwrap(),
            1
        );
        store.commit(batch).unwrap();
        assert!(
            store.evidence(stored[0]).is_err(),
            "the first block is gone"
        );
        let mut batch = Batch::new();
        let (after, asked) = encode_held(&lines, &mut log, &store, &mut batch);
        assert_eq!(asked, 3);
        let moved = places(&after);
        assert!(moved.iter().all(|loc| !stored.contains(loc)));
        store.commit(batch).unwrap();
        for (loc, line) in moved.iter().zip(&lines) {
            assert_eq!(store.evidence(*loc).unwrap(), *line.evidence());
        }
    }

    /// A window stored with its rule's whole hash (as earlier releases stored every one) or
    /// with the prefix stored now is restored under that definition; one stored under
    /// another definition, or without a hash, is not.
    #[test]
    fn windows_stored_with_the_whole_hash_or_its_prefix_belong_to_the_definition() {
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let other = "9f86d081884c7d65ffffffffffffffffa3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(stored_hash(hash), "9f86d081884c7d65");
        assert!(same_definition(hash, hash), "an earlier release's window");
        assert!(same_definition(hash, stored_hash(hash)));
        assert!(!same_definition(hash, stored_hash(&hash.replace('9', "0"))));
        assert!(!same_definition(hash, other), "the whole hash must match");
        assert!(!same_definition(hash, ""), "a rule that was not loaded");
        assert!(!same_definition(hash, "9f86d0"), "too short to tell");
    }

    /// The hand-written key writer gives the bytes a `BTreeMap` serialized by `serde_json`
    /// gives (the format stored windows are keyed by), escapes included.
    #[test]
    fn store_keys_are_what_serde_json_writes_for_the_map() {
        let values = [
            "",
            "198.51.100.7",
            "a \"quoted\" user",
            "back\\slash",
            "tab\there\nnewline\u{1}\u{1f}",
            "del\u{7f} ünïcode ✓ \u{2028}",
        ];
        for (i, a) in values.iter().enumerate() {
            for b in &values[i..] {
                let map = BTreeMap::from([("user", *a), ("ip", *b), ("z\"", *a)]);
                let mut want = b"ssh-bruteforce\0".to_vec();
                want.extend(serde_json::to_vec(&map).unwrap());
                let pairs = [("z\"", *a), ("user", "replaced"), ("ip", *b), ("user", *a)];
                assert_eq!(
                    store_key("ssh-bruteforce", pairs.into_iter()),
                    want,
                    "{a:?} {b:?}"
                );
                // A detection key's pairs come in strict name order: written as they come.
                let in_order = [("ip", *b), ("user", *a), ("z\"", *a)];
                assert!(strictly_sorted(in_order.into_iter()));
                assert!(!strictly_sorted(pairs.into_iter()));
                assert_eq!(
                    store_key("ssh-bruteforce", in_order.into_iter()),
                    want,
                    "{a:?} {b:?}"
                );
            }
        }
        let empty: BTreeMap<&str, &str> = BTreeMap::new();
        let mut want = b"r\0".to_vec();
        want.extend(serde_json::to_vec(&empty).unwrap());
        assert_eq!(store_key("r", std::iter::empty()), want);
    }
}
