//! The names of audit events and the SOC 2 controls each is evidence for.
//!
//! An auditor samples records by control, so an event that maps to no control is evidence
//! nobody finds. Events are therefore an exhaustive enum: [`AuditEvent::controls`] is one
//! `match` without a wildcard, so a new event does not compile until someone decides what it
//! is evidence for, and a misspelled name cannot be written at all.
//!
//! The names themselves (`incident.opened`, …) are part of every stored record's hashed
//! bytes: they must never change, or chains written before would stop verifying. Records read
//! back may carry a name this release does not know (written by a newer or an older
//! release); [`RecordedEvent`] keeps those readable without letting new records use them.

use serde_json::Value;
use std::fmt;

/// Defines [`AuditEvent`] from one table of variant and stored name, so the enum, its names,
/// its parser and [`AuditEvent::ALL`] cannot drift apart.
macro_rules! audit_events {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// Something the audit log records. Only these can be sealed into new records.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum AuditEvent {
            $( $(#[$doc])* $variant, )*
        }

        impl AuditEvent {
            /// Every event, for tests and documentation that must cover them all.
            pub const ALL: &'static [AuditEvent] = &[$(AuditEvent::$variant,)*];

            /// The name stored in records (and covered by their hash): never change one.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( AuditEvent::$variant => $name, )*
                }
            }

            /// The event a stored name stands for, if this release knows it.
            pub fn parse(name: &str) -> Option<AuditEvent> {
                match name {
                    $( $name => Some(AuditEvent::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

audit_events! {
    /// Detection opened an incident.
    IncidentOpened => "incident.opened",
    /// Incidents' counts rose (one record per commit, however many incidents).
    IncidentUpdated => "incident.updated",
    /// An incident's severity changed with its count.
    IncidentSeverityChanged => "incident.severity_changed",
    /// An escalation step fired.
    IncidentEscalated => "incident.escalated",
    /// An incident moved one lifecycle step (or to false positive).
    IncidentTransitioned => "incident.transitioned",
    /// Someone added a note to an incident.
    IncidentNoted => "incident.noted",
    /// A change to an incident was refused as not allowed in its state.
    IncidentRefused => "incident.refused",
    /// The post-incident review was recorded.
    IncidentReviewed => "incident.reviewed",
    /// An incident went to closed in one step, through the states not yet passed.
    IncidentResolved => "incident.resolved",
    /// Someone approved telling external receivers.
    IncidentApproved => "incident.approved",
    /// A notification reached its receiver.
    NotificationDelivered => "notification.delivered",
    /// A notification attempt failed and will be retried.
    NotificationAttemptFailed => "notification.attempt_failed",
    /// A notification gave up and became a dead letter.
    NotificationFailed => "notification.failed",
    /// An admin sent a dead letter again.
    NotificationResent => "notification.resent",
    /// A containment (ban) was asked for and waits for the worker.
    ContainmentRequested => "containment.requested",
    /// A containment was decided in dry-run mode: nothing changed on the host.
    ContainmentDryRun => "containment.dry_run",
    /// A containment is in force.
    ContainmentApplied => "containment.applied",
    /// A containment was applied again after a restart or a lost rule.
    ContainmentReapplied => "containment.reapplied",
    /// Applying a containment failed.
    ContainmentFailed => "containment.failed",
    /// A containment was refused (an allowlisted or invalid target, a limit reached).
    ContainmentRefused => "containment.refused",
    /// A containment waits for an approval.
    ContainmentHeld => "containment.held",
    /// Someone approved a held containment.
    ContainmentApproved => "containment.approved",
    /// Someone asked for an incident's containments to be lifted.
    ContainmentReleaseRequested => "containment.release_requested",
    /// A containment was lifted.
    ContainmentReleased => "containment.released",
    /// Lifting a containment failed; it is tried again.
    ContainmentUndoFailed => "containment.undo_failed",
    /// Someone created a silence.
    SilenceCreated => "silence.created",
    /// A silence ended (by its time, or expired by someone).
    SilenceExpired => "silence.expired",
    /// A scheduled silence's window took effect.
    SilenceWindowOpened => "silence.window_opened",
    /// A scheduled silence's window ended.
    SilenceWindowClosed => "silence.window_closed",
    /// The daemon started with a rule set.
    RulesLoaded => "rules.loaded",
    /// The rules changed at run time.
    RulesReloaded => "rules.reloaded",
    /// A rule change was refused; the old rules keep running.
    RulesReloadFailed => "rules.reload_failed",
    /// The journal lost entries before logwarden read them.
    SourceJournalGap => "source.journal_gap",
    /// API calls were refused (one record per client and minute).
    ApiDenied => "api.denied",
    /// An admin accepted a cut or rewritten audit chain as the new start.
    AuditDiscrepancyAccepted => "audit.discrepancy_accepted",
}

impl AuditEvent {
    /// The SOC 2 controls this event is evidence for; `details` are the record's details
    /// (a transition's target decides its control, and reaching an external party adds
    /// CC2.3).
    ///
    /// CC7.2 detection, CC7.3 evaluation and classification, CC7.4 response (containment,
    /// eradication, communication), CC7.5 recovery and review, CC2.3 communication with
    /// external parties, CC8.1 changes to detection rules, CC6.1 logical access (refused
    /// API calls). Every event maps to at least one (a unit test checks it).
    pub fn controls(self, details: &Value) -> Vec<String> {
        use AuditEvent::*;
        let mut controls: Vec<&str> = match self {
            IncidentOpened => vec!["CC7.2", "CC7.3"],
            IncidentUpdated => vec!["CC7.2"],
            IncidentSeverityChanged => vec!["CC7.3"],
            IncidentEscalated => vec!["CC7.4"],
            IncidentTransitioned => match details["to"].as_str() {
                Some("acknowledged" | "false_positive") => vec!["CC7.3"],
                Some("contained" | "eradicated") => vec!["CC7.4"],
                Some("recovered" | "closed") => vec!["CC7.5"],
                _ => vec!["CC7.4"],
            },
            IncidentNoted | IncidentRefused => vec!["CC7.4"],
            IncidentReviewed => vec!["CC7.5"],
            // Through containment and recovery to closed in one step.
            IncidentResolved => vec!["CC7.4", "CC7.5"],
            IncidentApproved => vec!["CC2.3"],
            NotificationDelivered
            | NotificationAttemptFailed
            | NotificationFailed
            | NotificationResent => vec!["CC7.4"],
            // Banning an attacker, lifting the ban, and refusing or holding one.
            ContainmentRequested
            | ContainmentDryRun
            | ContainmentApplied
            | ContainmentReapplied
            | ContainmentFailed
            | ContainmentRefused
            | ContainmentHeld
            | ContainmentApproved
            | ContainmentReleaseRequested
            | ContainmentReleased
            | ContainmentUndoFailed => vec!["CC7.4"],
            SilenceCreated | SilenceExpired | SilenceWindowOpened | SilenceWindowClosed => {
                vec!["CC7.3"]
            }
            RulesLoaded | RulesReloaded | RulesReloadFailed => vec!["CC8.1"],
            // A source that may have missed entries is a hole in monitoring coverage.
            SourceJournalGap => vec!["CC7.2"],
            ApiDenied => vec!["CC6.1"],
            // The evidence itself was found cut or rewritten, and an admin accepted it.
            AuditDiscrepancyAccepted => vec!["CC7.2"],
        };
        if details["external"].as_bool() == Some(true) && !controls.contains(&"CC2.3") {
            controls.push("CC2.3");
        }
        controls.into_iter().map(str::to_string).collect()
    }
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for AuditEvent {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The event name of a stored record: one this release knows, or one it does not.
///
/// Only [`Deserialize`] and [`RecordedEvent::from_name`] make an unknown one: a new record is
/// sealed from an [`AuditEvent`] (see [`super::Entry`]), so it always names controls. An
/// unknown name is kept byte for byte, so the record's hash still verifies and exports still
/// show it; it is evidence for no control this release knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent(Name);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Known(AuditEvent),
    Unknown(String),
}

impl RecordedEvent {
    /// The event a stored name stands for; a name this release does not know is kept as read.
    pub fn from_name(name: &str) -> RecordedEvent {
        RecordedEvent(match AuditEvent::parse(name) {
            Some(event) => Name::Known(event),
            None => Name::Unknown(name.to_string()),
        })
    }

    /// The event, when this release knows it.
    pub fn known(&self) -> Option<AuditEvent> {
        match self.0 {
            Name::Known(event) => Some(event),
            Name::Unknown(_) => None,
        }
    }

    /// The name as stored: records written by another release verify with their own names.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Name::Known(event) => event.as_str(),
            Name::Unknown(name) => name,
        }
    }
}

impl From<AuditEvent> for RecordedEvent {
    fn from(event: AuditEvent) -> Self {
        RecordedEvent(Name::Known(event))
    }
}

impl PartialEq<AuditEvent> for RecordedEvent {
    fn eq(&self, other: &AuditEvent) -> bool {
        self.known() == Some(*other)
    }
}

crate::base::names::stored_name!(RecordedEvent);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_event_round_trips_through_its_stored_name() {
        let mut names = std::collections::BTreeSet::new();
        for &event in AuditEvent::ALL {
            assert_eq!(AuditEvent::parse(event.as_str()), Some(event));
            let stored = serde_json::to_string(&RecordedEvent::from(event)).unwrap();
            assert_eq!(stored, format!("\"{}\"", event.as_str()));
            let read: RecordedEvent = serde_json::from_str(&stored).unwrap();
            assert_eq!(read.known(), Some(event));
            assert!(names.insert(event.as_str()), "{event} named twice");
        }
    }

    #[test]
    fn every_event_is_evidence_for_at_least_one_control() {
        for &event in AuditEvent::ALL {
            assert!(
                !event.controls(&json!({})).is_empty(),
                "{event} maps to no control"
            );
        }
        // A transition's control follows its target, and an outside party adds CC2.3.
        let to = |s: &str| AuditEvent::IncidentTransitioned.controls(&json!({ "to": s }));
        assert_eq!(to("false_positive"), ["CC7.3"]);
        assert_eq!(to("eradicated"), ["CC7.4"]);
        assert_eq!(to("recovered"), ["CC7.5"]);
        assert_eq!(
            AuditEvent::IncidentApproved.controls(&json!({"external": true})),
            ["CC2.3"]
        );
    }

    #[test]
    fn an_unknown_stored_name_reads_back_as_written_and_names_no_event() {
        let read: RecordedEvent = serde_json::from_str("\"incident.teleported\"").unwrap();
        assert_eq!(read.known(), None);
        assert_eq!(read.as_str(), "incident.teleported");
        assert_eq!(
            serde_json::to_string(&read).unwrap(),
            "\"incident.teleported\""
        );
        assert!(serde_json::from_str::<RecordedEvent>("7").is_err());
        assert_eq!(AuditEvent::parse("incident.opened "), None);
    }
}
