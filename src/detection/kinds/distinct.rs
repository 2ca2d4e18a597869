//! `distinct`: `count` different values of a capture for one key within `within`.

use super::{Event, Observed};
use crate::detection::window::SmallDeque;
use crate::detection::{Crossing, HeldLine};
use crate::store::codec::{CodecError, Dec, Enc};
use serde::{Deserialize, Serialize};
/// The latest time and line of each value seen in the window; emptied when it fires.
///
/// A small vector, not a map: a rule counts a handful of values, and most keys of a flood
/// hold one, for which a tree node would cost a kilobyte — held inline ([`SmallDeque`]),
/// no allocation beyond the value's text. Stored as a map by value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distinct {
    #[serde(with = "as_map")]
    values: SmallDeque<Seen>,
}

/// A value, with the time and line it was last seen at.
type Seen = (String, (i64, HeldLine));

/// `values` stored as `{value: [time, evidence]}`.
mod as_map {
    use super::{HeldLine, Seen, SmallDeque};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(values: &SmallDeque<Seen>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(values.iter().map(|(k, v)| (k, v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SmallDeque<Seen>, D::Error> {
        Ok(BTreeMap::<String, (i64, HeldLine)>::deserialize(d)?
            .into_iter()
            .collect::<Vec<_>>()
            .into())
    }
}

impl Distinct {
    pub(super) fn encode(&self, w: &mut Enc<'_>) {
        w.u64(self.values.len() as u64);
        for (value, (t, e)) in &self.values {
            w.str(value);
            w.i64(*t);
            w.held(e);
        }
    }

    pub(super) fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        let n = r.count()?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let value = r.str()?.to_string();
            let t = r.i64()?;
            values.push((value, (t, HeldLine::from_evidence(r.evidence()?))));
        }
        Ok(Distinct {
            values: values.into(),
        })
    }

    pub(super) fn held(&self) -> usize {
        self.values.len()
    }

    pub(super) fn observe(
        &mut self,
        event: Event<'_>,
        field: &str,
        count: u64,
        within_ms: i64,
    ) -> Observed {
        let Some(value) = event.captures.get(field) else {
            // The capture did not take part in this match: no value to count.
            return Observed::Counted;
        };
        let newest = self.last_ms().max(event.time_ms);
        if event.time_ms < newest - within_ms {
            return Observed::Late;
        }
        let known = self.values.iter_mut().find(|(v, _)| v == value);
        let known = match known {
            Some((_, seen)) if seen.0 >= event.time_ms => true,
            Some((_, seen)) => {
                *seen = (event.time_ms, event.evidence.clone());
                true
            }
            None => false,
        };
        if !known {
            self.values
                .push_back((value.to_string(), (event.time_ms, event.evidence.clone())));
        }
        self.values.retain(|(_, (t, _))| *t >= newest - within_ms);
        if (self.values.len() as u64) < count {
            return Observed::Counted;
        }
        let distinct = self.values.len() as u64;
        let mut seen: Vec<(i64, HeldLine)> = std::mem::take(&mut self.values)
            .into_iter()
            .map(|(_, seen)| seen)
            .collect();
        seen.sort_by_key(|(t, _)| *t);
        let mut evidence = Vec::new();
        for (_, e) in seen {
            super::push_bounded(&mut evidence, e.evidence().clone());
        }
        Observed::Crossed(Crossing {
            count: distinct,
            evidence,
        })
    }

    pub(super) fn expire(&mut self, now_ms: i64, within_ms: i64) -> bool {
        self.values.retain(|(_, (t, _))| *t >= now_ms - within_ms);
        self.values.is_empty()
    }

    /// See [`super::KeyState::expiry_ms`]: when the value seen longest ago leaves.
    pub(super) fn expiry_ms(&self, within_ms: i64) -> i64 {
        self.values
            .iter()
            .map(|(_, (t, _))| *t)
            .min()
            .map_or(i64::MIN, |t| super::forgotten_after(t, within_ms))
    }

    pub(super) fn last_ms(&self) -> i64 {
        self.values
            .iter()
            .map(|(_, (t, _))| *t)
            .max()
            .unwrap_or(i64::MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{KeyState, Observed};
    use crate::rules::RuleKind;

    fn kind() -> RuleKind {
        RuleKind::Distinct {
            field: "user".into(),
            count: 3,
            within_ms: 60_000,
        }
    }

    #[test]
    fn repeats_do_not_count_and_the_third_value_fires() {
        let k = kind();
        let mut s = KeyState::new(&k, 0);
        for (t, user) in [(0, "a"), (1, "a"), (2, "b"), (3, "b"), (4, "a")] {
            assert_eq!(crossed(&feed(&mut s, &k, t, 0, &[("user", user)])), None);
        }
        assert_eq!(crossed(&feed(&mut s, &k, 5, 0, &[("user", "c")])), Some(3));
        assert!(s.expire(&k, 5), "starts again empty");
    }

    #[test]
    fn window_edges_are_inclusive_and_a_repeat_refreshes_a_value() {
        let k = kind();
        let mut s = KeyState::new(&k, 0);
        feed(&mut s, &k, 0, 0, &[("user", "a")]);
        feed(&mut s, &k, 10_000, 0, &[("user", "b")]);
        assert_eq!(
            crossed(&feed(&mut s, &k, 60_000, 0, &[("user", "c")])),
            Some(3)
        );

        let mut s = KeyState::new(&k, 0);
        feed(&mut s, &k, 0, 0, &[("user", "a")]);
        feed(&mut s, &k, 10_000, 0, &[("user", "b")]);
        assert_eq!(
            crossed(&feed(&mut s, &k, 60_001, 0, &[("user", "c")])),
            None,
            "a fell out"
        );
        // a again, within the window of b and c: three values.
        assert_eq!(
            crossed(&feed(&mut s, &k, 60_002, 0, &[("user", "a")])),
            Some(3)
        );
    }

    #[test]
    fn a_match_without_the_capture_and_a_late_one_count_no_value() {
        let k = kind();
        let mut s = KeyState::new(&k, 0);
        assert_eq!(feed(&mut s, &k, 100_000, 0, &[]), Observed::Counted);
        feed(&mut s, &k, 100_000, 0, &[("user", "a")]);
        assert_eq!(
            feed(&mut s, &k, 39_999, 0, &[("user", "b")]),
            Observed::Late
        );
    }
}
