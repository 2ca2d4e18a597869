//! A due-time queue: what must happen when, so a clock tick looks only at what is due.
//!
//! The clock ticks every second whatever is open; with twenty thousand incidents open
//! (one per address of a distributed brute force), walking them all on every tick costs
//! seconds. Each item instead has at most one due time here, updated whenever something
//! that decides it changes, and a tick takes only the items whose time has come.
//!
//! [`DueSet`] is the ordered part alone, for owners that keep each item's due time next to
//! the item anyway (the detector's key tables: a second map per key would cost memory per
//! key); [`DueQueue`] adds that map for owners that do not.

use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// Items ordered by due time. The caller remembers each item's time (to move or remove it)
/// and keeps each item in at most once.
#[derive(Debug)]
pub struct DueSet<T, K> {
    by_time: BTreeSet<(T, K)>,
}

impl<T: Ord, K: Ord> Default for DueSet<T, K> {
    fn default() -> Self {
        DueSet {
            by_time: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Copy, K: Ord + Clone> DueSet<T, K> {
    /// Adds `key`, due at `at`.
    pub fn insert(&mut self, at: T, key: K) {
        self.by_time.insert((at, key));
    }

    /// Removes `key`, which was added due at `at`.
    pub fn remove(&mut self, at: T, key: &K) {
        self.by_time.remove(&(at, key.clone()));
    }

    /// Removes and returns the earliest item if it is due at or before `now`.
    pub fn pop_due(&mut self, now: T) -> Option<(T, K)> {
        if self.by_time.first()?.0 > now {
            return None;
        }
        self.by_time.pop_first()
    }

    /// The earliest due time, `None` when empty: when the owner's next tick needs to look.
    pub fn next(&self) -> Option<T> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// How many items are in.
    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    /// Whether no item is waiting, so nothing will ever be due until one is added.
    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }
}

/// Items by the time they are next due; each item at most once.
#[derive(Debug)]
pub struct DueQueue<K> {
    by_time: DueSet<DateTime<Utc>, K>,
    at: HashMap<K, DateTime<Utc>>,
}

impl<K: Ord + Hash + Clone> Default for DueQueue<K> {
    fn default() -> Self {
        DueQueue {
            by_time: DueSet::default(),
            at: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> DueQueue<K> {
    /// Sets when `key` is next due, replacing any earlier schedule; `None` unschedules it.
    pub fn schedule(&mut self, key: K, due: Option<DateTime<Utc>>) {
        if let Some(old) = self.at.remove(&key) {
            self.by_time.remove(old, &key);
        }
        if let Some(due) = due {
            self.by_time.insert(due, key.clone());
            self.at.insert(key, due);
        }
    }

    /// Removes and returns every item due at or before `now`, earliest first.
    pub fn take_due(&mut self, now: DateTime<Utc>) -> Vec<K> {
        let mut due = Vec::new();
        while let Some((_, key)) = self.by_time.pop_due(now) {
            self.at.remove(&key);
            due.push(key);
        }
        due
    }

    /// When `key` is due, if it is scheduled.
    pub fn due_at(&self, key: &K) -> Option<DateTime<Utc>> {
        self.at.get(key).copied()
    }

    /// The earliest due time of any scheduled item, `None` when none is: the owner can sleep
    /// until then.
    pub fn next(&self) -> Option<DateTime<Utc>> {
        self.by_time.next()
    }

    /// How many items are scheduled.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether no item is scheduled: nothing will be due until [`DueQueue::schedule`] adds one.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn an_item_is_due_at_its_time_exactly_and_not_a_moment_before() {
        let mut q = DueQueue::default();
        q.schedule("a", Some(t(10)));
        assert!(q.take_due(t(10) - Duration::milliseconds(1)).is_empty());
        assert_eq!(q.take_due(t(10)), ["a"]);
        // Taken: due once, until scheduled again.
        assert!(q.take_due(t(20)).is_empty());
        assert!(q.is_empty());
    }

    #[test]
    fn due_items_come_earliest_first_and_later_ones_stay() {
        let mut q = DueQueue::default();
        q.schedule("late", Some(t(30)));
        q.schedule("b", Some(t(5)));
        q.schedule("a", Some(t(5)));
        q.schedule("first", Some(t(1)));
        assert_eq!(q.next(), Some(t(1)));
        assert_eq!(q.take_due(t(5)), ["first", "a", "b"]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.next(), Some(t(30)));
    }

    #[test]
    fn rescheduling_replaces_and_none_unschedules() {
        let mut q = DueQueue::default();
        q.schedule("a", Some(t(5)));
        q.schedule("a", Some(t(50)));
        assert_eq!(q.len(), 1);
        assert!(q.take_due(t(10)).is_empty());
        assert_eq!(q.due_at(&"a"), Some(t(50)));
        q.schedule("a", Some(t(2)));
        assert_eq!(q.take_due(t(10)), ["a"]);
        q.schedule("b", Some(t(5)));
        q.schedule("b", None);
        assert!(q.take_due(t(100)).is_empty());
        assert!(q.is_empty() && q.next().is_none());
    }

    #[test]
    fn a_due_set_pops_only_what_is_due_and_removes_by_its_time() {
        let mut s = DueSet::default();
        s.insert(5, "a");
        s.insert(5, "b");
        s.insert(9, "c");
        s.remove(5, &"b");
        s.remove(7, &"c"); // not its time: nothing removed
        assert_eq!(s.len(), 2);
        assert_eq!(s.pop_due(4), None);
        assert_eq!(s.pop_due(5), Some((5, "a")));
        assert_eq!(s.pop_due(8), None);
        assert_eq!(s.next(), Some(9));
        assert_eq!(s.pop_due(9), Some((9, "c")));
        assert!(s.is_empty());
    }

    /// Thousands of items scheduled: a tick with nothing due takes nothing, and each due
    /// item comes exactly once.
    #[test]
    fn many_items_each_come_once() {
        let mut q = DueQueue::default();
        for i in 0..20_000 {
            q.schedule(i, Some(t(i % 100)));
        }
        assert!(q.take_due(t(-1)).is_empty());
        let mut seen = Vec::new();
        for s in 0..100 {
            seen.extend(q.take_due(t(s)));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..20_000).collect::<Vec<_>>());
    }
}
