//! What detection events call for, decided as values: escalation to roles, approved
//! silences, drills, containment actions, and repeat offenders fed back as input. Events
//! in, effects out; nothing here stores or sends.

pub mod containment;
pub mod drill;
pub mod escalation;
pub mod recidive;
pub mod silences;
