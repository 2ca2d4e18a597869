//! Response SLAs per severity (`slas:` in the config) and whether an incident met them.
//!
//! Each stage is measured from the incident's opening, like the response-time KPIs:
//! acknowledge to `acknowledged_at`, contain to `contained_at`, resolve to the close. One
//! function, [`outcome`], decides for both the population export (every incident, at export
//! time) and the `logwarden_incident_sla_outcomes_total` counter (each stage as it is reached),
//! so the two can never disagree about what "met" means.

use crate::base::duration::HumanDuration;
pub use crate::config::slas::{Slas, Stage, StageSlas, problems};
use crate::incidents::{Incident, State};
use chrono::{DateTime, Utc};

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

/// When `incident` reached `stage`, if it did. A false positive was acknowledged
/// when it was found one (that is a response), and never contained or resolved.
fn reached(stage: Stage, incident: &Incident) -> Option<DateTime<Utc>> {
    let false_positive = incident.state == State::FalsePositive;
    match stage {
        Stage::Acknowledge => incident
            .acknowledged_at
            .or(incident.closed_at.filter(|_| false_positive)),
        Stage::Contain => incident.contained_at,
        Stage::Resolve => incident.closed_at.filter(|_| !false_positive),
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
    Some(match reached(stage, incident) {
        Some(at) => judge(limit, seconds(at)),
        None if !incident.state.is_active() => Outcome::NotApplicable,
        None => match judge(limit, seconds(now)) {
            Outcome::Met => Outcome::Pending,
            late => late,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::sample_incident;
    use crate::rules::Severity;

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
}
