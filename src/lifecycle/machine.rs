//! The lifecycle state machine: which step an incident may take next, and what each action
//! changes. Pure and synchronous (no store, no notifications), so every rule of the
//! lifecycle is tested here without a daemon.

use super::{Action, Kpi, Measure, Refusal};
use crate::audit::AuditEvent;
use crate::incidents::timeline::TimelineKind;
use crate::incidents::{Approval, EventKind, Incident, Review, State};
use crate::rules::Severity;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The next states allowed from `from`.
pub fn allowed_next(from: State) -> &'static [State] {
    match from {
        State::Open => &[State::Acknowledged, State::FalsePositive],
        State::Acknowledged => &[State::Contained, State::FalsePositive],
        State::Contained => &[State::Eradicated, State::FalsePositive],
        State::Eradicated => &[State::Recovered, State::FalsePositive],
        State::Recovered => &[State::Closed, State::FalsePositive],
        State::Closed | State::FalsePositive => &[],
    }
}

/// What [`apply`] did to an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The event receivers may hear about.
    pub event: Option<EventKind>,
    /// The audit event, typed so it maps to its SOC 2 controls.
    pub audit: AuditEvent,
    /// Audit details: what the transition changed, for the record.
    pub details: Value,
    /// KPIs observed (a one-step resolve measures acknowledge, contain and resolve at once).
    pub kpis: Vec<Kpi>,
}

fn non_empty(what: &str, text: &str) -> Result<(), Refusal> {
    if text.trim().is_empty() {
        Err(Refusal::Invalid(format!("{what} must not be empty")))
    } else {
        Ok(())
    }
}

/// Applies an action to an incident, or refuses it with the reason; the incident is
/// unchanged when refused.
pub fn apply(
    incident: &mut Incident,
    action: &Action,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Applied, Refusal> {
    let applied = match action {
        Action::Ack { note } => transition(incident, State::Acknowledged, note, actor, now)?,
        Action::Transition { to, note } => transition(incident, *to, note, actor, now)?,
        Action::Note { text } => {
            non_empty("text", text)?;
            incident.record(now, TimelineKind::Note, actor, Some(text.clone()));
            Applied {
                event: None,
                audit: AuditEvent::IncidentNoted,
                details: json!({ "text": text }),
                kpis: Vec::new(),
            }
        }
        Action::Review {
            root_cause,
            lessons_learned,
            actions,
        } => {
            non_empty("root_cause", root_cause)?;
            non_empty("lessons_learned", lessons_learned)?;
            review_allowed(incident, actions)?;
            incident.review = Some(Review {
                root_cause: root_cause.clone(),
                lessons_learned: lessons_learned.clone(),
                actions: actions.clone(),
                by: actor.to_string(),
                at: now,
            });
            incident.record(
                now,
                TimelineKind::Reviewed,
                actor,
                Some(format!(
                    "root cause: {root_cause}; lessons learned: {lessons_learned}; {} follow-up action(s)",
                    actions.len()
                )),
            );
            Applied {
                event: None,
                audit: AuditEvent::IncidentReviewed,
                details: json!({"root_cause": root_cause, "lessons_learned": lessons_learned, "actions": actions}),
                kpis: Vec::new(),
            }
        }
        Action::Approve { note } => {
            if let Some(a) = &incident.approval {
                return Err(Refusal::Conflict(format!(
                    "{} was already approved by {} at {}",
                    incident.id,
                    a.by,
                    a.at.to_rfc3339()
                )));
            }
            incident.approval = Some(Approval {
                by: actor.to_string(),
                at: now,
                note: note.clone(),
            });
            incident.record(now, TimelineKind::Approved, actor, note.clone());
            Applied {
                event: None,
                audit: AuditEvent::IncidentApproved,
                details: json!({ "note": note }),
                kpis: Vec::new(),
            }
        }
        Action::Resolve { note } => resolve(incident, note, actor, now)?,
        Action::Release { note } => {
            incident.record(now, TimelineKind::Release, actor, note.clone());
            Applied {
                event: None,
                audit: AuditEvent::ContainmentReleaseRequested,
                details: json!({ "note": note }),
                kpis: Vec::new(),
            }
        }
    };
    incident.updated_at = now;
    Ok(applied)
}

fn transition(
    incident: &mut Incident,
    to: State,
    note: &Option<String>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Applied, Refusal> {
    let from = incident.state;
    let allowed = allowed_next(from);
    if !allowed.contains(&to) {
        let why = if allowed.is_empty() {
            format!(
                "{} is {from}: it is over and cannot change state",
                incident.id
            )
        } else {
            let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            format!(
                "{} is {from}: it can move to {}, not {to}",
                incident.id,
                names.join(" or ")
            )
        };
        return Err(Refusal::Conflict(why));
    }
    if to == State::Closed {
        close_allowed(incident)?;
    }
    incident.state = to;
    incident.record(now, TimelineKind::Moved(to), actor, note.clone());
    let now_kpi = Kpi::since_open(incident, Measure::Resolve, now);
    let kpi = |measure| Kpi { measure, ..now_kpi };
    let (event, kpi) = match to {
        State::Acknowledged => {
            incident.acknowledged_at = Some(now);
            (EventKind::Acknowledged, Some(kpi(Measure::Acknowledge)))
        }
        State::Contained => {
            incident.contained_at = Some(now);
            (EventKind::StateChanged, Some(kpi(Measure::Contain)))
        }
        State::Closed => {
            incident.closed_at = Some(now);
            (EventKind::Closed, Some(kpi(Measure::Resolve)))
        }
        State::FalsePositive => {
            incident.closed_at = Some(now);
            (EventKind::Closed, None)
        }
        _ => (EventKind::StateChanged, None),
    };
    Ok(Applied {
        event: Some(event),
        audit: AuditEvent::IncidentTransitioned,
        details: json!({"from": from.as_str(), "to": to.as_str(), "note": note}),
        kpis: kpi.into_iter().collect(),
    })
}

/// The close gate: high and critical incidents close only after a post-incident review.
fn close_allowed(incident: &Incident) -> Result<(), Refusal> {
    if incident.severity >= Severity::High && incident.review.is_none() {
        return Err(Refusal::Conflict(format!(
            "{} is {}: closing it requires a post-incident review first (root cause, lessons \
             learned, actions): `logwarden incidents review {}` or POST /api/v1/incidents/{}/review",
            incident.id, incident.severity, incident.id, incident.id
        )));
    }
    Ok(())
}

/// A review looks back at a response: only once the incident is contained (or found a false
/// positive), and for high and critical incidents with at least one follow-up action — an
/// empty review must not satisfy the close gate.
fn review_allowed(incident: &Incident, actions: &[String]) -> Result<(), Refusal> {
    if matches!(incident.state, State::Open | State::Acknowledged) {
        return Err(Refusal::Conflict(format!(
            "{} is {}: a post-incident review comes after containment (transition it to \
             contained first, or to false_positive)",
            incident.id, incident.state
        )));
    }
    if incident.severity >= Severity::High && actions.iter().all(|a| a.trim().is_empty()) {
        return Err(Refusal::Invalid(format!(
            "{} is {}: its review needs at least one follow-up action (--action TEXT)",
            incident.id, incident.severity
        )));
    }
    Ok(())
}

/// `resolve`: to `closed` in one recorded step from any active state, filling in the times of
/// the steps passed over (acknowledged, contained) so the KPIs stay complete.
fn resolve(
    incident: &mut Incident,
    note: &Option<String>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Applied, Refusal> {
    let from = incident.state;
    if !from.is_active() {
        return Err(Refusal::Conflict(format!(
            "{} is {from}: it is over and cannot change state",
            incident.id
        )));
    }
    close_allowed(incident)?;
    let now_kpi = Kpi::since_open(incident, Measure::Resolve, now);
    let kpi = |measure| Kpi { measure, ..now_kpi };
    let mut kpis = Vec::new();
    if incident.acknowledged_at.is_none() {
        incident.acknowledged_at = Some(now);
        kpis.push(kpi(Measure::Acknowledge));
    }
    if incident.contained_at.is_none() {
        incident.contained_at = Some(now);
        kpis.push(kpi(Measure::Contain));
    }
    kpis.push(kpi(Measure::Resolve));
    let passed: Vec<&str> = State::ACTIVE
        .iter()
        .skip_while(|s| **s != from)
        .skip(1)
        .map(|s| s.as_str())
        .collect();
    incident.state = State::Closed;
    incident.closed_at = Some(now);
    let summary = format!("resolved: {from} → closed in one step");
    let text = match note {
        Some(n) => format!("{summary}: {n}"),
        None => summary,
    };
    incident.record(now, TimelineKind::Resolved, actor, Some(text));
    Ok(Applied {
        event: Some(EventKind::Closed),
        audit: AuditEvent::IncidentResolved,
        details: json!({"from": from.as_str(), "to": "closed", "through": passed, "note": note}),
        kpis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::sample_incident;

    fn t(to: State) -> Action {
        Action::Transition { to, note: None }
    }

    /// The sample incident with this severity, opened at `opened`.
    fn incident(severity: Severity, opened: DateTime<Utc>) -> Incident {
        let mut i = sample_incident();
        i.severity = severity;
        i.opened_at = opened;
        i
    }

    #[test]
    fn only_the_next_state_or_false_positive_is_allowed() {
        let mut i = sample_incident();
        let now = i.opened_at + chrono::Duration::seconds(90);
        let err = apply(&mut i, &t(State::Contained), "a", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("acknowledged or false_positive")),
            "{err:?}"
        );
        assert_eq!(i.state, State::Open);
        let ack = apply(
            &mut i,
            &Action::Ack {
                note: Some("mine".into()),
            },
            "oncall",
            now,
        )
        .unwrap();
        assert_eq!(ack.event, Some(EventKind::Acknowledged));
        assert_eq!(
            ack.kpis,
            [Kpi {
                measure: Measure::Acknowledge,
                severity: Severity::High,
                seconds: 90.0,
                drill: false
            }]
        );
        assert_eq!(i.timeline.last().unwrap().actor, "oncall");
        for s in [State::Contained, State::Eradicated, State::Recovered] {
            apply(&mut i, &t(s), "oncall", now).unwrap();
        }
        // High: no close without a review.
        let err = apply(&mut i, &t(State::Closed), "oncall", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("review")),
            "{err:?}"
        );
        let review = Action::Review {
            root_cause: "weak password".into(),
            lessons_learned: "enforce keys".into(),
            actions: vec!["disable passwords".into()],
        };
        apply(&mut i, &review, "lead", now).unwrap();
        let closed = apply(&mut i, &t(State::Closed), "oncall", now).unwrap();
        assert_eq!(closed.event, Some(EventKind::Closed));
        assert!(matches!(
            closed.kpis[..],
            [Kpi {
                measure: Measure::Resolve,
                severity: Severity::High,
                ..
            }]
        ));
        let err = apply(&mut i, &t(State::FalsePositive), "oncall", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("over")),
            "{err:?}"
        );
    }

    #[test]
    fn resolve_closes_in_one_step_where_closing_is_allowed() {
        let now = Utc::now();
        let mut low = incident(Severity::Moderate, now - chrono::Duration::seconds(60));
        let resolve = Action::Resolve {
            note: Some("fixed the cron job".into()),
        };
        let done = apply(&mut low, &resolve, "oncall", now).unwrap();
        assert_eq!(low.state, State::Closed);
        assert_eq!(done.audit, "incident.resolved");
        assert_eq!(done.event, Some(EventKind::Closed));
        assert_eq!(
            done.details["through"],
            json!(["acknowledged", "contained", "eradicated", "recovered"])
        );
        let measured: Vec<Measure> = done.kpis.iter().map(|k| k.measure).collect();
        assert_eq!(
            measured,
            [Measure::Acknowledge, Measure::Contain, Measure::Resolve]
        );
        assert!(low.acknowledged_at.is_some() && low.contained_at.is_some());
        assert_eq!(low.timeline.last().unwrap().event, "resolved");
        assert!(apply(&mut low, &resolve, "oncall", now).is_err(), "over");

        // High: a review first, and a review only after containment, with an action.
        let mut high = incident(Severity::High, now);
        let err = apply(&mut high, &resolve, "oncall", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("review")),
            "{err:?}"
        );
        let review = |actions: Vec<String>| Action::Review {
            root_cause: "weak password".into(),
            lessons_learned: "enforce keys".into(),
            actions,
        };
        let err = apply(&mut high, &review(vec!["keys".into()]), "lead", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("after containment")),
            "{err:?}"
        );
        apply(&mut high, &t(State::Acknowledged), "oncall", now).unwrap();
        apply(&mut high, &t(State::Contained), "oncall", now).unwrap();
        let err = apply(&mut high, &review(vec![]), "lead", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Invalid(r) if r.contains("follow-up action")),
            "{err:?}"
        );
        apply(
            &mut high,
            &review(vec!["disable passwords".into()]),
            "lead",
            now,
        )
        .unwrap();
        let done = apply(&mut high, &resolve, "oncall", now).unwrap();
        assert_eq!(high.state, State::Closed);
        // Acknowledged and contained were measured when they happened.
        assert_eq!(done.kpis.len(), 1);
    }

    #[test]
    fn false_positive_from_any_active_state_and_one_approval() {
        for steps in 0..5 {
            let mut i = sample_incident();
            let now = i.opened_at;
            for s in &State::ACTIVE[1..=steps] {
                apply(&mut i, &t(*s), "x", now).unwrap();
            }
            apply(&mut i, &t(State::FalsePositive), "x", now).unwrap();
            assert_eq!(i.state, State::FalsePositive);
            assert!(i.closed_at.is_some());
        }
        let mut i = sample_incident();
        let now = i.opened_at;
        apply(&mut i, &Action::Approve { note: None }, "boss", now).unwrap();
        assert_eq!(i.approval.as_ref().unwrap().by, "boss");
        assert!(apply(&mut i, &Action::Approve { note: None }, "boss", now).is_err());
        assert!(matches!(
            apply(&mut i, &Action::Note { text: " ".into() }, "x", now),
            Err(Refusal::Invalid(_))
        ));
    }
}
