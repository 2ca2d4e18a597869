//! Evidence for auditors, end to end on the real binary: the population export (API and CLI)
//! row by row against the incidents' API records, SLA outcomes met and missed (and their
//! counter), and a signed evidence pack checked with `openssl` and `sha256sum` exactly as
//! README tells an auditor to, failing after any flipped byte.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Generous: on a loaded 2-core CI machine a daemon is slow, not wrong; a hang still fails.
const WAIT: Duration = Duration::from_secs(40);

/// Responders whose names the export must show for the steps they took.
const PEOPLE: [&str; 2] = ["alice", "bob"];

fn secret(name: &str) -> String {
    format!("{name}-secret-0123456789")
}

/// A daemon with a critical rule (`CRIT n`) and a low one (`LOW n`), SLAs for both (the low
/// acknowledgement SLA of 1s is missed on purpose), responders alice and bob, and `key` as
/// the audit signing key when given.
fn setup(key: Option<&Path>) -> Setup {
    let s = Setup::new();
    s.write(
        "rules/test.yaml",
        "rules:\n\
         - {id: crit, match: 'CRIT (?P<n>\\d+)', group_by: [n], threshold: {count: 1, within: 1s}, \
            severity: critical, category: intrusion, controls: [CC7.2, CC7.3]}\n\
         - {id: low, match: 'LOW (?P<n>\\d+)', group_by: [n], threshold: {count: 1, within: 1s}, \
            severity: low, category: policy-violation, controls: [CC7.2]}\n",
    );
    s.write("app.log", "");
    let mut tokens = String::new();
    for name in PEOPLE {
        s.write(&format!("tok-{name}"), &secret(name));
        tokens.push_str(&format!(
            "    - {{name: {name}, role: responder, token_file: tok-{name}}}\n"
        ));
    }
    let audit = key.map_or(String::new(), |k| {
        format!("audit:\n  signing_key_file: {}\n", k.display())
    });
    s.config(&format!(
        "{tokens}sources:\n  - {{name: app, paths: [app.log], start_at: beginning, timestamp: arrival}}\n\
         receivers:\n  - {{name: console, type: file, path: out.jsonl}}\n\
         roles:\n  analysts: {{receivers: [console]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n\
         slas:\n  critical: {{acknowledge: 1h, contain: 2h, resolve: 1d}}\n  \
         low: {{acknowledge: 1s, resolve: 1h}}\n{audit}"
    ));
    s
}

fn post(s: &Setup, who: &str, path: &str, body: &str) {
    let r = http("POST", s.port, path, Some(&secret(who)), Some(body)).unwrap();
    assert_eq!(r.status, 200, "{who} {path}: {}", r.body);
}

/// Appends `line` and waits for the incident it opens.
fn open(s: &Setup, d: &Daemon, line: &str) -> Value {
    let before: Vec<Value> = d.incidents().iter().map(|i| i["id"].clone()).collect();
    s.append("app.log", &[line.to_string()]);
    wait_for(&format!("the incident of {line}"), WAIT, || {
        d.incidents()
            .into_iter()
            .find(|i| !before.contains(&i["id"]))
    })
}

/// Opens a low incident with `line` and waits until its 1s acknowledgement SLA has passed;
/// its id.
fn open_past_low_sla(s: &Setup, d: &Daemon, line: &str) -> String {
    let incident = open(s, d, line);
    let opened: chrono::DateTime<chrono::Utc> =
        incident["opened_at"].as_str().unwrap().parse().unwrap();
    let late = opened + chrono::Duration::milliseconds(1500);
    wait_for("the low SLA to pass", WAIT, || {
        (chrono::Utc::now() > late).then_some(())
    });
    incident["id"].as_str().unwrap().to_string()
}

fn run(cmd: &mut Command) -> Output {
    cmd.env_remove("LOGWARDEN_CONFIG").output().unwrap()
}

/// Rows of the population CSV as header → value (no field of these incidents is quoted).
fn rows(csv: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            assert_eq!(fields.len(), header.len(), "{l}");
            header
                .iter()
                .zip(fields)
                .map(|(h, f)| (h.to_string(), f.to_string()))
                .collect()
        })
        .collect()
}

fn millis(v: &Value) -> String {
    v.as_str().map_or(String::new(), |t| {
        let t: chrono::DateTime<chrono::Utc> = t.parse().unwrap();
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    })
}

/// When and by whom the API record's timeline says `event` happened, as the export writes it.
fn step(incident: &Value, events: &[&str]) -> (String, String) {
    incident["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| events.contains(&e["event"].as_str().unwrap()))
        .map_or((String::new(), String::new()), |e| {
            (millis(&e["at"]), e["actor"].as_str().unwrap().to_string())
        })
}

#[test]
fn the_population_lists_every_incident_with_its_lifecycle_and_sla_outcomes() {
    let s = setup(None);
    let d = s.start();
    // 1: critical, every step by hand, reviewed, closed: every SLA met.
    let one = open(&s, &d, "CRIT 1")["id"].as_str().unwrap().to_string();
    let inc = |id: &str, action: &str| format!("/api/v1/incidents/{id}/{action}");
    post(&s, "alice", &inc(&one, "ack"), "");
    for to in ["contained", "eradicated", "recovered"] {
        post(
            &s,
            "bob",
            &inc(&one, "transition"),
            &format!(r#"{{"to": "{to}"}}"#),
        );
    }
    post(
        &s,
        "bob",
        &inc(&one, "review"),
        r#"{"root_cause": "weak key", "lessons_learned": "rotate", "actions": ["rotate keys"]}"#,
    );
    post(&s, "alice", &inc(&one, "transition"), r#"{"to": "closed"}"#);
    // 2: critical, found a false positive at once: acknowledged then, never contained.
    let two = open(&s, &d, "CRIT 2")["id"].as_str().unwrap().to_string();
    post(
        &s,
        "bob",
        &inc(&two, "transition"),
        r#"{"to": "false_positive"}"#,
    );
    // 3: low, acknowledged after its 1s SLA, then resolved in one step (within 1h).
    let three = open_past_low_sla(&s, &d, "LOW 3");
    post(&s, "alice", &inc(&three, "ack"), "");
    post(&s, "bob", &inc(&three, "resolve"), r#"{"note": "routine"}"#);
    // 4: low, left open past its acknowledgement SLA: missed while still open.
    let four = open_past_low_sla(&s, &d, "LOW 4");

    let r = d.get("/api/v1/audit?format=population");
    assert_eq!(r.status, 200, "{}", r.body);
    let api_csv = r.body.clone();
    let population = rows(&api_csv);
    assert_eq!(population.len(), 4, "{api_csv}");
    let expected_sla = [
        (&one, ["met", "met", "met"]),
        (&two, ["met", "n/a", "n/a"]),
        (&three, ["missed", "", "met"]),
        (&four, ["missed", "", "pending"]),
    ];
    for (row, (id, sla)) in population.iter().zip(expected_sla) {
        let api = d.get(&format!("/api/v1/incidents/{id}")).json();
        let field = |k: &str| row[k].as_str();
        assert_eq!(field("id"), id);
        for key in ["uid", "rule", "severity", "category", "state"] {
            assert_eq!(field(key), api[key].as_str().unwrap(), "{key} of {id}");
        }
        let controls: Vec<&str> = api["controls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(field("controls"), controls.join(";"));
        assert_eq!(field("detected_at"), millis(&api["first_seen"]));
        assert_eq!(field("opened_at"), millis(&api["opened_at"]));
        assert_eq!(field("acknowledged_at"), millis(&api["acknowledged_at"]));
        assert_eq!(field("contained_at"), millis(&api["contained_at"]));
        assert_eq!(field("closed_at"), millis(&api["closed_at"]));
        for (column, events) in [
            ("acknowledged", &["acknowledged", "resolved"][..]),
            ("contained", &["contained", "resolved"]),
            ("eradicated", &["eradicated", "resolved"]),
            ("recovered", &["recovered", "resolved"]),
            ("closed", &["closed", "false_positive", "resolved"]),
        ] {
            let (at, by) = step(&api, events);
            assert_eq!(field(&format!("{column}_at")), at, "{column} of {id}");
            assert_eq!(field(&format!("{column}_by")), by, "{column} of {id}");
        }
        assert_eq!(field("review"), api["review"].is_object().to_string());
        assert_eq!(
            field("reviewed_by"),
            api["review"]["by"].as_str().unwrap_or("")
        );
        let got = [
            field("sla_acknowledge"),
            field("sla_contain"),
            field("sla_resolve"),
        ];
        assert_eq!(got, sla, "SLA outcomes of {id}");
    }
    // Who did what, as the people did it.
    assert_eq!(population[0]["acknowledged_by"], "alice");
    assert_eq!(population[0]["contained_by"], "bob");
    assert_eq!(population[0]["reviewed_by"], "bob");
    assert_eq!(population[2]["closed_by"], "bob");
    assert_eq!(
        population[2]["eradicated_by"], "bob",
        "resolving passes over eradication"
    );

    // The same SLAs as a counter: stages as they were reached.
    let series = |sev: &str, stage: &str, outcome: &str| {
        metric(
            s.port,
            &format!(
                "logwarden_incident_sla_outcomes_total{{drill=\"false\",outcome=\"{outcome}\",severity=\"{sev}\",stage=\"{stage}\"}}"
            ),
        )
    };
    assert_eq!(series("critical", "acknowledge", "met"), 1.0);
    assert_eq!(series("critical", "resolve", "met"), 1.0);
    assert_eq!(series("low", "acknowledge", "missed"), 1.0);
    assert_eq!(series("low", "resolve", "met"), 1.0);
    assert_eq!(series("critical", "acknowledge", "missed"), 0.0);

    // A period: incidents opened since the third one's opening.
    let since = population[2]["opened_at"].clone();
    let r = d.get(&format!("/api/v1/audit?format=population&since={since}"));
    let later = rows(&r.body);
    let ids: Vec<&str> = later.iter().map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, [three.as_str(), four.as_str()]);

    // The CLI on the stopped daemon's store: the same rows.
    d.stop();
    let cli = stdout_of_success(&run(Command::new(bin())
        .args(["audit", "export", "--format", "population", "--state-dir"])
        .arg(s.path("state"))
        .arg("--config")
        .arg(s.path("logwarden.yaml"))));
    assert_eq!(cli, api_csv);
}

/// A test path as a command argument (the temporary directories are UTF-8).
fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `program` with `args`, returning whether it succeeded and what it printed.
fn tool(program: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What an auditor does with an unpacked pack (README, "Evidence packs"): the signature
/// over `manifest.json` with `openssl`, then each file's `sha256sum` against the manifest.
/// `Err` names the first check that failed.
fn auditor_checks(openssl: &Path, dir: &Path, pub_pem: &Path) -> Result<(), String> {
    let (verified, out) = tool(
        openssl,
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            path(pub_pem),
            "-rawin",
            "-in",
            path(&dir.join("manifest.json")),
            "-sigfile",
            path(&dir.join("manifest.sig")),
        ],
    );
    if !verified {
        return Err(format!("signature: {out}"));
    }
    // The manifest's sums as `sha256sum -c` reads them (what README's one-liner prints).
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let files = manifest["files"].as_object().unwrap();
    assert_eq!(files.len(), 4, "{manifest}");
    let list: String = files
        .iter()
        .map(|(name, sum)| format!("{}  {name}\n", sum.as_str().unwrap()))
        .collect();
    let out = run_with_stdin(
        Command::new("sha256sum").arg("-c").current_dir(dir),
        list.as_bytes(),
    );
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("sha256: {}", String::from_utf8_lossy(&out.stdout))),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn an_evidence_pack_verifies_with_openssl_and_sha256sum_and_fails_after_any_flipped_byte() {
    let Some(openssl) = peer("openssl", "openssl") else {
        return;
    };
    let Some(unzip) = peer("unzip", "unzip") else {
        return;
    };
    // The operator's key, made as README says, outside the state directory; the auditor
    // gets the public half.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("audit.pem");
    let pub_pem = keys.path().join("pub.pem");
    let (ok, out) = tool(
        &openssl,
        &["genpkey", "-algorithm", "ed25519", "-out", path(&key)],
    );
    assert!(ok, "{out}");
    let (ok, out) = tool(
        &openssl,
        &["pkey", "-in", path(&key), "-pubout", "-out", path(&pub_pem)],
    );
    assert!(ok, "{out}");

    let s = setup(Some(&key));
    let d = s.start();
    let id = open(&s, &d, "CRIT 7")["id"].as_str().unwrap().to_string();
    post(
        &s,
        "alice",
        &format!("/api/v1/incidents/{id}/ack"),
        r#"{"note": "mine"}"#,
    );
    post(
        &s,
        "bob",
        &format!("/api/v1/incidents/{id}/transition"),
        r#"{"to": "contained"}"#,
    );
    let other = open(&s, &d, "LOW 8")["id"].as_str().unwrap().to_string();
    let api_record = d.get(&format!("/api/v1/incidents/{id}")).json();
    let pack = |id: &str, out: &Path, config: &Path| {
        run(Command::new(bin())
            .args(["audit", "pack", id, "--out"])
            .arg(out)
            .arg("--state-dir")
            .arg(s.path("state"))
            .arg("--config")
            .arg(config))
    };
    let config = s.path("logwarden.yaml");
    // A running daemon holds the store: said in words, nothing written.
    let zip = s.path("pack.zip");
    let live = pack(&id, &zip, &config);
    assert_eq!(live.status.code(), Some(2));
    let err = String::from_utf8_lossy(&live.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    assert!(!zip.exists());
    d.stop();
    let said = stdout_of_success(&pack(&id, &zip, &config));
    assert!(said.contains("signed by public key"), "{said}");

    // Unpacked with the standard tool, every entry's CRC checked.
    let unpacked = s.path("unpacked");
    let (ok, out) = tool(&unzip, &["-t", path(&zip)]);
    assert!(ok && out.contains("No errors detected"), "{out}");
    let (ok, out) = tool(&unzip, &["-q", path(&zip), "-d", path(&unpacked)]);
    assert!(ok, "{out}");
    let mut names: Vec<String> = std::fs::read_dir(&unpacked)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "audit.jsonl",
            "evidence.jsonl",
            "incident.json",
            "manifest.json",
            "manifest.sig",
            "timeline.jsonl"
        ]
    );
    auditor_checks(&openssl, &unpacked, &pub_pem).unwrap();

    // What it holds: the API's record, its timeline and evidence, its audit records at
    // their chain positions, under the verified head, with the operator's public key.
    let read = |name: &str| std::fs::read_to_string(unpacked.join(name)).unwrap();
    let lines = |name: &str| -> Vec<Value> {
        read(name)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let incident: Value = serde_json::from_str(&read("incident.json")).unwrap();
    assert_eq!(incident, api_record);
    assert_eq!(
        Value::Array(lines("timeline.jsonl")),
        api_record["timeline"]
    );
    assert_eq!(
        Value::Array(lines("evidence.jsonl")),
        api_record["evidence"]
    );
    assert!(read("evidence.jsonl").contains("CRIT 7"));
    let records = lines("audit.jsonl");
    let events: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"incident.opened") && events.contains(&"incident.transitioned"),
        "{events:?}"
    );
    assert!(records.iter().all(|r| r["incident"] == id.as_str()));
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let verified = stdout_of_success(&run(Command::new(bin())
        .args(["audit", "verify", "--state-dir"])
        .arg(s.path("state"))));
    let count: u64 = verified.split_whitespace().nth(1).unwrap().parse().unwrap();
    let manifest: Value = serde_json::from_str(&read("manifest.json")).unwrap();
    assert_eq!(manifest["head"]["sequence"], count, "{verified}");
    assert!(
        verified.contains(manifest["head"]["hash"].as_str().unwrap()),
        "{verified}"
    );
    assert!(*seqs.last().unwrap() <= count);
    assert_eq!(manifest["incident"]["id"], id.as_str());
    // The manifest's key is the operator's: the last 32 bytes of its DER public key.
    let der = keys.path().join("pub.der");
    let (ok, out) = tool(
        &openssl,
        &[
            "pkey",
            "-pubin",
            "-in",
            path(&pub_pem),
            "-outform",
            "DER",
            "-out",
            path(&der),
        ],
    );
    assert!(ok, "{out}");
    let der = std::fs::read(der).unwrap();
    use base64::Engine as _;
    assert_eq!(
        manifest["public_key"].as_str().unwrap(),
        base64::engine::general_purpose::STANDARD.encode(&der[der.len() - 32..])
    );
    // Another incident's records are not in this pack.
    assert!(!read("audit.jsonl").contains(&format!("\"{other}\"")));

    // One flipped byte in any file, the manifest or the signature: a check fails.
    for name in &names {
        let tampered = s.path(&format!("tampered-{name}"));
        copy_dir(&unpacked, &tampered);
        let path: PathBuf = tampered.join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        let failed = auditor_checks(&openssl, &tampered, &pub_pem).expect_err(name);
        let expected = if name.starts_with("manifest.") {
            "signature"
        } else {
            "sha256"
        };
        assert!(failed.starts_with(expected), "{name}: {failed}");
    }

    // Without a key in the config, no unsigned pack.
    let unsigned = setup(None);
    let out = pack(
        &id,
        &unsigned.path("x.zip"),
        &unsigned.path("logwarden.yaml"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signing_key_file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown incident is named.
    let out = pack("INC-999", &s.path("none.zip"), &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no incident INC-999"));
}
