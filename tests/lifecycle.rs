//! The incident lifecycle end to end: the real binary and its CLI, webhook receivers on
//! 127.0.0.1, real sled, SIGKILL between escalation steps, approvals, silences, roles,
//! KPI histograms, and the audit chain verified and exported offline (and tampered with).

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

/// Generous: on a loaded 2-core CI machine a daemon is slow, not wrong; a hang still fails.
const WAIT: Duration = Duration::from_secs(40);

/// Token names and roles every test config carries (`tester` is the admin the harness uses).
const TOKENS: [(&str, &str); 4] = [
    ("viewer", "viewer"),
    ("resp", "responder"),
    ("boss", "approver"),
    ("tester", "admin"),
];

fn token(s: &Setup, name: &str) -> String {
    if name == "tester" {
        s.token.clone()
    } else {
        format!("{name}-secret-0123456789")
    }
}

/// A daemon config: one `marker` rule of `severity` over `app.log`, every token of
/// [`TOKENS`], and `body` (receivers, roles, policies).
fn setup(severity: &str, body: &str) -> Setup {
    let s = Setup::new();
    s.write(
        "rules/test.yaml",
        &format!(
            "rules:\n  - id: marker\n    match: 'MARKER (?P<n>\\d+)'\n    group_by: [n]\n    \
             threshold: {{count: 1, within: 1s}}\n    severity: {severity}\n    \
             category: policy-violation\n    controls: [CC7.2]\n    labels: {{team: ops}}\n"
        ),
    );
    s.write("app.log", "");
    let mut tokens = String::new();
    for (name, role) in TOKENS {
        s.write(&format!("tok-{name}"), &token(&s, name));
        tokens.push_str(&format!(
            "    - {{name: {name}, role: {role}, token_file: tok-{name}}}\n"
        ));
    }
    s.write(
        "logwarden.yaml",
        &format!(
            "state_dir: state\nrules: [rules]\nlisten: 127.0.0.1:{}\napi:\n  tokens:\n{tokens}\
             sources:\n  - {{name: app, paths: [app.log], start_at: beginning, timestamp: arrival}}\n{body}",
            s.port
        ),
    );
    s
}

fn marker(s: &Setup, n: u32) {
    s.append("app.log", &[format!("MARKER {n}")]);
}

fn incident(d: &Daemon, id: &str) -> Value {
    let r = d.get(&format!("/api/v1/incidents/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn wait_marker(d: &Daemon, n: u32) -> Value {
    wait_for(&format!("the incident of MARKER {n}"), WAIT, || {
        d.incidents().into_iter().find(|i| {
            i["key"]["n"].as_str().and_then(|v| v.parse().ok()) == Some(n) && i["state"] == "open"
        })
    })
}

/// Runs the CLI as `who` against the daemon.
fn cli(s: &Setup, who: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("LOGWARDEN_URL", format!("http://127.0.0.1:{}", s.port))
        .env("LOGWARDEN_TOKEN", token(s, who))
        .env_remove("LOGWARDEN_CONFIG")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    stdout_of_success(out)
}

fn refused(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a refusal\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn post(s: &Setup, who: &str, path: &str, body: &str) -> Response {
    http("POST", s.port, path, Some(&token(s, who)), Some(body)).unwrap()
}

/// Collects requests at a receiver until `done`.
fn collect(r: &Receiver, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let mut got = Vec::new();
    wait_for(what, WAIT, || {
        got.extend(r.drain());
        done(&got).then_some(())
    });
    got
}

fn events_for(got: &[Received], id: &str) -> Vec<String> {
    got.iter()
        .filter(|r| r.body["incident"]["id"] == id)
        .map(|r| r.body["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn has_event(got: &[Received], id: &str, event: &str) -> bool {
    events_for(got, id).iter().any(|e| e == event)
}

fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().unwrap().parse().unwrap()
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Waits (on the wall clock) until `at` has passed.
fn wait_until(what: &str, at: chrono::DateTime<chrono::Utc>) {
    wait_for(what, WAIT, || (now() >= at).then_some(()));
}

/// `GET /api/v1/silences` as an approver.
fn silences(s: &Setup) -> Value {
    let r = http(
        "GET",
        s.port,
        "/api/v1/silences",
        Some(&token(s, "boss")),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn audit_records(s: &Setup) -> Vec<Value> {
    let r = http(
        "GET",
        s.port,
        "/api/v1/audit?format=jsonl",
        Some(&s.token),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify(dir: &std::path::Path) -> Output {
    Command::new(bin())
        .args(["audit", "verify", "--state-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn a_critical_incident_goes_through_every_state_via_the_cli_with_kpis_and_audit_evidence() {
    let hook = Receiver::start();
    let s = setup(
        "critical",
        &format!(
            "receivers:\n  - {{name: hook, type: webhook, url: '{}', concurrency: 1, \
             events: [opened, acknowledged, state_changed, closed]}}\n\
             roles:\n  analysts: {{receivers: [hook]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n",
            hook.url("/hook")
        ),
    );
    let d = s.start();
    marker(&s, 1);
    let opened = wait_marker(&d, 1);
    assert_eq!(opened["id"], "INC-1");
    let opened_at = time(&opened["opened_at"]);

    let list = ok(&cli(&s, "viewer", &["incidents", "list"]));
    assert!(list.starts_with("ID"), "{list}");
    let row = list.lines().find(|l| l.starts_with("INC-1")).expect(&list);
    assert!(
        row.contains("open") && row.contains("critical") && row.contains("n=1"),
        "{row}"
    );
    let filtered = ok(&cli(
        &s,
        "viewer",
        &["incidents", "list", "--state", "closed"],
    ));
    assert!(!filtered.contains("INC-1"), "{filtered}");

    // Let measurable time pass, so the KPIs have something to carry.
    wait_until(
        "1.2 s after the opening",
        opened_at + chrono::Duration::milliseconds(1200),
    );
    ok(&cli(
        &s,
        "resp",
        &["incidents", "ack", "INC-1", "--note", "on it"],
    ));
    let acked_at = now();
    // The viewer may look but not act.
    let no = refused(&cli(
        &s,
        "viewer",
        &["incidents", "transition", "INC-1", "contained"],
    ));
    assert!(no.contains("403"), "{no}");
    for state in ["contained", "eradicated", "recovered"] {
        let out = ok(&cli(
            &s,
            "resp",
            &["incidents", "transition", "INC-1", state],
        ));
        assert!(out.contains(state), "{out}");
    }
    // A critical incident does not close without its review; the server's reason is shown.
    let why = refused(&cli(
        &s,
        "resp",
        &["incidents", "transition", "INC-1", "closed"],
    ));
    assert!(why.contains("409") && why.contains("review"), "{why}");
    assert_eq!(incident(&d, "INC-1")["state"], "recovered");
    // Nor can it skip a state or go back.
    let why = refused(&cli(
        &s,
        "resp",
        &["incidents", "transition", "INC-1", "contained"],
    ));
    assert!(
        why.contains("can move to closed or false_positive"),
        "{why}"
    );
    ok(&cli(
        &s,
        "resp",
        &[
            "incidents",
            "review",
            "INC-1",
            "--root-cause",
            "a leaked deploy key",
            "--lessons",
            "rotate keys on departure",
            "--action",
            "rotate all deploy keys",
            "--action",
            "add key expiry",
        ],
    ));
    ok(&cli(
        &s,
        "resp",
        &["incidents", "note", "INC-1", "keys rotated"],
    ));
    ok(&cli(
        &s,
        "resp",
        &[
            "incidents",
            "transition",
            "INC-1",
            "closed",
            "--note",
            "done",
        ],
    ));
    let closed_at = now();

    let shown = ok(&cli(&s, "viewer", &["incidents", "show", "INC-1"]));
    assert!(
        shown.contains("Timeline") && shown.contains("a leaked deploy key"),
        "{shown}"
    );
    for event in [
        "opened",
        "acknowledged",
        "contained",
        "eradicated",
        "recovered",
        "reviewed",
        "note",
        "closed",
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.contains(event) && (l.contains("resp") || event == "opened")),
            "no {event} line in\n{shown}"
        );
    }
    let json: Value = serde_json::from_str(&ok(&cli(
        &s,
        "viewer",
        &["incidents", "show", "INC-1", "--json"],
    )))
    .unwrap();
    assert_eq!(json["state"], "closed");
    assert_eq!(json["review"]["actions"].as_array().unwrap().len(), 2);
    assert_eq!(json["review"]["by"], "resp");
    let ack = json["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "acknowledged")
        .unwrap();
    assert_eq!(
        (ack["actor"].as_str(), ack["note"].as_str()),
        (Some("resp"), Some("on it"))
    );

    let got = collect(&hook, "the closed notification", |g| {
        has_event(g, "INC-1", "closed")
    });
    assert_eq!(
        events_for(&got, "INC-1"),
        [
            "opened",
            "acknowledged",
            "state_changed",
            "state_changed",
            "state_changed",
            "closed"
        ]
    );

    // KPI histograms carry the durations observed here.
    let m = http("GET", s.port, "/metrics", None, None).unwrap().body;
    let value = |series: &str| metric(s.port, series);
    for (kpi, upper) in [
        ("acknowledge", acked_at),
        ("contain", closed_at),
        ("resolve", closed_at),
    ] {
        let name = format!("logwarden_time_to_{kpi}_seconds");
        assert_eq!(
            value(&format!(
                "{name}_count{{drill=\"false\",severity=\"critical\"}}"
            )),
            1.0,
            "{m}"
        );
        let sum = value(&format!(
            "{name}_sum{{drill=\"false\",severity=\"critical\"}}"
        ));
        let most = (upper - opened_at).num_milliseconds() as f64 / 1000.0 + 0.5;
        assert!(
            sum >= 1.2 && sum <= most,
            "{name} sum {sum} not in [1.2, {most}]"
        );
        assert_eq!(
            value(&format!(
                "{name}_bucket{{drill=\"false\",severity=\"critical\",le=\"1\"}}"
            )),
            0.0
        );
        assert_eq!(
            value(&format!(
                "{name}_bucket{{drill=\"false\",severity=\"critical\",le=\"+Inf\"}}"
            )),
            1.0
        );
    }
    assert_eq!(
        value("logwarden_incidents_open{severity=\"critical\",state=\"recovered\"}"),
        0.0
    );
    assert_promtool_clean(&m);

    // Closed means over: the next match opens a new incident.
    marker(&s, 1);
    let again = wait_marker(&d, 1);
    assert_eq!(again["id"], "INC-2");

    // The export over the API while running, then offline on the stopped store.
    let csv = http(
        "GET",
        s.port,
        "/api/v1/audit?format=csv",
        Some(&s.token),
        None,
    )
    .unwrap();
    assert_eq!(csv.status, 200);
    assert!(
        csv.body
            .starts_with("seq,at,event,controls,actor,incident,incident_uid,details,prev,hash\n"),
        "{}",
        csv.body
    );
    // What leaves the host names the incident by its fleet-unique uid too.
    let uid = d.get("/api/v1/incidents/INC-1").json()["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(uid.ends_with("/INC-1"), "{uid}");
    assert!(csv.body.contains(&format!(",INC-1,{uid},")), "{}", csv.body);
    d.stop();

    let out = verify(&s.path("state"));
    let text = ok(&out);
    assert!(
        text.starts_with("OK: ") && text.contains("audit records"),
        "{text}"
    );
    let export = ok(&Command::new(bin())
        .args(["audit", "export", "--format", "jsonl", "--state-dir"])
        .arg(s.path("state"))
        .output()
        .unwrap());
    let records: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count: u64 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(records.len() as u64, count);
    for r in records.iter().filter(|r| r["incident"] == "INC-1") {
        assert_eq!(r["incident_uid"], uid.as_str(), "{r}");
    }
    let controls = |event: &str, to: Option<&str>| -> Vec<String> {
        let r = records
            .iter()
            .find(|r| {
                r["event"] == event
                    && to.is_none_or(|t| r["details"]["to"] == t)
                    && r["incident"] == "INC-1"
            })
            .unwrap_or_else(|| panic!("no {event} {to:?} record in\n{export}"));
        serde_json::from_value(r["controls"].clone()).unwrap()
    };
    assert_eq!(controls("incident.opened", None), ["CC7.2", "CC7.3"]);
    assert_eq!(
        controls("incident.transitioned", Some("acknowledged")),
        ["CC7.3"]
    );
    assert_eq!(
        controls("incident.transitioned", Some("contained")),
        ["CC7.4"]
    );
    assert_eq!(
        controls("incident.transitioned", Some("eradicated")),
        ["CC7.4"]
    );
    assert_eq!(
        controls("incident.transitioned", Some("recovered")),
        ["CC7.5"]
    );
    assert_eq!(controls("incident.transitioned", Some("closed")), ["CC7.5"]);
    assert_eq!(controls("incident.reviewed", None), ["CC7.5"]);
    assert_eq!(controls("notification.delivered", None), ["CC7.4"]);
    assert_eq!(controls("incident.refused", None), ["CC7.4"]);
    let acked = records
        .iter()
        .find(|r| r["details"]["to"] == "acknowledged")
        .unwrap();
    assert_eq!(acked["actor"], "resp");
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "rules.loaded" && r["controls"] == json!(["CC8.1"]))
    );
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=count).collect::<Vec<_>>());
    // --since/--until select by time.
    let later = Command::new(bin())
        .args([
            "audit",
            "export",
            "--format",
            "csv",
            "--since",
            "2999-01-01",
            "--state-dir",
        ])
        .arg(s.path("state"))
        .output()
        .unwrap();
    assert_eq!(ok(&later).lines().count(), 1, "only the header");
}

#[test]
fn escalation_steps_arrive_at_their_times_once_each_across_a_sigkill() {
    let (first, second, third) = (Receiver::start(), Receiver::start(), Receiver::start());
    let s = setup(
        "high",
        &format!(
            "receivers:\n  - {{name: first, type: webhook, url: '{}'}}\n  - {{name: second, type: webhook, url: '{}'}}\n  - {{name: third, type: webhook, url: '{}'}}\n\
             roles:\n  analysts: {{receivers: [first]}}\n  lead: {{receivers: [second]}}\n  ciso: {{receivers: [third]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n    - after: 3s\n      notify: [lead]\n    - after: 12s\n      notify: [ciso]\n",
            first.url("/"),
            second.url("/"),
            third.url("/")
        ),
    );
    let d = s.start();
    marker(&s, 1);
    let opened_at = time(&wait_marker(&d, 1)["opened_at"]);
    let got1 = collect(&first, "the opening at the first step", |g| {
        has_event(g, "INC-1", "opened")
    });
    let got2 = collect(&second, "step 2", |g| has_event(g, "INC-1", "escalated"));
    let step3_due = opened_at + chrono::Duration::seconds(12);
    let arrived = |got: &[Received]| {
        got.iter()
            .find(|r| r.body["event"] == "escalated")
            .unwrap()
            .at
    };
    let step2_at = arrived(&got2);
    assert!(
        step2_at >= opened_at + chrono::Duration::seconds(3),
        "step 2 came early: {step2_at} for an opening at {opened_at}"
    );
    // SIGKILL between the steps; restart only once step 3 is due, so it fires on restart.
    // (On a very loaded machine step 3 may already have fired: it must then not fire again.)
    let mut got3: Vec<Received> = third.drain();
    assert!(got3.iter().all(|r| r.at >= step3_due), "step 3 came early");
    d.kill();
    wait_until(
        "step 3 to be due while the daemon is down",
        step3_due + chrono::Duration::milliseconds(500),
    );
    let d = s.start();
    if !has_event(&got3, "INC-1", "escalated") {
        got3.extend(collect(&third, "step 3 after the restart", |g| {
            has_event(g, "INC-1", "escalated")
        }));
    }
    assert!(
        arrived(&got3) >= step3_due,
        "step 3 came early: {}",
        arrived(&got3)
    );
    // Close it: every receiver reached hears the close after everything before it.
    let r = post(
        &s,
        "resp",
        "/api/v1/incidents/INC-1/transition",
        r#"{"to": "false_positive", "note": "test traffic"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let all: Vec<Vec<Received>> = [(&first, got1), (&second, got2), (&third, got3)]
        .into_iter()
        .map(|(r, mut got)| {
            got.extend(collect(r, "the close", |g| has_event(g, "INC-1", "closed")));
            got
        })
        .collect();
    for (got, step) in all.iter().zip(["opened", "escalated", "escalated"]) {
        // At-least-once delivery may repeat a request, always under the same key: a step is
        // one key, and one step fired per receiver.
        let keys: BTreeSet<&str> = got
            .iter()
            .filter(|r| r.body["event"] == step)
            .map(|r| r.header("idempotency-key").unwrap())
            .collect();
        assert_eq!(keys.len(), 1, "{step}: {keys:?}");
        let events: BTreeSet<String> = events_for(got, "INC-1").into_iter().collect();
        assert_eq!(
            events,
            BTreeSet::from([step.to_string(), "closed".to_string()])
        );
    }
    let timeline = incident(&d, "INC-1")["timeline"].clone();
    let escalations: Vec<&Value> = timeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "escalated")
        .collect();
    assert_eq!(escalations.len(), 2, "{timeline:#}");
    assert!(
        escalations[0]["note"]
            .as_str()
            .unwrap()
            .contains("step 2 (lead)")
    );
    assert!(
        escalations[1]["note"]
            .as_str()
            .unwrap()
            .contains("step 3 (ciso)")
    );
}

#[test]
fn acknowledging_stops_escalation_and_a_repeating_step_repeats_until_then() {
    let (first, second) = (Receiver::start(), Receiver::start());
    let s = setup(
        "moderate",
        &format!(
            "receivers:\n  - {{name: first, type: webhook, url: '{}'}}\n  - {{name: second, type: webhook, url: '{}'}}\n\
             roles:\n  analysts: {{receivers: [first]}}\n  lead: {{receivers: [second]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n    - {{after: 2s, notify: [lead], repeat: 2s}}\n",
            first.url("/"),
            second.url("/")
        ),
    );
    let d = s.start();
    marker(&s, 1);
    let one = wait_marker(&d, 1);
    let r = post(&s, "resp", "/api/v1/incidents/INC-1/ack", "");
    assert_eq!(r.status, 200, "{}", r.body);
    marker(&s, 2);
    let two = wait_marker(&d, 2);
    // INC-2, never acknowledged, escalates and repeats: the step is live.
    let got = collect(&second, "two escalations of INC-2", |g| {
        events_for(g, two["id"].as_str().unwrap()).len() >= 2
    });
    let r = post(
        &s,
        "resp",
        &format!("/api/v1/incidents/{}/ack", two["id"].as_str().unwrap()),
        r#"{"note": "mine"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let acked = now();
    // Well past INC-1's step time and INC-2's next repeat (the clock ticks every second).
    wait_until(
        "3.5 s after the acknowledgements",
        acked + chrono::Duration::milliseconds(3500),
    );
    let late: Vec<Received> = got.into_iter().chain(second.drain()).collect();
    // Judged by the state each notification was sent in, not by when this (possibly slow)
    // test looked: nothing may escalate once acknowledged.
    for incident_id in [one["id"].as_str().unwrap(), two["id"].as_str().unwrap()] {
        let after_ack: Vec<String> = late
            .iter()
            .filter(|r| {
                r.body["incident"]["id"] == incident_id && r.body["incident"]["state"] != "open"
            })
            .map(|r| r.body["event"].to_string())
            .collect();
        assert!(
            after_ack.is_empty(),
            "{incident_id} escalated after its acknowledgement: {after_ack:?}"
        );
    }
    let timeline = incident(&d, one["id"].as_str().unwrap())["timeline"].clone();
    let events: Vec<&str> = timeline
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let acked_at = events
        .iter()
        .position(|e| *e == "acknowledged")
        .expect("acknowledged");
    assert!(!events[acked_at..].contains(&"escalated"), "{timeline:#}");
}

#[test]
fn an_external_role_hears_of_an_incident_only_after_an_approver_approves_it() {
    let (hook, press) = (Receiver::start(), Receiver::start());
    let s = setup(
        "high",
        &format!(
            "receivers:\n  - {{name: hook, type: webhook, url: '{}'}}\n  - {{name: press, type: webhook, url: '{}'}}\n\
             roles:\n  analysts: {{receivers: [hook]}}\n  communications: {{receivers: [press], external: true}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts, communications]\n",
            hook.url("/"),
            press.url("/")
        ),
    );
    let d = s.start();
    marker(&s, 1);
    wait_marker(&d, 1);
    collect(&hook, "the opening for analysts", |g| {
        has_event(g, "INC-1", "opened")
    });
    assert!(
        press.next(Duration::from_millis(1500)).is_none(),
        "the external role heard before approval"
    );
    // A responder cannot approve.
    let r = post(&s, "resp", "/api/v1/incidents/INC-1/approve", "{}");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("approver")
    );
    let out = ok(&cli(
        &s,
        "boss",
        &["incidents", "approve", "INC-1", "--note", "legal agreed"],
    ));
    assert!(out.contains("approved"), "{out}");
    let got = collect(&press, "the external notification", |g| {
        has_event(g, "INC-1", "escalated")
    });
    assert_eq!(got[0].body["incident"]["approval"]["by"], "boss");
    let why = refused(&cli(&s, "boss", &["incidents", "approve", "INC-1"]));
    assert!(
        why.contains("409") && why.contains("already approved by boss"),
        "{why}"
    );
    let i = incident(&d, "INC-1");
    let approved = i["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "approved")
        .unwrap();
    assert_eq!(
        (approved["actor"].as_str(), approved["note"].as_str()),
        (Some("boss"), Some("legal agreed"))
    );
    let records = wait_for("the external delivery in the audit log", WAIT, || {
        let r = audit_records(&s);
        r.iter()
            .any(|r| r["event"] == "notification.delivered" && r["details"]["receiver"] == "press")
            .then_some(r)
    });
    let approval = records
        .iter()
        .find(|r| r["event"] == "incident.approved")
        .unwrap();
    assert_eq!(approval["controls"], json!(["CC2.3"]));
    assert_eq!(approval["actor"], "boss");
    assert_eq!(approval["details"]["released"], json!(["press"]));
    let delivered = records
        .iter()
        .find(|r| r["event"] == "notification.delivered" && r["details"]["receiver"] == "press")
        .unwrap();
    assert_eq!(delivered["controls"], json!(["CC7.4", "CC2.3"]));
}

#[test]
fn a_silence_mutes_notifications_but_not_the_record_and_a_close_still_resolves() {
    let (hook, pd) = (Receiver::start(), Receiver::start());
    let s = setup(
        "low",
        &format!(
            "receivers:\n  - {{name: hook, type: webhook, url: '{}', concurrency: 1}}\n  - {{name: pd, type: webhook, url: '{}', format: pagerduty, routing_key_file: pd-key, concurrency: 1}}\n\
             roles:\n  analysts: {{receivers: [hook, pd]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n",
            hook.url("/"),
            pd.url("/")
        ),
    );
    s.write("pd-key", "R0UTING");
    let d = s.start();
    let add = [
        "silences",
        "add",
        "--rule",
        "marker",
        "--key",
        "n=1",
        "--label",
        "team=ops",
        "--duration",
        "1h",
        "--reason",
        "planned maintenance",
    ];
    let why = refused(&cli(&s, "resp", &add));
    assert!(why.contains("403"), "{why}");
    let out = ok(&cli(&s, "boss", &add));
    assert!(out.starts_with("SIL-1: active"), "{out}");
    ok(&cli(
        &s,
        "boss",
        &[
            "silences",
            "add",
            "--rule",
            "marker",
            "--key",
            "n=9",
            "--duration",
            "2s",
            "--reason",
            "short",
        ],
    ));
    let bad = refused(&cli(
        &s,
        "boss",
        &[
            "silences",
            "add",
            "--duration",
            "1h",
            "--reason",
            "everything",
        ],
    ));
    assert!(bad.contains("400") && bad.contains("matcher"), "{bad}");

    marker(&s, 1);
    wait_marker(&d, 1);
    marker(&s, 1);
    wait_for(
        "the silenced incident to count its second match",
        WAIT,
        || (incident(&d, "INC-1")["count"] == 2).then_some(()),
    );
    assert_eq!(incident(&d, "INC-1")["silenced_by"], "SIL-1");
    marker(&s, 2);
    wait_marker(&d, 2);
    // One request at a time per receiver, oldest first: INC-1's would have come before.
    let got = collect(&hook, "INC-2's opening", |g| {
        has_event(g, "INC-2", "opened")
    });
    assert!(
        events_for(&got, "INC-1").is_empty(),
        "the silenced incident notified"
    );
    // PagerDuty hears of incidents by their fleet-unique uids.
    let uid = |id: &str| incident(&d, id)["uid"].as_str().unwrap().to_string();
    let (uid1, uid2) = (uid("INC-1"), uid("INC-2"));
    assert!(uid1.ends_with("/INC-1"), "{uid1}");
    let got_pd = collect(&pd, "INC-2's trigger", |g| {
        g.iter().any(|r| r.body["dedup_key"] == uid2.as_str())
    });
    assert!(got_pd.iter().all(|r| r.body["dedup_key"] != uid1.as_str()));

    // The close of the silenced incident still resolves the page; nothing else hears it.
    let r = post(
        &s,
        "resp",
        "/api/v1/incidents/INC-1/transition",
        r#"{"to": "false_positive"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let resolve = collect(&pd, "INC-1's resolve", |g| {
        g.iter().any(|r| r.body["dedup_key"] == uid1.as_str())
    });
    let resolve = resolve
        .iter()
        .find(|r| r.body["dedup_key"] == uid1.as_str())
        .unwrap();
    assert_eq!(resolve.body["event_action"], "resolve");
    let r = post(
        &s,
        "resp",
        "/api/v1/incidents/INC-2/transition",
        r#"{"to": "false_positive"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got = collect(&hook, "INC-2's close", |g| has_event(g, "INC-2", "closed"));
    assert!(
        events_for(&got, "INC-1").is_empty(),
        "the silenced incident's close went to hook"
    );

    // SIL-2 ends by itself; SIL-1 is expired by hand.
    let list = wait_for("SIL-2 to expire by itself", WAIT, || {
        let list = silences(&s);
        (list
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == "SIL-2" && x["expired_by"] == "logwarden"))
        .then_some(list)
    });
    assert_eq!(list.as_array().unwrap().len(), 2);
    ok(&cli(&s, "boss", &["silences", "expire", "SIL-1"]));
    let table = ok(&cli(&s, "boss", &["silences", "list"]));
    let row = table
        .lines()
        .find(|l| l.starts_with("SIL-1"))
        .expect(&table);
    assert!(
        row.contains("expired")
            && row.contains("rule=marker,n=1,label:team=ops")
            && row.contains("boss"),
        "{row}"
    );
    let again = refused(&cli(&s, "boss", &["silences", "expire", "SIL-1"]));
    assert!(again.contains("404"), "{again}");
    let records = audit_records(&s);
    let events: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["event"].as_str().unwrap().starts_with("silence."))
        .map(|r| (r["event"].as_str().unwrap(), r["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [
            ("silence.created", "boss"),
            ("silence.created", "boss"),
            ("silence.expired", "logwarden"),
            ("silence.expired", "boss")
        ]
    );
    let opened = records
        .iter()
        .find(|r| r["event"] == "incident.opened" && r["incident"] == "INC-1")
        .unwrap();
    assert_eq!(opened["details"]["silenced_by"], "SIL-1");
    assert_eq!(opened["details"]["notified"], json!([]));
}

#[test]
fn each_role_may_do_what_it_may_and_every_refusal_is_audited() {
    let hook = Receiver::start();
    let s = setup(
        "low",
        &format!(
            "receivers:\n  - {{name: hook, type: webhook, url: '{}'}}\n\
             roles:\n  analysts: {{receivers: [hook]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n",
            hook.url("/")
        ),
    );
    let d = s.start();
    marker(&s, 1);
    wait_marker(&d, 1);
    let silence = r#"{"matchers": {"rule": "marker"}, "duration": "1h", "reason": "r"}"#;
    // (who, method, path, body, expected status)
    let calls: Vec<(&str, &str, &str, &str, u16)> = vec![
        ("nobody", "GET", "/api/v1/incidents", "", 401),
        ("viewer", "GET", "/api/v1/incidents", "", 200),
        ("viewer", "GET", "/api/v1/audit", "", 200),
        (
            "viewer",
            "POST",
            "/api/v1/incidents/INC-1/note",
            r#"{"text": "x"}"#,
            403,
        ),
        ("viewer", "GET", "/api/v1/silences", "", 403),
        (
            "resp",
            "POST",
            "/api/v1/incidents/INC-1/note",
            r#"{"text": "looking"}"#,
            200,
        ),
        ("resp", "POST", "/api/v1/incidents/INC-1/approve", "", 403),
        ("resp", "POST", "/api/v1/silences", silence, 403),
        ("resp", "DELETE", "/api/v1/silences/SIL-1", "", 403),
        ("boss", "POST", "/api/v1/silences", silence, 201),
        ("boss", "GET", "/api/v1/silences", "", 200),
        ("boss", "POST", "/api/v1/incidents/INC-1/approve", "", 200),
        ("boss", "DELETE", "/api/v1/silences/SIL-1", "", 200),
        ("tester", "POST", "/api/v1/incidents/INC-1/ack", "", 200),
        // Malformed requests are refused with JSON reasons.
        (
            "resp",
            "POST",
            "/api/v1/incidents/INC-1/transition",
            r#"{"to": "bogus"}"#,
            400,
        ),
        (
            "resp",
            "POST",
            "/api/v1/incidents/INC-1/transition",
            r#"{"to": "contained", "extra": 1}"#,
            400,
        ),
        (
            "resp",
            "POST",
            "/api/v1/incidents/INC-1/transition",
            r#"{"to": "open"}"#,
            409,
        ),
        (
            "resp",
            "POST",
            "/api/v1/incidents/INC-1/note",
            "not json",
            400,
        ),
        ("resp", "POST", "/api/v1/incidents/INC-9/ack", "", 404),
        (
            "boss",
            "POST",
            "/api/v1/silences",
            r#"{"matchers": {"rule": "marker"}, "duration": "1h", "ends_at": "2999-01-01T00:00:00Z", "reason": "r"}"#,
            400,
        ),
    ];
    let mut denied = 0;
    for (who, method, path, body, expected) in &calls {
        let t = (*who != "nobody").then(|| token(&s, who));
        let r = http(method, s.port, path, t.as_deref(), Some(body)).unwrap();
        assert_eq!(
            r.status, *expected,
            "{who} {method} {path} {body}: {}",
            r.body
        );
        if r.status >= 400 {
            assert!(
                r.json()["error"].is_string(),
                "{who} {method} {path}: {}",
                r.body
            );
        }
        denied += usize::from(matches!(r.status, 401 | 403));
    }
    let big = format!(r#"{{"text": "{}"}}"#, "x".repeat(70_000));
    let r = post(&s, "resp", "/api/v1/incidents/INC-1/note", &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["error"].is_string());
    let r = http("GET", s.port, "/api/v1/incidents", None, None).unwrap();
    assert_eq!(r.status, 401);
    denied += 1;
    // Refusals are recorded per client, actor, status and minute; stopping records the
    // last minute's.
    d.stop();
    let records = audit_export(&s.path("state"));
    let refusals: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "api.denied")
        .collect();
    let counted: u64 = refusals
        .iter()
        .map(|r| r["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, denied as u64, "{refusals:#?}");
    assert!(refusals.iter().all(|r| r["controls"] == json!(["CC6.1"])));
    assert!(refusals.iter().any(|r| {
        r["actor"] == "resp"
            && r["details"]["calls"]
                .as_array()
                .unwrap()
                .contains(&json!("POST /api/v1/incidents/INC-1/approve"))
            && r["details"]["status"] == 403
            && r["details"]["client"] == "127.0.0.1"
    }));
}

#[test]
fn the_open_gauge_counts_every_state_after_a_restart() {
    let s = setup("moderate", "");
    let d = s.start();
    for n in 1..=6 {
        marker(&s, n);
        wait_marker(&d, n);
    }
    let path = [
        "acknowledged",
        "contained",
        "eradicated",
        "recovered",
        "closed",
    ];
    // INC-n goes n-1 steps along the path; INC-6 closes.
    for n in 2..=6u32 {
        for to in &path[..(n - 1) as usize] {
            let r = post(
                &s,
                "resp",
                &format!("/api/v1/incidents/INC-{n}/transition"),
                &format!(r#"{{"to": "{to}"}}"#),
            );
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    let expect = |port: u16| {
        for state in [
            "open",
            "acknowledged",
            "contained",
            "eradicated",
            "recovered",
        ] {
            let series =
                format!("logwarden_incidents_open{{severity=\"moderate\",state=\"{state}\"}}");
            assert_eq!(metric(port, &series), 1.0, "{series}");
        }
        assert_eq!(
            metric(
                port,
                "logwarden_incidents_open{severity=\"moderate\",state=\"closed\"}"
            ),
            0.0
        );
    };
    expect(s.port);
    d.kill();
    let d = s.start();
    expect(s.port);
    assert_eq!(incident(&d, "INC-6")["state"], "closed");
    // After a restart, the book still knows which incidents are active.
    let r = post(
        &s,
        "resp",
        "/api/v1/incidents/INC-5/transition",
        r#"{"to": "closed"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        metric(
            s.port,
            "logwarden_incidents_open{severity=\"moderate\",state=\"recovered\"}"
        ),
        0.0
    );
}

#[test]
fn audit_verify_finds_one_changed_byte_in_a_copy_and_refuses_a_live_store() {
    let s = setup("low", "");
    let d = s.start();
    for n in 1..=3 {
        marker(&s, n);
        wait_marker(&d, n);
    }
    let r = post(
        &s,
        "resp",
        "/api/v1/incidents/INC-2/ack",
        r#"{"note": "mine"}"#,
    );
    assert_eq!(r.status, 200);
    // A live store is locked: a clear error, exit 2.
    let live = verify(&s.path("state"));
    assert_eq!(live.status.code(), Some(2));
    let err = String::from_utf8_lossy(&live.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    d.stop();
    let intact = ok(&verify(&s.path("state")));
    let count: u64 = intact.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(count >= 5, "{intact}");

    let copy = s.path("copy");
    let out = Command::new("cp")
        .arg("-a")
        .arg(s.path("state"))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success());
    let target = 3u64;
    {
        use logwarden::store::{Batch, Space, Store};
        let store = Store::open(&copy).unwrap();
        let key = logwarden::audit::Record::key(target);
        let mut record: Value = store.get(Space::Audit, &key).unwrap().unwrap();
        // One byte: the first letter of the actor.
        let actor = record["actor"].as_str().unwrap().to_string();
        let changed = format!(
            "{}{}",
            if actor.starts_with('X') { 'Y' } else { 'X' },
            &actor[1..]
        );
        record["actor"] = changed.into();
        let mut b = Batch::new();
        b.put(Space::Audit, &key, &record).unwrap();
        store.commit(b).unwrap();
        store.flush_blocking().unwrap();
    }
    let broken = verify(&copy);
    assert_eq!(
        broken.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&broken.stdout)
    );
    let text = String::from_utf8_lossy(&broken.stdout);
    assert!(
        text.starts_with(&format!("BROKEN: record {target} (seq {target})"))
            && text.contains("altered"),
        "{text}"
    );
    // The original is untouched and still intact.
    assert_eq!(ok(&verify(&s.path("state"))), intact);
    let missing = verify(&s.path("nothing-here"));
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn an_incident_opened_by_the_clock_is_notified_once_as_an_opening() {
    let hook = Receiver::start();
    let s = setup(
        "low",
        &format!(
            "receivers:\n  - {{name: hook, type: webhook, url: '{}', concurrency: 1}}\n\
             roles:\n  analysts: {{receivers: [hook]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n    - {{after: 1h, notify: [analysts]}}\n",
            hook.url("/")
        ),
    );
    s.write(
        "rules/absence.yaml",
        "rules:\n  - id: heartbeat\n    match: 'HEARTBEAT'\n    absence: {within: 1s}\n    severity: high\n",
    );
    let d = s.start();
    let i = d.wait_incident("heartbeat", WAIT);
    let id = i["id"].as_str().unwrap().to_string();
    let got = collect(&hook, "the absence incident's opening", |g| {
        has_event(g, &id, "opened")
    });
    // A step already due at the opening goes out with it, not again as an escalation.
    assert_eq!(events_for(&got, &id), ["opened"]);
    let timeline = incident(&d, &id)["timeline"].to_string();
    assert!(!timeline.contains("escalated"), "{timeline}");
}

#[test]
fn a_drill_goes_through_the_live_path_marked_and_kept_out_of_real_kpis() {
    let hook = Receiver::start();
    let chat = Receiver::start();
    let s = setup(
        "moderate",
        &format!(
            "receivers:\n  - {{name: hook, type: webhook, url: '{}'}}\n  - {{name: chat, type: webhook, url: '{}', format: slack}}\n\
             roles:\n  analysts: {{receivers: [hook, chat]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n",
            hook.url("/hook"),
            chat.url("/slack")
        ),
    );
    let d = s.start();
    assert!(refused(&cli(&s, "viewer", &["drill", "--rule", "marker"])).contains("responder"));
    assert!(refused(&cli(&s, "resp", &["drill", "--rule", "nope"])).contains("no rule nope"));

    let incident: Value = serde_json::from_str(&ok(&cli(
        &s,
        "resp",
        &["drill", "--rule", "marker", "--json"],
    )))
    .unwrap();
    let id = incident["id"].as_str().unwrap().to_string();
    assert_eq!(incident["drill"], true);
    assert_eq!(incident["state"], "open");
    assert!(
        incident["summary"].as_str().unwrap().starts_with("[DRILL]"),
        "{incident}"
    );

    // The real receivers hear of it, marked.
    let posted = hook.next(WAIT).expect("the json receiver is notified");
    assert_eq!(posted.body["event"], "opened");
    assert_eq!(posted.body["incident"]["id"], id.as_str());
    assert_eq!(posted.body["incident"]["drill"], true);
    let slack = chat.next(WAIT).expect("the slack receiver is notified");
    assert!(slack.body.to_string().contains("[DRILL]"), "{}", slack.body);

    // The lifecycle works on it; its KPIs are observed under drill="true" only.
    ok(&cli(&s, "resp", &["incidents", "ack", &id]));
    let value = |series: &str| metric(s.port, series);
    assert_eq!(
        value("logwarden_time_to_acknowledge_seconds_count{drill=\"true\",severity=\"moderate\"}"),
        1.0
    );
    assert_eq!(
        value("logwarden_time_to_acknowledge_seconds_count{drill=\"false\",severity=\"moderate\"}"),
        0.0
    );
    assert_eq!(
        value("logwarden_time_to_detect_seconds_count{drill=\"true\",severity=\"moderate\"}"),
        1.0
    );
    assert_eq!(
        value("logwarden_incidents_opened_total{rule=\"marker\",severity=\"moderate\"}"),
        0.0
    );

    // The audit log records it as a drill.
    let audit = d.get("/api/v1/audit?format=jsonl");
    assert_eq!(audit.status, 200, "{}", audit.body);
    let opened = audit
        .body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["event"] == "incident.opened" && r["incident"] == id.as_str())
        .expect("an incident.opened record for the drill");
    assert_eq!(opened["details"]["drill"], true, "{opened}");
}

#[test]
fn a_routine_incident_resolves_in_one_command_and_mistakes_are_refused_in_words() {
    let s = setup("moderate", "");
    let d = s.start();
    marker(&s, 7);
    let opened = wait_marker(&d, 7);
    let id = opened["id"].as_str().unwrap().to_string();

    // Arguments are checked before anything is sent, with the valid choices listed (exit 2).
    let bad = cli(&s, "resp", &["incidents", "transition", &id, "resolved"]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("possible values: acknowledged, contained") && !stderr.contains("open,"),
        "{stderr}"
    );
    let bad = cli(
        &s,
        "boss",
        &["silences", "add", "--duration", "5x", "--reason", "r"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown unit"));
    // The API refuses what it does not know instead of answering an empty list.
    let r = d.get("/api/v1/incidents?state=bogus");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("acknowledged"), "{}", r.body);
    // A body error is a sentence, with no JSON position the caller never wrote.
    let r = post(
        &s,
        "resp",
        &format!("/api/v1/incidents/{id}/transition"),
        r#"{"to": "resolvd"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!r.body.contains("line 1 column"), "{}", r.body);
    // A silence that could never match is refused, naming what is known.
    let no = refused(&cli(
        &s,
        "boss",
        &[
            "silences",
            "add",
            "--rule",
            "markr",
            "--duration",
            "1h",
            "--reason",
            "r",
        ],
    ));
    assert!(no.contains("did you mean \"marker\"?"), "{no}");
    let no = refused(&cli(
        &s,
        "boss",
        &[
            "silences",
            "add",
            "--rule",
            "marker",
            "--key",
            "ip=1.2.3.4",
            "--duration",
            "1h",
            "--reason",
            "r",
        ],
    ));
    assert!(no.contains("key fields: n"), "{no}");

    // One command: open → closed, one timeline entry, one audit record.
    let out = ok(&cli(
        &s,
        "resp",
        &["incidents", "resolve", &id, "--note", "cron job fixed"],
    ));
    assert!(out.contains("resolved") && out.contains("closed"), "{out}");
    let closed = incident(&d, &id);
    assert_eq!(closed["state"], "closed");
    let events: Vec<&str> = closed["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"resolved"), "{events:?}");
    assert!(
        !events.contains(&"contained"),
        "one step, not five: {events:?}"
    );
    let audit = audit_records(&s);
    let resolved: Vec<&Value> = audit
        .iter()
        .filter(|r| r["event"] == "incident.resolved")
        .collect();
    assert_eq!(resolved.len(), 1, "{audit:?}");
    assert_eq!(resolved[0]["details"]["from"], "open");
    // The KPIs count it as acknowledged, contained and resolved.
    let metrics = d.get("/metrics").body;
    for kpi in ["time_to_acknowledge", "time_to_contain", "time_to_resolve"] {
        let count =
            format!("logwarden_{kpi}_seconds_count{{drill=\"false\",severity=\"moderate\"}} 1");
        assert!(metrics.contains(&count), "{count} in\n{metrics}");
    }
    // Times for people, to the second.
    let show = ok(&cli(&s, "viewer", &["incidents", "show", &id]));
    assert!(
        !show.contains(".000") && show.contains("(byte 0)"),
        "{show}"
    );
    d.stop();
}

#[test]
fn every_documented_series_is_there_from_the_start_at_zero() {
    let s = setup(
        "low",
        "receivers:\n  - {name: console, type: file, path: out.jsonl}\nroles:\n  analysts: {receivers: [console]}\nescalation_policies:\n  default:\n    - notify: [analysts]\n",
    );
    let d = s.start();
    let metrics = d.get("/metrics").body;
    for series in [
        "logwarden_lines_read_total{source=\"app\"} 0",
        "logwarden_rule_matches_total{rule=\"marker\"} 0",
        "logwarden_incidents_opened_total{rule=\"marker\",severity=\"low\"} 0",
        "logwarden_time_to_detect_seconds_count{drill=\"false\",severity=\"low\"} 0",
        "logwarden_time_to_acknowledge_seconds_count{drill=\"false\",severity=\"critical\"} 0",
        "logwarden_time_to_contain_seconds_count{drill=\"true\",severity=\"high\"} 0",
        "logwarden_time_to_resolve_seconds_count{drill=\"false\",severity=\"moderate\"} 0",
        "logwarden_notifications_total{outcome=\"delivered\",receiver=\"console\"} 0",
        "logwarden_notifications_total{outcome=\"dead\",receiver=\"console\"} 0",
        "logwarden_outbox_pending{receiver=\"console\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
    for process in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
    ] {
        assert!(metrics.contains(process), "{process} missing");
    }
    d.stop();
}

/// `HH:MM` of `at` on the wall clock of `tz`, and that day's weekday as a schedule names it.
fn wall_clock(tz: &jiff::tz::TimeZone, at: chrono::DateTime<chrono::Utc>) -> (String, String) {
    let local = tz.to_datetime(jiff::Timestamp::from_second(at.timestamp()).unwrap());
    let day = format!("{:?}", local.weekday())[..3].to_lowercase();
    (format!("{:02}:{:02}", local.hour(), local.minute()), day)
}

/// A maintenance window that is open now mutes its incidents and ends with its end date;
/// one later today leaves incidents notified and is listed with its next window. The
/// window's opening and closing are audit records under the controls of silences.
#[test]
fn a_scheduled_silence_mutes_inside_its_window_and_audits_its_opening_and_closing() {
    let Ok(berlin) = jiff::tz::TimeZone::get("Europe/Berlin") else {
        assert!(
            !common::peers_required(),
            "no Europe/Berlin in /usr/share/zoneinfo (package tzdata)"
        );
        eprintln!("SKIPPED: no Europe/Berlin in /usr/share/zoneinfo (package tzdata)");
        return;
    };
    let hook = Receiver::start();
    let s = setup(
        "low",
        &format!(
            "receivers:\n  - {{name: hook, type: webhook, url: '{}', concurrency: 1}}\n\
             roles:\n  analysts: {{receivers: [hook]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n",
            hook.url("/")
        ),
    );
    let d = s.start();
    let minute = chrono::Duration::minutes(1);
    // In effect now (from the minute before to three minutes on, crossing midnight when
    // now is near it), cut by an end date 20 seconds from now.
    let (from, day) = wall_clock(&berlin, now() - minute);
    let (to, _) = wall_clock(&berlin, now() + minute * 3);
    let schedule = ["--days", &day, "--from", &from, "--to", &to];
    let add = |who: &str, n: &str, schedule: &[&str], end: &[&str]| {
        let mut args = vec!["silences", "add", "--rule", "marker", "--key", n];
        args.extend_from_slice(schedule);
        args.extend_from_slice(&["--time-zone", "Europe/Berlin"]);
        args.extend_from_slice(end);
        args.extend_from_slice(&["--reason", "nightly maintenance"]);
        cli(&s, who, &args)
    };
    let why = refused(&add("resp", "n=1", &schedule, &["--duration", "20s"]));
    assert!(why.contains("403"), "{why}");
    let out = ok(&add("boss", "n=1", &schedule, &["--duration", "20s"]));
    assert!(out.starts_with("SIL-1: active"), "{out}");
    assert!(out.contains("next window: "), "{out}");
    // Later today, every day: not in effect now.
    let later = now() + chrono::Duration::hours(2);
    let (later_from, _) = wall_clock(&berlin, later);
    let (later_to, _) = wall_clock(&berlin, later + chrono::Duration::hours(1));
    let every_day = "mon,tue,wed,thu,fri,sat,sun";
    let later_schedule = [
        "--days",
        every_day,
        "--from",
        &later_from,
        "--to",
        &later_to,
    ];
    ok(&add("boss", "n=2", &later_schedule, &[]));

    marker(&s, 1);
    marker(&s, 2);
    wait_marker(&d, 1);
    wait_marker(&d, 2);
    let got = collect(&hook, "INC-2's opening", |g| {
        g.iter().any(|r| r.body["event"] == "opened")
    });
    let opened: Vec<&Value> = got
        .iter()
        .filter(|r| r.body["event"] == "opened")
        .map(|r| &r.body["incident"]["key"]["n"])
        .collect();
    assert_eq!(
        opened,
        [&json!("2")],
        "only the unsilenced incident notified"
    );
    let muted = d
        .incidents()
        .into_iter()
        .find(|i| i["key"]["n"] == "1")
        .unwrap();
    assert_eq!(muted["silenced_by"], "SIL-1");

    // Listed with their next windows: the later one today (or tomorrow, past midnight).
    let list = silences(&s);
    let sil = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .cloned()
            .unwrap()
    };
    let pending = sil("SIL-2");
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["schedule"]["time_zone"], "Europe/Berlin");
    let next = time(&pending["next_window"]["starts_at"]);
    let expected = later - chrono::Duration::seconds(later.timestamp() % 60);
    assert!(
        (next - expected).num_seconds().abs() < 61,
        "next window at {next}, expected about {expected}"
    );
    let table = ok(&cli(&s, "boss", &["silences", "list"]));
    let row = table
        .lines()
        .find(|l| l.starts_with("SIL-2"))
        .expect(&table);
    assert!(
        row.contains(&format!(
            "{every_day} {later_from}-{later_to} Europe/Berlin; next "
        )),
        "{row}"
    );

    // The end date closes the open window, then the silence ends.
    let ends_at = time(&sil("SIL-1")["ends_at"]);
    let records = wait_for(
        "SIL-1's window closed and the silence expired",
        WAIT,
        || {
            let records = audit_records(&s);
            let of = |event: &str| {
                records
                    .iter()
                    .any(|r| r["event"] == event && r["details"]["id"] == "SIL-1")
            };
            (of("silence.window_closed") && of("silence.expired")).then_some(records)
        },
    );
    let of_sil1: Vec<&Value> = records
        .iter()
        .filter(|r| r["details"]["id"] == "SIL-1")
        .collect();
    let events: Vec<&str> = of_sil1
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "silence.created",
            "silence.window_opened",
            "silence.window_closed",
            "silence.expired"
        ]
    );
    let (opened, closed) = (of_sil1[1], of_sil1[2]);
    assert_eq!(opened["controls"], of_sil1[0]["controls"]);
    assert_eq!(closed["controls"], of_sil1[0]["controls"]);
    assert_eq!(opened["actor"], "logwarden");
    assert_eq!(opened["details"]["reason"], "nightly maintenance");
    assert_eq!(opened["details"]["author"], "boss");
    assert_eq!(time(&closed["details"]["window"]["ends_at"]), ends_at);
    assert!(time(&opened["details"]["window"]["starts_at"]) <= now());
    // The later window has not taken effect: no record of it.
    assert!(!records.iter().any(|r| r["details"]["id"] == "SIL-2"
        && r["event"].as_str().unwrap().starts_with("silence.window")));
}

/// A decision whose record cannot be written fails its whole commit, loudly: the request
/// gets a 500, `/readyz` answers 503 until the daemon stops (non-zero, naming what was not
/// stored), and nothing of the decision is stored: after a restart neither the silence nor
/// its audit record exists, and what was stored before is intact.
#[test]
fn an_effect_that_cannot_be_written_fails_the_commit_and_stores_nothing_of_it() {
    let s = setup("low", "");
    let mut d = s.start_with_env(&[("LOGWARDEN_TEST_UNWRITABLE", "UNWRITABLE")]);
    let body = |reason: &str| {
        json!({"matchers": {"rule": "marker"}, "duration": "1h", "reason": reason}).to_string()
    };
    let r = post(&s, "boss", "/api/v1/silences", &body("planned work"));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post(&s, "boss", "/api/v1/silences", &body("UNWRITABLE work"));
    assert_eq!(r.status, 500, "{}", r.body);
    let mut saw_503 = false;
    let status = wait_for("the daemon to stop", WAIT, || {
        if let Ok(r) = http("GET", d.port, "/readyz", None, None)
            && r.status == 503
        {
            saw_503 = true;
        }
        d.child.try_wait().unwrap()
    });
    assert!(!status.success(), "exited with {status}:\n{}", d.log());
    assert!(
        d.log().contains("cannot build the store commit")
            && d.log().contains("injected write failure"),
        "{}",
        d.log()
    );
    assert!(saw_503, "/readyz never answered 503:\n{}", d.log());

    let _d = s.start();
    let ids: Vec<Value> = silences(&s)
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].clone())
        .collect();
    assert_eq!(ids, [json!("SIL-1")]);
    let created: Vec<Value> = audit_records(&s)
        .into_iter()
        .filter(|r| r["event"] == "silence.created")
        .map(|r| r["details"]["reason"].clone())
        .collect();
    assert_eq!(created, [json!("planned work")]);
}
