//! A real Alertmanager (Debian's `prometheus-alertmanager`, started here on 127.0.0.1)
//! receives an incident detected by the daemon as an alert, and its resolve when the
//! incident is closed through the lifecycle API.

mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn start_alertmanager(
    program: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    hook: &str,
) -> Alertmanager {
    let config = format!(
        "route:\n  receiver: hook\n  group_by: [incident]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n  - name: hook\n    webhook_configs:\n      - url: '{hook}'\n        send_resolved: true\n"
    );
    Alertmanager::start(program, &dir.join("am"), &config, port, None)
}

/// The alerts Alertmanager lists for the incident with this uid.
fn listed(am: &Alertmanager, uid: &str) -> Vec<serde_json::Value> {
    am.alerts()
        .into_iter()
        .filter(|a| a["labels"]["incident"] == uid)
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
    let am = start_alertmanager(&program, s.dir.path(), am_port, &hook.url("/am"));
    s.write(
        "rules/r.yaml",
        "rules:\n  - id: ssh-bruteforce\n    match: 'Failed password for \\S+ from (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 5, within: 1m}\n    severity: moderate\n    summary: '{{ count }} failed SSH logins from {{ ip }}'\n",
    );
    s.write("auth.log", "");
    s.config(&format!(
        "host: gw1\nsources:\n  - {{name: auth, paths: [auth.log], start_at: beginning}}\n\
         receivers:\n  - {{name: am, type: webhook, url: 'http://127.0.0.1:{am_port}', format: alertmanager, retry: {{initial: 100ms, max: 500ms}}}}\n\
         roles:\n  analysts: {{receivers: [am]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n"
    ));
    let d = s.start();
    s.append("auth.log", &ssh_attack("203.0.113.9"));
    let incident = d.wait_incident("ssh-bruteforce", WAIT);
    let id = incident["id"].as_str().unwrap().to_string();
    // The `incident` label is the fleet-unique uid: two hosts' INC-1 are two alerts.
    let uid = incident["uid"].as_str().unwrap().to_string();
    assert_eq!(uid, format!("gw1/{id}"));

    let alert = wait_for("the alert in Alertmanager", WAIT, || {
        listed(&am, &uid).into_iter().next()
    });
    assert_eq!(alert["status"]["state"], "active");
    // It stays active while the incident is open, not only for Alertmanager's resolve_timeout.
    let ends = chrono::DateTime::parse_from_rfc3339(alert["endsAt"].as_str().unwrap()).unwrap();
    assert!(
        ends > chrono::Utc::now() + chrono::Duration::days(1),
        "endsAt {ends}"
    );
    assert_eq!(alert["labels"]["alertname"], "ssh-bruteforce");
    assert_eq!(alert["labels"]["host"], "gw1");
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
    assert_eq!(firing.body["alerts"][0]["labels"]["incident"], uid.as_str());

    // Closed through the lifecycle, as a responder would.
    d.close_incident(&id);
    wait_for("the alert to be resolved", WAIT, || {
        listed(&am, &uid).is_empty().then_some(())
    });
    let resolved = wait_for("Alertmanager's resolved notification", WAIT, || {
        hook.next(Duration::from_millis(200))
            .filter(|r| r.body["status"] == "resolved")
    });
    let alert = &resolved.body["alerts"][0];
    assert_eq!(alert["labels"]["incident"], uid.as_str());
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
