//! Per-key state of each detection kind and how a counted match changes it.
//!
//! Every state is plain data (serialisable), so the pipeline can store it in the same batch
//! as the incidents and checkpoints it produced and a restart continues exactly where it
//! stopped.

mod absence;
mod distinct;
mod sequence;
mod spike;
mod threshold;

pub use absence::Absence;
pub use distinct::Distinct;
pub use sequence::Sequence;
pub use spike::Spike;
pub use threshold::Threshold;

use super::held::Counted;
use super::{Crossing, FieldsView};
use crate::rules::RuleKind;
use crate::store::codec::{CodecError, Dec, Enc};
use serde::{Deserialize, Serialize};

/// Most evidence lines a kind keeps for one crossing (the incident keeps its own bound).
pub const EVIDENCE_KEPT: usize = 20;

/// One counted match as the kinds see it.
pub struct Event<'a> {
    /// The line's time in milliseconds.
    pub time_ms: i64,
    /// Which of the rule's patterns matched (the sequence step).
    pub step: usize,
    /// The matching line, kept as evidence if the match counts towards a crossing: shared
    /// by every match of the line, so a window keeps it ([`Counted::keep`]) for one
    /// reference count.
    pub evidence: Counted<'a>,
    /// Named captures of the match.
    pub captures: FieldsView<'a>,
}

/// What a match did to a key's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Too old for the state to count.
    Late,
    /// Counted; the condition is not met.
    Counted,
    /// Counted, and it completed the condition.
    Crossed(Crossing),
    /// Counted, and it ended an absence gap.
    Resumed,
}

/// How far a key is towards firing: matches held in its window (threshold, spike's current
/// window), distinct values, or matches over all sequence steps. Absence keys say 0: any
/// of them may fire, by silence. Eviction takes the lowest first.
impl crate::detection::keys::Progress for KeyState {
    fn progress(&self) -> usize {
        match self {
            KeyState::Threshold(s) => s.held(),
            KeyState::Spike(s) => s.held(),
            KeyState::Absence(_) => 0,
            KeyState::Sequence(s) => s.held(),
            KeyState::Distinct(s) => s.held(),
        }
    }
}

/// The state of one rule and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "state", rename_all = "snake_case")]
pub enum KeyState {
    /// See [`Threshold`].
    Threshold(Threshold),
    /// See [`Spike`] (boxed: the larger states would widen every key's entry).
    Spike(Box<Spike>),
    /// See [`Absence`].
    Absence(Box<Absence>),
    /// See [`Sequence`].
    Sequence(Sequence),
    /// See [`Distinct`].
    Distinct(Distinct),
}

/// Version of the stored window state layout ([`KeyState::encode`]).
const STATE_VERSION: u8 = 1;

impl KeyState {
    /// The state in the compact window codec: the kind, then its numbers, with evidence
    /// lines as references.
    pub fn encode(&self, w: &mut Enc<'_>) {
        w.u8(STATE_VERSION);
        match self {
            KeyState::Threshold(s) => {
                w.u8(0);
                s.encode(w);
            }
            KeyState::Spike(s) => {
                w.u8(1);
                s.encode(w);
            }
            KeyState::Absence(s) => {
                w.u8(2);
                s.encode(w);
            }
            KeyState::Sequence(s) => {
                w.u8(3);
                s.encode(w);
            }
            KeyState::Distinct(s) => {
                w.u8(4);
                s.encode(w);
            }
        }
    }

    /// Reads a state written by [`KeyState::encode`].
    pub fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        r.version(STATE_VERSION)?;
        Ok(match r.u8()? {
            0 => KeyState::Threshold(Threshold::decode(r)?),
            1 => KeyState::Spike(Box::new(Spike::decode(r)?)),
            2 => KeyState::Absence(Box::new(Absence::decode(r)?)),
            3 => KeyState::Sequence(Sequence::decode(r)?),
            4 => KeyState::Distinct(Distinct::decode(r)?),
            _ => return Err(CodecError::Malformed("unknown detection kind")),
        })
    }

    /// A fresh state for a rule of this kind, created at `now_ms`.
    pub fn new(kind: &RuleKind, now_ms: i64) -> Self {
        match kind {
            RuleKind::Threshold { .. } => KeyState::Threshold(Threshold::default()),
            RuleKind::Spike { .. } => KeyState::Spike(Box::default()),
            RuleKind::Absence { .. } => KeyState::Absence(Box::new(Absence::new(now_ms))),
            RuleKind::Sequence { counts, .. } => KeyState::Sequence(Sequence::new(counts.len())),
            RuleKind::Distinct { .. } => KeyState::Distinct(Distinct::default()),
        }
    }

    /// Counts a match into this key's state; a state made for another kind (the rule was
    /// redefined) starts again empty first.
    pub fn observe(&mut self, kind: &RuleKind, event: Event<'_>) -> Observed {
        if !self.fits(kind) {
            *self = KeyState::new(kind, event.time_ms);
        }
        match (self, kind) {
            (KeyState::Threshold(s), RuleKind::Threshold { count, within_ms }) => {
                s.observe(event, *count, *within_ms)
            }
            (
                KeyState::Spike(s),
                RuleKind::Spike {
                    window_ms,
                    baseline,
                    factor,
                    min_count,
                },
            ) => s.observe(event, *window_ms, *baseline, *factor, *min_count),
            (KeyState::Absence(s), RuleKind::Absence { within_ms, count }) => {
                s.observe(event, *within_ms, *count)
            }
            (KeyState::Sequence(s), RuleKind::Sequence { within_ms, counts }) => {
                s.observe(event, *within_ms, counts)
            }
            (
                KeyState::Distinct(s),
                RuleKind::Distinct {
                    field,
                    count,
                    within_ms,
                },
            ) => s.observe(event, field, *count, *within_ms),
            _ => unreachable!("state was made to fit the kind"),
        }
    }

    /// Lets the clock run to `now_ms`: an absence may cross without any line.
    pub fn advance(&mut self, kind: &RuleKind, now_ms: i64) -> Option<Crossing> {
        match (self, kind) {
            (KeyState::Absence(s), RuleKind::Absence { within_ms, count }) => {
                s.advance(now_ms, *within_ms, *count)
            }
            _ => None,
        }
    }

    /// Absence: when the clock would open a gap if no further match came (`None` for
    /// other kinds, and while a gap is open).
    pub fn absence_due_ms(&self, kind: &RuleKind) -> Option<i64> {
        match (self, kind) {
            (KeyState::Absence(s), RuleKind::Absence { within_ms, count }) => {
                s.due_ms(*within_ms, *count)
            }
            _ => None,
        }
    }

    /// Forgets what the kind no longer needs at event time `now_ms`; `true` when nothing is
    /// left and the key can be dropped.
    pub fn expire(&mut self, kind: &RuleKind, now_ms: i64) -> bool {
        match (self, kind) {
            (KeyState::Threshold(s), RuleKind::Threshold { within_ms, .. }) => {
                s.expire(now_ms, *within_ms)
            }
            (
                KeyState::Spike(s),
                RuleKind::Spike {
                    window_ms,
                    baseline,
                    ..
                },
            ) => s.expire(now_ms, *window_ms, *baseline),
            // Silence is what an absence watches for: its keys stay (bounded by max_keys).
            (KeyState::Absence(_), _) => false,
            (KeyState::Sequence(s), RuleKind::Sequence { within_ms, .. }) => {
                s.expire(now_ms, *within_ms)
            }
            (KeyState::Distinct(s), RuleKind::Distinct { within_ms, .. }) => {
                s.expire(now_ms, *within_ms)
            }
            _ => true,
        }
    }

    /// The earliest event time at which [`KeyState::expire`] would forget something:
    /// `i64::MIN` when it would drop the key at once, `None` when it never forgets anything
    /// (absence). Exact, not merely early: the detector queues each key by it, so a clock
    /// tick visits only keys with something to forget (see [`super::keys`]). Every kind
    /// forgets what is older than a bound that grows with the time, so once this time has
    /// come, every later one would forget too.
    pub fn expiry_ms(&self, kind: &RuleKind) -> Option<i64> {
        match (self, kind) {
            (KeyState::Threshold(s), RuleKind::Threshold { within_ms, .. }) => {
                Some(s.expiry_ms(*within_ms))
            }
            (
                KeyState::Spike(s),
                RuleKind::Spike {
                    window_ms,
                    baseline,
                    ..
                },
            ) => Some(s.expiry_ms(*window_ms, *baseline)),
            (KeyState::Absence(_), _) => None,
            (KeyState::Sequence(s), RuleKind::Sequence { within_ms, .. }) => {
                Some(s.expiry_ms(*within_ms))
            }
            (KeyState::Distinct(s), RuleKind::Distinct { within_ms, .. }) => {
                Some(s.expiry_ms(*within_ms))
            }
            _ => Some(i64::MIN),
        }
    }

    /// Time of the latest thing the state remembers (orders keys by recency on restore).
    pub fn last_ms(&self) -> i64 {
        match self {
            KeyState::Threshold(s) => s.last_ms(),
            KeyState::Spike(s) => s.last_ms(),
            KeyState::Absence(s) => s.last_ms(),
            KeyState::Sequence(s) => s.last_ms(),
            KeyState::Distinct(s) => s.last_ms(),
        }
    }

    /// Whether the state was made for a rule of this kind (checked per match: by matching
    /// the pair, without making a state to compare with).
    fn fits(&self, kind: &RuleKind) -> bool {
        match (self, kind) {
            (KeyState::Sequence(s), RuleKind::Sequence { counts, .. }) => s.steps() == counts.len(),
            (KeyState::Threshold(_), RuleKind::Threshold { .. })
            | (KeyState::Spike(_), RuleKind::Spike { .. })
            | (KeyState::Absence(_), RuleKind::Absence { .. })
            | (KeyState::Distinct(_), RuleKind::Distinct { .. }) => true,
            _ => false,
        }
    }
}

/// The first time at which something seen at `t_ms` is older than `within_ms`: what the
/// kinds forget is what lies strictly before `now - within`.
fn forgotten_after(t_ms: i64, within_ms: i64) -> i64 {
    t_ms.saturating_add(within_ms).saturating_add(1)
}

/// Appends to a bounded evidence list: past the bound, the middle goes (the first lines show
/// how it started, the latest how it goes on).
pub fn push_bounded<E>(list: &mut Vec<E>, evidence: E) {
    if list.len() >= EVIDENCE_KEPT {
        list.remove(EVIDENCE_KEPT / 2);
    }
    list.push(evidence);
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::detection::Evidence;
    use crate::detection::HeldLine;
    use chrono::{DateTime, Utc};

    /// Evidence for a line at `ms` with text `text`.
    pub fn evidence(ms: i64, text: &str) -> Evidence {
        Evidence {
            source: "test".into(),
            path: "test.log".into(),
            offset: 0,
            time: DateTime::<Utc>::from_timestamp_millis(ms).unwrap(),
            line: text.into(),
        }
    }

    /// Feeds one match at `ms` (step, captures) to a state.
    pub fn feed(
        state: &mut KeyState,
        kind: &RuleKind,
        ms: i64,
        step: usize,
        captures: &[(&str, &str)],
    ) -> Observed {
        let ev = HeldLine::from_evidence(evidence(ms, &format!("line at {ms}")));
        let caps = crate::detection::Fields::from_map(
            &captures
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        state.observe(
            kind,
            Event {
                time_ms: ms,
                step,
                evidence: Counted::of(&ev),
                captures: caps.view(),
            },
        )
    }

    /// Whether an outcome crossed, with its count.
    pub fn crossed(o: &Observed) -> Option<u64> {
        match o {
            Observed::Crossed(c) => Some(c.count),
            _ => None,
        }
    }
}

/// The stored window format (v1) is read by the daemon after an upgrade: however a state
/// holds its matches in memory (inline or spilled, lines shared or not), its bytes are the
/// layout spelled out here field by field.
#[cfg(test)]
mod stored_layout {
    use super::test_support::*;
    use super::*;
    use crate::detection::Evidence;
    use crate::store::codec::Loc;

    /// Where the test "stores" a line: block 7, index = its time in seconds.
    fn loc(e: &Evidence) -> Loc {
        Loc {
            block: 7,
            index: (e.time.timestamp_millis() / 1_000) as u32,
        }
    }

    fn encoded(state: &KeyState) -> Vec<u8> {
        let mut sink = |e: &Evidence| loc(e);
        let mut w = Enc::new(&mut sink);
        state.encode(&mut w);
        w.finish()
    }

    /// The bytes `spell` writes with the codec's primitives.
    fn spelled(spell: impl FnOnce(&mut Enc<'_>)) -> Vec<u8> {
        let mut sink = |e: &Evidence| loc(e);
        let mut w = Enc::new(&mut sink);
        spell(&mut w);
        w.finish()
    }

    /// A reference to the line of `ms` as [`loc`] places it.
    fn line_ref(w: &mut Enc<'_>, ms: i64) {
        w.u64(7);
        w.u64((ms / 1_000) as u64);
    }

    /// Decodes, checks the state reads back equal and encodes to the same bytes.
    fn round_trip(state: &KeyState, bytes: &[u8]) {
        let mut resolve = |l: Loc| -> Result<Evidence, CodecError> {
            let ms = i64::from(l.index) * 1_000;
            Ok(evidence(ms, &format!("line at {ms}")))
        };
        let back = KeyState::decode(&mut Dec::new(bytes, &mut resolve)).unwrap();
        assert_eq!(&back, state);
        assert_eq!(encoded(&back), bytes);
    }

    #[test]
    fn a_threshold_window_inline_and_spilled_keeps_the_v1_bytes() {
        let kind = RuleKind::Threshold {
            count: 10,
            within_ms: 600_000,
        };
        for times in [vec![5_000], vec![5_000, 9_000, 7_000]] {
            let mut s = KeyState::new(&kind, 0);
            for t in &times {
                feed(&mut s, &kind, *t, 0, &[]);
            }
            let mut sorted = times.clone();
            sorted.sort();
            let want = spelled(|w| {
                w.u8(1);
                w.u8(0);
                w.u64(sorted.len() as u64);
                for t in &sorted {
                    line_ref(w, *t);
                }
            });
            assert_eq!(encoded(&s), want, "{times:?}");
            round_trip(&s, &want);
        }
    }

    #[test]
    fn a_sequence_with_inline_and_spilled_steps_keeps_the_v1_bytes() {
        let kind = RuleKind::Sequence {
            within_ms: 600_000,
            counts: vec![2, 2],
        };
        let mut s = KeyState::new(&kind, 0);
        // Step 0 spills (two matches, completing it); step 1 holds one inline.
        feed(&mut s, &kind, 1_000, 0, &[]);
        feed(&mut s, &kind, 2_000, 0, &[]);
        feed(&mut s, &kind, 3_000, 1, &[]);
        let want = spelled(|w| {
            w.u8(1);
            w.u8(3);
            w.u64(2);
            // Step 0: two recent matches, each tagged with an empty prefix from itself.
            w.u64(2);
            for t in [1_000, 2_000] {
                w.i64(t);
                line_ref(w, t);
                w.bool(true);
                w.i64(t);
                w.u64(0);
            }
            // ...and its completion: from 1 s, both lines.
            w.bool(true);
            w.i64(1_000);
            w.u64(2);
            line_ref(w, 1_000);
            line_ref(w, 2_000);
            // Step 1: one match, tagged with step 0's completion; not done.
            w.u64(1);
            w.i64(3_000);
            line_ref(w, 3_000);
            w.bool(true);
            w.i64(1_000);
            w.u64(2);
            line_ref(w, 1_000);
            line_ref(w, 2_000);
            w.bool(false);
        });
        assert_eq!(encoded(&s), want);
        round_trip(&s, &want);
    }

    #[test]
    fn a_distinct_state_keeps_the_v1_bytes() {
        let kind = RuleKind::Distinct {
            field: "user".into(),
            count: 10,
            within_ms: 600_000,
        };
        let mut s = KeyState::new(&kind, 0);
        feed(&mut s, &kind, 4_000, 0, &[("user", "root")]);
        feed(&mut s, &kind, 6_000, 0, &[("user", "admin")]);
        let want = spelled(|w| {
            w.u8(1);
            w.u8(4);
            w.u64(2);
            for (user, t) in [("root", 4_000), ("admin", 6_000)] {
                w.str(user);
                w.i64(t);
                line_ref(w, t);
            }
        });
        assert_eq!(encoded(&s), want);
        round_trip(&s, &want);
    }
}
