//! Every rule kind, exception and list through the real binary: lines appended to real
//! files open exactly the expected incidents.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

const RULES: &str = r#"
lists:
  trusted-nets: [10.0.0.0/8, "::1"]
rules:
  - id: web-5xx-spike
    match: 'web (?P<ip>\S+) 5\d\d'
    spike: {window: 1m, baseline: 2, factor: 3, min_count: 4}
    severity: high
  - id: ssh-breach
    group_by: [ip]
    sequence:
      within: 10m
      steps:
        - {match: 'Failed password for \S+ from (?P<ip>\S+)', count: 3}
        - {match: 'Accepted password for \S+ from (?P<ip>\S+)'}
    allow: {ip: ["@trusted-nets"]}
    severity: critical
  - id: enumeration
    match: 'Invalid user (?P<user>\S+) from (?P<ip>\S+)'
    group_by: [ip]
    distinct: {field: user, count: 3, within: 5m}
    severity: moderate
  - id: admin-sudo
    match: 'sudo: (?P<user>\S+) : command'
    group_by: [user]
    only: {user: ["@admins"]}
    threshold: {count: 2, within: 1m}
    severity: low
  - id: marker
    match: 'MARKER'
    threshold: {count: 1, within: 1s}
    severity: low
"#;

fn at(minute: u32, second: u32, text: &str) -> String {
    format!("Nov 22 10:{minute:02}:{second:02} web1 {text}")
}

#[test]
fn a_config_using_every_kind_list_and_exception_opens_exactly_the_expected_incidents() {
    let s = Setup::new();
    // Lists live in their own file and are used from another.
    s.write("rules/kinds.yaml", RULES);
    s.write("rules/lists.yaml", "lists:\n  admins: [root, alice]\n");
    s.write("auth.log", "");
    s.console_config("auth", "auth.log", "syslog");
    let d = s.start();
    let mut lines = Vec::new();
    // Spike: 2 a minute for two minutes (mean 2, so 6 are needed), then 6 in minute 3.
    for m in 0..2 {
        lines.push(at(m, 1, "web 1.1.1.1 503"));
        lines.push(at(m, 2, "web 1.1.1.1 500"));
    }
    for sec in 0..5 {
        lines.push(at(2, sec, "web 1.1.1.1 502"));
    }
    lines.push(at(2, 30, "web 1.1.1.1 504"));
    lines.push(at(2, 40, "web 1.1.1.1 500"));
    // Sequence: out of order first (accept, then failures) for one address; in order for
    // another; a trusted address in order is allowed.
    lines.push(at(3, 0, "Accepted password for bob from 192.0.2.1"));
    for sec in 1..4 {
        lines.push(at(3, sec, "Failed password for bob from 192.0.2.1"));
        lines.push(at(3, sec, "Failed password for bob from 198.51.100.7"));
        lines.push(at(3, sec, "Failed password for bob from 10.9.9.9"));
    }
    lines.push(at(3, 5, "Accepted password for bob from 198.51.100.7"));
    lines.push(at(3, 5, "Accepted password for bob from 10.9.9.9"));
    // Distinct: repeats do not count; two names are not three; the third is.
    for (sec, user) in [(0, "a"), (1, "a"), (2, "b"), (3, "b")] {
        lines.push(at(4, sec, &format!("Invalid user {user} from 203.0.113.5")));
    }
    lines.push(at(4, 5, "Invalid user x from 203.0.113.6"));
    lines.push(at(4, 6, "Invalid user c from 203.0.113.5"));
    // Only: admins count, others do not.
    for sec in 0..2 {
        lines.push(at(5, sec, "sudo: alice : command not allowed"));
        lines.push(at(5, sec, "sudo: mallory : command not allowed"));
    }
    lines.push(at(6, 0, "MARKER"));
    s.append("auth.log", &lines);
    d.wait_incident("marker", WAIT);

    let mut got: Vec<(String, serde_json::Value, u64)> = d
        .incidents()
        .into_iter()
        .filter(|i| i["rule"] != "marker")
        .map(|i| {
            (
                i["rule"].as_str().unwrap().to_string(),
                i["key"].clone(),
                i["count"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("admin-sudo".to_string(), json!({"user": "alice"}), 2),
            ("enumeration".to_string(), json!({"ip": "203.0.113.5"}), 3),
            ("ssh-breach".to_string(), json!({"ip": "198.51.100.7"}), 4),
            // The spike opened at 6 and counted the 7th line of its window too.
            ("web-5xx-spike".to_string(), json!({}), 7),
        ]
    );
    let spike = d.wait_incident("web-5xx-spike", WAIT);
    assert_eq!(spike["evidence"].as_array().unwrap().len(), 7);
    d.stop();
}

#[test]
fn absence_opens_after_start_up_and_records_when_lines_resume() {
    let s = Setup::new();
    s.write(
        "rules/heartbeat.yaml",
        "rules:\n  - id: heartbeat\n    match: 'heartbeat ok'\n    absence: {within: 2s, count: 1}\n    severity: high\n",
    );
    s.write("beats.log", "");
    s.console_config("beats", "beats.log", "arrival");
    let d = s.start();
    let started = std::time::Instant::now();
    let gap = d.wait_incident("heartbeat", WAIT);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "opened before the gap could have passed"
    );
    assert_eq!(gap["count"], 0);
    assert_eq!(gap["severity"], "high");
    assert!(gap.get("resumed_at").is_none());

    s.append("beats.log", &["heartbeat ok".to_string()]);
    let id = gap["id"].as_str().unwrap().to_string();
    let resumed = wait_for("the resumption on the incident", WAIT, || {
        let i = d.get(&format!("/api/v1/incidents/{id}")).json();
        i.get("resumed_at").is_some().then_some(i)
    });
    assert_eq!(resumed["count"], 1);
    assert_eq!(resumed["evidence"][0]["line"], "heartbeat ok");
    assert!(
        resumed["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "resumed")
    );
    // One gap, one incident.
    assert_eq!(d.incidents().len(), 1);
    d.stop();
}
