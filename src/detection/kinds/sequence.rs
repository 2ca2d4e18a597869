//! `sequence`: ordered steps for one key, the whole sequence within `within`.
//!
//! Each step keeps its latest `count` matches, each tagged with the best completed prefix
//! (steps before it) that existed when it arrived. When a step's latest `count` matches
//! are all there, the tag of the earliest of them is the latest-starting prefix they can
//! follow; that makes the choice that best fits the window, with memory bounded by the
//! steps' counts instead of by the lines seen. Order is arrival order; times are the lines'
//! own. A line matching several steps counts for the later step first, so it cannot be
//! both a step and the step before it.

use super::{EVIDENCE_KEPT, Event, Observed, push_bounded};
use crate::detection::window::SmallDeque;
use crate::detection::{Crossing, Evidence};
use crate::store::codec::{CodecError, Dec, Enc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Steps completed in order, from `start_ms`, with the lines that did it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Prefix {
    start_ms: i64,
    evidence: Vec<Arc<Evidence>>,
}

/// One step: its latest matches with their prefixes (the first held inline: most keys of a
/// flood match one step once), and its best completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Step {
    recent: SmallDeque<(i64, Arc<Evidence>, Option<Prefix>)>,
    done: Option<Prefix>,
}

/// The state of every step of one key (in one allocation: a key's steps never change in
/// number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequence {
    steps: Box<[Step]>,
}

impl Prefix {
    fn encode(&self, w: &mut Enc<'_>) {
        w.i64(self.start_ms);
        w.evidence_list(self.evidence.iter().map(|e| &**e));
    }

    fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        Ok(Prefix {
            start_ms: r.i64()?,
            evidence: r.evidence_list()?.into_iter().map(Arc::new).collect(),
        })
    }

    fn encode_opt(p: Option<&Prefix>, w: &mut Enc<'_>) {
        w.bool(p.is_some());
        if let Some(p) = p {
            p.encode(w);
        }
    }

    fn decode_opt(r: &mut Dec<'_>) -> Result<Option<Self>, CodecError> {
        Ok(if r.bool()? {
            Some(Prefix::decode(r)?)
        } else {
            None
        })
    }
}

impl Sequence {
    pub(super) fn encode(&self, w: &mut Enc<'_>) {
        w.u64(self.steps.len() as u64);
        for step in self.steps.iter() {
            w.u64(step.recent.len() as u64);
            for (t, e, prefix) in &step.recent {
                w.i64(*t);
                w.evidence(e);
                Prefix::encode_opt(prefix.as_ref(), w);
            }
            Prefix::encode_opt(step.done.as_ref(), w);
        }
    }

    pub(super) fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        let n = r.count()?;
        let mut steps = Vec::with_capacity(n);
        for _ in 0..n {
            let m = r.count()?;
            let mut recent = Vec::with_capacity(m);
            for _ in 0..m {
                recent.push((r.i64()?, Arc::new(r.evidence()?), Prefix::decode_opt(r)?));
            }
            let recent = recent.into();
            let done = Prefix::decode_opt(r)?;
            steps.push(Step { recent, done });
        }
        Ok(Sequence {
            steps: steps.into_boxed_slice(),
        })
    }

    pub(super) fn new(steps: usize) -> Self {
        Sequence {
            steps: vec![Step::default(); steps].into_boxed_slice(),
        }
    }

    pub(super) fn held(&self) -> usize {
        self.steps
            .iter()
            .map(|s| s.recent.len() + usize::from(s.done.is_some()))
            .sum()
    }

    pub(super) fn steps(&self) -> usize {
        self.steps.len()
    }

    pub(super) fn observe(&mut self, event: Event<'_>, within_ms: i64, counts: &[u64]) -> Observed {
        let j = event.step;
        let now = event.time_ms;
        let fits = |p: &Prefix| now - p.start_ms <= within_ms;
        let tag = if j == 0 {
            Some(Prefix {
                start_ms: now,
                evidence: Vec::new(),
            })
        } else {
            self.steps[j - 1].done.clone().filter(fits)
        };
        let last = j + 1 == self.steps.len();
        let step = &mut self.steps[j];
        step.recent.push_back((now, event.evidence.clone(), tag));
        while step.recent.len() as u64 > counts[j] {
            step.recent.pop_front();
        }
        if (step.recent.len() as u64) < counts[j] {
            return Observed::Counted;
        }
        let Some(mut prefix) = step.recent.front().and_then(|(_, _, t)| t.clone()) else {
            return Observed::Counted;
        };
        if !fits(&prefix) {
            return Observed::Counted;
        }
        for (_, e, _) in &step.recent {
            push_bounded(&mut prefix.evidence, e.clone());
        }
        if !last {
            step.done = Some(prefix);
            return Observed::Counted;
        }
        // The last step completed: the sequence is there. Start again empty.
        let total = counts.iter().sum();
        for s in self.steps.iter_mut() {
            *s = Step::default();
        }
        debug_assert!(prefix.evidence.len() <= EVIDENCE_KEPT);
        Observed::Crossed(Crossing {
            count: total,
            evidence: prefix
                .evidence
                .into_iter()
                .map(Arc::unwrap_or_clone)
                .collect(),
        })
    }

    pub(super) fn expire(&mut self, now_ms: i64, within_ms: i64) -> bool {
        let oldest = now_ms - within_ms;
        for step in self.steps.iter_mut() {
            while step.recent.front().is_some_and(|(t, _, _)| *t < oldest) {
                step.recent.pop_front();
            }
            if step.done.as_ref().is_some_and(|p| p.start_ms < oldest) {
                step.done = None;
            }
        }
        self.steps
            .iter()
            .all(|s| s.recent.is_empty() && s.done.is_none())
    }

    /// See [`super::KeyState::expiry_ms`]: expiry looks at each step's first match (in
    /// arrival order) and its completion, so the earliest of those leaves first.
    pub(super) fn expiry_ms(&self, within_ms: i64) -> i64 {
        self.steps
            .iter()
            .flat_map(|s| {
                let first = s.recent.front().map(|(t, _, _)| *t);
                first.into_iter().chain(s.done.as_ref().map(|p| p.start_ms))
            })
            .min()
            .map_or(i64::MIN, |t| super::forgotten_after(t, within_ms))
    }

    pub(super) fn last_ms(&self) -> i64 {
        self.steps
            .iter()
            .filter_map(|s| s.recent.back().map(|(t, _, _)| *t))
            .max()
            .unwrap_or(i64::MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::super::KeyState;
    use super::super::test_support::*;
    use crate::rules::RuleKind;

    /// 3 failures, then 1 success, within 10 minutes.
    fn kind() -> RuleKind {
        RuleKind::Sequence {
            within_ms: 600_000,
            counts: vec![3, 1],
        }
    }

    #[test]
    fn steps_in_order_fire_with_every_line_as_evidence() {
        let k = kind();
        let mut s = KeyState::new(&k, 0);
        for t in [0, 1_000, 2_000] {
            assert_eq!(crossed(&feed(&mut s, &k, t, 0, &[])), None);
        }
        let out = feed(&mut s, &k, 3_000, 1, &[]);
        let super::Observed::Crossed(c) = out else {
            panic!("{out:?}")
        };
        assert_eq!(c.count, 4);
        let times: Vec<i64> = c
            .evidence
            .iter()
            .map(|e| e.time.timestamp_millis())
            .collect();
        assert_eq!(times, vec![0, 1_000, 2_000, 3_000]);
        assert!(s.expire(&k, 3_000), "starts again empty");
    }

    #[test]
    fn one_step_short_does_not_fire() {
        let k = kind();
        let mut s = KeyState::new(&k, 0);
        feed(&mut s, &k, 0, 0, &[]);
        feed(&mut s, &k, 1_000, 0, &[]);
        assert_eq!(crossed(&feed(&mut s, &k, 2_000, 1, &[])), None);
    }

    #[test]
    fn out_of_order_does_not_fire_until_the_order_happens() {
        let k = kind();
        let mut s = KeyState::new(&k, 0);
        assert_eq!(crossed(&feed(&mut s, &k, 0, 1, &[])), None);
        for t in [1_000, 2_000, 3_000] {
            assert_eq!(crossed(&feed(&mut s, &k, t, 0, &[])), None);
        }
        assert_eq!(crossed(&feed(&mut s, &k, 4_000, 1, &[])), Some(4));
    }

    #[test]
    fn the_whole_sequence_must_fit_in_within_at_its_edge() {
        let k = kind();
        let mut s = KeyState::new(&k, 0);
        for t in [0, 1_000, 2_000] {
            feed(&mut s, &k, t, 0, &[]);
        }
        assert_eq!(crossed(&feed(&mut s, &k, 600_001, 1, &[])), None);
        let mut s = KeyState::new(&k, 0);
        for t in [0, 1_000, 2_000] {
            feed(&mut s, &k, t, 0, &[]);
        }
        assert_eq!(crossed(&feed(&mut s, &k, 600_000, 1, &[])), Some(4));
    }

    #[test]
    fn later_first_step_matches_keep_a_long_sequence_in_the_window() {
        let k = kind();
        let mut s = KeyState::new(&k, 0);
        // Failures keep coming for 15 minutes; the latest three fit with the success.
        for t in (0..=900_000).step_by(100_000) {
            feed(&mut s, &k, t, 0, &[]);
        }
        assert_eq!(crossed(&feed(&mut s, &k, 1_000_000, 1, &[])), Some(4));
    }

    #[test]
    fn a_middle_step_needs_its_own_prefix() {
        // a, b, c: c after b after a.
        let k = RuleKind::Sequence {
            within_ms: 600_000,
            counts: vec![1, 1, 1],
        };
        let mut s = KeyState::new(&k, 0);
        feed(&mut s, &k, 0, 1, &[]); // b before any a
        feed(&mut s, &k, 1, 0, &[]); // a
        assert_eq!(crossed(&feed(&mut s, &k, 2, 2, &[])), None, "no b after a");
        feed(&mut s, &k, 3, 1, &[]); // b
        assert_eq!(crossed(&feed(&mut s, &k, 4, 2, &[])), Some(3));
    }
}
