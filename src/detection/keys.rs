//! Per-rule key tables with a size bound and least-recently-used eviction.
//!
//! A flood of spoofed source addresses creates a key per address; without a bound the
//! detector's memory would follow the attacker instead of the live keys. Each rule keeps at
//! most its `max_keys` keys; a new key beyond that evicts the key touched longest ago.

use super::fields::Fields;
use lru::LruCache;

/// One key's state and whether it changed since it was last stored; the key is kept in the
/// entry too, so a lookup by `&str` can hand out the shared key.
#[derive(Debug)]
struct Entry<S> {
    key: Fields,
    state: S,
    dirty: bool,
}

/// State per key with recency order: an O(1) linked hash map, so the per-hit cost does not
/// grow with the number of live keys.
#[derive(Debug)]
pub struct KeyTable<S> {
    entries: LruCache<Fields, Entry<S>>,
    max_keys: usize,
}

/// What [`KeyTable::touch`] found or made.
pub struct Touched<'a, S> {
    /// The key, shared with the table.
    pub key: &'a Fields,
    /// The key's state, now the most recently used.
    pub state: &'a mut S,
    /// True the first time the key is touched since it was last stored (marked clean).
    pub newly_dirty: bool,
    /// The key evicted to make room, if any.
    pub evicted: Option<Fields>,
}

impl<S> KeyTable<S> {
    /// An empty table holding at most `max_keys` keys (at least one).
    pub fn new(max_keys: usize) -> Self {
        KeyTable {
            entries: LruCache::unbounded(),
            max_keys: max_keys.max(1),
        }
    }

    /// The state of `key` (encoded [`Fields`]), marked as the most recently used and as
    /// changed; created with `make` when missing. A key already present costs one lookup
    /// and no allocation.
    pub fn touch(&mut self, key: &str, make: impl FnOnce() -> S) -> Touched<'_, S> {
        let mut evicted = None;
        if !self.entries.contains(key) {
            // Room is made only for a new key at the bound.
            if self.entries.len() >= self.max_keys {
                evicted = self.entries.pop_lru().map(|(k, _)| k);
            }
            let key = Fields::from_encoded(key);
            self.entries.push(
                key.clone(),
                Entry {
                    key,
                    state: make(),
                    dirty: false,
                },
            );
        }
        let entry = self.entries.get_mut(key).expect("present or just added");
        let newly_dirty = !entry.dirty;
        entry.dirty = true;
        Touched {
            key: &entry.key,
            state: &mut entry.state,
            newly_dirty,
            evicted,
        }
    }

    /// Marks a key's state as stored (after [`Self::touch`] marked it changed).
    pub fn mark_clean(&mut self, key: &Fields) {
        if let Some(entry) = self.entries.peek_mut(key) {
            entry.dirty = false;
        }
    }

    /// Puts a key's state (as restored from the store), most recently used; returns the key
    /// evicted to make room, if any.
    pub fn insert(&mut self, key: Fields, state: S) -> Option<Fields> {
        self.entries.pop(&key);
        let evicted = if self.entries.len() >= self.max_keys {
            self.entries.pop_lru().map(|(k, _)| k)
        } else {
            None
        };
        self.entries.push(
            key.clone(),
            Entry {
                key,
                state,
                dirty: false,
            },
        );
        evicted
    }

    /// Removes a key.
    pub fn remove(&mut self, key: &Fields) -> Option<S> {
        self.entries.pop(key).map(|e| e.state)
    }

    /// A key's state without changing its recency.
    pub fn get(&self, key: &Fields) -> Option<&S> {
        self.entries.peek(key).map(|e| &e.state)
    }

    /// Every key and state, without changing recency.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Fields, &mut S)> {
        self.entries.iter_mut().map(|(k, e)| (k, &mut e.state))
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &Fields> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Keeps the keys for which `keep` is true; returns the removed keys.
    pub fn retain(&mut self, mut keep: impl FnMut(&Fields, &mut S) -> bool) -> Vec<Fields> {
        let removed: Vec<Fields> = self
            .entries
            .iter_mut()
            .filter_map(|(k, e)| (!keep(k, &mut e.state)).then(|| k.clone()))
            .collect();
        for key in &removed {
            self.entries.pop(key);
        }
        removed
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Fields {
        let mut text = String::new();
        crate::detection::fields::push(&mut text, "ip", &format!("10.0.0.{n}"));
        Fields::from_encoded(&text)
    }

    fn touch<S>(t: &mut KeyTable<S>, n: u32, make: impl FnOnce() -> S) -> Touched<'_, S> {
        let k = key(n);
        t.touch(std::borrow::Borrow::borrow(&k), make)
    }

    #[test]
    fn the_least_recently_used_key_is_evicted_at_the_bound() {
        let mut t = KeyTable::new(3);
        for n in 1..=3 {
            assert_eq!(touch(&mut t, n, || n).evicted, None);
        }
        // Touching 1 makes 2 the oldest.
        *touch(&mut t, 1, || 0).state += 10;
        assert_eq!(touch(&mut t, 4, || 4).evicted, Some(key(2)));
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(&key(1)), Some(&11));
        assert_eq!(t.get(&key(2)), None);
        let touched = touch(&mut t, 5, || 5);
        assert_eq!(touched.evicted, Some(key(3)));
        assert_eq!(touched.key, &key(5), "the table hands out its own key");
    }

    #[test]
    fn a_key_is_newly_dirty_once_until_marked_clean() {
        let mut t = KeyTable::new(3);
        assert!(touch(&mut t, 1, || 0).newly_dirty);
        assert!(!touch(&mut t, 1, || 0).newly_dirty);
        t.mark_clean(&key(1));
        assert!(touch(&mut t, 1, || 0).newly_dirty);
    }

    #[test]
    fn a_flood_never_grows_the_table_past_its_bound() {
        let mut t = KeyTable::new(100);
        let mut evicted = 0;
        for n in 0..10_000u32 {
            evicted += usize::from(touch(&mut t, n, || ()).evicted.is_some());
        }
        assert_eq!((t.len(), evicted), (100, 9_900));
    }

    #[test]
    fn retain_and_insert_keep_the_order_consistent() {
        let mut t = KeyTable::new(2);
        t.insert(key(1), 1);
        t.insert(key(2), 2);
        assert_eq!(t.retain(|_, s| *s != 1), vec![key(1)]);
        assert_eq!(t.insert(key(3), 3), None);
        assert_eq!(t.insert(key(4), 4), Some(key(2)));
        assert_eq!(t.len(), 2);
    }
}
