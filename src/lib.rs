//! logwarden: a daemon that turns host logs into classified, escalated, evidenced incidents.
//!
//! Data flows one way: [`sources`] read lines → [`detection`] evaluates [`rules`] →
//! [`incidents`] opens or updates incidents → [`pipeline`] stores them in the [`store`] →
//! [`notification`] tells people; [`api`] and [`metrics`] show the state.

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod containment;
pub mod daemon;
pub mod detection;
pub mod diag;
pub mod drill;
pub mod due;
pub mod duration;
pub mod engine;
pub mod escalation;
pub mod evidence;
pub mod health;
pub mod host;
pub mod http;
pub mod ids;
pub mod incidents;
pub mod lifecycle;
pub mod line;
pub mod logging;
pub mod metrics;
mod names;
pub mod notification;
pub mod output;
pub mod pipeline;
pub mod ready;
pub mod recidive;
pub mod reload;
pub mod rules;
pub mod shutdown;
pub mod signing;
pub mod silences;
pub mod sla;
pub mod sources;
pub mod store;
pub mod supervise;
pub mod tools;
pub mod upgrade;
pub mod yaml;
pub mod zip;
