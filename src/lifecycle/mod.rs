//! The incident lifecycle and everything that happens to incidents after detection.
//!
//! States move `open → acknowledged → contained → eradicated → recovered → closed`, one
//! step at a time, or to `false_positive` from any active state; a high or critical
//! incident closes only after a post-incident review. Every change records its actor
//! (the API token's name), time and note in the timeline and the audit log.
//!
//! All changes are made on the pipeline thread, the only writer of incidents: the API sends
//! a [`Command`] and gets the answer once the incident, its notifications, its escalation
//! progress and its audit record are stored in one atomic batch and flushed.
//!
//! The parts, so each can be read alone: [`machine`] is the state machine (pure: an incident
//! and an action in, the changed incident or a refusal out); [`Desk`] holds what the pipeline
//! needs besides the incident book (escalation policies and progress, silences, containments,
//! the audit queue) and decides what detection events and the clock call for; [`commands`]
//! carries out API requests and containment outcomes through the desk; [`effects`] is what
//! the desk decided, for the single writer to commit. HTTP request bodies belong to `api`.

pub mod commands;
pub mod desk;
pub mod effects;
pub mod machine;

use crate::incidents::{Incident, State};
use crate::response::silences::NewSilence;
use crate::rules::Severity;
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::oneshot;

pub use crate::audit::DAEMON;
pub use desk::Desk;
pub use machine::{Applied, allowed_next, apply};

/// Why a command changed nothing; the API answers with the matching status and the
/// message as it is, so each message says what to do instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// No such incident or silence (404).
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the current state (409): recorded as `incident.refused`.
    #[error("{0}")]
    Conflict(String),
    /// A malformed request (400).
    #[error("{0}")]
    Invalid(String),
    /// The store failed (500).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Internal(e.to_string())
    }
}

/// What to do to an incident.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Take it on (`open → acknowledged`).
    Ack {
        /// The actor's words, kept in the timeline and the audit record as the reason.
        note: Option<String>,
    },
    /// Move it to another state.
    Transition {
        /// The state asked for; [`allowed_next`] decides whether it may be taken.
        to: State,
        /// The actor's words, kept in the timeline and the audit record as the reason.
        note: Option<String>,
    },
    /// Add a note to the timeline.
    Note {
        /// The note.
        text: String,
    },
    /// Record the post-incident review.
    Review {
        /// Why it happened.
        root_cause: String,
        /// What was learned.
        lessons_learned: String,
        /// Follow-up actions.
        actions: Vec<String>,
    },
    /// Allow notifying external roles.
    Approve {
        /// The actor's words, kept in the timeline and the audit record as the reason.
        note: Option<String>,
    },
    /// Close it in one recorded step, through the states not yet passed (where closing is
    /// allowed: low and moderate incidents, or high and critical ones with a review).
    Resolve {
        /// The actor's words, kept in the timeline and the audit record as the reason.
        note: Option<String>,
    },
    /// Lift its containments (bans) now.
    Release {
        /// The actor's words, kept in the timeline and the audit record as the reason.
        note: Option<String>,
    },
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Ack { .. } => "ack",
            Action::Transition { .. } => "transition",
            Action::Note { .. } => "note",
            Action::Review { .. } => "review",
            Action::Approve { .. } => "approve",
            Action::Resolve { .. } => "resolve",
            Action::Release { .. } => "release",
        }
    }
}

/// A change requested through the API.
#[derive(Debug)]
pub enum Request {
    /// Act on an incident.
    Incident {
        /// How the caller named it: its id (`INC-7`) or its fleet uid (`web1/INC-7`).
        id: String,
        /// The change asked for.
        action: Action,
    },
    /// Create a silence.
    CreateSilence(NewSilence),
    /// Expire a silence now.
    ExpireSilence(String),
    /// Open a drill incident for a rule (handled by the pipeline, which owns the rules).
    Drill {
        /// The rule whose response path the drill exercises.
        rule: String,
    },
}

/// A request with its actor and where the answer goes.
#[derive(Debug)]
pub struct Command {
    /// API token name: who is recorded as having acted.
    pub actor: String,
    /// What to do, checked by the pipeline, which alone owns the incidents.
    pub request: Request,
    /// The changed incident or silence as JSON, once durable; or why nothing changed.
    pub reply: oneshot::Sender<Result<Value, Refusal>>,
}

/// Which response time a KPI observation measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Opened → acknowledged.
    Acknowledge,
    /// Opened → contained.
    Contain,
    /// Opened → closed.
    Resolve,
}

/// A response-time observation for the KPI histograms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kpi {
    /// What is measured (time to acknowledge, contain, close).
    pub measure: Measure,
    /// The incident's severity: KPIs are kept per severity, as SLAs are.
    pub severity: Severity,
    /// Seconds since the incident opened.
    pub seconds: f64,
    /// A drill: observed under `drill="true"` so exercises do not move real figures.
    pub drill: bool,
}

impl Kpi {
    /// `measure` taken now for this incident: seconds since it opened.
    fn since_open(incident: &Incident, measure: Measure, now: DateTime<Utc>) -> Kpi {
        Kpi {
            measure,
            severity: incident.severity,
            seconds: (now - incident.opened_at).num_milliseconds().max(0) as f64 / 1000.0,
            drill: incident.drill,
        }
    }
}

/// What a command did, for the pipeline to finish once the batch is durable.
#[derive(Debug)]
pub struct Done {
    /// The answer the API sends back: the incident as it is after the command.
    pub reply: Value,
    /// KPIs to observe once the change is durable (never for a command that failed).
    pub kpis: Vec<Kpi>,
}

impl From<Measure> for crate::incidents::sla::Stage {
    // Here, beside the measures, so the SLA judge needs nothing from the lifecycle.
    /// The stage a response-time KPI measures.
    fn from(measure: Measure) -> crate::incidents::sla::Stage {
        use crate::incidents::sla::Stage;
        match measure {
            Measure::Acknowledge => Stage::Acknowledge,
            Measure::Contain => Stage::Contain,
            Measure::Resolve => Stage::Resolve,
        }
    }
}
