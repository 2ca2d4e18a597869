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
use crate::detection::{Crossing, HeldLine};
use crate::store::codec::{CodecError, Dec, Enc};
use serde::{Deserialize, Serialize};

/// Steps completed in order, from `start_ms`, with the lines that did it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Prefix {
    start_ms: i64,
    evidence: Vec<HeldLine>,
}

/// One step: its latest matches with their prefixes (the first held inline: most keys of a
/// flood match one step once), and its best completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Step {
    recent: SmallDeque<(i64, HeldLine, Option<Prefix>)>,
    done: Option<Prefix>,
}

/// The state of every step of one key.
///
/// Serialised, compared and stored as every step's state ([`AllSteps`]), however it is held.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "AllSteps", into = "AllSteps")]
pub struct Sequence {
    steps: Steps,
}

/// How a [`Sequence`] holds its steps. Most keys of a flood only ever match the first step
/// once and are dropped a window later: those hold that one match in place, and the steps
/// are allocated (in one slice: their number never changes) only when a key gets further.
#[derive(Debug, Clone)]
enum Steps {
    /// No match yet, of this many steps.
    Empty(usize),
    /// Exactly one match, of the first step (which needs more than one, of a sequence of
    /// more than one step): its time and line. As steps, that match is the first step's
    /// only recent one, tagged with the empty prefix it starts.
    First {
        steps: usize,
        time_ms: i64,
        evidence: HeldLine,
    },
    /// Every step's state.
    All(Box<[Step]>),
}

/// Every step's state: what a [`Sequence`] is, serialised with its one field, `steps`.
#[derive(Serialize, Deserialize)]
struct AllSteps {
    steps: Box<[Step]>,
}

impl From<AllSteps> for Sequence {
    fn from(all: AllSteps) -> Self {
        Sequence {
            steps: Steps::All(all.steps),
        }
    }
}

impl From<Sequence> for AllSteps {
    fn from(s: Sequence) -> Self {
        AllSteps {
            steps: s.steps.into_all(),
        }
    }
}

/// Equal when every step's state is, however each side holds them.
impl PartialEq for Sequence {
    fn eq(&self, other: &Self) -> bool {
        self.steps.clone().into_all() == other.steps.clone().into_all()
    }
}

impl Steps {
    /// Every step's state, allocated.
    fn into_all(self) -> Box<[Step]> {
        match self {
            Steps::All(all) => all,
            Steps::Empty(n) => vec![Step::default(); n].into_boxed_slice(),
            Steps::First {
                steps,
                time_ms,
                evidence,
            } => {
                let mut all = vec![Step::default(); steps].into_boxed_slice();
                all[0]
                    .recent
                    .push_back((time_ms, evidence, Some(Prefix::from(time_ms))));
                all
            }
        }
    }

    /// Every step's state, allocated now if it was not.
    fn all(&mut self) -> &mut [Step] {
        if !matches!(self, Steps::All(_)) {
            let held = std::mem::replace(self, Steps::Empty(0));
            *self = Steps::All(held.into_all());
        }
        match self {
            Steps::All(all) => all,
            _ => unreachable!("allocated above"),
        }
    }

    /// Steps of the sequence.
    fn len(&self) -> usize {
        match self {
            Steps::Empty(n) | Steps::First { steps: n, .. } => *n,
            Steps::All(all) => all.len(),
        }
    }
}

impl Prefix {
    /// The empty prefix a first step's match starts at `start_ms`.
    fn from(start_ms: i64) -> Self {
        Prefix {
            start_ms,
            evidence: Vec::new(),
        }
    }
}

impl Step {
    /// One recent match: its time, its line and the prefix it continues.
    fn encode_recent(w: &mut Enc<'_>, time_ms: i64, e: &HeldLine, prefix: Option<&Prefix>) {
        w.i64(time_ms);
        w.held(e);
        Prefix::encode_opt(prefix, w);
    }
}

impl Prefix {
    fn encode(&self, w: &mut Enc<'_>) {
        w.i64(self.start_ms);
        w.held_list(self.evidence.iter());
    }

    fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        Ok(Prefix {
            start_ms: r.i64()?,
            evidence: r
                .evidence_list()?
                .into_iter()
                .map(HeldLine::from_evidence)
                .collect(),
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
    /// Every step's state, however it is held (written as is: a commit encodes thousands
    /// of single-match keys, and allocating their steps to write them cost more than the
    /// writing).
    pub(super) fn encode(&self, w: &mut Enc<'_>) {
        w.u64(self.steps.len() as u64);
        let unmatched = match &self.steps {
            Steps::All(all) => {
                for step in all.iter() {
                    w.u64(step.recent.len() as u64);
                    for (t, e, prefix) in &step.recent {
                        Step::encode_recent(w, *t, e, prefix.as_ref());
                    }
                    Prefix::encode_opt(step.done.as_ref(), w);
                }
                0
            }
            Steps::Empty(n) => *n,
            Steps::First {
                steps,
                time_ms,
                evidence,
            } => {
                // As `into_all` holds it: the first step's one match, with its empty prefix.
                w.u64(1);
                Step::encode_recent(w, *time_ms, evidence, Some(&Prefix::from(*time_ms)));
                Prefix::encode_opt(None, w);
                steps.saturating_sub(1)
            }
        };
        for _ in 0..unmatched {
            w.u64(0);
            Prefix::encode_opt(None, w);
        }
    }

    pub(super) fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        let n = r.count()?;
        let mut steps = Vec::with_capacity(n);
        for _ in 0..n {
            let m = r.count()?;
            let mut recent = Vec::with_capacity(m);
            for _ in 0..m {
                let (t, line) = (r.i64()?, HeldLine::from_evidence(r.evidence()?));
                recent.push((t, line, Prefix::decode_opt(r)?));
            }
            let recent = recent.into();
            let done = Prefix::decode_opt(r)?;
            steps.push(Step { recent, done });
        }
        Ok(Sequence {
            steps: Steps::All(steps.into_boxed_slice()),
        })
    }

    pub(super) fn new(steps: usize) -> Self {
        Sequence {
            steps: Steps::Empty(steps),
        }
    }

    pub(super) fn held(&self) -> usize {
        match &self.steps {
            Steps::Empty(_) => 0,
            Steps::First { .. } => 1,
            Steps::All(all) => all
                .iter()
                .map(|s| s.recent.len() + usize::from(s.done.is_some()))
                .sum(),
        }
    }

    pub(super) fn steps(&self) -> usize {
        self.steps.len()
    }

    pub(super) fn observe(&mut self, event: Event<'_>, within_ms: i64, counts: &[u64]) -> Observed {
        let j = event.step;
        let now = event.time_ms;
        if let Steps::Empty(steps) = self.steps
            && j == 0
            && steps > 1
            && counts[0] > 1
        {
            // What the steps would hold after this match, held without them.
            self.steps = Steps::First {
                steps,
                time_ms: now,
                evidence: event.evidence.keep(),
            };
            return Observed::Counted;
        }
        let steps = self.steps.all();
        let fits = |p: &Prefix| now - p.start_ms <= within_ms;
        let tag = if j == 0 {
            Some(Prefix::from(now))
        } else {
            steps[j - 1].done.clone().filter(fits)
        };
        let last = j + 1 == steps.len();
        let step = &mut steps[j];
        step.recent.push_back((now, event.evidence.keep(), tag));
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
        for s in steps.iter_mut() {
            *s = Step::default();
        }
        debug_assert!(prefix.evidence.len() <= EVIDENCE_KEPT);
        Observed::Crossed(Crossing {
            count: total,
            evidence: prefix
                .evidence
                .iter()
                .map(|line| line.evidence().clone())
                .collect(),
        })
    }

    pub(super) fn expire(&mut self, now_ms: i64, within_ms: i64) -> bool {
        let oldest = now_ms - within_ms;
        let steps = match &mut self.steps {
            Steps::Empty(_) => return true,
            Steps::First { time_ms, .. } => return *time_ms < oldest,
            Steps::All(all) => all,
        };
        for step in steps.iter_mut() {
            while step.recent.front().is_some_and(|(t, _, _)| *t < oldest) {
                step.recent.pop_front();
            }
            if step.done.as_ref().is_some_and(|p| p.start_ms < oldest) {
                step.done = None;
            }
        }
        steps
            .iter()
            .all(|s| s.recent.is_empty() && s.done.is_none())
    }

    /// See [`super::KeyState::expiry_ms`]: expiry looks at each step's first match (in
    /// arrival order) and its completion, so the earliest of those leaves first.
    pub(super) fn expiry_ms(&self, within_ms: i64) -> i64 {
        let steps = match &self.steps {
            Steps::Empty(_) => return i64::MIN,
            Steps::First { time_ms, .. } => {
                return super::forgotten_after(*time_ms, within_ms);
            }
            Steps::All(all) => all,
        };
        steps
            .iter()
            .flat_map(|s| {
                let first = s.recent.front().map(|(t, _, _)| *t);
                first.into_iter().chain(s.done.as_ref().map(|p| p.start_ms))
            })
            .min()
            .map_or(i64::MIN, |t| super::forgotten_after(t, within_ms))
    }

    pub(super) fn last_ms(&self) -> i64 {
        let steps = match &self.steps {
            Steps::Empty(_) => return i64::MIN,
            Steps::First { time_ms, .. } => return *time_ms,
            Steps::All(all) => all,
        };
        steps
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

    /// A key holding its one first-step match without the steps (`Steps::First`, or none:
    /// `Steps::Empty`) must count, cross and expire exactly as one holding every step's
    /// state: two states take the same pseudo-random walk of matches and ticks, one of
    /// them made to hold every step after each change.
    #[test]
    fn held_without_its_steps_a_key_counts_and_expires_as_with_them() {
        // The bytes a commit stores, each line referenced by its time.
        fn stored(s: &KeyState) -> Vec<u8> {
            let mut sink = |e: &crate::detection::Evidence| crate::store::codec::Loc {
                block: 7,
                index: e.time.timestamp() as u32,
            };
            let mut w = crate::store::codec::Enc::new(&mut sink);
            s.encode(&mut w);
            w.finish()
        }

        let k = RuleKind::Sequence {
            within_ms: 60_000,
            counts: vec![3, 1, 2],
        };
        let (mut compact, mut full) = (KeyState::new(&k, 0), KeyState::new(&k, 0));
        let expand = |s: &mut KeyState| {
            if let KeyState::Sequence(s) = s {
                s.steps.all();
            }
        };
        let mut seed: u64 = 0x1234_5678_9abc_def1;
        let (mut clock, mut compact_held) = (0, 0);
        for i in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Now and then a pause longer than the window, so keys go and come anew.
            clock += (seed % 30_000) as i64 + if seed.is_multiple_of(5) { 61_000 } else { 0 };
            if seed.is_multiple_of(3) {
                let (a, b) = (compact.expire(&k, clock), full.expire(&k, clock));
                assert_eq!(a, b, "expire at step {i}");
                if a {
                    // The table drops the key; the next match makes a new state.
                    compact = KeyState::new(&k, clock);
                    full = KeyState::new(&k, clock);
                }
            } else {
                // Mostly first steps, as under a flood.
                let step = [0, 0, 0, 0, 1, 2][(seed >> 16) as usize % 6];
                let a = feed(&mut compact, &k, clock, step, &[]);
                let b = feed(&mut full, &k, clock, step, &[]);
                assert_eq!(a, b, "observe at step {i}");
            }
            expand(&mut full);
            if let KeyState::Sequence(s) = &compact
                && !matches!(s.steps, super::Steps::All(_))
            {
                compact_held += 1;
            }
            assert_eq!(compact, full, "state at step {i}");
            // Stored with the same bytes, however its steps are held.
            assert_eq!(stored(&compact), stored(&full), "bytes at step {i}");
            assert_eq!(compact.expiry_ms(&k), full.expiry_ms(&k), "step {i}");
            assert_eq!(compact.last_ms(), full.last_ms(), "step {i}");
            assert_eq!(
                crate::detection::keys::Progress::progress(&compact),
                crate::detection::keys::Progress::progress(&full),
                "step {i}"
            );
        }
        assert!(
            compact_held > 2_000,
            "the walk held keys without steps: {compact_held}"
        );
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
