//! `slas:` of the config: the response-time limits per severity and the checks a config
//! must pass. Plain values, so the config layer needs nothing above it; judging an incident
//! against them is [`crate::incidents::sla`]'s job.

use crate::base::duration::HumanDuration;
use crate::rules::Severity;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The SLAs of one severity; a stage left out has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSlas {
    /// Opened → acknowledged.
    #[serde(default)]
    pub acknowledge: Option<HumanDuration>,
    /// Opened → contained.
    #[serde(default)]
    pub contain: Option<HumanDuration>,
    /// Opened → closed.
    #[serde(default)]
    pub resolve: Option<HumanDuration>,
}

/// `slas:` of the config, by severity.
pub type Slas = BTreeMap<Severity, StageSlas>;

/// A stage an SLA can be set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Opened → acknowledged.
    Acknowledge,
    /// Opened → contained.
    Contain,
    /// Opened → closed.
    Resolve,
}

impl Stage {
    /// Every stage, in lifecycle order.
    pub const ALL: [Stage; 3] = [Stage::Acknowledge, Stage::Contain, Stage::Resolve];

    /// The name in the config, the CSV header and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Acknowledge => "acknowledge",
            Stage::Contain => "contain",
            Stage::Resolve => "resolve",
        }
    }

    /// This stage's SLA in `slas`.
    pub fn limit(self, slas: &StageSlas) -> Option<HumanDuration> {
        match self {
            Stage::Acknowledge => slas.acknowledge,
            Stage::Contain => slas.contain,
            Stage::Resolve => slas.resolve,
        }
    }
}

/// Problems of `slas:` in words an operator can act on, by the severity they are under: a
/// later stage cannot have a shorter SLA than an earlier one (the clock of each starts at
/// the opening).
pub fn problems(slas: &Slas) -> Vec<(Severity, String)> {
    let mut problems = Vec::new();
    for (severity, stages) in slas {
        let set: Vec<(Stage, HumanDuration)> = Stage::ALL
            .iter()
            .filter_map(|s| s.limit(stages).map(|l| (*s, l)))
            .collect();
        if set.is_empty() {
            problems.push((
                *severity,
                format!("slas: {severity} sets no stage (acknowledge, contain or resolve)"),
            ));
        }
        for pair in set.windows(2) {
            let [(early, a), (late, b)] = [pair[0], pair[1]];
            if b < a {
                problems.push((
                    *severity,
                    format!(
                        "slas: {severity}: {} ({b}) is shorter than {} ({a}); both count from the opening",
                        late.as_str(),
                        early.as_str()
                    ),
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(m: u64) -> Option<HumanDuration> {
        Some(HumanDuration(std::time::Duration::from_secs(m * 60)))
    }

    #[test]
    fn a_later_stage_shorter_than_an_earlier_one_is_a_problem() {
        let slas: Slas = [
            (
                Severity::Critical,
                StageSlas {
                    acknowledge: minutes(30),
                    contain: minutes(15),
                    resolve: None,
                },
            ),
            (Severity::Low, StageSlas::default()),
        ]
        .into();
        let problems = problems(&slas);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, Severity::Low);
        assert!(problems[0].1.contains("sets no stage"), "{problems:?}");
        assert!(
            problems[1]
                .1
                .contains("contain (15m) is shorter than acknowledge (30m)")
        );
    }
}
