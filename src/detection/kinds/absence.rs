//! `absence`: fewer than `count` matches within `within`, noticed by the clock.
//!
//! The clock for a key starts when its state is created: for a rule without `group_by`,
//! when the rule is first loaded; for a grouped rule, when the key is first seen. The state
//! is stored, so a restart does not start the clock again. One gap opens one crossing; the
//! gap ends ("resumed") once `count` matches fall within `within` again.

use super::{Event, Observed};
use crate::detection::{Crossing, Evidence};
use crate::store::codec::{CodecError, Dec, Enc};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The clock start, the latest `count` match times, the latest matching line, and the
/// open gap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Absence {
    since_ms: i64,
    recent: VecDeque<i64>,
    last: Option<Evidence>,
    gap_ms: Option<i64>,
}

impl Absence {
    pub(super) fn new(now_ms: i64) -> Self {
        Absence {
            since_ms: now_ms,
            recent: VecDeque::new(),
            last: None,
            gap_ms: None,
        }
    }

    pub(super) fn encode(&self, w: &mut Enc<'_>) {
        w.i64(self.since_ms);
        w.u64(self.recent.len() as u64);
        for t in &self.recent {
            w.i64(*t);
        }
        w.opt_evidence(self.last.as_ref());
        w.bool(self.gap_ms.is_some());
        if let Some(g) = self.gap_ms {
            w.i64(g);
        }
    }

    pub(super) fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        let since_ms = r.i64()?;
        let n = r.count()?;
        let recent = (0..n).map(|_| r.i64()).collect::<Result<_, _>>()?;
        let last = r.opt_evidence()?;
        let gap_ms = if r.bool()? { Some(r.i64()?) } else { None };
        Ok(Absence {
            since_ms,
            recent,
            last,
            gap_ms,
        })
    }

    /// Matches no more than `within` before `at` (inclusive).
    fn held(&self, at_ms: i64, within_ms: i64) -> u64 {
        self.recent
            .iter()
            .filter(|t| at_ms - **t <= within_ms && **t <= at_ms)
            .count() as u64
    }

    pub(super) fn observe(&mut self, event: Event<'_>, within_ms: i64, count: u64) -> Observed {
        let at = self.recent.partition_point(|t| *t <= event.time_ms);
        self.recent.insert(at, event.time_ms);
        while self.recent.len() as u64 > count {
            self.recent.pop_front();
        }
        if self
            .last
            .as_ref()
            .is_none_or(|l| l.time <= event.evidence.time())
        {
            self.last = Some(event.evidence.evidence().clone());
        }
        if self.gap_ms.is_some() && self.held(event.time_ms, within_ms) >= count {
            self.gap_ms = None;
            return Observed::Resumed;
        }
        Observed::Counted
    }

    pub(super) fn advance(&mut self, now_ms: i64, within_ms: i64, count: u64) -> Option<Crossing> {
        if self.gap_ms.is_some() || now_ms - self.since_ms < within_ms {
            return None;
        }
        let held = self.held(now_ms, within_ms);
        if held >= count {
            return None;
        }
        self.gap_ms = Some(now_ms);
        Some(Crossing {
            count: held,
            evidence: self.last.iter().cloned().collect(),
        })
    }

    /// The first clock time [`Absence::advance`] would cross at without further matches.
    pub(super) fn due_ms(&self, within_ms: i64, count: u64) -> Option<i64> {
        if self.gap_ms.is_some() {
            return None;
        }
        let clock = self.since_ms.saturating_add(within_ms);
        // `recent` keeps the latest `count` matches: the gap opens once the oldest of them
        // is more than `within` old (at once when there are fewer than `count`).
        let thinned = match self.recent.front() {
            Some(oldest) if self.recent.len() as u64 >= count => {
                oldest.saturating_add(within_ms).saturating_add(1)
            }
            _ => i64::MIN,
        };
        Some(clock.max(thinned))
    }

    pub(super) fn last_ms(&self) -> i64 {
        self.recent.back().copied().unwrap_or(self.since_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{KeyState, Observed};
    use crate::rules::RuleKind;

    const T0: i64 = 1_000_000;
    const KIND: RuleKind = RuleKind::Absence {
        within_ms: 10_000,
        count: 2,
    };

    #[test]
    fn at_start_up_the_clock_runs_from_creation() {
        let mut s = KeyState::new(&KIND, T0);
        assert_eq!(s.advance(&KIND, T0 + 9_999), None);
        let c = s
            .advance(&KIND, T0 + 10_000)
            .expect("a full window without matches");
        assert_eq!((c.count, c.evidence.len()), (0, 0));
        // One gap, one crossing.
        assert_eq!(s.advance(&KIND, T0 + 60_000), None);
    }

    #[test]
    fn fewer_than_count_within_the_window_opens_a_gap_and_count_again_resumes_it() {
        let mut s = KeyState::new(&KIND, T0);
        feed(&mut s, &KIND, T0 + 1_000, 0, &[]);
        feed(&mut s, &KIND, T0 + 5_000, 0, &[]);
        // Both matches are within 10 s of T0 + 11 s (inclusive edge).
        assert_eq!(s.advance(&KIND, T0 + 11_000), None);
        let c = s
            .advance(&KIND, T0 + 11_001)
            .expect("only one match left in the window");
        assert_eq!(c.count, 1);
        assert_eq!(&*c.evidence[0].line, format!("line at {}", T0 + 5_000));
        // One match is not enough to end the gap, the second is.
        assert_eq!(feed(&mut s, &KIND, T0 + 30_000, 0, &[]), Observed::Counted);
        assert_eq!(feed(&mut s, &KIND, T0 + 31_000, 0, &[]), Observed::Resumed);
        assert_eq!(s.advance(&KIND, T0 + 40_000), None);
        // A new gap is a new crossing.
        assert!(s.advance(&KIND, T0 + 40_001).is_some());
    }

    #[test]
    fn due_is_exactly_when_advance_first_crosses() {
        let mut s = KeyState::new(&KIND, T0);
        assert_eq!(s.absence_due_ms(&KIND), Some(T0 + 10_000));
        feed(&mut s, &KIND, T0 + 1_000, 0, &[]);
        feed(&mut s, &KIND, T0 + 5_000, 0, &[]);
        let due = s.absence_due_ms(&KIND).unwrap();
        assert_eq!(due, T0 + 11_001);
        assert_eq!(s.advance(&KIND, due - 1), None);
        assert!(s.advance(&KIND, due).is_some());
        assert_eq!(s.absence_due_ms(&KIND), None, "a gap is open");
    }

    #[test]
    fn it_never_expires_on_its_own() {
        let mut s = KeyState::new(&KIND, T0);
        assert!(!s.expire(&KIND, T0 + 1_000_000_000));
    }
}
