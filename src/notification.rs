//! Telling people: routing an incident event to receivers, and delivering it.
//!
//! Routing follows rule → escalation policy → roles of its first step → their receivers.
//! Delivery runs on its own tasks, one per notification, so a slow receiver never delays
//! detection or the other receivers.

use crate::config::{Config, ReceiverConfig};
use crate::incidents::{Incident, IncidentEvent};
use crate::metrics::Metrics;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Attempts per webhook delivery before it is given up (durable retries come with the outbox).
const WEBHOOK_ATTEMPTS: u32 = 4;
/// First retry delay; doubles after each failure.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Connect timeout of every webhook call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One message for one receiver.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Receiver name.
    pub receiver: String,
    /// Event name (`opened`, `severity_changed`, ...).
    pub event: String,
    /// The incident after the event.
    pub incident: Incident,
}

impl Notification {
    /// The JSON body: the event name and the incident.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "event": self.event, "incident": self.incident })
    }
}

/// Maps incident events to the receivers that must hear of them.
pub struct Router {
    policies: HashMap<String, Vec<String>>,
}

impl Router {
    /// Resolves every policy's first step to receiver names once, at start.
    pub fn new(config: &Config) -> Self {
        let policies = config
            .escalation_policies
            .iter()
            .filter_map(|(name, steps)| {
                let first = steps.first()?;
                let receivers: BTreeSet<String> = first
                    .notify
                    .iter()
                    .filter_map(|role| config.roles.get(role))
                    .flat_map(|role| role.receivers.iter().cloned())
                    .collect();
                Some((name.clone(), receivers.into_iter().collect()))
            })
            .collect();
        Router { policies }
    }

    /// Notifications for an event; events that need nobody (plain updates) give none.
    pub fn route(&self, event: &IncidentEvent) -> Vec<Notification> {
        use crate::incidents::EventKind;
        if !matches!(event.kind, EventKind::Opened | EventKind::SeverityChanged) {
            return Vec::new();
        }
        let Some(receivers) = self.policies.get(&event.incident.escalation) else {
            return Vec::new();
        };
        receivers
            .iter()
            .map(|r| Notification {
                receiver: r.clone(),
                event: event.kind.as_str().to_string(),
                incident: event.incident.clone(),
            })
            .collect()
    }
}

enum Target {
    Webhook { url: String, timeout: Duration },
    File(Arc<Mutex<Box<dyn Write + Send>>>),
}

/// Delivers notifications until its channel closes, then waits (bounded) for deliveries in
/// flight.
pub struct Notifier {
    targets: HashMap<String, Arc<Target>>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Opens file receivers and builds the HTTP client.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut targets = HashMap::new();
        for receiver in &config.receivers {
            let target = match receiver {
                ReceiverConfig::Webhook { url, timeout, .. } => Target::Webhook {
                    url: url.clone(),
                    timeout: timeout.0,
                },
                ReceiverConfig::File { path, .. } => Target::File(open_file_target(path)?),
            };
            targets.insert(receiver.name().to_string(), Arc::new(target));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("logwarden/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        Ok(Notifier {
            targets,
            client,
            metrics,
        })
    }

    /// Runs until `rx` closes; deliveries still in flight get up to `drain` to finish.
    pub async fn run(self, mut rx: mpsc::Receiver<Notification>, drain: Duration) {
        let mut inflight = JoinSet::new();
        while let Some(n) = rx.recv().await {
            let Some(target) = self.targets.get(&n.receiver).cloned() else {
                tracing::warn!(receiver = %n.receiver, "notification for an unknown receiver dropped");
                continue;
            };
            let client = self.client.clone();
            let metrics = self.metrics.clone();
            inflight.spawn(async move { deliver(&client, &target, &n, &metrics).await });
            while inflight.try_join_next().is_some() {}
        }
        let _ = tokio::time::timeout(drain, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
    }
}

fn open_file_target(path: &PathBuf) -> Result<Arc<Mutex<Box<dyn Write + Send>>>, String> {
    let writer: Box<dyn Write + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open receiver file {}: {e}", path.display()))?,
        )
    };
    Ok(Arc::new(Mutex::new(writer)))
}

async fn deliver(client: &reqwest::Client, target: &Target, n: &Notification, metrics: &Metrics) {
    let outcome = match target {
        Target::File(writer) => {
            let mut line = serde_json::to_vec(&n.body()).expect("incident serialises");
            line.push(b'\n');
            let mut w = writer.lock().expect("writer lock");
            match w.write_all(&line).and_then(|_| w.flush()) {
                Ok(()) => "delivered",
                Err(e) => {
                    tracing::warn!(receiver = %n.receiver, error = %e, "file receiver write failed");
                    "failed"
                }
            }
        }
        Target::Webhook { url, timeout } => {
            post_with_retries(client, url, *timeout, n, metrics).await
        }
    };
    metrics
        .notifications
        .with_label_values(&[&n.receiver, outcome])
        .inc();
}

async fn post_with_retries(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    n: &Notification,
    metrics: &Metrics,
) -> &'static str {
    let body = n.body();
    let mut delay = FIRST_RETRY;
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let result = client.post(url).timeout(timeout).json(&body).send().await;
        let error = match result {
            Ok(resp) if resp.status().is_success() => return "delivered",
            Ok(resp) => format!("HTTP {}", resp.status()),
            Err(e) => e.without_url().to_string(),
        };
        tracing::warn!(receiver = %n.receiver, incident = %n.incident.id, attempt, %error, "webhook delivery failed");
        if attempt < WEBHOOK_ATTEMPTS {
            metrics
                .notifications
                .with_label_values(&[&n.receiver, "retried"])
                .inc();
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    "failed"
}
