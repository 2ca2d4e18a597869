//! Sliding count windows on event time.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Events of one rule and key, ordered by their time in milliseconds.
///
/// A window of length `within` holds the events no more than `within` older than its newest
/// event: events exactly `within` apart are in the same window. Late events are inserted in
/// time order; one already older than the window is not counted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlidingWindow<T> {
    events: VecDeque<(i64, T)>,
}

impl<T> Default for SlidingWindow<T> {
    fn default() -> Self {
        SlidingWindow {
            events: VecDeque::new(),
        }
    }
}

impl<T> SlidingWindow<T> {
    /// An empty window; the same as [`Default`], for callers that name the type.
    pub fn new() -> Self {
        SlidingWindow {
            events: VecDeque::new(),
        }
    }

    /// Adds an event at `at_ms`, drops events that fell out of the window, and returns how
    /// many events the window holds now; `None` when the event itself is too old to count.
    pub fn push(&mut self, at_ms: i64, item: T, within_ms: i64) -> Option<usize> {
        let newest = self.events.back().map_or(at_ms, |(t, _)| (*t).max(at_ms));
        if at_ms < newest - within_ms {
            return None;
        }
        if self.events.capacity() == 0 {
            // Most keys of a flood hold one event: room for exactly one, not the default
            // four (memory per key bounds how many keys fit).
            self.events.reserve_exact(1);
        }
        let position = self.events.partition_point(|(t, _)| *t <= at_ms);
        self.events.insert(position, (at_ms, item));
        self.expire(newest - within_ms);
        Some(self.events.len())
    }

    /// Drops events older than `oldest_kept_ms`.
    pub fn expire(&mut self, oldest_kept_ms: i64) {
        while self
            .events
            .front()
            .is_some_and(|(t, _)| *t < oldest_kept_ms)
        {
            self.events.pop_front();
        }
    }

    /// Time of the oldest event.
    pub fn oldest(&self) -> Option<i64> {
        self.events.front().map(|(t, _)| *t)
    }

    /// Time of the newest event.
    pub fn newest(&self) -> Option<i64> {
        self.events.back().map(|(t, _)| *t)
    }

    /// Events held: those no more than `within` older than the newest, late ones included.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the window holds nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events, oldest first, with their times.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &(i64, T)> {
        self.events.iter()
    }

    /// A window holding these events (any order: they are sorted by time).
    pub fn from_events(mut events: Vec<(i64, T)>) -> Self {
        events.sort_by_key(|(t, _)| *t);
        SlidingWindow {
            events: events.into(),
        }
    }

    /// Empties the window, returning its events oldest first.
    pub fn drain(&mut self) -> Vec<T> {
        self.events.drain(..).map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn fill(times: &[i64]) -> (SlidingWindow<()>, Vec<Option<usize>>) {
        let mut w = SlidingWindow::new();
        let counts = times.iter().map(|t| w.push(*t, (), MIN)).collect();
        (w, counts)
    }

    #[test]
    fn events_exactly_within_apart_share_the_window() {
        let (_, counts) = fill(&[0, 15_000, 30_000, 45_000, 60_000]);
        assert_eq!(counts.last(), Some(&Some(5)));
    }

    #[test]
    fn one_millisecond_past_the_window_drops_the_oldest() {
        let (_, counts) = fill(&[0, 15_000, 30_000, 45_000, 60_001]);
        assert_eq!(counts.last(), Some(&Some(4)));
    }

    #[test]
    fn late_events_are_ordered_and_too_late_ones_not_counted() {
        let (mut w, counts) = fill(&[100_000, 50_000, 90_000]);
        assert_eq!(counts, vec![Some(1), Some(2), Some(3)]);
        assert_eq!(w.push(39_999, (), MIN), None);
        assert_eq!(w.newest(), Some(100_000));
        // A newer event pushes the earliest ones out.
        assert_eq!(w.push(150_000, (), MIN), Some(3));
        assert_eq!(w.push(160_001, (), MIN), Some(2));
    }

    #[test]
    fn drain_empties_in_time_order() {
        let mut w = SlidingWindow::new();
        w.push(20, "b", MIN);
        w.push(10, "a", MIN);
        assert_eq!(w.drain(), vec!["a", "b"]);
        assert!(w.is_empty());
    }
}
