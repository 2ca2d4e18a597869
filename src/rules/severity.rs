//! Severity: how bad an incident is, fixed or tiered by count.
//!
//! Its own file because everything past detection (escalation, SLAs, notification
//! formats, the book) needs this one small type and none of rule loading.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// How bad an incident is. Ordered: a tier can only go up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Needs a response today.
    Moderate,
    /// Needs a response now.
    High,
    /// All hands.
    Critical,
}

impl Severity {
    /// Every severity, lowest first (for metrics that must show zeroes).
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Moderate,
        Severity::High,
        Severity::Critical,
    ];

    /// The lowercase name used in YAML, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Moderate => "moderate",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fixed severity, or tiers chosen by how many matches the incident has counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SeveritySpec {
    /// Always this severity.
    Fixed(Severity),
    /// The highest tier whose count has been reached; never below the lowest tier.
    Tiers(BTreeMap<Severity, u64>),
}

impl SeveritySpec {
    /// Severity for an incident that has counted `count` matches.
    pub fn for_count(&self, count: u64) -> Severity {
        match self {
            SeveritySpec::Fixed(s) => *s,
            SeveritySpec::Tiers(tiers) => {
                let lowest = tiers.keys().next().copied().unwrap_or(Severity::Low);
                tiers
                    .iter()
                    .filter(|(_, at)| count >= **at)
                    .map(|(s, _)| *s)
                    .max()
                    .unwrap_or(lowest)
            }
        }
    }
}

/// The severities as written, lowest first.
const SEVERITY_NAMES: &[&str] = &["low", "moderate", "high", "critical"];

impl<'de> Deserialize<'de> for SeveritySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_yaml::Value::deserialize(d)?;
        match value {
            serde_yaml::Value::String(name) => serde_yaml::from_value(name.clone().into())
                .map(SeveritySpec::Fixed)
                .map_err(|_| D::Error::unknown_variant(&name, SEVERITY_NAMES)),
            serde_yaml::Value::Mapping(_) => {
                let tiers: BTreeMap<Severity, u64> = serde_yaml::from_value(value).map_err(|_| {
                    D::Error::custom(
                        "severity tiers map low/moderate/high/critical to match counts, e.g. {moderate: 5, high: 20}",
                    )
                })?;
                if tiers.is_empty() {
                    return Err(D::Error::custom(
                        "severity tiers must name at least one tier",
                    ));
                }
                Ok(SeveritySpec::Tiers(tiers))
            }
            _ => Err(D::Error::custom(
                "severity must be one of low, moderate, high, critical, or a map of tiers to counts",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_pick_the_highest_reached_and_never_fall_below_the_lowest() {
        let tiers = SeveritySpec::Tiers(BTreeMap::from([
            (Severity::Moderate, 5),
            (Severity::High, 20),
            (Severity::Critical, 100),
        ]));
        assert_eq!(tiers.for_count(1), Severity::Moderate);
        assert_eq!(tiers.for_count(19), Severity::Moderate);
        assert_eq!(tiers.for_count(20), Severity::High);
        assert_eq!(tiers.for_count(1000), Severity::Critical);
    }

    #[test]
    fn a_severity_is_a_name_or_a_non_empty_map_of_tiers() {
        let fixed: SeveritySpec = serde_yaml::from_str("high").unwrap();
        assert_eq!(fixed, SeveritySpec::Fixed(Severity::High));
        let tiers: SeveritySpec = serde_yaml::from_str("{high: 20, moderate: 5}").unwrap();
        assert_eq!(tiers.for_count(5), Severity::Moderate);
        let unknown = serde_yaml::from_str::<SeveritySpec>("urgent").unwrap_err();
        assert!(unknown.to_string().contains("urgent"), "{unknown}");
        let empty = serde_yaml::from_str::<SeveritySpec>("{}").unwrap_err();
        assert!(empty.to_string().contains("at least one tier"), "{empty}");
        assert!(serde_yaml::from_str::<SeveritySpec>("[high]").is_err());
        assert_eq!(Severity::Critical.to_string(), "critical");
    }
}
