//! `logwarden notifications dead|resend`: the dead-letter client of the HTTP API.

use super::client::{self, ApiArgs};
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// `logwarden notifications ...`.
#[derive(Args, Debug)]
pub struct NotificationsArgs {
    /// Where the API is and who is asking.
    #[command(flatten)]
    pub api: ApiArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: NotificationsCommand,
}

/// Dead-letter operations.
#[derive(Subcommand, Debug)]
pub enum NotificationsCommand {
    /// List notifications given up on (kept as dead letters).
    Dead {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead letter back in the outbox (same idempotency key and body).
    Resend {
        /// Dead letter id, as listed by `dead`.
        id: u64,
    },
}

/// Runs a `notifications` subcommand: exit 0 on success, 1 when the server refused, 2 when
/// it could not be asked.
pub fn run(args: NotificationsArgs) -> ExitCode {
    match args.command {
        NotificationsCommand::Dead { json } => client::run(
            &args.api,
            "GET",
            "/api/v1/notifications/dead",
            None,
            client::show(json, print_table),
        ),
        NotificationsCommand::Resend { id } => client::run(
            &args.api,
            "POST",
            &format!("/api/v1/notifications/dead/{id}/resend"),
            None,
            |body| {
                crate::outln!(
                    "dead letter {id} re-sent as {} (idempotency key {})",
                    body["id"],
                    body["idempotency_key"].as_str().unwrap_or("?")
                )
            },
        ),
    }
}

fn print_table(body: &serde_json::Value) {
    let rows: Vec<Vec<String>> = body
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            [
                "id",
                "receiver",
                "incident",
                "event",
                "attempts",
                "dead_at",
                "last_error",
            ]
            .iter()
            .map(|f| client::text(r, f))
            .collect()
        })
        .collect();
    client::print_table(
        &[
            "ID",
            "RECEIVER",
            "INCIDENT",
            "EVENT",
            "ATTEMPTS",
            "DEAD AT",
            "LAST ERROR",
        ],
        &rows,
    );
}
