//! `logwarden silences add|list|expire`: the silence client of the HTTP API.

use super::client::{self, ApiArgs, encode, text, time};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use std::process::ExitCode;

/// `logwarden silences ...`.
#[derive(Args, Debug)]
pub struct SilencesArgs {
    /// Where the API is and who is asking.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the API's JSON instead of tables and sentences.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: SilencesCommand,
}

/// Silence operations.
#[derive(Subcommand, Debug)]
// Parsed once per run: the size of `Add` costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum SilencesCommand {
    /// Create a silence (needs an approver token).
    Add {
        /// Only incidents of this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Only incidents whose key has NAME=VALUE (repeatable).
        #[arg(long = "key", value_name = "NAME=VALUE")]
        keys: Vec<String>,
        /// Only incidents whose rule has label NAME=VALUE (repeatable).
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
        /// How long from now, e.g. `2h` (with --days: how long the recurrence lasts).
        #[arg(
            long,
            conflicts_with = "until",
            required_unless_present_any = ["until", "days"],
            value_parser = duration
        )]
        duration: Option<String>,
        /// When it ends (RFC 3339; with --days: the end date of the recurrence, at most
        /// ten years ahead, which is also the default).
        #[arg(long)]
        until: Option<String>,
        /// Recurring: the days a window starts on, e.g. `sat,sun` (mon … sun).
        #[arg(long, value_delimiter = ',', requires_all = ["from", "to", "time_zone"])]
        days: Vec<String>,
        /// Recurring: local start time of each window, `HH:MM`.
        #[arg(long, requires = "days")]
        from: Option<String>,
        /// Recurring: local end time, `HH:MM` (at or before --from: the next day; `24:00`
        /// the end of the day).
        #[arg(long, requires = "days")]
        to: Option<String>,
        /// Recurring: the zone the times are in, e.g. `Europe/Berlin` (from the system's tz
        /// database).
        #[arg(long, requires = "days")]
        time_zone: Option<String>,
        /// Why the exception is granted.
        #[arg(long)]
        reason: String,
    },
    /// List silences, newest first.
    List,
    /// End a silence now.
    Expire {
        /// `SIL-<n>`.
        id: String,
    },
}

fn pairs(items: &[String], what: &str) -> Result<Map<String, Value>, String> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .ok_or_else(|| format!("--{what} {item:?} is not NAME=VALUE"))
        })
        .collect()
}

/// Runs a `silences` subcommand: 0 done, 1 refused (the server's reason is printed), 2 the
/// API could not be asked or the arguments are wrong.
/// Checks a `--duration` before anything is sent (`500ms`, `30s`, `5m`, `1h`, `7d`).
fn duration(text: &str) -> Result<String, crate::base::duration::DurationError> {
    crate::base::duration::HumanDuration::parse(text).map(|_| text.to_string())
}

pub fn run(args: SilencesArgs) -> ExitCode {
    let json_out = args.json;
    match &args.command {
        SilencesCommand::Add {
            rule,
            keys,
            labels,
            duration,
            until,
            days,
            from,
            to,
            time_zone,
            reason,
        } => {
            let (keys, labels) = match (pairs(keys, "key"), pairs(labels, "label")) {
                (Ok(k), Ok(l)) => (k, l),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("logwarden: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut matchers = json!({});
            if let Some(rule) = rule {
                matchers["rule"] = rule.clone().into();
            }
            if !keys.is_empty() {
                matchers["key"] = Value::Object(keys);
            }
            if !labels.is_empty() {
                matchers["labels"] = Value::Object(labels);
            }
            let mut body = json!({"matchers": matchers, "reason": reason});
            if !days.is_empty() {
                body["schedule"] =
                    json!({"days": days, "from": from, "to": to, "time_zone": time_zone});
            }
            if let Some(d) = duration {
                body["duration"] = d.clone().into();
            }
            if let Some(u) = until {
                match crate::audit::parse_time(u) {
                    Ok(t) => body["ends_at"] = t.to_rfc3339().into(),
                    Err(e) => {
                        eprintln!("logwarden: --until: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            client::run(
                &args.api,
                "POST",
                "/api/v1/silences",
                Some(body),
                client::show(json_out, show_one),
            )
        }
        SilencesCommand::List => client::run(
            &args.api,
            "GET",
            "/api/v1/silences",
            None,
            client::show(json_out, |body| {
                let rows: Vec<Vec<String>> = body
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(list_row)
                    .collect();
                client::print_table(
                    &[
                        "ID", "STATE", "STARTS", "ENDS", "AUTHOR", "MATCHERS", "SCHEDULE", "REASON",
                    ],
                    &rows,
                );
            }),
        ),
        SilencesCommand::Expire { id } => client::run(
            &args.api,
            "DELETE",
            &format!("/api/v1/silences/{}", encode(id)),
            None,
            client::show(json_out, show_one),
        ),
    }
}

/// One silence as `add` and `expire` print it: its state and end, and its next window when
/// it recurs.
fn show_one(s: &Value) {
    // An expired silence ended when it was expired, not at its planned end.
    let (word, end) = match s["expired_at"].as_str() {
        Some(_) => ("ended at", time(s, "expired_at")),
        None => ("until", time(s, "ends_at")),
    };
    crate::outln!("{}: {} {word} {end}", text(s, "id"), text(s, "state"));
    if s["schedule"].is_object() {
        crate::outln!(
            "  {}; next window: {}",
            schedule_text(&s["schedule"]),
            window_text(s)
        );
    }
}

/// One row of `silences list`.
fn list_row(s: &Value) -> Vec<String> {
    vec![
        text(s, "id"),
        text(s, "state"),
        time(s, "starts_at"),
        match s["expired_at"].as_str() {
            Some(_) => time(s, "expired_at"),
            None => time(s, "ends_at"),
        },
        text(s, "author"),
        matchers_text(&s["matchers"]),
        if s["schedule"].is_object() {
            format!("{}; next {}", schedule_text(&s["schedule"]), window_text(s))
        } else {
            "-".to_string()
        },
        text(s, "reason"),
    ]
}

fn matchers_text(m: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(rule) = m["rule"].as_str() {
        parts.push(format!("rule={rule}"));
    }
    for (field, prefix) in [("key", ""), ("labels", "label:")] {
        for (k, v) in m[field].as_object().into_iter().flatten() {
            parts.push(format!("{prefix}{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    parts.join(",")
}

/// `sat,sun 02:00-04:00 Europe/Berlin`.
fn schedule_text(schedule: &Value) -> String {
    let days: Vec<&str> = schedule["days"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "{} {}-{} {}",
        days.join(","),
        text(schedule, "from"),
        text(schedule, "to"),
        text(schedule, "time_zone")
    )
}

/// The window in effect or next, `START..END` (UTC), or `none` when none is left.
fn window_text(silence: &Value) -> String {
    let w = &silence["next_window"];
    if w.is_object() {
        format!("{}..{}", time(w, "starts_at"), time(w, "ends_at"))
    } else {
        "none".to_string()
    }
}
