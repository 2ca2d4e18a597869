//! Running the daemon: one wiring place building every component the same way, one
//! shutdown stopping the stages in the order data flows, and hot reload.

pub mod daemon;
pub mod reload;
