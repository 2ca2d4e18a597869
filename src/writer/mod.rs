//! The single writer: a batch of lines becomes one atomic commit, and older state
//! directories are rewritten before the first one.

pub mod pipeline;
pub mod upgrade;
