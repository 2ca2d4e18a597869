//! `logwarden incidents list|show|ack|transition|note|review|approve|resolve|release`: the incident client
//! of the HTTP API, with tables for people and `--json` for scripts.

use super::client::{self, ApiArgs, encode, text, time};
use crate::incidents::State;
use crate::rules::Severity;
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::process::ExitCode;

/// `logwarden incidents ...`.
#[derive(Args, Debug)]
pub struct IncidentsArgs {
    /// Where the API is and who is asking.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the API's JSON instead of tables and sentences.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: IncidentsCommand,
}

/// Incident operations.
#[derive(Subcommand, Debug)]
pub enum IncidentsCommand {
    /// List incidents.
    List {
        /// Only this state.
        #[arg(long, value_parser = states(&State::ALL))]
        state: Option<String>,
        /// Only this severity.
        #[arg(long, value_parser = PossibleValuesParser::new(Severity::ALL.map(Severity::as_str)))]
        severity: Option<String>,
        /// Only this rule.
        #[arg(long)]
        rule: Option<String>,
    },
    /// One incident with its evidence and timeline.
    Show {
        /// `INC-<n>`.
        id: String,
    },
    /// Take an incident on (open → acknowledged).
    Ack {
        /// `INC-<n>`.
        id: String,
        /// Free text for the timeline.
        #[arg(long)]
        note: Option<String>,
    },
    /// Move an incident to `acknowledged`, `contained`, `eradicated`, `recovered`,
    /// `closed` or `false_positive`.
    Transition {
        /// `INC-<n>`.
        id: String,
        /// Target state.
        #[arg(value_parser = states(&State::ALL[1..]))]
        state: String,
        /// Free text for the timeline.
        #[arg(long)]
        note: Option<String>,
    },
    /// Add a note to the timeline.
    Note {
        /// `INC-<n>`.
        id: String,
        /// The note.
        text: String,
    },
    /// Record the post-incident review (required to close high and critical incidents).
    Review {
        /// `INC-<n>`.
        id: String,
        /// Why it happened.
        #[arg(long)]
        root_cause: String,
        /// What was learned.
        #[arg(long)]
        lessons: String,
        /// A follow-up action (repeatable).
        #[arg(long = "action")]
        actions: Vec<String>,
    },
    /// Close an incident in one recorded step (low and moderate incidents; high and critical
    /// ones once reviewed), passing through the states not yet reached.
    Resolve {
        /// `INC-<n>`.
        id: String,
        /// Free text for the timeline.
        #[arg(long)]
        note: Option<String>,
    },
    /// Lift the incident's containments (bans) now.
    Release {
        /// `INC-<n>`.
        id: String,
        /// Free text for the timeline.
        #[arg(long)]
        note: Option<String>,
    },
    /// Approve notifying the external roles of the incident's escalation policy (and the
    /// containment actions that wait for approval).
    Approve {
        /// `INC-<n>`.
        id: String,
        /// Free text for the timeline.
        #[arg(long)]
        note: Option<String>,
    },
}

/// The names of `states`, as the choices of an argument.
fn states(states: &[State]) -> PossibleValuesParser {
    PossibleValuesParser::new(states.iter().map(|s| s.as_str()))
}

/// Runs an `incidents` subcommand: 0 done, 1 refused (the server's reason is printed),
/// 2 the API could not be asked.
pub fn run(args: IncidentsArgs) -> ExitCode {
    let json_out = args.json;
    let post = |id: &str, what: &str, body: Value| {
        client::run(
            &args.api,
            "POST",
            &format!("/api/v1/incidents/{}/{what}", encode(id)),
            Some(body),
            client::show(json_out, |incident| {
                let last = incident["timeline"]
                    .as_array()
                    .and_then(|t| t.last())
                    .map(|e| text(e, "event"))
                    .unwrap_or_default();
                crate::outln!(
                    "{}: {last} (state {})",
                    text(incident, "id"),
                    text(incident, "state")
                );
            }),
        )
    };
    match &args.command {
        IncidentsCommand::List {
            state,
            severity,
            rule,
        } => {
            let query: Vec<String> = [("state", state), ("severity", severity), ("rule", rule)]
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
                .collect();
            let path = if query.is_empty() {
                "/api/v1/incidents".to_string()
            } else {
                format!("/api/v1/incidents?{}", query.join("&"))
            };
            client::run_paged(
                &args.api,
                &path,
                crate::api::DEFAULT_PAGE,
                client::show(json_out, print_list),
            )
        }
        IncidentsCommand::Show { id } => client::run(
            &args.api,
            "GET",
            &format!("/api/v1/incidents/{}", encode(id)),
            None,
            client::show(json_out, print_incident),
        ),
        IncidentsCommand::Ack { id, note } => post(id, "ack", json!({ "note": note })),
        IncidentsCommand::Transition { id, state, note } => {
            post(id, "transition", json!({ "to": state, "note": note }))
        }
        IncidentsCommand::Note { id, text } => post(id, "note", json!({ "text": text })),
        IncidentsCommand::Review {
            id,
            root_cause,
            lessons,
            actions,
        } => post(
            id,
            "review",
            json!({"root_cause": root_cause, "lessons_learned": lessons, "actions": actions}),
        ),
        IncidentsCommand::Approve { id, note } => post(id, "approve", json!({ "note": note })),
        IncidentsCommand::Resolve { id, note } => post(id, "resolve", json!({ "note": note })),
        IncidentsCommand::Release { id, note } => post(id, "release", json!({ "note": note })),
    }
}

fn key_text(key: &Value) -> String {
    key.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn print_list(body: &Value) {
    let rows = client::rows(body, |i| {
        let state = match i["silenced_by"].as_str() {
            Some(silence) => format!("{} (silenced by {silence})", text(i, "state")),
            None => text(i, "state"),
        };
        vec![
            text(i, "id"),
            state,
            text(i, "severity"),
            text(i, "rule"),
            text(i, "count"),
            key_text(&i["key"]),
            time(i, "opened_at"),
            text(i, "summary"),
        ]
    });
    client::print_table(
        &[
            "ID", "STATE", "SEVERITY", "RULE", "COUNT", "KEY", "OPENED", "SUMMARY",
        ],
        &rows,
    );
}

fn print_incident(i: &Value) {
    crate::outln!(
        "{}  {}  [{}]  {}",
        text(i, "id"),
        text(i, "state"),
        text(i, "severity"),
        text(i, "summary")
    );
    let fields = [
        ("rule", text(i, "rule")),
        ("category", text(i, "category")),
        ("key", key_text(&i["key"])),
        ("count", text(i, "count")),
        ("first seen", time(i, "first_seen")),
        ("last seen", time(i, "last_seen")),
        ("opened", time(i, "opened_at")),
        ("escalation", text(i, "escalation")),
        (
            "controls",
            i["controls"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|v| v.as_str().unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        ),
        ("rule set", text(i, "ruleset_version")),
    ];
    for (name, value) in fields {
        crate::outln!("  {name:<11} {value}");
    }
    if let Some(a) = i["approval"].as_object() {
        crate::outln!(
            "  {:<11} by {} at {}",
            "approved",
            text(&Value::Object(a.clone()), "by"),
            time(&Value::Object(a.clone()), "at")
        );
    }
    if let Some(r) = i.get("review").filter(|r| r.is_object()) {
        crate::outln!("\nReview by {} at {}", text(r, "by"), time(r, "at"));
        crate::outln!("  root cause:      {}", text(r, "root_cause"));
        crate::outln!("  lessons learned: {}", text(r, "lessons_learned"));
        for a in r["actions"].as_array().into_iter().flatten() {
            crate::outln!("  action:          {}", a.as_str().unwrap_or_default());
        }
    }
    let evidence = i["evidence"].as_array().cloned().unwrap_or_default();
    if !evidence.is_empty() {
        crate::outln!("\nEvidence ({} lines kept)", evidence.len());
        for e in &evidence {
            // `offset` is the line's byte offset in the file, not a line number.
            crate::outln!(
                "  {}  {} (byte {})  {}",
                time(e, "time"),
                text(e, "path"),
                text(e, "offset"),
                text(e, "line")
            );
        }
    }
    crate::outln!("\nTimeline");
    let rows = client::rows(&i["timeline"], |e| {
        vec![
            time(e, "at"),
            text(e, "event"),
            text(e, "actor"),
            text(e, "note"),
        ]
    });
    client::print_table(&["AT", "EVENT", "ACTOR", "NOTE"], &rows);
}
