//! `distinct`: `count` different values of a capture for one key within `within`.

use super::{Event, Observed};
use crate::detection::keys::InlineText;
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
type Seen = (Value, (i64, HeldLine));

/// Longest value held inline.
const VALUE_INLINE: usize = 22;

/// A counted value: inline when short (user names, ports, most paths), so a key of a flood
/// that holds one value costs no allocation (and no free at expiry) for it; the size of a
/// `String` either way.
#[derive(Clone, PartialEq)]
enum Value {
    Inline(InlineText<VALUE_INLINE>),
    Boxed(Box<str>),
}

impl Value {
    fn new(value: &str) -> Self {
        InlineText::new(value).map_or_else(|| Value::Boxed(value.into()), Value::Inline)
    }

    fn as_str(&self) -> &str {
        match self {
            Value::Inline(text) => text.as_str(),
            Value::Boxed(b) => b,
        }
    }

    /// The bytes, without checking them again (for comparisons).
    fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Inline(text) => text.as_bytes(),
            Value::Boxed(b) => b.as_bytes(),
        }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `values` stored as `{value: [time, evidence]}`.
mod as_map {
    use super::{HeldLine, Seen, SmallDeque, Value};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(values: &SmallDeque<Seen>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(values.iter().map(|(k, v)| (k, v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SmallDeque<Seen>, D::Error> {
        Ok(BTreeMap::<String, (i64, HeldLine)>::deserialize(d)?
            .into_iter()
            .map(|(value, seen)| (Value::new(&value), seen))
            .collect::<Vec<_>>()
            .into())
    }
}

impl Distinct {
    pub(super) fn encode(&self, w: &mut Enc<'_>) {
        w.u64(self.values.len() as u64);
        for (value, (t, e)) in &self.values {
            w.str(value.as_str());
            w.i64(*t);
            w.held(e);
        }
    }

    pub(super) fn decode(r: &mut Dec<'_>) -> Result<Self, CodecError> {
        let n = r.count()?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let value = Value::new(r.str()?);
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
        let known = self
            .values
            .iter_mut()
            .find(|(v, _)| v.as_bytes() == value.as_bytes());
        let known = match known {
            Some((_, seen)) if seen.0 >= event.time_ms => true,
            Some((_, seen)) => {
                *seen = (event.time_ms, event.evidence.keep());
                true
            }
            None => false,
        };
        if !known {
            self.values
                .push_back((Value::new(value), (event.time_ms, event.evidence.keep())));
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

    /// Values held inline and boxed alike: the same value (of any length, up to and past
    /// the inline bound, not ASCII) is one value, values differing only past the inline
    /// bound are two, and the stored and serialised forms hold each value's exact text.
    #[test]
    fn short_and_long_values_count_by_their_whole_text() {
        let k = RuleKind::Distinct {
            field: "user".into(),
            count: 6,
            within_ms: 60_000,
        };
        let long = "x".repeat(super::VALUE_INLINE);
        let values = [
            String::new(),
            long.clone(),
            format!("{long}a"),
            format!("{long}b"),
            "\u{e9}l\u{e8}ve".to_string(),
        ];
        let mut s = KeyState::new(&k, 0);
        for (t, v) in values.iter().chain(&values).enumerate() {
            assert_eq!(
                crossed(&feed(&mut s, &k, t as i64, 0, &[("user", v)])),
                None
            );
        }
        let KeyState::Distinct(d) = &s else {
            unreachable!()
        };
        let mut held: Vec<&str> = d.values.iter().map(|(v, _)| v.as_str()).collect();
        held.sort();
        let mut want: Vec<&str> = values.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(held, want);
        let json = serde_json::to_value(&s).unwrap();
        for v in &values {
            assert!(json["state"]["values"].get(v.as_str()).is_some(), "{v:?}");
        }
        let back: KeyState = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            crossed(&feed(&mut s, &k, 20, 0, &[("user", "new")])),
            Some(6)
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
