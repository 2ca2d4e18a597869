//! Detection state and the store: which keys changed since the last commit, under what
//! identity a key's state is stored (rule, rule hash, key values) and in which codec
//! (evidence lines as references), and how saved state comes back after a restart.
//!
//! Kept apart from the window stage ([`super::Detector::apply`]) because only the daemon
//! stores windows: its commits take what changed ([`Detector::take_dirty`]), while an
//! evaluation that stores nothing (a replay) turns the tracking off and pays nothing for
//! it per match.

use super::fields::Fields;
use super::kinds::KeyState;
use super::{Detector, Evidence, FastMap, FastSet, Key};
use crate::store::codec::{CodecError, Dec, Enc, Loc, placeholder};
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
/// (a commit's batch is cloned for retries without copying it again).
pub fn encode_window(
    rule_hash: &str,
    state: &KeyState,
    scratch: &mut Vec<u8>,
    sink: &mut dyn FnMut(&Evidence) -> Loc,
) -> Arc<[u8]> {
    let mut w = Enc::reusing(std::mem::take(scratch), sink);
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
    use std::collections::BTreeMap;

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
