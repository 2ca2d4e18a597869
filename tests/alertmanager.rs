//! A real Alertmanager (Debian's `prometheus-alertmanager`, started here on 127.0.0.1)
//! receives an incident detected by the daemon as an alert, and its resolve when the
//! incident is closed through the lifecycle API.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
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
    let s = Setup::new();
    let am_port = free_port();
    let hook = Receiver::start();
    let _am = start_alertmanager(&program, s.dir.path(), am_port, &hook.url("/am"));
    s.write(
        "rules/r.yaml",
        "rules:\n  - id: ssh-bruteforce\n    match: 'Failed password for \\S+ from (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 5, within: 1m}\n    severity: moderate\n    summary: '{{ count }} failed SSH logins from {{ ip }}'\n",
    );
    s.write("auth.log", "");
    s.config(&format!(
        "sources:\n  - {{name: auth, paths: [auth.log], start_at: beginning}}\n\
         receivers:\n  - {{name: am, type: webhook, url: 'http://127.0.0.1:{am_port}', format: alertmanager, retry: {{initial: 100ms, max: 500ms}}}}\n\
         roles:\n  analysts: {{receivers: [am]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n"
    ));
    let d = s.start();
    s.append(
        "auth.log",
        &(0..5)
            .map(|i| format!("sshd[1]: Failed password for root from 203.0.113.9 port {i} ssh2"))
            .collect::<Vec<_>>(),
    );
    let id = d.wait_incident("ssh-bruteforce", WAIT)["id"]
        .as_str()
        .unwrap()
        .to_string();

    let alert = wait_for("the alert in Alertmanager", WAIT, || {
        listed(am_port, &id).into_iter().next()
    });
    assert_eq!(alert["status"]["state"], "active");
    // It stays active while the incident is open, not only for Alertmanager's resolve_timeout.
    let ends = chrono::DateTime::parse_from_rfc3339(alert["endsAt"].as_str().unwrap()).unwrap();
    assert!(
        ends > chrono::Utc::now() + chrono::Duration::days(1),
        "endsAt {ends}"
    );
    assert_eq!(alert["labels"]["alertname"], "ssh-bruteforce");
    assert_eq!(alert["labels"]["severity"], "moderate");
    assert_eq!(alert["labels"]["ip"], "203.0.113.9");
    assert_eq!(
        alert["annotations"]["summary"],
        "5 failed SSH logins from 203.0.113.9"
    );
    assert!(
        alert["generatorURL"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/v1/incidents/{id}"))
    );
    let firing = wait_for("Alertmanager's firing notification", WAIT, || {
        hook.next(Duration::from_millis(200))
            .filter(|r| r.body["status"] == "firing")
    });
    assert_eq!(firing.body["alerts"][0]["labels"]["incident"], id.as_str());

    // Closed through the lifecycle, as a responder would.
    for to in [
        "acknowledged",
        "contained",
        "eradicated",
        "recovered",
        "closed",
    ] {
        let r = http(
            "POST",
            s.port,
            &format!("/api/v1/incidents/{id}/transition"),
            Some(&s.token),
            Some(&format!("{{\"to\": \"{to}\"}}")),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{to}: {}", r.body);
    }
    wait_for("the alert to be resolved", WAIT, || {
        listed(am_port, &id).is_empty().then_some(())
    });
    let resolved = wait_for("Alertmanager's resolved notification", WAIT, || {
        hook.next(Duration::from_millis(200))
            .filter(|r| r.body["status"] == "resolved")
    });
    let alert = &resolved.body["alerts"][0];
    assert_eq!(alert["labels"]["incident"], id.as_str());
    assert_eq!(alert["status"], "resolved");
    assert_ne!(alert["endsAt"], "0001-01-01T00:00:00Z");
    wait_for("both deliveries counted", WAIT, || {
        (metric(
            s.port,
            "logwarden_notifications_total{outcome=\"delivered\",receiver=\"am\"}",
        ) == 2.0)
            .then_some(())
    });
    assert_eq!(
        metric(s.port, "logwarden_outbox_pending{receiver=\"am\"}"),
        0.0
    );
}
