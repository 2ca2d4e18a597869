//! What an incident's timeline entries say happened.
//!
//! The timeline is what a responder reads and what the population export and the SLA judge
//! take step times from, so its kinds are an enum: a step recorded under a misspelled name
//! would silently drop out of both. The names are stored with every incident and shown by the
//! API; they never change. Entries read back from a store written by another release may
//! carry a name this one does not know: [`UnknownKind`] keeps it as written, and nothing in
//! this release can record one.

use super::State;

/// What a timeline entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineKind {
    /// Detection opened the incident.
    Opened,
    /// Its severity rose with its count.
    SeverityChanged,
    /// Matching lines came back after an absence.
    Resumed,
    /// An absence rule found the lines missing again.
    AbsentAgain,
    /// An escalation step fired.
    Escalated,
    /// A silence muted its notifications.
    Silenced,
    /// It moved to this lifecycle state (stored as the state's name).
    Moved(State),
    /// Someone added a note.
    Note,
    /// The post-incident review was recorded.
    Reviewed,
    /// Someone approved telling external receivers.
    Approved,
    /// Someone asked for its containments to be lifted.
    Release,
    /// It was closed in one step.
    Resolved,
    /// A containment was requested, approved, applied or failed.
    Containment,
    /// A containment was lifted (or dropped before approval).
    Released,
    /// It is a drill's synthetic incident.
    Drill,
    /// A name this release does not know, read back from the store.
    Unknown(UnknownKind),
}

/// A timeline name read back that this release does not know; only reading makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKind(String);

impl TimelineKind {
    /// The name stored and shown by the API.
    pub fn as_str(&self) -> &str {
        match self {
            TimelineKind::Opened => "opened",
            TimelineKind::SeverityChanged => "severity_changed",
            TimelineKind::Resumed => "resumed",
            TimelineKind::AbsentAgain => "absent_again",
            TimelineKind::Escalated => "escalated",
            TimelineKind::Silenced => "silenced",
            TimelineKind::Moved(state) => state.as_str(),
            TimelineKind::Note => "note",
            TimelineKind::Reviewed => "reviewed",
            TimelineKind::Approved => "approved",
            TimelineKind::Release => "release",
            TimelineKind::Resolved => "resolved",
            TimelineKind::Containment => "containment",
            TimelineKind::Released => "released",
            TimelineKind::Drill => "drill",
            TimelineKind::Unknown(UnknownKind(name)) => name,
        }
    }

    /// The kind a stored name stands for; an unknown name is kept as written.
    pub fn from_name(name: &str) -> TimelineKind {
        let known = [
            TimelineKind::Opened,
            TimelineKind::SeverityChanged,
            TimelineKind::Resumed,
            TimelineKind::AbsentAgain,
            TimelineKind::Escalated,
            TimelineKind::Silenced,
            TimelineKind::Note,
            TimelineKind::Reviewed,
            TimelineKind::Approved,
            TimelineKind::Release,
            TimelineKind::Resolved,
            TimelineKind::Containment,
            TimelineKind::Released,
            TimelineKind::Drill,
        ];
        let states = State::ALL.iter().map(|s| TimelineKind::Moved(*s));
        known
            .into_iter()
            .chain(states)
            .find(|k| k.as_str() == name)
            .unwrap_or_else(|| TimelineKind::Unknown(UnknownKind(name.to_string())))
    }
}

crate::base::names::stored_name!(TimelineKind);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_stored_name_and_unknown_names_read_back() {
        let names = [
            "opened",
            "severity_changed",
            "resumed",
            "absent_again",
            "escalated",
            "silenced",
            "note",
            "reviewed",
            "approved",
            "release",
            "resolved",
            "containment",
            "released",
            "drill",
            "acknowledged",
            "contained",
            "eradicated",
            "recovered",
            "closed",
            "false_positive",
        ];
        for name in names {
            let kind = TimelineKind::from_name(name);
            assert!(!matches!(kind, TimelineKind::Unknown(_)), "{name}");
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<TimelineKind>(&json).unwrap(), kind);
        }
        assert_eq!(
            TimelineKind::from_name("contained"),
            TimelineKind::Moved(State::Contained)
        );
        let old: TimelineKind = serde_json::from_str("\"teleported\"").unwrap();
        assert!(matches!(old, TimelineKind::Unknown(_)));
        assert_eq!(serde_json::to_string(&old).unwrap(), "\"teleported\"");
    }
}
