//! `threshold`: `count` matches for one key within `within`.

use super::{Event, Observed, forgotten_after};
use crate::detection::window::SlidingWindow;
use crate::detection::{Crossing, Evidence, HeldLine};
use crate::store::codec::{CodecError, Dec, Enc};
use serde::{Deserialize, Serialize};

/// The matches of the current window, each line shared with the other rules that counted
/// it; emptied when the threshold is reached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    window: SlidingWindow<HeldLine>,
}

impl Threshold {
    pub(super) fn observe(&mut self, event: Event<'_>, count: u64, within_ms: i64) -> Observed {
        match self
            .window
            .push(event.time_ms, event.evidence.keep(), within_ms)
        {
            None => Observed::Late,
            Some(n) if n as u64 >= count => {
                let evidence: Vec<Evidence> = self
                    .window
                    .drain()
                    .iter()
                    .map(|line| line.evidence().clone())
                    .collect();
                Observed::Crossed(Crossing {
                    count: evidence.len() as u64,
                    evidence,
                })
            }
            Some(_) => Observed::Counted,
        }
    }

    pub(super) fn expire(&mut self, now_ms: i64, within_ms: i64) -> bool {
        self.window.expire(now_ms - within_ms);
        self.window.is_empty()
    }

    /// See [`super::KeyState::expiry_ms`]: the oldest match leaves the window one
    /// millisecond after `within` has passed.
    pub(super) fn expiry_ms(&self, within_ms: i64) -> i64 {
        self.window
            .oldest()
            .map_or(i64::MIN, |t| forgotten_after(t, within_ms))
    }

    pub(super) fn held(&self) -> usize {
        self.window.len()
    }

    pub(super) fn last_ms(&self) -> i64 {
        self.window.newest().unwrap_or(i64::MIN)
    }

    /// The counted lines as references (each one's time is its line's).
    pub(super) fn encode(&self, w: &mut Enc<'_>) {
        w.held_list(self.window.events().map(|(_, line)| line));
    }

    pub(super) fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        let lines = r.evidence_list()?;
        Ok(Threshold {
            window: SlidingWindow::from_events(
                lines
                    .into_iter()
                    .map(|e| (e.time.timestamp_millis(), HeldLine::from_evidence(e)))
                    .collect(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::KeyState;
    use super::super::test_support::*;
    use crate::rules::RuleKind;

    const KIND: RuleKind = RuleKind::Threshold {
        count: 3,
        within_ms: 60_000,
    };

    #[test]
    fn fires_at_exactly_count_within_the_window_then_starts_again() {
        let mut s = KeyState::new(&KIND, 0);
        assert_eq!(crossed(&feed(&mut s, &KIND, 0, 0, &[])), None);
        assert_eq!(crossed(&feed(&mut s, &KIND, 30_000, 0, &[])), None);
        assert_eq!(crossed(&feed(&mut s, &KIND, 60_000, 0, &[])), Some(3));
        assert!(s.expire(&KIND, 60_000), "emptied when it fired");
        // Two more are not three.
        feed(&mut s, &KIND, 61_000, 0, &[]);
        assert_eq!(crossed(&feed(&mut s, &KIND, 62_000, 0, &[])), None);
    }

    #[test]
    fn one_millisecond_too_far_apart_does_not_fire() {
        let mut s = KeyState::new(&KIND, 0);
        feed(&mut s, &KIND, 0, 0, &[]);
        feed(&mut s, &KIND, 30_000, 0, &[]);
        assert_eq!(crossed(&feed(&mut s, &KIND, 60_001, 0, &[])), None);
    }
}
