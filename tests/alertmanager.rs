//! A real Alertmanager (Debian's `prometheus-alertmanager`, started here on 127.0.0.1)
//! receives an incident as an alert and then its resolve. The `closed` event is emitted
//! through the library (outbox + delivery worker), as the lifecycle API does not exist yet.

mod common;

use common::*;
use logwarden::config::Config;
use logwarden::incidents::{EventKind, IncidentEvent};
use logwarden::metrics::Metrics;
use logwarden::notification::{Outbox, deliver, format::sample_incident};
use logwarden::store::{Batch, Store};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Kills the Alertmanager when the test ends, passed or failed.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_alertmanager(
    program: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    hook: &str,
) -> Running {
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: hook\n  group_by: [incident]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: '{hook}'\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
    let child = Command::new(program)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut running = Running(child);
    wait_for("Alertmanager to be ready", WAIT, || {
        if let Ok(Some(status)) = running.0.try_wait() {
            panic!(
                "alertmanager exited with {status}: {}",
                std::fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default()
            );
        }
        http("GET", port, "/-/ready", None, None)
            .ok()
            .filter(|r| r.status == 200)
    });
    running
}

/// The alerts Alertmanager lists for incident `id`.
fn listed(port: u16, id: &str) -> Vec<serde_json::Value> {
    let r = http("GET", port, "/api/v2/alerts", None, None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["incident"] == id)
        .cloned()
        .collect()
}

#[test]
fn alertmanager_shows_the_incident_as_an_alert_then_resolved() {
    let Some(program) = peer("prometheus-alertmanager", "prometheus-alertmanager") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let am_port = free_port();
    let hook = Receiver::start();
    let _am = start_alertmanager(&program, dir.path(), am_port, &hook.url("/am"));

    let config = Config::parse(
        &dir.path().join("logwarden.yaml"),
        &format!(
            "state_dir: state\n\
             receivers:\n  - {{name: am, type: webhook, url: 'http://127.0.0.1:{am_port}', format: alertmanager, retry: {{initial: 100ms, max: 500ms}}}}\n\
             roles:\n  analysts: {{receivers: [am]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n"
        ),
    )
    .unwrap();
    let store = Store::open(&config.state_dir).unwrap();
    let outbox = Outbox::new(store.clone(), &config).unwrap();
    let metrics = Arc::new(Metrics::new());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let delivery = {
        let _entered = runtime.enter();
        deliver::spawn(
            outbox.clone(),
            &config,
            metrics.clone(),
            Duration::from_secs(1),
        )
        .unwrap()
    };
    let emit = |kind: EventKind| {
        let mut incident = sample_incident();
        incident.escalation = "default".into();
        let mut batch = Batch::new();
        let n = outbox
            .enqueue(&mut batch, &IncidentEvent { kind, incident }, false)
            .unwrap();
        assert_eq!(n, 1, "{kind:?} goes to the Alertmanager");
        store.commit(batch).unwrap();
        outbox.wake();
    };

    emit(EventKind::Opened);
    let alert = wait_for("the alert in Alertmanager", WAIT, || {
        listed(am_port, "INC-1").into_iter().next()
    });
    assert_eq!(alert["status"]["state"], "active");
    assert_eq!(alert["labels"]["alertname"], "ssh-bruteforce");
    assert_eq!(alert["labels"]["severity"], "high");
    assert_eq!(alert["labels"]["ip"], "203.0.113.9");
    assert_eq!(
        alert["annotations"]["summary"],
        "5 failed SSH logins from 203.0.113.9"
    );
    assert!(
        alert["generatorURL"]
            .as_str()
            .unwrap()
            .ends_with("/api/v1/incidents/INC-1")
    );
    let firing = wait_for("Alertmanager's firing notification", WAIT, || {
        hook.next(Duration::from_millis(200))
            .filter(|r| r.body["status"] == "firing")
    });
    assert_eq!(firing.body["alerts"][0]["labels"]["incident"], "INC-1");

    emit(EventKind::Closed);
    wait_for("the alert to be resolved", WAIT, || {
        listed(am_port, "INC-1").is_empty().then_some(())
    });
    let resolved = wait_for("Alertmanager's resolved notification", WAIT, || {
        hook.next(Duration::from_millis(200))
            .filter(|r| r.body["status"] == "resolved")
    });
    let alert = &resolved.body["alerts"][0];
    assert_eq!(alert["labels"]["incident"], "INC-1");
    assert_eq!(alert["status"], "resolved");
    assert_ne!(alert["endsAt"], "0001-01-01T00:00:00Z");

    wait_for("both deliveries counted", WAIT, || {
        let m = metrics.render();
        m.contains("logwarden_notifications_total{outcome=\"delivered\",receiver=\"am\"} 2")
            .then_some(())
    });
    assert!(outbox.pending().unwrap().is_empty());
    runtime.block_on(delivery.stop(Duration::from_secs(1)));
}
