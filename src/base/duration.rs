//! Human durations (`500ms`, `30s`, `5m`, `1h`, `7d`) as used throughout config and rules.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// Longest duration accepted anywhere (ten years): longer ones are typos or attacks, and
/// added to a time they overflow the calendar.
const MAX_MILLIS: u64 = 3650 * 86_400_000;

/// Why a duration's text was refused; each message quotes the text as written, so the
/// operator finds it in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Digits only: seconds and minutes are both plausible, so no unit is assumed.
    #[error("duration {0:?} has no unit (use ms, s, m, h or d)")]
    NoUnit(String),
    /// The number does not fit in 64 bits, or its milliseconds do not.
    #[error("duration {0:?} is too large")]
    Overflow(String),
    /// Fractions and signs are not accepted: `1.5h` is written `90m`.
    #[error("duration {0:?} must start with a whole number")]
    NotWhole(String),
    #[error("duration {text:?} has unknown unit {unit:?} (use ms, s, m, h or d)")]
    UnknownUnit { text: String, unit: String },
    /// Longer than [`MAX_MILLIS`].
    #[error("duration {0:?} is too large (at most {max}d)", max = MAX_MILLIS / 86_400_000)]
    TooLong(String),
    /// A zero window or timeout would never fire or fire constantly.
    #[error("duration {0:?} must be greater than zero")]
    Zero(String),
}

/// A duration written the way operators write them in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `<integer><unit>` with unit one of ms, s, m, h, d.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let text = text.trim();
        let owned = || text.to_string();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| DurationError::NoUnit(owned()))?;
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits
            .parse()
            .map_err(|e: std::num::ParseIntError| match e.kind() {
                std::num::IntErrorKind::PosOverflow => DurationError::Overflow(owned()),
                _ => DurationError::NotWhole(owned()),
            })?;
        let millis_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    text: owned(),
                    unit: unit.to_string(),
                });
            }
        };
        let millis = value
            .checked_mul(millis_per)
            .ok_or_else(|| DurationError::Overflow(owned()))?;
        if millis > MAX_MILLIS {
            return Err(DurationError::TooLong(owned()));
        }
        if millis == 0 {
            return Err(DurationError::Zero(owned()));
        }
        Ok(HumanDuration(Duration::from_millis(millis)))
    }

    /// The duration in whole milliseconds, the unit windows are computed in.
    pub fn millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_prints_back() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
        ] {
            let d = HumanDuration::parse(text).unwrap();
            assert_eq!(d.0.as_millis(), ms);
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_durations_with_a_reason() {
        assert!(
            HumanDuration::parse("5")
                .unwrap_err()
                .to_string()
                .contains("no unit")
        );
        assert!(
            HumanDuration::parse("5w")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
        assert!(
            HumanDuration::parse("m")
                .unwrap_err()
                .to_string()
                .contains("whole number")
        );
        assert!(HumanDuration::parse("3650d").is_ok());
        for huge in ["3651d", "100000000d", "99999999999999999999ms"] {
            let e = HumanDuration::parse(huge).unwrap_err();
            assert!(e.to_string().contains("too large"), "{huge}: {e}");
        }
        assert!(
            HumanDuration::parse("0s")
                .unwrap_err()
                .to_string()
                .contains("greater than zero")
        );
    }
}
