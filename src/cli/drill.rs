//! `logwarden drill --rule ID`: asks the live daemon to open a drill incident, so the whole
//! response path (escalation, notification, audit) can be exercised on demand.

use super::client::{self, ApiArgs, text};
use clap::Args;
use serde_json::json;
use std::process::ExitCode;

/// `logwarden drill --rule ID`.
#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Where the API is and who is asking.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The rule whose response path to exercise.
    #[arg(long)]
    pub rule: String,
    /// Print the drill incident as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Opens a drill incident through the live daemon and says which one.
pub fn drill(args: DrillArgs) -> ExitCode {
    client::run(
        &args.api,
        "POST",
        "/api/v1/drills",
        Some(json!({ "rule": args.rule })),
        client::show(args.json, |incident| {
            crate::outln!(
                "{}: drill for {} opened ({}); follow it with `logwarden incidents show {}`",
                text(incident, "id"),
                text(incident, "rule"),
                text(incident, "summary"),
                text(incident, "id")
            );
        }),
    )
}
