//! Escalation policies: who is told about an incident, and when.
//!
//! A policy is an ordered list of steps `{after, notify: [roles], repeat, if_severity}` and
//! an `until` state (default `acknowledged`): a step fires once its `after` has passed since
//! the incident opened (and again every `repeat`), if the incident's severity reaches its
//! `if_severity`, and only while the incident has not reached `until`. Steps due at
//! opening go out with the `opened` event; later ones as `escalated` events.
//!
//! Progress (steps fired and when, receivers reached, external receivers held for
//! approval) is a [`Tracker`] per incident, stored in the same batch as the notifications
//! a firing writes: after a crash either both are there or neither, so a step is never
//! lost and never sent twice, and timers resume from the stored opening time.
//!
//! Receivers reached through a role marked `external: true` (customers, regulators) are
//! held until an approver approves the incident.
//!
//! A step may also `contain: [ACTION]`: the firing carries the action names, and the Desk
//! decides the containments (see [`crate::response::containment`]).

use crate::config::{Config, EscalationStep, Until};
use crate::incidents::{Incident, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The lifecycle state at which a policy stops firing.
fn until_state(until: Until) -> State {
    match until {
        Until::Acknowledged => State::Acknowledged,
        Until::Contained => State::Contained,
    }
}

/// A step resolved to receivers.
#[derive(Debug, Clone)]
struct Step {
    config: EscalationStep,
    /// Receivers of its internal roles.
    internal: BTreeSet<String>,
    /// Receivers of its external roles (held until approval).
    external: BTreeSet<String>,
    roles: String,
}

/// A policy resolved to receivers.
#[derive(Debug, Clone)]
struct Policy {
    until: Until,
    steps: Vec<Step>,
}

/// One step's firing record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    /// How often the step has fired (repeats included; downtime counts once).
    pub times: u32,
    /// When it last fired: a step with `repeat` is next due that long after this.
    pub last_at: DateTime<Utc>,
}

/// Escalation progress of one incident, stored under its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    /// Id of the incident this progress belongs to.
    pub incident: String,
    /// Name of the escalation policy followed, fixed when tracking starts; a policy no longer
    /// configured fires no more steps.
    pub policy: String,
    /// Steps fired, by their index in the policy: a step not in here is due `after` the
    /// incident opened, one in here only again by its `repeat`.
    pub fired: BTreeMap<usize, Fired>,
    /// Receivers told about the incident so far (they hear its later events).
    pub reached: BTreeSet<String>,
    /// External receivers a fired step would have told, waiting for approval.
    pub held: BTreeSet<String>,
    /// Whether an approver approved external notification.
    pub approved: bool,
}

/// What a step firing calls for.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// The step's index in the policy.
    pub step: usize,
    /// Its roles, for the timeline.
    pub roles: String,
    /// Receivers to notify now: the step's internal ones, and its external ones once an
    /// approver has approved.
    pub receivers: BTreeSet<String>,
    /// External receivers held for approval by this firing.
    pub held: BTreeSet<String>,
    /// Containment actions the step calls for.
    pub contain: Vec<String>,
}

/// The configured policies, resolved to receivers.
pub struct Policies {
    policies: HashMap<String, Policy>,
    external: BTreeSet<String>,
}

impl Policies {
    /// Resolves every policy's roles to receivers.
    pub fn new(config: &Config) -> Self {
        let receivers_of = |roles: &[String], external: bool| -> BTreeSet<String> {
            roles
                .iter()
                .filter_map(|r| config.roles.get(r))
                .filter(|r| r.external == external)
                .flat_map(|r| r.receivers.iter().cloned())
                .collect()
        };
        let policies = config
            .escalation_policies
            .iter()
            .map(|(name, p)| {
                let steps = p
                    .steps
                    .iter()
                    .map(|s| Step {
                        config: s.clone(),
                        internal: receivers_of(&s.notify, false),
                        external: receivers_of(&s.notify, true),
                        roles: s.notify.join(", "),
                    })
                    .collect();
                (
                    name.clone(),
                    Policy {
                        until: p.until,
                        steps,
                    },
                )
            })
            .collect();
        Policies {
            policies,
            external: config.external_receivers(),
        }
    }

    /// Whether a receiver belongs to an external role.
    pub fn is_external(&self, receiver: &str) -> bool {
        self.external.contains(receiver)
    }

    /// A new tracker for a just-opened incident.
    pub fn track(&self, incident: &Incident) -> Tracker {
        Tracker {
            incident: incident.id.clone(),
            policy: incident.escalation.clone(),
            fired: BTreeMap::new(),
            reached: BTreeSet::new(),
            held: BTreeSet::new(),
            approved: incident.approval.is_some(),
        }
    }

    /// When each step of the incident's policy is next due, by step index: a step not
    /// fired yet at `after` past the opening, a repeating one `repeat` after it last fired.
    /// Nothing is due for an incident that is over or has reached the policy's `until`
    /// state, nor for a step whose `if_severity` the incident does not reach (yet).
    fn step_due_times(
        &self,
        tracker: &Tracker,
        incident: &Incident,
    ) -> Vec<(usize, &Step, DateTime<Utc>)> {
        let policy = self
            .policies
            .get(&tracker.policy)
            .filter(|p| incident.state.is_active() && incident.state < until_state(p.until));
        policy
            .into_iter()
            .flat_map(|p| p.steps.iter().enumerate())
            .filter(|(_, step)| {
                step.config
                    .if_severity
                    .is_none_or(|min| incident.severity >= min)
            })
            .filter_map(|(i, step)| {
                let due = match (tracker.fired.get(&i), step.config.repeat) {
                    (None, _) => later(incident.opened_at, step.config.after_millis()),
                    (Some(f), Some(repeat)) => later(f.last_at, repeat.millis()),
                    (Some(_), None) => None,
                }?;
                Some((i, step, due))
            })
            .collect()
    }

    /// When the next step of `incident`'s policy is due, if any will be (as things stand:
    /// a rise in severity or a change of state can change it).
    pub fn next_due(&self, tracker: &Tracker, incident: &Incident) -> Option<DateTime<Utc>> {
        self.step_due_times(tracker, incident)
            .into_iter()
            .map(|(_, _, due)| due)
            .min()
    }

    /// Steps due for `incident` at `now`, each marked fired on `tracker`, with the
    /// receivers to notify (external ones only after approval; otherwise held). A step
    /// that was due several times while the daemon was down fires once.
    pub fn fire_due(
        &self,
        tracker: &mut Tracker,
        incident: &Incident,
        now: DateTime<Utc>,
    ) -> Vec<Firing> {
        let due: Vec<(usize, &Step)> = self
            .step_due_times(tracker, incident)
            .into_iter()
            .filter(|(_, _, due)| *due <= now)
            .map(|(i, step, _)| (i, step))
            .collect();
        let mut firings = Vec::new();
        for (i, step) in due {
            let fired = tracker.fired.entry(i).or_insert(Fired {
                times: 0,
                last_at: now,
            });
            fired.times += 1;
            fired.last_at = now;
            let mut receivers = step.internal.clone();
            let mut held = BTreeSet::new();
            if tracker.approved {
                receivers.extend(step.external.iter().cloned());
            } else {
                held.extend(step.external.iter().cloned());
            }
            tracker.reached.extend(receivers.iter().cloned());
            tracker.held.extend(held.iter().cloned());
            firings.push(Firing {
                step: i,
                roles: step.roles.clone(),
                receivers,
                held,
                contain: step.config.contain.clone(),
            });
        }
        firings
    }

    /// Records an approval: the held external receivers are released (returned) and reached.
    pub fn approve(&self, tracker: &mut Tracker) -> BTreeSet<String> {
        tracker.approved = true;
        let released = std::mem::take(&mut tracker.held);
        tracker.reached.extend(released.iter().cloned());
        released
    }

    /// A tracker for an incident opened before trackers were stored (or whose tracker is
    /// missing): its opening steps count as fired, later steps follow their times.
    pub fn adopt(&self, incident: &Incident) -> Tracker {
        let mut tracker = self.track(incident);
        let opened = incident.opened_at;
        let mut at_opening = incident.clone();
        at_opening.state = State::Open;
        let firings = self.fire_due(&mut tracker, &at_opening, opened);
        for f in &firings {
            if let Some(fired) = tracker.fired.get_mut(&f.step) {
                fired.last_at = opened;
            }
        }
        tracker
    }
}

/// `millis` after `at`; `None` (never) past the end of representable time.
fn later(at: DateTime<Utc>, millis: i64) -> Option<DateTime<Utc>> {
    at.checked_add_signed(TimeDelta::try_milliseconds(millis)?)
}

/// Store key of an incident's tracker (the incident's own key).
pub fn tracker_key(incident: &str) -> Vec<u8> {
    Incident::store_key(Incident::number(incident).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::sample_incident;
    use crate::rules::Severity;
    use chrono::Duration;
    use std::path::Path;

    const CONFIG: &str = r#"state_dir: s
receivers:
  - {name: a, type: file, path: '-'}
  - {name: b, type: file, path: '-'}
  - {name: c, type: file, path: '-'}
  - {name: press, type: file, path: '-'}
roles:
  analysts: {receivers: [a]}
  lead: {receivers: [b]}
  boss: {receivers: [c]}
  comms: {receivers: [press], external: true}
escalation_policies:
  default:
    - notify: [analysts, comms]
    - after: 10m
      notify: [lead]
      repeat: 5m
    - {after: 1m, notify: [boss], if_severity: critical}
  long:
    until: contained
    steps:
      - {after: 1m, notify: [lead]}
"#;

    fn policies() -> Policies {
        Policies::new(&Config::parse(Path::new("/c.yaml"), CONFIG).unwrap())
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn steps_fire_at_their_times_once_and_repeat_while_open() {
        let p = policies();
        let mut incident = sample_incident();
        let t0 = incident.opened_at;
        let mut tr = p.track(&incident);
        let f = p.fire_due(&mut tr, &incident, t0);
        assert_eq!(f.len(), 1);
        assert_eq!(names(&f[0].receivers), ["a"]);
        assert_eq!(names(&f[0].held), ["press"]);
        assert!(
            p.fire_due(&mut tr, &incident, t0 + Duration::minutes(9))
                .is_empty()
        );
        // Down from minute 9 to minute 30: the repeating step fires once, not four times.
        let f = p.fire_due(&mut tr, &incident, t0 + Duration::minutes(30));
        assert_eq!(f.iter().map(|f| f.step).collect::<Vec<_>>(), [1]);
        assert!(
            p.fire_due(&mut tr, &incident, t0 + Duration::minutes(34))
                .is_empty()
        );
        assert_eq!(
            p.fire_due(&mut tr, &incident, t0 + Duration::minutes(35))
                .len(),
            1
        );
        // A rise to critical makes the third step eligible.
        incident.severity = Severity::Critical;
        let f = p.fire_due(&mut tr, &incident, t0 + Duration::minutes(36));
        assert_eq!(f.iter().map(|f| f.step).collect::<Vec<_>>(), [2]);
        // Acknowledged: nothing more fires.
        incident.state = State::Acknowledged;
        assert!(
            p.fire_due(&mut tr, &incident, t0 + Duration::hours(5))
                .is_empty()
        );
        assert_eq!(names(&tr.reached), ["a", "b", "c"]);
        // Approval releases the held external receiver.
        assert_eq!(names(&p.approve(&mut tr)), ["press"]);
        assert!(tr.held.is_empty() && tr.reached.contains("press"));
    }

    /// The next due time is the earliest step still to fire, exactly when `fire_due`
    /// would fire it; steps above the severity, and incidents past `until`, have none.
    #[test]
    fn next_due_is_when_fire_due_fires() {
        let p = policies();
        let mut incident = sample_incident();
        let t0 = incident.opened_at;
        let mut tr = p.track(&incident);
        assert_eq!(p.next_due(&tr, &incident), Some(t0));
        p.fire_due(&mut tr, &incident, t0);
        // The lead's step at 10m; the boss's (critical only) not while high.
        let due = p.next_due(&tr, &incident).unwrap();
        assert_eq!(due, t0 + Duration::minutes(10));
        let just_before = due - Duration::milliseconds(1);
        assert!(p.fire_due(&mut tr, &incident, just_before).is_empty());
        assert_eq!(p.fire_due(&mut tr, &incident, due).len(), 1);
        // Repeats every 5m from when it fired.
        assert_eq!(p.next_due(&tr, &incident), Some(due + Duration::minutes(5)));
        incident.severity = Severity::Critical;
        assert_eq!(p.next_due(&tr, &incident), Some(t0 + Duration::minutes(1)));
        incident.state = State::Acknowledged;
        assert_eq!(p.next_due(&tr, &incident), None);
    }

    #[test]
    fn until_contained_keeps_firing_after_acknowledgement() {
        let p = policies();
        let mut incident = sample_incident();
        incident.escalation = "long".into();
        incident.state = State::Acknowledged;
        let mut tr = p.track(&incident);
        let t = incident.opened_at + Duration::minutes(2);
        assert_eq!(p.fire_due(&mut tr, &incident, t).len(), 1);
        let mut incident2 = incident.clone();
        incident2.state = State::Contained;
        let mut tr2 = p.track(&incident2);
        assert!(p.fire_due(&mut tr2, &incident2, t).is_empty());
    }

    #[test]
    fn policy_shapes_and_their_errors() {
        let base = "state_dir: s\nreceivers:\n  - {name: a, type: file, path: '-'}\nroles:\n  r: {receivers: [a]}\nescalation_policies:\n";
        let ok = format!("{base}  p:\n    until: contained\n    steps:\n      - notify: [r]\n");
        let c = Config::parse(Path::new("/c.yaml"), &ok).unwrap();
        assert_eq!(c.escalation_policies["p"].until, Until::Contained);
        let typo = format!("{base}  p:\n    until: contained\n    stepz:\n      - notify: [r]\n");
        let e = Config::parse(Path::new("/c.yaml"), &typo).unwrap_err();
        assert!(e[0].message.contains("unknown field `stepz`"), "{}", e[0]);
        assert_eq!(e[0].line, 9, "{}", e[0]);
        let bad = format!("{base}  p:\n    - notify: [r]\n      aftr: 5m\n");
        let e = Config::parse(Path::new("/c.yaml"), &bad).unwrap_err();
        assert!(e[0].message.contains("unknown field `aftr`"), "{}", e[0]);
        assert_eq!(e[0].line, 9, "{}", e[0]);
        let until = format!("{base}  p:\n    until: resolved\n    steps: [{{notify: [r]}}]\n");
        let e = Config::parse(Path::new("/c.yaml"), &until).unwrap_err();
        assert!(e[0].message.contains("resolved"), "{}", e[0]);
        assert_eq!(e[0].line, 8, "{}", e[0]);
        let shared = "state_dir: s\nreceivers:\n  - {name: a, type: file, path: '-'}\nroles:\n  r: {receivers: [a]}\n  press: {receivers: [a], external: true}\n";
        let e = Config::parse(Path::new("/c.yaml"), shared).unwrap_err();
        assert!(e[0].message.contains("shares receiver"), "{}", e[0]);
        assert_eq!(e[0].line, 6, "{}", e[0]);
    }
}
