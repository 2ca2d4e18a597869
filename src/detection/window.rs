//! Sliding count windows on event time.

mod deque;

pub use deque::SmallDeque;
use serde::{Deserialize, Serialize};

/// Events of one rule and key, ordered by their time in milliseconds.
///
/// A window of length `within` holds the events no more than `within` older than its newest
/// event: events exactly `within` apart are in the same window. Late events are inserted in
/// time order; one already older than the window is not counted. The first event is held
/// inline ([`SmallDeque`]): most keys of a flood never hold a second.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlidingWindow<T> {
    events: SmallDeque<(i64, T)>,
}

impl<T> Default for SlidingWindow<T> {
    fn default() -> Self {
        SlidingWindow {
            events: SmallDeque::new(),
        }
    }
}

impl<T> SlidingWindow<T> {
    /// An empty window; the same as [`Default`], for callers that name the type.
    pub fn new() -> Self {
        SlidingWindow {
            events: SmallDeque::new(),
        }
    }

    /// Adds an event at `at_ms`, drops events that fell out of the window, and returns how
    /// many events the window holds now; `None` when the event itself is too old to count.
    pub fn push(&mut self, at_ms: i64, item: T, within_ms: i64) -> Option<usize> {
        let newest = self.events.back().map_or(at_ms, |(t, _)| (*t).max(at_ms));
        if at_ms < newest - within_ms {
            return None;
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
        self.events
            .drain()
            .into_iter()
            .map(|(_, item)| item)
            .collect()
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

    /// Whether a window holds its one event inline or has spilled to the heap must not
    /// change what it counts, keeps or forgets: compared with a plain sorted list over a
    /// pseudo-random walk of in-order and late events, expiries and crossings (drains).
    #[test]
    fn inline_and_spilled_windows_count_and_expire_as_a_sorted_list() {
        let mut w = SlidingWindow::new();
        let mut model: Vec<i64> = Vec::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut clock = 0;
        for step in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mostly forward, sometimes a late event, now and then a long pause.
            clock += (seed % 25_000) as i64;
            let at = if seed.is_multiple_of(5) {
                clock - (seed >> 20) as i64 % (2 * MIN)
            } else {
                clock
            };
            let newest = model.last().map_or(at, |n| (*n).max(at));
            let want = if at < newest - MIN {
                None
            } else {
                let p = model.partition_point(|t| *t <= at);
                model.insert(p, at);
                model.retain(|t| *t >= newest - MIN);
                Some(model.len())
            };
            assert_eq!(w.push(at, at, MIN), want, "step {step}");
            if seed.is_multiple_of(11) {
                let now = clock + (seed >> 30) as i64 % MIN;
                w.expire(now - MIN);
                model.retain(|t| *t >= now - MIN);
            }
            if seed.is_multiple_of(17) {
                assert_eq!(w.drain(), std::mem::take(&mut model), "step {step}");
            }
            assert_eq!(w.len(), model.len());
            assert_eq!(w.oldest(), model.first().copied());
            assert_eq!(w.newest(), model.last().copied());
            assert!(w.events().map(|(t, _)| *t).eq(model.iter().copied()));
        }
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
