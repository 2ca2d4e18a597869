//! State directories written by earlier releases (store format 1 and format 2, made by
//! tests/fixtures/make-v1-state.sh) open in this one with everything carried over:
//! incidents as the API served them, silences, the outbox, dead letters, escalation
//! progress, the file checkpoint, and an audit chain that still verifies.

mod common;

use common::*;
use logwarden::store::Store;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The config the fixture was written with (tests/fixtures/make-v1-state.sh), except that
/// the second escalation step and the waiting receiver's give-up age are as long as a
/// duration may be: the fixture's incidents and outbox were written at a fixed past time,
/// and with the script's 4h and 24h this test would see an escalation or a new dead letter
/// once the fixture is that old.
const CONFIG: &str = r#"host: fixture1
sources:
  - name: auth
    paths: [log/auth.log]
    start_at: beginning
    timestamp: syslog
receivers:
  - {name: journal, type: file, path: notifications.jsonl}
  - name: waiting
    type: webhook
    url: http://127.0.0.1:9/
    retry: {initial: 1h, max: 1h, max_age: 3650d}
  - name: gone
    type: webhook
    url: http://127.0.0.1:9/
    retry: {initial: 100ms, max: 100ms, max_age: 1s}
roles:
  analysts: {receivers: [journal, waiting, gone]}
escalation_policies:
  default:
    - notify: [analysts]
    - {after: 3650d, notify: [analysts]}
"#;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A setup holding the fixture `name`'s state directory and the rules it was written with.
fn setup_with_state(name: &str) -> (Setup, Value) {
    let setup = Setup::new();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixture(&format!("{name}-state.tar.gz")))
        .arg("-C")
        .arg(setup.dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "cannot unpack the fixture");
    let rules =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/ssh.yaml"))
            .unwrap();
    setup.write("rules/ssh.yaml", &rules);
    setup.config(CONFIG);
    std::fs::create_dir_all(setup.path("log")).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{name}-state.expected.json"))).unwrap(),
    )
    .unwrap();
    (setup, expected)
}

/// The silence list without `state`, which depends on when the test runs.
fn silences_as_stored(list: &Value) -> Vec<Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.as_object_mut().unwrap().remove("state");
            s
        })
        .collect()
}

#[test]
fn a_state_directory_of_format_1_opens_with_everything_carried_over() {
    opens_with_everything_carried_over("v1");
}

#[test]
fn a_state_directory_of_format_2_opens_with_everything_carried_over() {
    opens_with_everything_carried_over("v2");
}

#[test]
fn a_state_directory_of_format_3_opens_with_everything_carried_over() {
    opens_with_everything_carried_over("v3");
}

fn opens_with_everything_carried_over(name: &str) {
    let (setup, expected) = setup_with_state(name);
    let state = setup.path("state");

    // Offline, as the tools open it: the chain verifies with the same head, and what the
    // daemon resumes from is there.
    {
        let store = Store::open(&state).unwrap();
        let verdict = logwarden::audit::verify(&store).unwrap();
        let logwarden::audit::Verdict::Intact { count, head } = verdict else {
            panic!("{verdict:?}");
        };
        let want = expected["audit_verify"].as_str().unwrap();
        assert!(
            want.contains(&format!("{count} audit records")) && want.contains(&head),
            "now {count} records, head {head}; the old release said: {want}"
        );
        let checkpoints = logwarden::sources::stored_checkpoints(&store).unwrap();
        assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
        assert_eq!(
            checkpoints[0].offset,
            expected["log_bytes"].as_u64().unwrap()
        );
        let book = logwarden::incidents::IncidentBook::load(&store, "fixture1").unwrap();
        let mut active: Vec<&str> = book.all_active().map(|i| i.id.as_str()).collect();
        active.sort();
        assert_eq!(active, ["INC-1", "INC-3"]);
        let pending = logwarden::notification::stored_outbox(&store).unwrap();
        let mut waiting: Vec<(String, String)> = pending
            .iter()
            .map(|r| {
                (
                    r.receiver.clone(),
                    format!("{}:{}", r.incident, r.event.as_str()),
                )
            })
            .collect();
        waiting.sort();
        assert_eq!(
            waiting,
            [
                ("waiting", "INC-1:opened"),
                ("waiting", "INC-2:closed"),
                ("waiting", "INC-2:opened"),
                ("waiting", "INC-3:opened"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    // The daemon serves what the old release served.
    let daemon = setup.start();
    assert_eq!(
        Value::Array(daemon.incidents()),
        expected["incidents"],
        "incidents differ from the previous release's"
    );
    let silences = daemon.get("/api/v1/silences");
    assert_eq!(silences.status, 200, "{}", silences.body);
    assert_eq!(
        silences_as_stored(&silences.json()),
        silences_as_stored(&expected["silences"])
    );
    let dead = daemon.get("/api/v1/notifications/dead");
    assert_eq!(dead.json(), expected["dead_letters"]);
    // The fourth address was counted twice before the restart: three more lines dated
    // then cross the threshold of five only because its window carried over.
    let stamp = expected["line_stamp"].as_str().unwrap();
    let lines: Vec<String> = (1..=3)
        .map(|n| format!("{stamp} web1 sshd[90{n}]: Failed password for root from 198.51.100.4 port 5200{n} ssh2"))
        .collect();
    setup.append("log/auth.log", &lines);
    // The lines also count for ssh-root-login-attempt (threshold 3), whose incident opens
    // at the first or third line (with or without a carried window) and goes on counting:
    // only the brute force's incident opens once, complete.
    let opened = wait_for(
        "the carried-over window to cross",
        Duration::from_secs(20),
        || {
            daemon
                .incidents()
                .into_iter()
                .find(|i| i["rule"] == "ssh-bruteforce" && i["key"]["ip"] == "198.51.100.4")
        },
    );
    assert_eq!(opened["count"], 5, "{opened}");
    assert_eq!(opened["evidence"].as_array().unwrap().len(), 5, "{opened}");
    let mut new_ids: Vec<String> = daemon
        .incidents()
        .iter()
        .filter(|i| i["key"]["ip"] == "198.51.100.4")
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    new_ids.sort();
    assert_eq!(
        new_ids,
        ["INC-4", "INC-5"],
        "ids continue after the old ones"
    );
    daemon.stop();

    let out = std::process::Command::new(bin())
        .args(["audit", "verify", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("chain intact"), "{text}");
}

/// A state directory written by a newer release is refused with a message saying so,
/// never read as if it were this format.
#[test]
fn a_state_directory_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    logwarden::store::mark_format_for_test(dir.path(), logwarden::store::FORMAT + 1).unwrap();
    // sled lets go of its lock a moment after the handle is dropped.
    let err = wait_for(
        "the store to open",
        Duration::from_secs(10),
        || match Store::open(dir.path()) {
            Err(logwarden::store::StoreError::Locked(_)) => None,
            other => Some(other),
        },
    )
    .err()
    .expect("a newer format must not open");
    let text = err.to_string();
    assert!(
        text.contains("newer") && text.contains(&(logwarden::store::FORMAT + 1).to_string()),
        "{text}"
    );
}
