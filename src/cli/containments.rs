//! `logwarden containments list`: the containments (bans) in the store, through the HTTP API.

use super::client::{self, ApiArgs, text, time};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::process::ExitCode;

/// `logwarden containments ...`.
#[derive(Args, Debug)]
pub struct ContainmentsArgs {
    /// Where the API is and who is asking.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: ContainmentsCommand,
}

/// Containment operations.
#[derive(Subcommand, Debug)]
pub enum ContainmentsCommand {
    /// List containments: what is banned, for which incident, allowed by whom, until when.
    List {
        /// Only this status (held, pending, active, releasing, released, refused, failed,
        /// dry_run).
        #[arg(long)]
        status: Option<String>,
    },
}

/// Runs a `containments` subcommand: 0 done, 1 refused, 2 the API could not be asked.
pub fn run(args: ContainmentsArgs) -> ExitCode {
    match &args.command {
        ContainmentsCommand::List { status } => {
            let path = match status {
                Some(s) => format!("/api/v1/containments?status={}", client::encode(s)),
                None => "/api/v1/containments".to_string(),
            };
            client::run(
                &args.api,
                "GET",
                &path,
                None,
                client::show(args.json, print_list),
            )
        }
    }
}

fn print_list(body: &Value) {
    let rows = client::rows(body, |c| {
        vec![
            text(c, "incident"),
            text(c, "action"),
            text(c, "target"),
            text(c, "status"),
            text(c, "allowed_by"),
            time(c, "applied_at"),
            time(c, "until"),
            text(c, "reason"),
        ]
    });
    client::print_table(
        &[
            "INCIDENT",
            "ACTION",
            "TARGET",
            "STATUS",
            "ALLOWED BY",
            "APPLIED",
            "UNTIL",
            "REASON",
        ],
        &rows,
    );
}
