//! `spike`: the current window's count against the mean of the previous `baseline` windows.
//!
//! Windows are aligned to multiples of their length on the lines' own time. A window with
//! no match counts 0, and so does a window before the key was first seen: a key without
//! history has a baseline of 0, and then `min_count` alone decides.

use super::{Event, Observed, push_bounded};
use crate::detection::{Crossing, Evidence};
use crate::store::codec::{CodecError, Dec, Enc};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Counts of the newest windows (oldest first, at most `baseline + 1`), the evidence of the
/// newest window, and the window already reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spike {
    windows: VecDeque<(i64, u64)>,
    evidence: Vec<Evidence>,
    fired: Option<i64>,
}

impl Spike {
    pub(super) fn encode(&self, w: &mut Enc<'_>) {
        w.u64(self.windows.len() as u64);
        for (index, count) in &self.windows {
            w.i64(*index);
            w.u64(*count);
        }
        w.evidence_list(self.evidence.iter());
        w.bool(self.fired.is_some());
        if let Some(f) = self.fired {
            w.i64(f);
        }
    }

    pub(super) fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        let n = r.count()?;
        let mut windows = VecDeque::with_capacity(n);
        for _ in 0..n {
            windows.push_back((r.i64()?, r.u64()?));
        }
        let evidence = r.evidence_list()?;
        let fired = if r.bool()? { Some(r.i64()?) } else { None };
        Ok(Spike {
            windows,
            evidence,
            fired,
        })
    }

    pub(super) fn observe(
        &mut self,
        event: Event<'_>,
        window_ms: i64,
        baseline: u32,
        factor: f64,
        min_count: u64,
    ) -> Observed {
        let index = event.time_ms.div_euclid(window_ms);
        let newest = self.windows.back().map_or(index, |(i, _)| *i);
        if index < newest - i64::from(baseline) {
            return Observed::Late;
        }
        if index > newest || self.windows.is_empty() {
            self.windows.push_back((index, 0));
            self.evidence.clear();
            self.forget_before(index - i64::from(baseline));
        }
        let slot = self
            .windows
            .iter_mut()
            .find(|(i, _)| *i == index)
            .map(|(_, n)| n);
        match slot {
            Some(n) => *n += 1,
            None => {
                // A late match in a window that had none yet: keep the order.
                let at = self.windows.partition_point(|(i, _)| *i < index);
                self.windows.insert(at, (index, 1));
            }
        }
        let current = self.windows.back().map_or(index, |(i, _)| *i);
        if index != current {
            // Late matches fill the baseline; only the current window can spike.
            return Observed::Counted;
        }
        push_bounded(&mut self.evidence, event.evidence.evidence().clone());
        if self.fired == Some(index) {
            return Observed::Counted;
        }
        let count = self.windows.back().map_or(0, |(_, n)| *n);
        let before: u64 = self
            .windows
            .iter()
            .filter(|(i, _)| *i < index && *i >= index - i64::from(baseline))
            .map(|(_, n)| *n)
            .sum();
        let mean = before as f64 / f64::from(baseline);
        if count >= min_count && count as f64 >= factor * mean {
            self.fired = Some(index);
            return Observed::Crossed(Crossing {
                count,
                evidence: self.evidence.clone(),
            });
        }
        Observed::Counted
    }

    fn forget_before(&mut self, oldest_kept: i64) {
        while self.windows.front().is_some_and(|(i, _)| *i < oldest_kept) {
            self.windows.pop_front();
        }
    }

    pub(super) fn expire(&mut self, now_ms: i64, window_ms: i64, baseline: u32) -> bool {
        // Windows that can no longer be in any baseline carry nothing.
        self.forget_before(now_ms.div_euclid(window_ms) - i64::from(baseline));
        if self.windows.is_empty() {
            self.evidence.clear();
        }
        self.windows.is_empty()
    }

    /// See [`super::KeyState::expiry_ms`]: the oldest window is forgotten once the
    /// current window is `baseline + 1` windows later.
    pub(super) fn expiry_ms(&self, window_ms: i64, baseline: u32) -> i64 {
        self.windows.front().map_or(i64::MIN, |(index, _)| {
            index
                .saturating_add(i64::from(baseline) + 1)
                .saturating_mul(window_ms)
        })
    }

    pub(super) fn held(&self) -> usize {
        self.windows.back().map_or(0, |(_, n)| *n as usize)
    }

    pub(super) fn last_ms(&self) -> i64 {
        self.evidence
            .last()
            .map_or(i64::MIN, |e| e.time.timestamp_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::super::KeyState;
    use super::super::test_support::*;
    use crate::rules::RuleKind;

    const W: i64 = 60_000;
    const KIND: RuleKind = RuleKind::Spike {
        window_ms: W,
        baseline: 3,
        factor: 4.0,
        min_count: 3,
    };

    fn fill(s: &mut KeyState, window: i64, n: usize) -> Option<u64> {
        let mut last = None;
        for i in 0..n {
            last = crossed(&feed(s, &KIND, window * W + i as i64, 0, &[]));
        }
        last
    }

    #[test]
    fn empty_baseline_fires_at_min_count_not_before() {
        let mut s = KeyState::new(&KIND, 0);
        assert_eq!(fill(&mut s, 10, 2), None);
        assert_eq!(fill(&mut s, 10, 1), Some(3));
        // Reported once per window; later matches in it are only counted.
        assert_eq!(fill(&mut s, 10, 5), None);
    }

    #[test]
    fn needs_factor_times_the_baseline_mean() {
        let mut s = KeyState::new(&KIND, 0);
        // Baseline windows 0, 1, 2 hold 3, 3, 0 -> mean 2 -> a spike needs 8.
        fill(&mut s, 0, 3);
        fill(&mut s, 1, 3);
        assert_eq!(fill(&mut s, 3, 7), None);
        assert_eq!(fill(&mut s, 3, 1), Some(8));
    }

    #[test]
    fn windows_older_than_the_baseline_do_not_count() {
        let mut s = KeyState::new(&KIND, 0);
        fill(&mut s, 0, 100);
        // Window 4's baseline is windows 1..=3: all empty, so min_count decides.
        assert_eq!(fill(&mut s, 4, 3), Some(3));
    }

    #[test]
    fn late_matches_fill_the_baseline_but_never_fire() {
        let mut s = KeyState::new(&KIND, 0);
        fill(&mut s, 5, 1);
        assert_eq!(fill(&mut s, 4, 10), None, "window 4 is not current");
        // Window 5's baseline now has mean 10/3: 4x that is 13.3, so 14 are needed.
        assert_eq!(fill(&mut s, 5, 12), None);
        assert_eq!(fill(&mut s, 5, 1), Some(14));
        assert_eq!(feed(&mut s, &KIND, W, 0, &[]), super::Observed::Late);
    }

    #[test]
    fn expires_once_no_window_can_be_in_a_baseline() {
        let mut s = KeyState::new(&KIND, 0);
        fill(&mut s, 0, 1);
        assert!(!s.expire(&KIND, 3 * W));
        assert!(s.expire(&KIND, 4 * W));
    }
}
