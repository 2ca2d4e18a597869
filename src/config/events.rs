//! The names of incident events receivers subscribe to (`events:` of a receiver). They
//! live with the config because the config validates them by name; the incident book
//! (re-exported as `incidents::EventKind`) produces them.

use serde::{Deserialize, Serialize};

/// Something that happened to an incident that people may need to hear about.
///
/// Receivers choose among these by name (`events:` in the config), so the names are part of
/// the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new incident.
    Opened,
    /// The severity tier rose.
    SeverityChanged,
    /// More matches were counted.
    Updated,
    /// The escalation policy moved on to its next step.
    Escalated,
    /// Someone took the incident on.
    Acknowledged,
    /// The lifecycle state changed (contained, eradicated, recovered, ...).
    StateChanged,
    /// The incident is over; pagers must be resolved.
    Closed,
    /// Not an incident's: a signed audit chain head (`audit.anchor_every`), for receivers
    /// that keep heads outside the host (`events: [audit_head]`).
    AuditHead,
}

impl EventKind {
    /// The event name in notifications.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::SeverityChanged => "severity_changed",
            EventKind::Updated => "updated",
            EventKind::Escalated => "escalated",
            EventKind::Acknowledged => "acknowledged",
            EventKind::StateChanged => "state_changed",
            EventKind::Closed => "closed",
            EventKind::AuditHead => "audit_head",
        }
    }
}
