//! Notification delivery end to end: the real daemon, real receivers on 127.0.0.1 that
//! refuse, fail, hang and come back, SIGKILL, signatures checked by Python's `hmac`.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

const RULES: &str = r#"
rules:
  - id: marker
    match: 'MARKER (?P<n>\d+)'
    group_by: [n]
    threshold: {count: 1, within: 1s}
    severity: high
    category: policy-violation
    summary: "marker {{ n }}"
    runbook: https://wiki.example/marker
"#;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "s3cr3t-signing-key";

/// A daemon config with one marker rule, `receivers` (YAML list items) and one role that
/// reaches `reached` (comma-separated receiver names).
fn setup(receivers: &str, reached: &str) -> Setup {
    let s = Setup::new();
    s.write("rules/test.yaml", RULES);
    s.write("app.log", "");
    s.write("secret", &format!("{SECRET}\n"));
    s.write("pd-key", "R0UT1NGKEY\n");
    s.config(&format!(
        "sources:\n  - {{name: app, paths: [app.log], start_at: beginning, timestamp: arrival}}\n\
         receivers:\n{receivers}\
         roles:\n  analysts: {{receivers: [{reached}]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n"
    ));
    s
}

fn markers(s: &Setup, ns: impl IntoIterator<Item = u32>) {
    let lines: Vec<String> = ns.into_iter().map(|n| format!("MARKER {n}")).collect();
    s.append("app.log", &lines);
}

fn keys(got: &[Received]) -> BTreeSet<String> {
    got.iter()
        .map(|r| {
            r.header("idempotency-key")
                .expect("Idempotency-Key")
                .to_string()
        })
        .collect()
}

/// Collects requests until `done` says the collection is complete.
fn collect(receiver: &Receiver, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let mut got = Vec::new();
    wait_for(what, WAIT, || {
        got.extend(receiver.drain());
        done(&got).then_some(())
    });
    got
}

const VERIFY_PY: &str = r#"
import hashlib, hmac, json, sys, time
for item in json.load(sys.stdin):
    ts = item["timestamp"]
    body = bytes.fromhex(item["body"])
    mac = hmac.new(item["secret"].encode(), ts.encode() + b"." + body, hashlib.sha256)
    good = hmac.compare_digest("sha256=" + mac.hexdigest(), item["signature"])
    fresh = abs(time.time() - int(ts)) <= 300
    print("ok" if good and fresh else "bad")
"#;

/// Verifies signatures with Python's `hmac` (an implementation independent of ours); one
/// "ok" or "bad" per item.
fn python_verify(items: &[(String, String, Vec<u8>)]) -> Option<Vec<String>> {
    let python = peer("python3", "python3")?;
    let input: Vec<serde_json::Value> = items
        .iter()
        .map(|(ts, sig, body)| {
            serde_json::json!({"secret": SECRET, "timestamp": ts, "signature": sig, "body": hex(body)})
        })
        .collect();
    let out = run_with_stdin(
        Command::new(python).args(["-c", VERIFY_PY]),
        serde_json::to_string(&input).unwrap().as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn series(name: &str, receiver: &str) -> String {
    format!("{name}{{receiver=\"{receiver}\"}}")
}

fn outcome(outcome: &str, receiver: &str) -> String {
    format!("logwarden_notifications_total{{outcome=\"{outcome}\",receiver=\"{receiver}\"}}")
}

#[test]
fn a_receiver_that_refuses_for_a_while_gets_every_notification_signed_once_per_key() {
    let port = free_port();
    let s = setup(
        &format!(
            "  - {{name: hook, type: webhook, url: 'http://127.0.0.1:{port}/hook', secret_file: secret, retry: {{initial: 100ms, max: 400ms}}}}\n"
        ),
        "hook",
    );
    let d = s.start();
    markers(&s, 1..=6);
    let pending = series("logwarden_outbox_pending", "hook");
    wait_for("six notifications pending", WAIT, || {
        (metric(s.port, &pending) == 6.0).then_some(())
    });
    // Down "for a while": until every notification has failed several times.
    wait_for("retries while the receiver refuses", WAIT, || {
        (metric(s.port, &outcome("retried", "hook")) >= 24.0).then_some(())
    });
    assert!(d.log().contains("will retry"), "{}", d.log());
    assert_eq!(metric(s.port, &pending), 6.0, "nothing lost or given up");

    let receiver = Receiver::start_on(port);
    let got = collect(&receiver, "all six notifications", |got| {
        keys(got).len() == 6
    });
    wait_for("the outbox to empty", WAIT, || {
        (metric(s.port, &pending) == 0.0).then_some(())
    });
    let got: Vec<Received> = got.into_iter().chain(receiver.drain()).collect();

    // After de-duplication by key: exactly one notification per incident, each `opened`.
    let mut by_key: BTreeMap<String, Received> = BTreeMap::new();
    for r in &got {
        by_key
            .entry(r.header("idempotency-key").unwrap().into())
            .or_insert(r.clone());
    }
    let incidents: BTreeSet<String> = d
        .incidents()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(incidents.len(), 6);
    let notified: BTreeSet<String> = by_key
        .iter()
        .map(|(key, r)| {
            let id = r.body["incident"]["id"].as_str().unwrap().to_string();
            let uid = r.body["incident"]["uid"].as_str().unwrap();
            assert!(uid.ends_with(&format!("/{id}")), "uid {uid} of {id}");
            assert!(key.starts_with(&format!("{uid}-")), "key {key} names {uid}");
            assert_eq!(r.header("x-logwarden-incident"), Some(uid));
            assert_eq!(r.body["idempotency_key"], key.as_str());
            assert_eq!(r.body["event"], "opened");
            assert_eq!(r.path, "/hook");
            assert_eq!(r.header("x-logwarden-event"), Some("opened"));
            id
        })
        .collect();
    assert_eq!(notified, incidents);
    assert_eq!(
        metric(s.port, &outcome("delivered", "hook")),
        got.len() as f64
    );
    assert_eq!(
        metric(
            s.port,
            "logwarden_notification_delivery_seconds_count{receiver=\"hook\"}"
        ),
        got.len() as f64
    );
    assert_eq!(
        metric(
            s.port,
            &series("logwarden_notifications_dead_letters", "hook")
        ),
        0.0
    );

    // Every request is signed; Python's hmac agrees, and rejects a tampered body.
    let mut items: Vec<(String, String, Vec<u8>)> = got
        .iter()
        .map(|r| {
            (
                r.header("x-logwarden-timestamp").expect("timestamp").into(),
                r.header("x-logwarden-signature").expect("signature").into(),
                r.raw.clone(),
            )
        })
        .collect();
    let mut tampered = items[0].clone();
    tampered.2[0] ^= 1;
    items.push(tampered);
    if let Some(verdicts) = python_verify(&items) {
        let (real, fake) = verdicts.split_at(verdicts.len() - 1);
        assert!(real.iter().all(|v| v == "ok"), "{verdicts:?}");
        assert_eq!(fake, ["bad"]);
    }
    assert!(!d.log().contains(SECRET), "the secret is never logged");

    let m = http("GET", s.port, "/metrics", None, None).unwrap().body;
    assert_promtool_clean(&m);
}

#[test]
fn notifications_pending_at_a_sigkill_are_delivered_after_restart_with_the_same_keys() {
    let receiver = Receiver::start();
    receiver.answer(503);
    let s = setup(
        &format!(
            "  - {{name: hook, type: webhook, url: '{}', retry: {{initial: 200ms, max: 1s}}}}\n",
            receiver.url("/hook")
        ),
        "hook",
    );
    let d = s.start();
    markers(&s, 1..=3);
    let failed = collect(&receiver, "three failing notifications", |got| {
        keys(got).len() == 3
    });
    assert!(failed.iter().all(|r| r.status == 503));
    d.kill();
    let before: BTreeMap<String, String> = failed
        .iter()
        .map(|r| {
            (
                r.header("idempotency-key").unwrap().into(),
                String::from_utf8_lossy(&r.raw).into(),
            )
        })
        .collect();

    receiver.answer(200);
    receiver.drain();
    let d = s.start();
    let delivered = collect(
        &receiver,
        "the pending notifications after restart",
        |got| {
            keys(
                &got.iter()
                    .filter(|r| r.status == 200)
                    .cloned()
                    .collect::<Vec<_>>(),
            )
            .len()
                == 3
        },
    );
    let after: BTreeMap<String, String> = delivered
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            (
                r.header("idempotency-key").unwrap().into(),
                String::from_utf8_lossy(&r.raw).into(),
            )
        })
        .collect();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "same keys across the SIGKILL"
    );
    assert!(before == after, "same bodies across the SIGKILL");
    assert_eq!(d.incidents().len(), 3, "the restart opened nothing twice");
    wait_for("the outbox to empty", WAIT, || {
        (metric(s.port, &series("logwarden_outbox_pending", "hook")) == 0.0).then_some(())
    });
}

fn cli(s: &Setup, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("notifications")
        .args(args)
        .env("LOGWARDEN_URL", format!("http://127.0.0.1:{}", s.port))
        .env("LOGWARDEN_TOKEN", &s.token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn undeliverable_notifications_become_dead_letters_listed_and_resent_by_the_cli() {
    let receiver = Receiver::start();
    receiver.answer(503);
    let s = setup(
        &format!(
            "  - {{name: hook, type: webhook, url: '{}', retry: {{initial: 100ms, max: 200ms, max_age: 1s}}}}\n",
            receiver.url("/hook")
        ),
        "hook",
    );
    let d = s.start();
    markers(&s, [1]);
    let dead = wait_for("a dead letter", WAIT, || {
        let list = d.get("/api/v1/notifications/dead").json();
        (list.as_array().unwrap().len() == 1).then_some(list[0].clone())
    });
    assert_eq!(dead["receiver"], "hook");
    assert_eq!(dead["event"], "opened");
    assert!(dead["attempts"].as_u64().unwrap() >= 2, "{dead}");
    let error = dead["last_error"].as_str().unwrap();
    assert!(
        error.contains("max_age") && error.contains("HTTP 503"),
        "{error}"
    );
    assert!(dead.get("body").is_none(), "listings leave bodies out");
    // The lane lowers its gauge once the dead letter is stored, a moment after the API
    // lists it.
    wait_for("nothing pending for hook", WAIT, || {
        (metric(s.port, &series("logwarden_outbox_pending", "hook")) == 0.0).then_some(())
    });
    wait_for("the dead-letter gauge", WAIT, || {
        (metric(
            s.port,
            &series("logwarden_notifications_dead_letters", "hook"),
        ) == 1.0)
            .then_some(())
    });
    assert_eq!(metric(s.port, &outcome("dead", "hook")), 1.0);
    let failed_key = receiver.drain()[0]
        .header("idempotency-key")
        .unwrap()
        .to_string();
    assert_eq!(dead["idempotency_key"], failed_key.as_str());

    // A request the receiver refuses outright (4xx) is not retried.
    receiver.answer(400);
    markers(&s, [2]);
    let refused = wait_for("a refused notification", WAIT, || {
        let list = d.get("/api/v1/notifications/dead").json();
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["idempotency_key"] != failed_key.as_str())
            .cloned()
    });
    assert_eq!(refused["attempts"], 1);
    assert!(refused["last_error"].as_str().unwrap().contains("HTTP 400"));

    let (code, table, _) = cli(&s, &["dead"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains(dead["incident"].as_str().unwrap()),
        "{table}"
    );
    let (code, json, _) = cli(&s, &["dead", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let (code, _, err) = cli(&s, &["resend", "999999"]);
    assert_eq!(code, 1, "an unknown id is refused");
    assert!(err.contains("no dead letter 999999"), "{err}");

    receiver.answer(200);
    receiver.drain();
    let id = dead["id"].to_string();
    let (code, out, err) = cli(&s, &["resend", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&failed_key), "{out}");
    let again = wait_for("the re-sent notification", WAIT, || receiver.next(WAIT));
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotency-key"), Some(failed_key.as_str()));
    let audit = d.get("/api/v1/audit?format=jsonl").body;
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"notification.resent\"") && l.contains(&failed_key)),
        "the re-send is audited: {audit}"
    );
    wait_for("one dead letter left", WAIT, || {
        (metric(
            s.port,
            &series("logwarden_notifications_dead_letters", "hook"),
        ) == 1.0
            && d.get("/api/v1/notifications/dead")
                .json()
                .as_array()
                .unwrap()
                .len()
                == 1)
            .then_some(())
    });
    assert_eq!(
        http(
            "POST",
            s.port,
            &format!("/api/v1/notifications/dead/{id}/resend"),
            None,
            None
        )
        .unwrap()
        .status,
        401
    );
}

#[test]
fn every_format_reaches_its_receiver_with_one_idempotency_key_per_event() {
    let receiver = Receiver::start();
    let receivers = format!(
        "  - {{name: json, type: webhook, url: '{json}'}}\n\
         \x20 - {{name: slack, type: webhook, url: '{slack}', format: slack}}\n\
         \x20 - {{name: pd, type: webhook, url: '{pd}', format: pagerduty, routing_key_file: pd-key}}\n\
         \x20 - name: tpl\n    type: webhook\n    url: '{tpl}'\n    template: |\n      {{\"text\": {{{{ incident.summary }}}}, \"key\": {{{{ idempotency_key }}}}}}\n\
         \x20 - {{name: quiet, type: webhook, url: '{quiet}', events: [closed]}}\n",
        json = receiver.url("/json"),
        slack = receiver.url("/slack"),
        pd = receiver.url("/pd"),
        tpl = receiver.url("/tpl"),
        quiet = receiver.url("/quiet"),
    );
    let s = setup(&receivers, "json, slack, pd, tpl, quiet");
    let check = Command::new(bin())
        .args(["check", "--config"])
        .arg(s.path("logwarden.yaml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let d = s.start();
    markers(&s, [7]);
    let got = collect(&receiver, "four formats", |got| got.len() >= 4);
    let by_path: BTreeMap<&str, &Received> = got.iter().map(|r| (r.path.as_str(), r)).collect();
    assert_eq!(
        by_path.keys().copied().collect::<Vec<_>>(),
        ["/json", "/pd", "/slack", "/tpl"],
        "`quiet` only hears of closes"
    );
    assert_eq!(keys(&got).len(), 1, "one event, one key for every receiver");
    let key = keys(&got).into_iter().next().unwrap();
    let id = d.wait_incident("marker", WAIT)["uid"]
        .as_str()
        .unwrap()
        .to_string();

    let pd = &by_path["/pd"].body;
    assert_eq!(pd["routing_key"], "R0UT1NGKEY");
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["dedup_key"], id.as_str());
    assert_eq!(pd["payload"]["severity"], "error");
    assert_eq!(pd["payload"]["summary"], format!("{id}: marker 7"));
    assert!(
        pd["payload"]["source"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(pd["links"][0]["href"], "https://wiki.example/marker");

    let slack = &by_path["/slack"].body;
    assert_eq!(slack["text"], format!("[HIGH] {id} opened: marker 7"));
    assert_eq!(slack["blocks"][0]["type"], "header");

    let tpl = &by_path["/tpl"].body;
    assert_eq!(tpl, &serde_json::json!({"text": "marker 7", "key": key}));
    for r in &got {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            r.header("x-logwarden-signature").is_none(),
            "no secret, no signature"
        );
        assert!(r.header("user-agent").unwrap().starts_with("logwarden/"));
    }
    assert!(
        !d.log().contains("R0UT1NGKEY"),
        "the routing key is never logged"
    );
}

#[test]
fn a_hanging_receiver_delays_neither_the_others_nor_detection() {
    let slow = Receiver::start();
    slow.delay(Duration::from_secs(20));
    let fast = Receiver::start();
    let s = setup(
        &format!(
            "  - {{name: slow, type: webhook, url: '{}', timeout: 10s, concurrency: 1}}\n\
             \x20 - {{name: fast, type: webhook, url: '{}'}}\n",
            slow.url("/slow"),
            fast.url("/fast")
        ),
        "slow, fast",
    );
    let d = s.start();
    let start = Instant::now();
    markers(&s, 1..=3);
    let got = collect(&fast, "the fast receiver's three notifications", |got| {
        keys(got).len() == 3
    });
    assert_eq!(got.len(), 3);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "fast receiver waited {took:?}"
    );
    wait_for("three incidents", WAIT, || {
        (d.incidents().len() == 3).then_some(())
    });
    // The slow one holds all three: one hanging in flight, two queued behind its limit.
    // Its lane updates the gauge when it takes the records up, which on a loaded machine
    // can come a moment after the incidents are visible.
    wait_for(
        "three notifications pending for the slow receiver",
        WAIT,
        || (metric(s.port, &series("logwarden_outbox_pending", "slow")) == 3.0).then_some(()),
    );
    // The fast lane lowers its gauge once the delivered records' removal is durable, which
    // can come a moment after the receiver saw them.
    wait_for("nothing pending for the fast receiver", WAIT, || {
        (metric(s.port, &series("logwarden_outbox_pending", "fast")) == 0.0).then_some(())
    });
}

#[test]
fn https_proxy_is_honoured() {
    // The "proxy" is a local receiver: it sees the CONNECT for the target and refuses the
    // tunnel, so nothing ever leaves 127.0.0.1.
    let proxy = Receiver::start();
    proxy.answer(502);
    let s = setup(
        "  - {name: hook, type: webhook, url: 'https://hooks.example.invalid/x', retry: {initial: 1s, max: 2s}}\n",
        "hook",
    );
    let _d = s.start_with_env(&[("HTTPS_PROXY", &proxy.url("")), ("NO_PROXY", "")]);
    markers(&s, [1]);
    let tunnel = proxy.next(WAIT).expect("a CONNECT through the proxy");
    assert_eq!(tunnel.path, "hooks.example.invalid:443");
    wait_for("the refused tunnel to be retried", WAIT, || {
        (metric(s.port, &outcome("retried", "hook")) >= 1.0).then_some(())
    });
}

#[test]
fn a_close_never_overtakes_its_incidents_earlier_notification() {
    let receiver = Receiver::start();
    receiver.answer(503);
    let s = setup(
        &format!(
            "  - {{name: hook, type: webhook, url: '{}', concurrency: 4, retry: {{initial: 100ms, max: 200ms}}}}\n",
            receiver.url("/hook")
        ),
        "hook",
    );
    let d = s.start();
    markers(&s, [1]);
    let id = d.wait_incident("marker", WAIT)["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Closed (as a false positive) while its opening is still failing at the receiver.
    let r = http(
        "POST",
        s.port,
        &format!("/api/v1/incidents/{id}/transition"),
        Some(&s.token),
        Some(r#"{"to": "false_positive"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let failing = collect(&receiver, "a few failed attempts", |got| got.len() >= 3);
    assert!(
        failing.iter().all(|r| r.body["event"] == "opened"),
        "the close waited behind the failing opening: {:?}",
        failing.iter().map(|r| &r.body["event"]).collect::<Vec<_>>()
    );
    receiver.answer(200);
    let got = collect(&receiver, "the close", |got| {
        got.iter().any(|r| r.body["event"] == "closed")
    });
    let delivered: Vec<_> = got
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.body["event"].as_str().unwrap())
        .collect();
    assert_eq!(delivered, ["opened", "closed"]);
}
