//! Small leaf helpers every stage may use: they import nothing of logwarden above them.

pub mod diag;
pub mod due;
pub mod duration;
pub mod evidence;
pub mod health;
pub mod host;
pub mod ids;
pub mod line;
pub mod logging;
pub(crate) mod names;
pub mod output;
pub mod ready;
pub mod shutdown;
pub mod signing;
pub mod supervise;
pub mod yaml;
pub mod zip;
