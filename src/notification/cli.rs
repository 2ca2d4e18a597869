//! `logwarden notifications dead|resend`: the dead-letter client of the HTTP API.

use clap::{Args, Subcommand};
use std::process::ExitCode;

/// Where the API is and who is asking.
#[derive(Args, Debug)]
pub struct NotificationsArgs {
    /// Base URL of the daemon's HTTP API.
    #[arg(
        long,
        env = "LOGWARDEN_URL",
        default_value = "http://127.0.0.1:9733",
        global = true
    )]
    pub url: String,
    /// Bearer token.
    #[arg(long, env = "LOGWARDEN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logwarden: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let (method, path) = match &args.command {
            NotificationsCommand::Dead { .. } => ("GET", "/api/v1/notifications/dead".to_string()),
            NotificationsCommand::Resend { id } => {
                ("POST", format!("/api/v1/notifications/dead/{id}/resend"))
            }
        };
        let (status, body) = match call(&args, method, &path).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("logwarden: {e}");
                return ExitCode::from(2);
            }
        };
        if !status.is_success() {
            let reason = body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_string);
            eprintln!("logwarden: {status}: {reason}");
            return ExitCode::from(1);
        }
        match args.command {
            NotificationsCommand::Dead { json: true } => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                )
            }
            NotificationsCommand::Dead { json: false } => print_table(&body),
            NotificationsCommand::Resend { id } => println!(
                "dead letter {id} re-sent as {} (idempotency key {})",
                body["id"],
                body["idempotency_key"].as_str().unwrap_or("?")
            ),
        }
        ExitCode::SUCCESS
    })
}

async fn call(
    args: &NotificationsArgs,
    method: &str,
    path: &str,
) -> Result<(reqwest::StatusCode, serde_json::Value), String> {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let mut request = match method {
        "POST" => client.post(&url),
        _ => client.get(&url),
    };
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", args.url))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok((status, body))
}

fn print_table(body: &serde_json::Value) {
    let rows = body.as_array().cloned().unwrap_or_default();
    println!(
        "{:<20}  {:<16}  {:<10}  {:<16}  {:>8}  {:<24}  LAST ERROR",
        "ID", "RECEIVER", "INCIDENT", "EVENT", "ATTEMPTS", "DEAD AT"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        println!(
            "{:<20}  {:<16}  {:<10}  {:<16}  {:>8}  {:<24}  {}",
            r["id"],
            s("receiver"),
            s("incident"),
            s("event"),
            r["attempts"],
            s("dead_at"),
            s("last_error")
        );
    }
}
