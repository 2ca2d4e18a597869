//! How one attempt reaches a receiver: a signed HTTP POST or a line appended to a file,
//! judged into an [`Outcome`].
//!
//! Apart from the lane (which decides when to attempt and what an outcome means for the
//! record) so that what goes over the wire, the signature and the secrets read for it sit
//! in one place.

use super::DeliveryError;
use crate::config::{SecretError, read_secret};
use crate::notification::Record;
use chrono::Utc;
use hmac::{Hmac, Mac};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Header carrying the Unix time (seconds) a signature was made at.
pub const TIMESTAMP_HEADER: &str = "X-Logwarden-Timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub const SIGNATURE_HEADER: &str = "X-Logwarden-Signature";

/// `sha256=<hex>` of HMAC-SHA256 over `timestamp.body`: binding the time into the MAC lets
/// a receiver refuse replays of an old, validly signed request.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key size");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Where a secret comes from; read at every attempt so a rotated secret is picked up and
/// a missing one delays delivery instead of stopping the daemon.
#[derive(Debug, Clone)]
pub(super) struct SecretSource {
    file: Option<PathBuf>,
    env: Option<String>,
}

impl SecretSource {
    pub(super) fn of(file: &Option<PathBuf>, env: &Option<String>) -> Option<Self> {
        (file.is_some() || env.is_some()).then(|| SecretSource {
            file: file.clone(),
            env: env.clone(),
        })
    }

    fn read(&self) -> Result<String, SecretError> {
        read_secret(self.file.as_deref(), self.env.as_deref())
    }
}

/// Where a lane's attempts go.
pub(super) enum Transport {
    Http {
        client: reqwest::Client,
        url: String,
        secret: Option<SecretSource>,
        routing_key: Option<SecretSource>,
    },
    File(Arc<Mutex<Box<dyn Write + Send>>>),
}

/// What one attempt came to.
#[derive(Debug)]
pub(super) enum Outcome {
    Delivered,
    /// Worth trying again (connection failed, timeout, 408, 429, 5xx).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// The receiver refused the request itself (other 4xx): retrying cannot help.
    Refused(String),
}

/// One attempt to deliver an outbox record.
pub(super) async fn attempt(transport: &Transport, record: &Record) -> Outcome {
    match transport {
        Transport::File(writer) => {
            let writer = writer.clone();
            let mut line = record.body.clone().into_bytes();
            line.push(b'\n');
            let written = tokio::task::spawn_blocking(move || {
                let mut w = writer.lock().expect("writer lock");
                w.write_all(&line).and_then(|_| w.flush())
            })
            .await;
            match written {
                Ok(Ok(())) => Outcome::Delivered,
                Ok(Err(e)) => Outcome::Retry {
                    error: format!("write failed: {e}"),
                    after: None,
                },
                Err(e) => Outcome::Retry {
                    error: format!("write task failed: {e}"),
                    after: None,
                },
            }
        }
        Transport::Http {
            client,
            url,
            secret,
            routing_key,
        } => post(client, url, secret.as_ref(), routing_key.as_ref(), record).await,
    }
}

/// Sends a body that is no outbox record (a re-send) over an HTTP transport.
pub(super) async fn attempt_body(
    transport: &Transport,
    body: String,
    headers: &[(&str, &str)],
) -> Outcome {
    match transport {
        Transport::Http {
            client,
            url,
            secret,
            ..
        } => send(client, url, secret.as_ref(), body.into_bytes(), headers).await,
        Transport::File(_) => Outcome::Refused("re-sends go to HTTP receivers only".into()),
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&SecretSource>,
    routing_key: Option<&SecretSource>,
    record: &Record,
) -> Outcome {
    let retry = |error: String| Outcome::Retry { error, after: None };
    let body = match routing_key {
        None => record.body.clone().into_bytes(),
        Some(source) => {
            let key = match source.read() {
                Ok(k) => k,
                Err(e) => return retry(format!("routing key unavailable: {e}")),
            };
            let mut value: serde_json::Value = match serde_json::from_str(&record.body) {
                Ok(v) => v,
                Err(e) => return Outcome::Refused(format!("stored body is not JSON: {e}")),
            };
            value["routing_key"] = serde_json::Value::String(key);
            value.to_string().into_bytes()
        }
    };
    let headers = [
        ("Idempotency-Key", record.idempotency_key.as_str()),
        ("X-Logwarden-Event", record.event.as_str()),
        ("X-Logwarden-Incident", record.incident_uid()),
    ];
    send(client, url, secret, body, &headers).await
}

/// One signed POST of a JSON body, judged by its answer.
async fn send(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&SecretSource>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Outcome {
    let retry = |error: String| Outcome::Retry { error, after: None };
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(source) = secret {
        let secret = match source.read() {
            Ok(s) => s,
            Err(e) => return retry(format!("signing secret unavailable: {e}")),
        };
        let timestamp = Utc::now().timestamp().to_string();
        request = request
            .header(
                SIGNATURE_HEADER,
                signature(secret.as_bytes(), &timestamp, &body),
            )
            .header(TIMESTAMP_HEADER, timestamp);
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Outcome::Delivered,
        Ok(response) => {
            let status = response.status();
            let after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let error = format!("HTTP {status}");
            if status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
            {
                Outcome::Retry { error, after }
            } else {
                Outcome::Refused(format!("{error}: refused by the receiver"))
            }
        }
        Err(e) => retry(error_chain(&e.without_url())),
    }
}

/// An error and its causes ("error sending request: connection refused"), without URLs
/// (which may carry credentials).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}

/// Opens (creating it and its directory) the file a file receiver appends to; `-` is stdout.
pub(super) fn open_file(path: &Path) -> Result<Arc<Mutex<Box<dyn Write + Send>>>, DeliveryError> {
    let writer: Box<dyn Write + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|cause| DeliveryError::CreateDir {
                dir: dir.to_path_buf(),
                cause,
            })?;
        }
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|cause| DeliveryError::OpenFile {
                    path: path.to_path_buf(),
                    cause,
                })?,
        )
    };
    Ok(Arc::new(Mutex::new(writer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Reference value from Python's hmac module.
        assert_eq!(
            signature(b"secret", "1700000000", br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
        assert_ne!(signature(b"k", "1", b"2"), signature(b"k", "12", b""));
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] std::io::Error);
        let chained = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            error_chain(&chained),
            "error sending request: connection refused"
        );
    }

    #[test]
    fn a_file_receiver_that_cannot_be_opened_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let e = open_file(&blocker.join("sub").join("out.jsonl"))
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("cannot create "), "{e}");
        assert!(e.to_string().contains("file/sub"), "{e}");
    }
}
