//! End to end: lines appended to a real file become incidents in sled, posted to a real
//! webhook on 127.0.0.1, visible through the authenticated API and in /metrics.

mod common;

use common::*;
use std::time::Duration;

const RULES: &str = r#"
rules:
  - id: ssh-bruteforce
    description: Repeated failed SSH logins from one address
    match: 'sshd\[\d+\]: Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>\S+) port \d+'
    group_by: [ip]
    threshold: {count: 5, within: 1m}
    severity: {moderate: 5, high: 20}
    category: unauthorized-access
    controls: [CC7.2, CC7.3]
    summary: "{{ count }} failed SSH logins from {{ ip }}"
  - id: marker
    match: 'MARKER (?P<n>\d+)'
    group_by: [n]
    threshold: {count: 1, within: 1s}
    severity: low
"#;

const WAIT: Duration = Duration::from_secs(10);

fn setup(receiver: &Receiver) -> Setup {
    let s = Setup::new();
    s.write("rules/test.yaml", RULES);
    s.write("auth.log", "");
    s.config(&format!(
        "sources:\n  - {{name: auth, paths: [auth.log], start_at: beginning, timestamp: syslog}}\n\
         receivers:\n  - {{name: hook, type: webhook, url: '{}'}}\n\
         roles:\n  analysts: {{receivers: [hook]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n",
        receiver.url("/hook")
    ));
    s
}

/// Appends a marker line and waits for its incident: every line before it has been evaluated.
fn barrier(s: &Setup, d: &Daemon, n: u32) {
    s.append(
        "auth.log",
        &[format!("Nov 22 11:00:00 web1 test: MARKER {n}")],
    );
    wait_for("the marker incident", WAIT, || {
        d.incidents()
            .into_iter()
            .find(|i| i["rule"] == "marker" && i["key"]["n"] == serde_json::json!(n.to_string()))
    });
}

fn opened_for(received: &[Received], rule: &str) -> Vec<serde_json::Value> {
    received
        .iter()
        .filter(|r| r.body["event"] == "opened" && r.body["incident"]["rule"] == rule)
        .map(|r| r.body["incident"].clone())
        .collect()
}

#[test]
fn seven_matching_lines_from_one_address_open_one_incident_and_post_it() {
    let receiver = Receiver::start();
    let s = setup(&receiver);
    let d = s.start();
    let lines: Vec<String> = (1..=7).map(|i| ssh_fail("203.0.113.9", i)).collect();
    s.append("auth.log", &lines);

    let first = receiver.next(WAIT).expect("webhook called");
    assert_eq!(first.path, "/hook");
    assert_eq!(first.body["event"], "opened");
    let posted = &first.body["incident"];
    assert_eq!(posted["rule"], "ssh-bruteforce");
    assert_eq!(posted["key"], serde_json::json!({"ip": "203.0.113.9"}));
    assert_eq!(posted["severity"], "moderate");
    assert_eq!(posted["count"], 5);
    assert_eq!(posted["category"], "unauthorized-access");
    assert_eq!(posted["controls"], serde_json::json!(["CC7.2", "CC7.3"]));
    assert_eq!(posted["summary"], "5 failed SSH logins from 203.0.113.9");

    barrier(&s, &d, 1);
    let incidents: Vec<_> = d
        .incidents()
        .into_iter()
        .filter(|i| i["rule"] == "ssh-bruteforce")
        .collect();
    assert_eq!(incidents.len(), 1, "exactly one incident: {incidents:#?}");
    let incident = &incidents[0];
    assert_eq!(incident["count"], 7);
    assert_eq!(incident["state"], "open");
    assert!(
        incident["first_seen"]
            .as_str()
            .unwrap()
            .ends_with("10:00:01Z")
    );
    assert!(
        incident["last_seen"]
            .as_str()
            .unwrap()
            .ends_with("10:00:07Z")
    );
    assert_eq!(incident["ruleset_version"].as_str().unwrap().len(), 16);
    let evidence = incident["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 7);
    assert_eq!(evidence[0]["offset"], 0);
    assert_eq!(evidence[0]["source"], "auth");
    assert_eq!(evidence[1]["offset"], lines[0].len() + 1);
    assert_eq!(evidence[6]["line"], lines[6]);
    assert!(evidence[0]["path"].as_str().unwrap().ends_with("/auth.log"));

    // One incident → one "opened" notification, whatever else was posted.
    assert!(opened_for(&receiver.drain(), "ssh-bruteforce").is_empty());
    let one = d.get(&format!(
        "/api/v1/incidents/{}",
        incident["id"].as_str().unwrap()
    ));
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], incident["id"]);
}

#[test]
fn threshold_counts_on_the_lines_own_time_at_its_boundaries() {
    let receiver = Receiver::start();
    let s = setup(&receiver);
    let d = s.start();
    let mut lines = Vec::new();
    // Four within the window: nothing.
    lines.extend((0..4).map(|i| ssh_fail("198.51.100.4", i)));
    // Five within the window: one incident.
    lines.extend((0..5).map(|i| ssh_fail("198.51.100.5", 100 + i)));
    // Five spread over 80 s with a 1 m window: nothing, although they arrive at once.
    lines.extend((0..5).map(|i| ssh_fail("198.51.100.6", 200 + i * 20)));
    s.append("auth.log", &lines);
    barrier(&s, &d, 1);
    let fired: Vec<_> = d
        .incidents()
        .into_iter()
        .filter(|i| i["rule"] == "ssh-bruteforce")
        .collect();
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert_eq!(fired[0]["key"]["ip"], "198.51.100.5");
    assert_eq!(fired[0]["count"], 5);
}

#[test]
fn incidents_survive_a_restart_and_no_line_is_read_twice() {
    let receiver = Receiver::start();
    let s = setup(&receiver);
    let d = s.start();
    s.append(
        "auth.log",
        &(0..5).map(|i| ssh_fail("192.0.2.7", i)).collect::<Vec<_>>(),
    );
    let opened = d.wait_incident("ssh-bruteforce", WAIT);
    assert_eq!(opened["count"], 5);
    let took = d.stop();
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM shutdown took {took:?}"
    );

    let d = s.start();
    let after = d.incidents();
    let same: Vec<_> = after
        .iter()
        .filter(|i| i["rule"] == "ssh-bruteforce")
        .collect();
    assert_eq!(same.len(), 1);
    assert_eq!(same[0]["id"], opened["id"]);
    s.append("auth.log", &[ssh_fail("192.0.2.7", 6)]);
    barrier(&s, &d, 1);
    let updated = d
        .get(&format!(
            "/api/v1/incidents/{}",
            opened["id"].as_str().unwrap()
        ))
        .json();
    assert_eq!(updated["count"], 6, "the restart re-read lines or lost one");
}

#[test]
fn the_api_needs_a_known_bearer_token() {
    let receiver = Receiver::start();
    let s = setup(&receiver);
    let d = s.start();
    let none = http("GET", s.port, "/api/v1/incidents", None, None).unwrap();
    assert_eq!(none.status, 401);
    assert!(none.json()["error"].is_string());
    let wrong = http(
        "GET",
        s.port,
        "/api/v1/incidents",
        Some("not-the-token"),
        None,
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(
        http("GET", s.port, "/api/v1/rules", None, None)
            .unwrap()
            .status,
        401
    );
    assert_eq!(d.get("/api/v1/incidents").status, 200);
    assert_eq!(d.get("/api/v1/incidents/INC-404").status, 404);
    let rules = d.get("/api/v1/rules").json();
    assert_eq!(rules["version"].as_str().unwrap().len(), 16);
    let ids: Vec<_> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, vec!["ssh-bruteforce", "marker"]);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            http("GET", s.port, open, None, None).unwrap().status,
            200,
            "{open}"
        );
    }
}

#[test]
fn metrics_show_what_happened_and_pass_promtool() {
    let receiver = Receiver::start();
    let s = setup(&receiver);
    let d = s.start();
    s.append(
        "auth.log",
        &(0..5).map(|i| ssh_fail("192.0.2.8", i)).collect::<Vec<_>>(),
    );
    d.wait_incident("ssh-bruteforce", WAIT);
    receiver.next(WAIT).expect("notified");
    let metrics = wait_for("the delivery to be counted", WAIT, || {
        let m = http("GET", s.port, "/metrics", None, None).unwrap().body;
        m.contains("logwarden_notifications_total{outcome=\"delivered\",receiver=\"hook\"} 1")
            .then_some(m)
    });
    for expected in [
        "logwarden_lines_read_total{source=\"auth\"} 5",
        "logwarden_rule_matches_total{rule=\"ssh-bruteforce\"} 5",
        "logwarden_incidents_opened_total{rule=\"ssh-bruteforce\",severity=\"moderate\"} 1",
        "logwarden_incidents_open{severity=\"moderate\",state=\"open\"} 1",
        "logwarden_incidents_open{severity=\"critical\",state=\"open\"} 0",
        "logwarden_time_to_detect_seconds_count{drill=\"false\",severity=\"moderate\"} 1",
        "logwarden_rules_loaded 2",
        "logwarden_build_info{version=",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in:\n{metrics}"
        );
    }
    assert_promtool_clean(&metrics);
}

#[test]
fn binary_garbage_and_a_10_mb_line_leave_detection_running() {
    let receiver = Receiver::start();
    let s = setup(&receiver);
    let d = s.start();
    let mut junk = vec![b'A'; 10 * 1024 * 1024];
    junk.extend_from_slice(b"\n\x00\xff\xfe\x01binary\x00garbage\n");
    // A non-UTF-8 line that still matches must count.
    junk.extend_from_slice(b"Nov 22 10:00:00 web1 sshd[811]: Failed password for \xff\xfe from 192.0.2.9 port 1 ssh2\n");
    std::fs::OpenOptions::new()
        .append(true)
        .open(s.path("auth.log"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &junk))
        .unwrap();
    s.append(
        "auth.log",
        &(1..5).map(|i| ssh_fail("192.0.2.9", i)).collect::<Vec<_>>(),
    );
    let incident = d.wait_incident("ssh-bruteforce", WAIT);
    assert_eq!(incident["count"], 5);
    assert!(d.child.id() > 0 && http("GET", s.port, "/healthz", None, None).unwrap().status == 200);
    let metrics = http("GET", s.port, "/metrics", None, None).unwrap().body;
    assert!(
        metrics.contains("logwarden_lines_truncated_total{source=\"auth\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_file_that_appears_after_start_is_picked_up() {
    let receiver = Receiver::start();
    let s = Setup::new();
    s.write("rules/test.yaml", RULES);
    s.config(&format!(
        "sources:\n  - {{name: auth, paths: ['logs/*.log'], timestamp: syslog}}\n\
         receivers:\n  - {{name: hook, type: webhook, url: '{}'}}\n\
         roles:\n  analysts: {{receivers: [hook]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n",
        receiver.url("/hook")
    ));
    let d = s.start();
    assert!(
        d.log().contains("no file matches"),
        "a missing file is a warning:\n{}",
        d.log()
    );
    std::fs::create_dir_all(s.path("logs")).unwrap();
    s.append(
        "logs/late.log",
        &(0..5)
            .map(|i| ssh_fail("192.0.2.10", i))
            .collect::<Vec<_>>(),
    );
    let incident = d.wait_incident("ssh-bruteforce", WAIT);
    assert_eq!(
        incident["count"], 5,
        "a file found after start is read from its beginning"
    );
}

/// The daemon feeds its own detections back as lines of the `logwarden` source: a rule
/// over them opens a repeat-offender incident, which survives in the store like any other.
#[test]
fn the_daemon_counts_its_own_detections_for_repeat_offenders() {
    let receiver = Receiver::start();
    let s = setup(&receiver);
    s.write(
        "rules/recidive.yaml",
        r#"
rules:
  - id: repeat-offender
    sources: [logwarden]
    match: '^incident rule=ssh-bruteforce key=\{"ip":"(?P<ip>[^"\\]*)"\}$'
    group_by: [ip]
    threshold: {count: 3, within: 24h}
    severity: critical
"#,
    );
    let d = s.start();
    // Three bursts of five, hours apart: one ssh-bruteforce incident (the later bursts fold
    // into it) but three detections.
    let mut lines = Vec::new();
    for hour in [1, 5, 9] {
        for second in 1..=5 {
            lines.push(format!(
                "Nov 22 {hour:02}:00:{second:02} web1 sshd[811]: Failed password for root from 203.0.113.77 port 4000 ssh2"
            ));
        }
    }
    s.append("auth.log", &lines);
    let offender = wait_for("the repeat-offender incident", WAIT, || {
        d.incidents()
            .into_iter()
            .find(|i| i["rule"] == "repeat-offender")
    });
    assert_eq!(offender["key"], serde_json::json!({"ip": "203.0.113.77"}));
    assert_eq!(offender["severity"], "critical");
    assert_eq!(offender["count"], 3);
    assert_eq!(offender["evidence"][0]["source"], "logwarden");
    let brute: Vec<_> = d
        .incidents()
        .into_iter()
        .filter(|i| i["rule"] == "ssh-bruteforce")
        .collect();
    assert_eq!(brute.len(), 1, "{brute:#?}");
    assert_eq!(brute[0]["count"], 15);
}
