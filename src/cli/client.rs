//! The HTTP client behind the CLI's API subcommands (`incidents`, `silences`,
//! `notifications`): one place for the URL and token flags, timeouts and the exit codes
//! (0 success, 1 the server refused and its reason is printed, 2 it could not be asked).

use clap::Args;
use serde_json::Value;
use std::process::ExitCode;

/// Where the API is and who is asking.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
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
}

/// Makes one call and hands a successful answer's JSON to `show`; prints the server's
/// reason and exits 1 when it refused, exits 2 when it could not be reached.
pub fn run(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
    show: impl FnOnce(Value),
) -> ExitCode {
    run_with(show, call(api, method, path, body))
}

/// GETs every page of a paged list (`path` with or without a query; pages are asked for
/// with `after=` the last item's `id` until one comes back short) and hands the whole list
/// to `show`, like [`run`].
pub fn run_paged(api: &ApiArgs, path: &str, page: usize, show: impl FnOnce(Value)) -> ExitCode {
    let all = async {
        let mut items = Vec::new();
        let glue = if path.contains('?') { '&' } else { '?' };
        let mut next = format!("{path}{glue}limit={page}");
        loop {
            let (status, answer) = call(api, "GET", &next, None).await?;
            let Some(list) = answer.as_array().filter(|_| status.is_success()) else {
                return Ok((status, answer));
            };
            items.extend(list.iter().cloned());
            match list.last().and_then(|last| last["id"].as_str()) {
                Some(last) if list.len() == page => {
                    next = format!("{path}{glue}limit={page}&after={last}")
                }
                _ => return Ok((status, Value::Array(items))),
            }
        }
    };
    run_with(show, all)
}

/// Runs one client request to its end and shows its answer, like [`run`].
fn run_with(
    show: impl FnOnce(Value),
    request: impl std::future::Future<Output = Result<(reqwest::StatusCode, Value), ClientError>>,
) -> ExitCode {
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
    let (status, answer) = match runtime.block_on(request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("logwarden: {e}");
            return ExitCode::from(2);
        }
    };
    if !status.is_success() {
        let reason = answer["error"]
            .as_str()
            .map_or_else(|| answer.to_string(), str::to_string);
        eprintln!("logwarden: {status}: {reason}");
        return ExitCode::from(1);
    }
    show(answer);
    ExitCode::SUCCESS
}

/// Why the API could not be asked (exit code 2); a refusal by the server is an answer, not
/// one of these.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP client could not be built (no TLS backend, for one).
    #[error("{0}")]
    Setup(reqwest::Error),
    /// A subcommand asked for a method HTTP does not have: a bug, named so it is found.
    #[error("invalid HTTP method {0:?}")]
    Method(String),
    /// Nothing answered at the URL; the causes (`connection refused`) say why.
    #[error("cannot reach {url}: {causes}")]
    Unreachable {
        /// The `--url` given.
        url: String,
        /// The error with its causes.
        causes: String,
    },
    /// The answer broke off while being read.
    #[error("{0}")]
    Answer(reqwest::Error),
}

/// One request: the status and the body as JSON (a string when it is not JSON).
pub async fn call(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(reqwest::StatusCode, Value), ClientError> {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(ClientError::Setup)?;
    let url = format!("{}{path}", api.url.trim_end_matches('/'));
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| ClientError::Method(method.to_string()))?;
    let mut request = client.request(method, &url);
    if let Some(token) = &api.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| ClientError::Unreachable {
        url: api.url.clone(),
        causes: causes(&e),
    })?;
    let status = response.status();
    let text = response.text().await.map_err(ClientError::Answer)?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// Prints an answer as indented JSON on stdout (what `--json` gives scripts to parse).
pub fn print_json(value: &Value) {
    crate::outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// What every subcommand does with an answer: JSON for scripts when `--json` was given,
/// otherwise the subcommand's own text for people.
pub fn show(json: bool, human: impl FnOnce(&Value)) -> impl FnOnce(Value) {
    move |body| {
        if json {
            print_json(&body)
        } else {
            human(&body)
        }
    }
}

/// A string field, empty when absent.
pub fn text(value: &Value, field: &str) -> String {
    match &value[field] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A time field to the second (`2026-11-22T10:00:01Z`): the API keeps nanoseconds, people
/// do not read them. Text that is not a time is shown as it is.
pub fn time(value: &Value, field: &str) -> String {
    let raw = text(value, field);
    chrono::DateTime::parse_from_rfc3339(&raw)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        })
        .unwrap_or(raw)
}

/// The table rows of a JSON array answer, one per element; anything else has none.
pub fn rows(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array().into_iter().flatten().map(row).collect()
}

/// Prints rows as a table with columns as wide as their widest cell (the last column is
/// not padded).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let out: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<width$}", width = widths[i])
                }
            })
            .collect();
        crate::outln!("{}", out.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// An error with its causes (`error sending request: connection refused`), which reqwest's
/// own message leaves out.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Percent-encodes a path segment or query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
