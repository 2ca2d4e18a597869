//! logwarden: a daemon that turns host logs into classified, escalated, evidenced incidents.
//!
//! The modules below are the stages of the flow, top-down; each imports only the stages
//! above it (and [`base`], the small leaf helpers). Lines come in through [`sources`], are
//! matched by [`detection`] against the [`rules`] the [`config`] names, and fold into
//! [`incidents`]; [`response`] decides escalation, silences and containment, [`notification`]
//! tells people, the [`audit`] log records every step, and [`writer`] commits it all to the
//! [`store`] in one batch. [`api`] serves it over HTTP, [`runtime`] wires the daemon, and
//! [`cli`] is everything a person types.

// small leaf helpers
pub mod base;
// the durable store
pub mod store;
// rule files
pub mod rules;
// the daemon config
pub mod config;
// lines matched against rules
pub mod detection;
// the incident record and book
pub mod incidents;
// the hash-chained audit log
pub mod audit;
// every metric
pub mod metrics;
// input
pub mod sources;
// events in, effects out
pub mod response;
// detector + book + clock
pub mod engine;
// telling people
pub mod notification;
// the state machine and the desk
pub mod lifecycle;
// the single writer
pub mod writer;
// HTTP
pub mod api;
// the daemon's wiring
pub mod runtime;
// everything a person types
pub mod cli;
