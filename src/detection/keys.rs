//! Per-rule key tables with a size bound and least-recently-used eviction.
//!
//! A flood of spoofed source addresses creates a key per address; without a bound the
//! detector's memory would follow the attacker instead of the live keys. Each rule keeps at
//! most its `max_keys` keys; a new key beyond that evicts the key touched longest ago.

use super::Key;
use std::collections::{BTreeMap, HashMap};

/// State per key with recency order.
#[derive(Debug)]
pub struct KeyTable<S> {
    entries: HashMap<Key, (S, u64)>,
    order: BTreeMap<u64, Key>,
    next_stamp: u64,
    max_keys: usize,
}

impl<S> KeyTable<S> {
    /// An empty table holding at most `max_keys` keys (at least one).
    pub fn new(max_keys: usize) -> Self {
        KeyTable {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            max_keys: max_keys.max(1),
        }
    }

    /// The state of `key`, marked as the most recently used; created with `make` when
    /// missing. Returns the key evicted to make room, if any.
    pub fn touch(&mut self, key: &Key, make: impl FnOnce() -> S) -> (&mut S, Option<Key>) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let mut evicted = None;
        match self.entries.get_mut(key) {
            Some((_, old)) => {
                let k = self.order.remove(old).expect("order holds every key");
                *old = stamp;
                self.order.insert(stamp, k);
            }
            None => {
                if self.entries.len() >= self.max_keys {
                    evicted = self.pop_oldest();
                }
                self.entries.insert(key.clone(), (make(), stamp));
                self.order.insert(stamp, key.clone());
            }
        }
        let state = &mut self.entries.get_mut(key).expect("present").0;
        (state, evicted)
    }

    /// Adds a key as the most recently used (restoring saved state, oldest first).
    /// Returns the key evicted to make room, if any.
    pub fn insert(&mut self, key: Key, state: S) -> Option<Key> {
        self.remove(&key);
        let evicted = if self.entries.len() >= self.max_keys {
            self.pop_oldest()
        } else {
            None
        };
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.order.insert(stamp, key.clone());
        self.entries.insert(key, (state, stamp));
        evicted
    }

    fn pop_oldest(&mut self) -> Option<Key> {
        let (_, key) = self.order.pop_first()?;
        self.entries.remove(&key);
        Some(key)
    }

    /// Removes a key.
    pub fn remove(&mut self, key: &Key) -> Option<S> {
        let (state, stamp) = self.entries.remove(key)?;
        self.order.remove(&stamp);
        Some(state)
    }

    /// The state of a key, without changing its recency.
    pub fn get(&self, key: &Key) -> Option<&S> {
        self.entries.get(key).map(|(s, _)| s)
    }

    /// Every key and state, without changing recency.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Key, &mut S)> {
        self.entries.iter_mut().map(|(k, (s, _))| (k, s))
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.entries.keys()
    }

    /// Keeps the keys for which `keep` is true; returns the removed keys.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &mut S) -> bool) -> Vec<Key> {
        let mut removed = Vec::new();
        let order = &mut self.order;
        self.entries.retain(|key, (state, stamp)| {
            if keep(key, state) {
                true
            } else {
                order.remove(stamp);
                removed.push(key.clone());
                false
            }
        });
        removed
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        Key::from([("ip".to_string(), format!("10.0.0.{n}"))])
    }

    #[test]
    fn the_least_recently_used_key_is_evicted_at_the_bound() {
        let mut t = KeyTable::new(3);
        for n in 1..=3 {
            assert_eq!(t.touch(&key(n), || n).1, None);
        }
        // Touching 1 makes 2 the oldest.
        *t.touch(&key(1), || 0).0 += 10;
        assert_eq!(t.touch(&key(4), || 4).1, Some(key(2)));
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(&key(1)), Some(&11));
        assert_eq!(t.get(&key(2)), None);
        assert_eq!(t.touch(&key(5), || 5).1, Some(key(3)));
    }

    #[test]
    fn a_flood_never_grows_the_table_past_its_bound() {
        let mut t = KeyTable::new(100);
        let mut evicted = 0;
        for n in 0..10_000u32 {
            let k = Key::from([("ip".to_string(), n.to_string())]);
            evicted += usize::from(t.touch(&k, || ()).1.is_some());
        }
        assert_eq!((t.len(), evicted), (100, 9_900));
        assert_eq!(t.order.len(), 100);
    }

    #[test]
    fn retain_and_insert_keep_the_order_consistent() {
        let mut t = KeyTable::new(2);
        t.insert(key(1), 1);
        t.insert(key(2), 2);
        assert_eq!(t.retain(|_, s| *s != 1), vec![key(1)]);
        assert_eq!(t.insert(key(3), 3), None);
        assert_eq!(t.insert(key(4), 4), Some(key(2)));
        assert_eq!(t.order.len(), t.len());
    }
}
