//! The detection kinds a rule can use, as written (`*Spec`) and as validated ([`RuleKind`]).
//!
//! Exactly one kind block per rule: a rule that says both `threshold` and `spike` would be
//! ambiguous, so that is an error naming the second block.

use super::RuleDef;
use crate::base::duration::HumanDuration;
use serde::{Deserialize, Serialize};

/// Largest `spike.baseline`: the state per key holds that many windows.
pub const MAX_BASELINE: u32 = 1000;

/// `threshold: {count, within}`: `count` matches for one key within `within` open an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSpec {
    /// Matches needed for one key, at least 1.
    pub count: u64,
    /// How close together, by the lines' own timestamps.
    pub within: HumanDuration,
}

/// `spike: {window, baseline, factor, min_count}`: the count in the current window is at
/// least `factor` times the mean of the previous `baseline` windows, and at least
/// `min_count`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeSpec {
    /// Length of one counting window (windows are aligned to multiples of it).
    pub window: HumanDuration,
    /// How many previous windows make the baseline.
    pub baseline: u32,
    /// How many times the baseline mean the current window must reach.
    pub factor: f64,
    /// Floor: fewer matches than this in the window is never a spike.
    pub min_count: u64,
}

/// `absence: {within, count}`: fewer than `count` matches within `within` open an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsenceSpec {
    /// How long matches may stay away.
    pub within: HumanDuration,
    /// Matches expected in any `within` (default 1).
    #[serde(default = "one")]
    pub count: u64,
}

/// `sequence: {within, steps}`: ordered steps for one key, all within `within`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSpec {
    /// From the first counted line of the first step to the last line of the last step.
    pub within: HumanDuration,
    /// The steps, in the order they must happen in; at least one.
    pub steps: Vec<StepSpec>,
}

/// One step of a sequence: its own pattern and how many matches it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Pattern of this step (regex on bytes).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Matches this step needs (default 1).
    #[serde(default = "one")]
    pub count: u64,
}

/// `distinct: {field, count, within}`: `count` different values of a capture for one key
/// within `within`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistinctSpec {
    /// Named capture whose values are counted.
    pub field: String,
    /// Different values of `field` needed for one key, at least 1.
    pub count: u64,
    /// How close together the values' lines must be, by their own timestamps.
    pub within: HumanDuration,
}

fn one() -> u64 {
    1
}

/// How a rule decides that matches make an incident.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// `count` matches per key within `within_ms`.
    Threshold {
        /// Matches needed.
        count: u64,
        /// Window length in milliseconds.
        within_ms: i64,
    },
    /// The current window's count against the mean of the previous ones.
    Spike {
        /// Window length in milliseconds.
        window_ms: i64,
        /// Previous windows in the baseline.
        baseline: u32,
        /// Multiple of the baseline mean needed.
        factor: f64,
        /// Floor for the current window.
        min_count: u64,
    },
    /// Fewer than `count` matches within `within_ms`, noticed by the clock.
    Absence {
        /// Gap length in milliseconds.
        within_ms: i64,
        /// Matches expected.
        count: u64,
    },
    /// Ordered steps; step `i` is pattern `i` of the rule.
    Sequence {
        /// Span of the whole sequence in milliseconds.
        within_ms: i64,
        /// Matches each step needs.
        counts: Vec<u64>,
    },
    /// Different values of a capture per key.
    Distinct {
        /// The capture counted.
        field: String,
        /// Values needed.
        count: u64,
        /// Window length in milliseconds.
        within_ms: i64,
    },
}

impl RuleKind {
    /// How far back in log time the kind's state can reach: older lines can no longer
    /// count (an absence keeps its last line, which its state references).
    pub fn horizon_ms(&self) -> i64 {
        match self {
            RuleKind::Threshold { within_ms, .. }
            | RuleKind::Absence { within_ms, .. }
            | RuleKind::Sequence { within_ms, .. }
            | RuleKind::Distinct { within_ms, .. } => *within_ms,
            RuleKind::Spike {
                window_ms,
                baseline,
                ..
            } => window_ms.saturating_mul(i64::from(*baseline) + 1),
        }
    }
}

impl RuleKind {
    /// The kind's name as written in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Threshold { .. } => "threshold",
            RuleKind::Spike { .. } => "spike",
            RuleKind::Absence { .. } => "absence",
            RuleKind::Sequence { .. } => "sequence",
            RuleKind::Distinct { .. } => "distinct",
        }
    }
}

/// The kind blocks a definition has, in the order they are documented.
pub fn kind_blocks(def: &RuleDef) -> Vec<&'static str> {
    [
        ("threshold", def.threshold.is_some()),
        ("spike", def.spike.is_some()),
        ("absence", def.absence.is_some()),
        ("sequence", def.sequence.is_some()),
        ("distinct", def.distinct.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect()
}

/// Validates the one kind block of a definition; problems go to `fail(key, message)` (key
/// `""`: the rule as a whole, for a block it lacks).
///
/// Just over 100 lines because it is one arm per kind, kept side by side so every kind's
/// block is checked and built the same way.
pub fn compile_kind(def: &RuleDef, fail: &mut dyn FnMut(&str, String)) -> Option<RuleKind> {
    let blocks = kind_blocks(def);
    match blocks.as_slice() {
        [] => {
            fail(
                "",
                format!(
                    "rule {:?} needs exactly one kind block: threshold, spike, absence, sequence or distinct",
                    def.id
                ),
            );
            return None;
        }
        [_] => {}
        [first, rest @ ..] => {
            for other in rest {
                fail(
                    other,
                    format!(
                        "rule {:?} has more than one kind block ({first} and {other}); exactly one is allowed",
                        def.id
                    ),
                );
            }
            return None;
        }
    }
    let mut ok = true;
    let mut need = |ok_here: bool, key: &str, message: &str| {
        if !ok_here {
            ok = false;
            fail(key, message.to_string());
        }
    };
    let kind = if let Some(t) = &def.threshold {
        need(
            t.count >= 1,
            "threshold",
            "threshold count must be at least 1",
        );
        RuleKind::Threshold {
            count: t.count,
            within_ms: t.within.millis(),
        }
    } else if let Some(s) = &def.spike {
        need(
            (1..=MAX_BASELINE).contains(&s.baseline),
            "spike",
            &format!("spike baseline must be between 1 and {MAX_BASELINE} windows"),
        );
        need(
            s.factor.is_finite() && s.factor > 0.0,
            "spike",
            "spike factor must be a number greater than 0",
        );
        need(
            s.min_count >= 1,
            "spike",
            "spike min_count must be at least 1",
        );
        RuleKind::Spike {
            window_ms: s.window.millis(),
            baseline: s.baseline,
            factor: s.factor,
            min_count: s.min_count,
        }
    } else if let Some(a) = &def.absence {
        need(a.count >= 1, "absence", "absence count must be at least 1");
        RuleKind::Absence {
            within_ms: a.within.millis(),
            count: a.count,
        }
    } else if let Some(q) = &def.sequence {
        need(
            !q.steps.is_empty(),
            "sequence",
            "sequence needs at least one step",
        );
        for (i, step) in q.steps.iter().enumerate() {
            need(
                step.count >= 1,
                "sequence",
                &format!("sequence step {} count must be at least 1", i + 1),
            );
        }
        RuleKind::Sequence {
            within_ms: q.within.millis(),
            counts: q.steps.iter().map(|s| s.count).collect(),
        }
    } else {
        let d = def.distinct.as_ref().expect("one kind block is present");
        need(
            d.count >= 1,
            "distinct",
            "distinct count must be at least 1",
        );
        RuleKind::Distinct {
            field: d.field.clone(),
            count: d.count,
            within_ms: d.within.millis(),
        }
    };
    ok.then_some(kind)
}
