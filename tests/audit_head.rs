//! Signed audit chain heads end to end: real daemons, real sled, a real webhook receiver on
//! 127.0.0.1, keys made by `openssl genpkey` and head signatures checked by `openssl
//! pkeyutl`. The tampering is done offline with the store module on stopped daemons' state
//! directories, the way someone with write access to the disk would.

mod common;

use common::*;
use logwarden::audit::{GENESIS, Head, Record};
use logwarden::store::{Batch, Space, Store};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Generous: on a loaded 2-core CI machine a daemon is slow, not wrong; a hang still fails.
const WAIT: Duration = Duration::from_secs(40);
const SECRET: &str = "head-webhook-secret";

/// A daemon over `app.log` with a `marker` rule, an Ed25519 key from openssl, heads every
/// second, and (when given) a receiver of `audit_head` events. `None` when openssl is
/// missing (skipped loudly).
fn setup(receiver: Option<&Receiver>) -> Option<Setup> {
    setup_every(receiver, "1s")
}

/// [`setup`] with heads every `anchor_every`.
fn setup_every(receiver: Option<&Receiver>, anchor_every: &str) -> Option<Setup> {
    let openssl = peer("openssl", "openssl")?;
    let s = Setup::new();
    std::fs::create_dir_all(s.path("keys")).unwrap();
    let out = Command::new(openssl)
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(s.path("keys/audit.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.write(
        "rules/test.yaml",
        "rules:\n  - id: marker\n    match: 'MARKER (?P<n>\\d+)'\n    group_by: [n]\n    \
         threshold: {count: 1, within: 1s}\n    severity: low\n",
    );
    s.write("app.log", "");
    s.write("secret", SECRET);
    let heads = receiver.map_or(String::new(), |r| {
        format!(
            "  - {{name: heads, type: webhook, url: '{}', format: json, events: [audit_head], secret_file: secret}}\n",
            r.url("/heads")
        )
    });
    s.config(&format!(
        "sources:\n  - {{name: app, paths: [app.log], start_at: beginning}}\n\
         receivers:\n  - {{name: console, type: file, path: out.jsonl}}\n{heads}\
         roles:\n  analysts: {{receivers: [console]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n\
         audit: {{signing_key_file: keys/audit.key, anchor_every: {anchor_every}}}\n"
    ));
    Some(s)
}

fn logwarden(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `logwarden audit verify --state-dir DIR [--against HEAD] ...`.
fn verify(s: &Setup, state: &Path, extra: &[&str]) -> Output {
    let config = s.path("logwarden.yaml");
    let mut args = vec![
        "audit",
        "verify",
        "--state-dir",
        path(state),
        "--config",
        path(&config),
    ];
    args.extend_from_slice(extra);
    logwarden(&args)
}

/// Opens incidents 1..=n through the log and closes the first through the API.
fn make_history(s: &Setup, d: &Daemon, n: usize) {
    let lines: Vec<String> = (1..=n).map(|i| format!("MARKER {i}")).collect();
    s.append("app.log", &lines);
    wait_for("the incidents", WAIT, || {
        (d.incidents().len() == n).then_some(())
    });
    let first = d
        .incidents()
        .into_iter()
        .find(|i| i["key"]["n"] == "1")
        .unwrap();
    d.close_incident(first["id"].as_str().unwrap());
}

/// The signed head the API serves once it covers at least `min` records.
fn api_head(d: &Daemon, min: u64) -> Value {
    wait_for("a signed head covering the history", WAIT, || {
        let r = d.get("/api/v1/audit/head");
        (r.status == 200 && r.json()["sequence"].as_u64() >= Some(min)).then(|| r.json())
    })
}

/// How many audit records the store holds (the daemon stopped).
fn record_count(state: &Path) -> u64 {
    audit_export(state).len() as u64
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn records(store: &Store) -> Vec<Record> {
    store
        .scan::<Record>(Space::Audit)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

/// What someone with write access does to hide the end of the chain: removes the records
/// after `keep` and points the (unkeyed) stored head at the new last one, so the plain
/// chain check passes.
fn cut_chain(state: &Path, keep: u64) {
    let store = Store::open(state).unwrap();
    let all = records(&store);
    let mut batch = Batch::new();
    for r in all.iter().filter(|r| r.seq > keep) {
        batch.remove(Space::Audit, &Record::key(r.seq));
    }
    let head = all.iter().find(|r| r.seq == keep).map_or(
        Head {
            seq: 0,
            hash: GENESIS.into(),
        },
        |r| Head {
            seq: r.seq,
            hash: r.hash.clone(),
        },
    );
    batch.put(Space::Meta, b"audit_head", &head).unwrap();
    store.commit(batch).unwrap();
    store.flush_blocking().unwrap();
}

/// Rewrites record `seq` with `edit`, then re-hashes it and every later record and points
/// the stored head at the new end: a rewrite the unkeyed chain cannot see.
fn rewrite_chain(state: &Path, seq: u64, edit: impl Fn(&mut Record)) {
    let store = Store::open(state).unwrap();
    let all = records(&store);
    let mut batch = Batch::new();
    let mut prev = all
        .iter()
        .find(|r| r.seq == seq - 1)
        .map_or(GENESIS.to_string(), |r| r.hash.clone());
    let mut last = None;
    for mut r in all.into_iter().filter(|r| r.seq >= seq) {
        if r.seq == seq {
            edit(&mut r);
        }
        r.prev = prev;
        r.hash = r.compute_hash();
        prev = r.hash.clone();
        batch.put(Space::Audit, &Record::key(r.seq), &r).unwrap();
        last = Some(Head {
            seq: r.seq,
            hash: r.hash.clone(),
        });
    }
    batch
        .put(Space::Meta, b"audit_head", &last.unwrap())
        .unwrap();
    store.commit(batch).unwrap();
    store.flush_blocking().unwrap();
}

/// Starts a daemon without waiting for `/readyz` (it may refuse to be ready).
fn start_unready(s: &Setup, config: &Path) -> Daemon {
    let stderr_path = s.path("daemon-unready.log");
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    Daemon {
        child,
        port: s.port,
        token: s.token.clone(),
        stderr_path,
    }
}

/// `/readyz` once it answers (any status).
fn readyz(port: u16) -> Response {
    wait_for("/readyz to answer", WAIT, || {
        http("GET", port, "/readyz", None, None).ok()
    })
}

#[test]
fn a_cut_chain_is_refused_on_restart_and_by_verify_against_the_published_head() {
    let receiver = Receiver::start();
    let Some(s) = setup(Some(&receiver)) else {
        return;
    };
    let d = s.start();
    make_history(&s, &d, 3);
    // 3 openings and 5 transitions at least.
    let published = api_head(&d, 8);
    // The receiver gets the same kind of head, signed like any other webhook.
    let delivered = wait_for("a head at the receiver", WAIT, || {
        receiver.drain().into_iter().find(|r| {
            r.body["event"] == "audit_head" && r.body["head"]["sequence"].as_u64() >= Some(8)
        })
    });
    let ts = delivered
        .header("x-logwarden-timestamp")
        .expect("timestamp");
    assert_eq!(
        delivered.header("x-logwarden-signature"),
        Some(
            logwarden::notification::deliver::signature(SECRET.as_bytes(), ts, &delivered.raw)
                .as_str()
        ),
        "heads are HMAC-signed like other events"
    );
    assert_eq!(delivered.header("x-logwarden-event"), Some("audit_head"));
    let saved = s.write(
        "saved-head.json",
        &String::from_utf8(delivered.raw.clone()).unwrap(),
    );
    let api_saved = s.write("api-head.json", &published.to_string());
    assert!(
        metric(s.port, "logwarden_audit_head_sequence") >= 8.0,
        "the gauge follows the heads"
    );
    d.stop();
    let state = s.path("state");
    assert!(record_count(&state) > 4);

    // Intact: both saved heads hold, with the configured key and with the printed one.
    for head in [&saved, &api_saved] {
        let out = verify(&s, &state, &["--against", path(head)]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("reaches the signed head"),
            "{}",
            text(&out)
        );
    }
    let pubkey = logwarden(&[
        "audit",
        "pubkey",
        "--config",
        path(&s.path("logwarden.yaml")),
    ]);
    assert!(pubkey.status.success(), "{}", text(&pubkey));
    let pubkey = String::from_utf8(pubkey.stdout).unwrap();
    let out = verify(
        &s,
        &state,
        &["--against", path(&saved), "--public-key", pubkey.trim()],
    );
    assert!(out.status.success(), "{}", text(&out));

    // A copy with its last records cut and its stored head (and stored signed head) put
    // back: the plain chain check is fooled, the signed head is not.
    let cut = s.path("state-cut");
    copy_dir(&state, &cut);
    cut_chain(&cut, 4);
    {
        let store = Store::open(&cut).unwrap();
        let mut batch = Batch::new();
        batch.remove(Space::Meta, b"audit_signed_head");
        store.commit(batch).unwrap();
        store.flush_blocking().unwrap();
    }
    for head in [&saved, &api_saved] {
        let out = verify(&s, &cut, &["--against", path(head)]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("BROKEN"), "{}", text(&out));
        assert!(text(&out).contains("cut from the end"), "{}", text(&out));
    }

    // The daemon restarted on the cut copy compares it with the head it signed last (the
    // copy beside the key survives an edit of the state directory) and refuses to pass.
    let config = std::fs::read_to_string(s.path("logwarden.yaml"))
        .unwrap()
        .replace("state_dir: state\n", "state_dir: state-cut\n");
    let cut_config = s.write("cut.yaml", &config);
    let d = start_unready(&s, &cut_config);
    let ready = wait_for("/readyz to name the discrepancy", WAIT, || {
        let r = readyz(s.port);
        (r.status == 503 && r.body.contains("audit chain discrepancy")).then_some(r)
    });
    assert!(ready.body.contains("cut from the end"), "{}", ready.body);
    assert!(d.log().contains("AUDIT CHAIN DISCREPANCY"), "{}", d.log());
    let head = d.get("/api/v1/audit/head");
    assert_eq!(
        head.status, 503,
        "no head is signed over the cut: {}",
        head.body
    );
    // It stays refusing: later heads are not signed over the discrepancy. What is checked
    // is that nothing changes, so there is no condition to await: the wait spans at least
    // one anchoring interval (1s in this setup).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(readyz(s.port).status, 503);

    // An admin accepts it with a reason: recorded, ready again, heads signed again.
    let url = format!("http://127.0.0.1:{}", s.port);
    let refused = logwarden(&[
        "audit",
        "accept-discrepancy",
        "--reason",
        "x",
        "--url",
        &url,
        "--token",
        "wrong",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert_eq!(
        readyz(s.port).status,
        503,
        "an unknown token accepts nothing"
    );
    let out = logwarden(&[
        "audit",
        "accept-discrepancy",
        "--reason",
        "restored from the 01:00 backup, ticket SEC-42",
        "--url",
        &url,
        "--token",
        &s.token,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("ready after the acceptance", WAIT, || {
        (readyz(s.port).status == 200).then_some(())
    });
    api_head(&d, 5);
    d.stop();
    let accepted: Vec<Value> = audit_export(&cut)
        .into_iter()
        .filter(|r| r["event"] == "audit.discrepancy_accepted")
        .collect();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0]["actor"], "tester");
    assert_eq!(
        accepted[0]["details"]["reason"],
        "restored from the 01:00 backup, ticket SEC-42"
    );
    assert_eq!(accepted[0]["details"]["found"]["sequence"], 4);
    assert!(
        accepted[0]["details"]["problem"]
            .as_str()
            .unwrap()
            .contains("cut from the end")
    );
}

#[test]
fn a_rewritten_rehashed_or_emptied_chain_fails_verify_against_and_an_intact_one_passes() {
    let Some(s) = setup(None) else {
        return;
    };
    let d = s.start();
    make_history(&s, &d, 2);
    let head = s.write("head.json", &api_head(&d, 6).to_string());
    d.stop();
    let state = s.path("state");
    let out = verify(&s, &state, &["--against", path(&head)]);
    assert!(out.status.success(), "{}", text(&out));

    // The head's signature checks out with openssl over the documented canonical text.
    let signed: Value = serde_json::from_str(&std::fs::read_to_string(&head).unwrap()).unwrap();
    let canonical = format!(
        "logwarden audit head v1\nsequence: {}\nhash: {}\nat: {}\n",
        signed["sequence"],
        signed["hash"].as_str().unwrap(),
        signed["at"].as_str().unwrap()
    );
    let pem = logwarden(&[
        "audit",
        "pubkey",
        "--pem",
        "--config",
        path(&s.path("logwarden.yaml")),
    ]);
    assert!(pem.status.success(), "{}", text(&pem));
    let pem = s.write("pub.pem", &String::from_utf8(pem.stdout).unwrap());
    let text_file = s.write("canonical.txt", &canonical);
    let sig = base64_decode(signed["signature"].as_str().unwrap());
    let sig_file = s.path("head.sig");
    std::fs::write(&sig_file, &sig).unwrap();
    let openssl_verify = |message: &Path| {
        Command::new("openssl")
            .args([
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                path(&pem),
                "-rawin",
                "-in",
            ])
            .arg(message)
            .arg("-sigfile")
            .arg(&sig_file)
            .output()
            .unwrap()
    };
    let ok = openssl_verify(&text_file);
    assert!(ok.status.success(), "openssl: {}", text(&ok));
    let forged = s.write(
        "forged.txt",
        &canonical.replace("sequence: ", "sequence: 1"),
    );
    assert!(!openssl_verify(&forged).status.success());

    // A head signed by another key, or edited, is refused before the chain is judged.
    let other = logwarden(&[
        "audit",
        "verify",
        "--state-dir",
        path(&state),
        "--against",
        path(&head),
        "--public-key",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ]);
    assert_eq!(other.status.code(), Some(1), "{}", text(&other));
    assert!(text(&other).contains("does not verify"), "{}", text(&other));
    let mut edited = signed.clone();
    edited["sequence"] = Value::from(signed["sequence"].as_u64().unwrap() - 1);
    let edited = s.write("edited.json", &edited.to_string());
    let out = verify(&s, &state, &["--against", path(&edited)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Record 2 rewritten, the rest re-hashed: the chain itself looks intact.
    let rewritten = s.path("state-rewritten");
    copy_dir(&state, &rewritten);
    rewrite_chain(&rewritten, 2, |r| r.actor = "someone-else".into());
    let plain = verify(&s, &rewritten, &[]);
    assert!(text(&plain).contains("chain intact"), "{}", text(&plain));
    let out = verify(&s, &rewritten, &["--against", path(&head)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the chain was rewritten"),
        "{}",
        text(&out)
    );

    // Every record deleted and the stored head reset to the empty chain.
    let emptied = s.path("state-emptied");
    copy_dir(&state, &emptied);
    cut_chain(&emptied, 0);
    let out = verify(&s, &emptied, &["--against", path(&head)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("holds no records at all"),
        "{}",
        text(&out)
    );
}

#[test]
fn incidents_closed_or_deleted_in_the_store_are_reported_by_verify() {
    let Some(s) = setup(None) else {
        return;
    };
    let d = s.start();
    make_history(&s, &d, 3);
    let ids: Vec<(String, String)> = d
        .incidents()
        .into_iter()
        .map(|i| {
            (
                i["key"]["n"].as_str().unwrap().to_string(),
                i["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    d.stop();
    let state = s.path("state");
    let out = verify(&s, &state, &[]);
    assert!(out.status.success(), "{}", text(&out));

    let id_of = |n: &str| ids.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let number = |id: &str| id.trim_start_matches("INC-").parse::<u64>().unwrap();
    let (closed, deleted) = (id_of("2"), id_of("3"));
    {
        let store = Store::open(&state).unwrap();
        let key = |id: &str| format!("{:020}", number(id)).into_bytes();
        let mut head = store
            .get_raw(Space::Incidents, &key(&closed))
            .unwrap()
            .unwrap();
        // The head's state byte (after its version byte): the index of `closed`.
        let closed_code = logwarden::incidents::State::ALL
            .iter()
            .position(|s| *s == logwarden::incidents::State::Closed)
            .unwrap() as u8;
        head[1] = closed_code;
        let mut batch = Batch::new();
        batch.put_raw(Space::Incidents, &key(&closed), head);
        batch.remove(Space::Incidents, &key(&deleted));
        store.commit(batch).unwrap();
        store.flush_blocking().unwrap();
    }
    let out = verify(&s, &state, &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "incident {closed}: stored as closed, but its audit records leave it open"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("incident {deleted}: opened by audit record"))
            && said.contains("deleted outside the API"),
        "{said}"
    );
    // The incident closed through the API is not reported.
    assert!(
        !said.contains(&format!("incident {}:", id_of("1"))),
        "{said}"
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    logwarden::audit::signing::from_base64(text).expect("base64")
}

#[test]
fn a_daemon_killed_mid_flight_comes_back_ready_and_its_heads_still_hold() {
    let Some(s) = setup(None) else {
        return;
    };
    let d = s.start();
    make_history(&s, &d, 2);
    let head = s.write("head.json", &api_head(&d, 6).to_string());
    // More records after the head, some perhaps not yet flushed when the process dies.
    s.append("app.log", &["MARKER 3".to_string(), "MARKER 4".to_string()]);
    d.kill();
    // Heads only ever name flushed records: no false alarm after a crash.
    let d = s.start();
    assert_eq!(readyz(s.port).status, 200);
    assert!(!d.log().contains("DISCREPANCY"), "{}", d.log());
    d.stop();
    let out = verify(&s, &s.path("state"), &["--against", path(&head)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_bad_signing_key_stops_check_and_start_with_the_file_named_and_its_contents_unshown() {
    let Some(s) = setup(None) else {
        return;
    };
    s.write(
        "keys/audit.key",
        "-----BEGIN PRIVATE KEY-----\nSECRETBYTES\n-----END PRIVATE KEY-----\n",
    );
    let config = s.path("logwarden.yaml");
    for command in ["check", "run"] {
        let out = logwarden(&[command, "--config", path(&config)]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {said}");
        assert!(
            said.contains("audit.key is not an Ed25519 private key"),
            "{command}: {said}"
        );
        assert!(!said.contains("SECRETBYTES"), "{command}: {said}");
    }
}

#[test]
fn a_head_is_published_at_shutdown_to_receivers_and_beside_the_key() {
    let receiver = Receiver::start();
    // Far apart: besides the one at start, only the shutdown can publish a head.
    let Some(s) = setup_every(Some(&receiver), "1h") else {
        return;
    };
    let d = s.start();
    make_history(&s, &d, 2);
    d.stop();
    let sequences = |got: Vec<Received>| -> Vec<u64> {
        got.iter()
            .filter(|r| r.body["event"] == "audit_head")
            .map(|r| r.body["head"]["sequence"].as_u64().unwrap())
            .collect()
    };
    let mut heads = sequences(receiver.drain());
    // 2 openings and 5 transitions happened after the head signed at start. The shutdown
    // head goes out while the lanes drain; on a machine too loaded for that, it waits in
    // the outbox for the next start.
    if !heads.iter().any(|&n| n >= 7) {
        let d = s.start();
        wait_for("the shutdown head, delivered after a restart", WAIT, || {
            heads.extend(sequences(receiver.drain()));
            heads.iter().any(|&n| n >= 7).then_some(())
        });
        d.stop();
    }
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("keys/audit.key.head.json")).unwrap())
            .unwrap();
    assert!(kept["sequence"].as_u64().unwrap() >= *heads.iter().max().unwrap());
    let out = verify(
        &s,
        &s.path("state"),
        &["--against", path(&s.path("keys/audit.key.head.json"))],
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// SIGTERM while every kind of task is busy — the tailer reading, a syslog client connected,
/// a delivery hung at a receiver that never answers — ends within a bound (the hung attempt
/// gets the drain time, not its own 60 s timeout; the open syslog connection holds nothing
/// up) and leaves beside the key a signed head covering every record.
#[test]
fn sigterm_with_busy_sources_and_a_hung_delivery_stops_promptly_with_the_head_written() {
    let Some(s) = setup_every(None, "1h") else {
        return;
    };
    // Accepts and never answers: an attempt in flight for as long as the daemon lets it.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", hung.local_addr().unwrap());
    let (attempts, attempted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in hung.incoming().flatten() {
            // Kept open, unanswered, until the test ends.
            if attempts.send(stream).is_err() {
                return;
            }
        }
    });
    let syslog_port = free_port();
    s.config(&format!(
        "sources:\n  - {{name: app, paths: [app.log], start_at: beginning}}\n\
         \x20 - name: net\n    syslog: {{tcp: '127.0.0.1:{syslog_port}'}}\n\
         receivers:\n  - {{name: hook, type: webhook, url: '{hook}', timeout: 60s}}\n\
         roles:\n  analysts: {{receivers: [hook]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n\
         audit: {{signing_key_file: keys/audit.key, anchor_every: 1h}}\n"
    ));
    let d = s.start();
    let mut client = wait_for("the syslog listener", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", syslog_port)).ok()
    });
    use std::io::Write;
    client
        .write_all(b"<13>Nov 22 10:00:00 host app: MARKER 2\n")
        .unwrap();
    s.append("app.log", &["MARKER 1".to_string()]);
    wait_for("an incident from each source", WAIT, || {
        (d.incidents().len() == 2).then_some(())
    });
    let _in_flight = attempted
        .recv_timeout(WAIT)
        .expect("a delivery attempt reaches the receiver");
    // The tailer has more to read while it is told to stop.
    s.append(
        "app.log",
        &(3..200).map(|i| format!("MARKER {i}")).collect::<Vec<_>>(),
    );
    // Loose for a loaded machine; waiting out the hung attempt's 60 s timeout fails it.
    d.stop_within(Duration::from_secs(30));
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("keys/audit.key.head.json")).unwrap())
            .unwrap();
    let head = kept["sequence"].as_u64().unwrap();
    let store = Store::open(&s.path("state")).unwrap();
    // Only a delivery lane that outlived its drain time (a very loaded machine) may have
    // recorded after the last head; everything else is covered.
    let uncovered: Vec<String> = records(&store)
        .into_iter()
        .filter(|r| r.seq > head && !r.event.as_str().starts_with("notification."))
        .map(|r| r.event.as_str().to_string())
        .collect();
    drop(store);
    assert!(
        uncovered.is_empty(),
        "recorded after the head signed at shutdown: {uncovered:?}"
    );
    let out = verify(
        &s,
        &s.path("state"),
        &["--against", path(&s.path("keys/audit.key.head.json"))],
    );
    assert!(out.status.success(), "{}", text(&out));
    drop(client);
}
