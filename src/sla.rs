//! Response SLAs per severity (`slas:` in the config) and whether an incident met them.
//!
//! Each stage is measured from the incident's opening, like the response-time KPIs:
//! acknowledge to `acknowledged_at`, contain to `contained_at`, resolve to the close. One
//! function, [`outcome`], decides for both the population export (every incident, at export
//! time) and the `logwarden_incident_sla_outcomes_total` counter (each stage as it is reached),
//! so the two can never disagree about what "met" means.

use crate::duration::HumanDuration;
use crate::incidents::{Incident, State};
use crate::rules::Severity;
use chrono::{DateTime, Utc};
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

    /// When `incident` reached this stage, if it did. A false positive was acknowledged
    /// when it was found one (that is a response), and never contained or resolved.
    pub fn reached(self, incident: &Incident) -> Option<DateTime<Utc>> {
        let false_positive = incident.state == State::FalsePositive;
        match self {
            Stage::Acknowledge => incident
                .acknowledged_at
                .or(incident.closed_at.filter(|_| false_positive)),
            Stage::Contain => incident.contained_at,
            Stage::Resolve => incident.closed_at.filter(|_| !false_positive),
        }
    }
}

/// Whether a stage met its SLA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Reached within the SLA.
    Met,
    /// Reached late, or not reached and already past the SLA.
    Missed,
    /// Not reached yet, still within the SLA.
    Pending,
    /// The incident is over without reaching the stage (a false positive).
    NotApplicable,
}

impl Outcome {
    /// The word in the CSV and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Met => "met",
            Outcome::Missed => "missed",
            Outcome::Pending => "pending",
            Outcome::NotApplicable => "n/a",
        }
    }
}

/// Whether a stage taken `seconds` after opening met `limit`.
pub fn judge(limit: HumanDuration, seconds: f64) -> Outcome {
    if seconds * 1000.0 <= limit.millis() as f64 {
        Outcome::Met
    } else {
        Outcome::Missed
    }
}

/// The outcome of `stage` for `incident` as of `now`; `None` when its severity has no SLA
/// for the stage. An active incident that has not reached the stage and is past its SLA
/// counts as missed.
pub fn outcome(
    slas: &Slas,
    incident: &Incident,
    stage: Stage,
    now: DateTime<Utc>,
) -> Option<Outcome> {
    let limit = stage.limit(slas.get(&incident.severity)?)?;
    let seconds =
        |t: DateTime<Utc>| (t - incident.opened_at).num_milliseconds().max(0) as f64 / 1e3;
    Some(match stage.reached(incident) {
        Some(at) => judge(limit, seconds(at)),
        None if !incident.state.is_active() => Outcome::NotApplicable,
        None => match judge(limit, seconds(now)) {
            Outcome::Met => Outcome::Pending,
            late => late,
        },
    })
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
    use crate::notification::format::sample_incident;

    fn minutes(m: u64) -> Option<HumanDuration> {
        Some(HumanDuration(std::time::Duration::from_secs(m * 60)))
    }

    #[test]
    fn stages_are_met_missed_pending_or_not_applicable() {
        let mut incident = sample_incident();
        incident.state = State::Acknowledged;
        incident.contained_at = None;
        incident.closed_at = None;
        let opened = incident.opened_at;
        incident.acknowledged_at = Some(opened + chrono::Duration::minutes(10));
        let slas: Slas = [(
            incident.severity,
            StageSlas {
                acknowledge: minutes(15),
                contain: minutes(60),
                resolve: None,
            },
        )]
        .into();
        let at = |m| opened + chrono::Duration::minutes(m);
        let o = |i: &Incident, s, now| outcome(&slas, i, s, now);
        assert_eq!(o(&incident, Stage::Acknowledge, at(90)), Some(Outcome::Met));
        assert_eq!(o(&incident, Stage::Contain, at(30)), Some(Outcome::Pending));
        assert_eq!(o(&incident, Stage::Contain, at(61)), Some(Outcome::Missed));
        assert_eq!(o(&incident, Stage::Resolve, at(61)), None);
        incident.acknowledged_at = Some(at(16));
        assert_eq!(
            o(&incident, Stage::Acknowledge, at(16)),
            Some(Outcome::Missed)
        );
        // Found a false positive at minute 5: acknowledged then, never contained.
        incident.acknowledged_at = None;
        incident.state = State::FalsePositive;
        incident.closed_at = Some(at(5));
        assert_eq!(o(&incident, Stage::Acknowledge, at(99)), Some(Outcome::Met));
        assert_eq!(
            o(&incident, Stage::Contain, at(99)),
            Some(Outcome::NotApplicable)
        );
        let mut other = incident.clone();
        other.severity = Severity::Low;
        assert_eq!(o(&other, Stage::Acknowledge, at(99)), None);
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
