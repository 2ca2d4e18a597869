//! `logwarden test`, `replay` and `explain`: the real binary on real files.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shipped packs' test files.
fn pack_tests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("tests/rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_shipped_rule_packs_pass_their_tests_in_any_time_zone() {
    let files = pack_tests();
    assert!(files.len() >= 5, "{files:?}");
    for tz in ["UTC", "Asia/Kolkata", "America/New_York"] {
        if tz != "UTC" && !Path::new("/usr/share/zoneinfo").join(tz).exists() {
            eprintln!("no zoneinfo for {tz}; that variant is skipped");
            continue;
        }
        let out = Command::new(bin())
            .arg("test")
            .args(&files)
            .env("TZ", tz)
            .output()
            .unwrap();
        let (code, stdout, stderr) = text(&out);
        assert_eq!(code, 0, "TZ={tz}\n{stdout}{stderr}");
        let last = stdout.lines().last().unwrap();
        assert!(
            last.starts_with("ok: ") && last.ends_with(&format!("in {} files passed", files.len())),
            "{last}"
        );
    }
}

#[test]
fn the_shipped_rules_check_without_warnings_under_any_config() {
    let s = Setup::new();
    s.write(
        "logwarden.yaml",
        &format!(
            "state_dir: state\nrules: [{}]\nsources:\n  - {{name: anything, paths: [x.log]}}\n",
            repo("rules").display()
        ),
    );
    s.write("x.log", "");
    let (code, stdout, _) = text(&run(&[
        "check",
        "--config",
        s.path("logwarden.yaml").to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
    for file in std::fs::read_dir(repo("rules")).unwrap() {
        let body = std::fs::read_to_string(file.unwrap().path()).unwrap();
        // The built-in source of detections is the one source every config has.
        let body = body.replace("    sources: [logwarden]\n", "");
        for key in ["    sources:", "    escalation:"] {
            assert!(
                !body.contains(key),
                "shipped rules must load under any config"
            );
        }
    }
}

/// The SSH pack's tests with their rule file made absolute, so they run from a temp dir.
fn ssh_tests_copy(s: &Setup) -> (PathBuf, String) {
    let body = std::fs::read_to_string(repo("tests/rules/ssh.yaml"))
        .unwrap()
        .replace(
            "rule_files: [../../rules/ssh.yaml]",
            &format!("rule_files: [{}]", repo("rules/ssh.yaml").display()),
        );
    (s.write("ssh-tests.yaml", &body), body)
}

#[test]
fn a_planted_wrong_expectation_fails_with_a_diff() {
    let s = Setup::new();
    let (_, body) = ssh_tests_copy(&s);
    // Wrong count on a firing test, and an incident demanded where there is silence.
    let planted = body
        .replacen(
            "{rule: ssh-bruteforce, key: {ip: 203.0.113.9}, severity: moderate, count: 5,",
            "{rule: ssh-bruteforce, key: {ip: 203.0.113.9}, severity: moderate, count: 6,",
            1,
        )
        .replacen(
            "  - name: a slow client failing once every 90 seconds all morning opens nothing\n    lines:\n      - {line: \"Nov 22 08:00:00 web1 sshd[1200]: Failed password for alice from 192.0.2.50 port 50000 ssh2\", repeat: 40, every: 90s}\n    expect: []",
            "  - name: a slow client failing once every 90 seconds all morning opens nothing\n    lines:\n      - {line: \"Nov 22 08:00:00 web1 sshd[1200]: Failed password for alice from 192.0.2.50 port 50000 ssh2\", repeat: 40, every: 90s}\n    expect:\n      - {rule: ssh-bruteforce, key: {ip: 192.0.2.50}}",
            1,
        );
    assert_ne!(planted, body);
    let file = s.write("planted.yaml", &planted);
    let (code, stdout, _) = text(&run(&["test", file.to_str().unwrap()]));
    assert_eq!(code, 1, "{stdout}");
    let path = file.display().to_string();
    let expected_diff = [
        format!(
            "FAIL {path}:6:3: five password failures within a minute open a brute-force incident"
        ),
        "  --- expected".into(),
        "  +++ got".into(),
        "  - ssh-bruteforce {ip: 203.0.113.9} severity: moderate count: 6 opened_at: 2026-11-22T10:00:21Z summary: \"5 failed SSH logins from 203.0.113.9\"".into(),
        "  + ssh-bruteforce {ip: 203.0.113.9} severity: moderate count: 5 opened_at: 2026-11-22T10:00:21Z summary: \"5 failed SSH logins from 203.0.113.9\"".into(),
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL ") && l.contains("five password"))
        .unwrap_or_else(|| panic!("{stdout}"));
    // Local time and UTC agree only where TZ is UTC; compare the shape, not the instant.
    let strip = |l: &str| l.split(" opened_at: ").next().unwrap().to_string();
    for (want, got) in expected_diff.iter().zip(&lines[at..]) {
        assert_eq!(strip(want), strip(got), "{stdout}");
    }
    assert!(
        stdout.contains("  - ssh-bruteforce {ip: 192.0.2.50}   (expected, not opened)"),
        "{stdout}"
    );
    let total = planted.matches("\n  - name: ").count();
    assert!(
        stdout.contains(&format!("{} of {total} tests passed", total - 2)),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!("FAILED: 2 of {total} tests")),
        "{stdout}"
    );
}

#[test]
fn an_incident_nobody_expected_is_shown_as_got() {
    let s = Setup::new();
    let file = s.write(
        "t.yaml",
        &format!(
            "rule_files: [{}]\nyear: 2026\ntests:\n  - name: silence wanted\n    lines:\n      - {{line: \"Nov 22 10:00:00 h sshd[1]: Failed password for root from 203.0.113.5 port 1 ssh2\", repeat: 3, every: 1m}}\n    expect: []\n",
            repo("rules/ssh.yaml").display()
        ),
    );
    let (code, stdout, _) = text(&run(&["test", file.to_str().unwrap()]));
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            "  + ssh-root-login-attempt {ip: 203.0.113.5} severity: moderate count: 3 opened_at: "
        ),
        "{stdout}"
    );
    assert!(stdout.contains("(opened, not expected)"), "{stdout}");
}

#[test]
fn broken_test_files_are_reported_at_their_place() {
    let s = Setup::new();
    let rules = repo("rules/ssh.yaml").display().to_string();
    let typo = s.write(
        "typo.yaml",
        &format!("rule_files: [{rules}]\ntests:\n  - name: x\n    lines: []\n    expcet: []\n"),
    );
    let (code, stdout, _) = text(&run(&["test", typo.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with(&format!("{}:5:5: ", typo.display()))
            && stdout.contains("unknown field `expcet`"),
        "{stdout}"
    );
    let untimed = s.write(
        "untimed.yaml",
        &format!(
            "rule_files: [{rules}]\ntests:\n  - name: no clock\n    timestamp: arrival\n    lines: [\"sshd[1]: Failed password for root from 1.2.3.4 port 1 ssh2\"]\n    expect:\n      - {{rule: ssh-bruteforce, key: {{user: root}}}}\n"
        ),
    );
    let (code, stdout, _) = text(&run(&["test", untimed.to_str().unwrap()]));
    assert_eq!(code, 1);
    let place = untimed.display();
    assert!(
        stdout.contains(&format!(
            "{place}:5:5: test \"no clock\": line 1 has no time"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{place}:6:5: test \"no clock\": the key of rule \"ssh-bruteforce\" has the fields [\"ip\"]")),
        "{stdout}"
    );
    let (code, _, stderr) = text(&run(&["test", s.path("missing.yaml").to_str().unwrap()]));
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn start_and_offsets_time_lines_without_timestamps_and_until_lets_absence_fire() {
    let s = Setup::new();
    s.write(
        "rules.yaml",
        "rules:\n  - id: beat\n    match: 'heartbeat from (?P<host>\\S+)'\n    group_by: [host]\n    absence: {within: 10m}\n    severity: high\n  - id: fail\n    match: 'fail'\n    threshold: {count: 3, within: 1m}\n    severity: low\n",
    );
    let file = s.write(
        "t.yaml",
        "rule_files: [rules.yaml]\ntimestamp: arrival\ntests:\n  - name: offsets\n    start: 2026-11-22T10:00:00Z\n    lines:\n      - {line: heartbeat from a, at: 1m}\n      - {line: fail, after: 20s, repeat: 3, every: 25s}\n      - {line: heartbeat from a, at: 5m}\n    until: 30m\n    expect:\n      - {rule: fail, count: 3, opened_at: 2026-11-22T10:02:10Z}\n      - {rule: beat, key: {host: a}, count: 0, opened_at: 2026-11-22T10:15:00.001Z}\n",
    );
    let (code, stdout, _) = text(&run(&["test", file.to_str().unwrap()]));
    assert_eq!(code, 0, "{stdout}");
}

// --- replay -----------------------------------------------------------------------------

const DAY: u32 = 86_400;

fn syslog_time(second: u32) -> String {
    format!(
        "Nov 22 {:02}:{:02}:{:02}",
        second / 3600,
        second / 60 % 60,
        second % 60
    )
}

/// A day of auth.log: slow and benign clients all day, and attackers in short bursts.
/// Returns the lines (in time order) and the attackers' addresses by what they did.
fn auth_day(rng: &mut Rng) -> (Vec<String>, BTreeMap<&'static str, BTreeSet<String>>) {
    let mut events: Vec<(u32, String)> = Vec::new();
    let mut pid = 1000;
    let mut push = |t: u32, msg: String, events: &mut Vec<(u32, String)>| {
        pid += 1;
        events.push((t, format!("{} web1 sshd[{pid}]: {msg}", syslog_time(t))));
    };
    // 30 clients failing once every 90 s to 10 min all day: hundreds of failures each, never
    // five in a minute. A replay windowed by read time would flag every one of them.
    for c in 0..30 {
        let ip = format!("192.0.2.{}", c + 10);
        let user = ["alice", "bob", "carol", "dave"][c % 4];
        let mut t = rng.below(600) as u32;
        while t < DAY {
            push(
                t,
                format!(
                    "Failed password for {user} from {ip} port {} ssh2",
                    40000 + t % 20000
                ),
                &mut events,
            );
            if rng.below(4) == 0 {
                push(
                    t + 5,
                    format!(
                        "Accepted password for {user} from {ip} port {} ssh2",
                        40000 + t % 20000
                    ),
                    &mut events,
                );
            }
            t += 90 + rng.below(510) as u32;
        }
    }
    // Deploy jobs logging in with keys every few minutes.
    for d in 0..3 {
        let mut t = rng.below(300) as u32;
        while t < DAY {
            push(
                t,
                format!(
                    "Accepted publickey for deploy from 198.18.0.{d} port 50000 ssh2: ED25519 SHA256:abcdefghijklmnop"
                ),
                &mut events,
            );
            t += 120 + rng.below(300) as u32;
        }
    }
    let mut attackers: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    // Brute force: 8 to 60 failures, 1 to 6 s apart.
    for a in 0..6 {
        let ip = format!("203.0.113.{}", a + 10);
        let mut t = rng.below(DAY as u64 - 3600) as u32;
        for _ in 0..8 + rng.below(53) {
            push(
                t,
                format!(
                    "Failed password for invalid user admin from {ip} port {} ssh2",
                    30000 + t % 30000
                ),
                &mut events,
            );
            t += 1 + rng.below(6) as u32;
        }
        attackers.entry("ssh-bruteforce").or_default().insert(ip);
    }
    // A brute force that got in.
    let ip = "203.0.113.60".to_string();
    let mut t = rng.below(DAY as u64 - 3600) as u32;
    for _ in 0..20 {
        push(
            t,
            format!(
                "Failed password for root from {ip} port {} ssh2",
                30000 + t % 30000
            ),
            &mut events,
        );
        t += 2;
    }
    push(
        t + 10,
        format!("Accepted password for root from {ip} port 31000 ssh2"),
        &mut events,
    );
    for rule in ["ssh-bruteforce", "ssh-root-login-attempt", "ssh-breach"] {
        attackers.entry(rule).or_default().insert(ip.clone());
    }
    // Enumeration without passwords: 15 user names, 20 s apart.
    let ip = "203.0.113.50".to_string();
    let mut t = rng.below(DAY as u64 - 3600) as u32;
    for n in 0..15 {
        push(
            t,
            format!("Invalid user guess{n} from {ip} port {}", 30000 + n),
            &mut events,
        );
        t += 20;
    }
    attackers
        .entry("ssh-user-enumeration")
        .or_default()
        .insert(ip);
    events.sort_by_key(|(t, _)| *t);
    (events.into_iter().map(|(_, l)| l).collect(), attackers)
}

/// A config with an auth (syslog) and a web (clf) source under `dir`.
fn replay_config(s: &Setup) -> PathBuf {
    s.write(
        "logwarden.yaml",
        "state_dir: state\nrules: [rules]\nsources:\n  - {name: auth, paths: [auth.log], timestamp: syslog}\n  - {name: web, paths: [nginx/*.log], timestamp: clf}\n",
    );
    std::fs::create_dir_all(s.path("rules")).unwrap();
    std::fs::copy(repo("rules/ssh.yaml"), s.path("rules/ssh.yaml")).unwrap();
    s.path("logwarden.yaml")
}

/// Writes a log whose modification time is fixed (the year reference of syslog lines), so
/// `Nov 22` always means 2026 whatever today is.
fn write_log(path: &Path, lines: &[String], gzip: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut body = lines.join("\n");
    body.push('\n');
    let bytes = if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body.as_bytes()).unwrap();
        gz.finish().unwrap()
    } else {
        body.into_bytes()
    };
    std::fs::write(path, bytes).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let end_of_2026 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_798_761_599);
    f.set_modified(end_of_2026).unwrap();
}

fn replay_json(args: &[&str]) -> Value {
    let out = run(&[&["replay", "--json"], args].concat());
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn keys_by_rule(incidents: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in incidents.as_array().unwrap() {
        out.entry(i["rule"].as_str().unwrap().to_string())
            .or_default()
            .insert(i["key"]["ip"].as_str().unwrap_or("").to_string());
    }
    out
}

#[test]
fn replay_finds_exactly_the_attackers_in_a_day_of_logs_by_their_own_time() {
    let s = Setup::new();
    let config = replay_config(&s);
    let (lines, attackers) = auth_day(&mut Rng::new(7));
    let log = s.path("auth.log");
    write_log(&log, &lines, false);
    let report = replay_json(&["--config", config.to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(report["lines"], lines.len());
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    assert!(report["lines_per_second"].as_f64().unwrap() > 0.0);
    let found = keys_by_rule(&report["incidents"]);
    let want: BTreeMap<String, BTreeSet<String>> = attackers
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(found, want, "{report:#}");
    // The incident object is the API's, with log times.
    let i = &report["incidents"][0];
    for field in [
        "id",
        "rule",
        "severity",
        "category",
        "state",
        "key",
        "count",
        "first_seen",
        "last_seen",
        "opened_at",
        "controls",
        "ruleset_version",
        "evidence",
    ] {
        assert!(!i[field].is_null(), "{field} missing in {i:#}");
    }
    assert!(
        i["opened_at"].as_str().unwrap().starts_with("2026-11-2"),
        "{i:#}"
    );
    assert_eq!(i["evidence"][0]["path"], log.display().to_string());
    assert_eq!(i["evidence"][0]["source"], "auth");
}

#[test]
fn replay_reads_gzip_generations_in_time_order_whatever_the_argument_order() {
    let s = Setup::new();
    let config = replay_config(&s);
    let (lines, attackers) = auth_day(&mut Rng::new(11));
    let whole = s.path("whole/auth.log");
    write_log(&whole, &lines, false);
    let half = lines.len() / 2;
    let old = s.path("auth.log.1.gz");
    write_log(&old, &lines[..half], true);
    let new = s.path("auth.log");
    write_log(&new, &lines[half..], false);
    let c = config.to_str().unwrap();
    let one = replay_json(&["--config", c, "--source", "auth", whole.to_str().unwrap()]);
    // Newest first on the command line: the merge still replays the day in order.
    let split = replay_json(&["--config", c, new.to_str().unwrap(), old.to_str().unwrap()]);
    assert_eq!(split["lines"], lines.len());
    let strip = |r: &Value| -> Vec<(String, String, u64, String)> {
        r["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["rule"].as_str().unwrap().into(),
                    i["key"].to_string(),
                    i["count"].as_u64().unwrap(),
                    i["opened_at"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&one), strip(&split));
    assert_eq!(
        keys_by_rule(&split["incidents"]).values().flatten().count(),
        attackers.values().flatten().count()
    );
}

#[test]
fn replay_compares_two_rule_sets_on_the_same_logs() {
    let s = Setup::new();
    let config = replay_config(&s);
    let (lines, attackers) = auth_day(&mut Rng::new(7));
    let log = s.path("auth.log");
    write_log(&log, &lines, false);
    let stricter = std::fs::read_to_string(repo("rules/ssh.yaml"))
        .unwrap()
        .replace(
            "threshold: {count: 5, within: 1m}",
            "threshold: {count: 30, within: 1m}",
        );
    let b = s.write("b/ssh.yaml", &stricter);
    let c = config.to_str().unwrap();
    let single = replay_json(&["--config", c, log.to_str().unwrap()]);
    let by_key = |v: &Value| -> BTreeMap<String, u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    format!("{} {}", i["rule"].as_str().unwrap(), i["key"]),
                    i["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let bursts = by_key(&single["incidents"]);
    let report = replay_json(&[
        "--config",
        c,
        "--rules",
        repo("rules/ssh.yaml").to_str().unwrap(),
        "--against",
        b.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert!(
        report["only_in_b"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let only_a = by_key(&report["only_in_a"]);
    let both: BTreeMap<String, u64> = report["in_both"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                format!("{} {}", p["a"]["rule"].as_str().unwrap(), p["a"]["key"]),
                p["a"]["count"].as_u64().unwrap(),
            )
        })
        .collect();
    // Every incident of A is in exactly one group; the stricter set gives up brute forces
    // only (surely those of fewer than 30 lines), and nothing else.
    for (slot, count) in &bursts {
        assert!(
            only_a.contains_key(slot) != both.contains_key(slot),
            "{slot}\n{report:#}"
        );
        let brute = slot.starts_with("ssh-bruteforce ");
        if !brute {
            assert!(both.contains_key(slot), "{slot}\n{report:#}");
        } else if *count < 30 {
            assert!(only_a.contains_key(slot), "{slot} {count}\n{report:#}");
        }
    }
    assert!(!only_a.is_empty(), "the seed has short bursts: {bursts:?}");
    assert_eq!(
        only_a.len() + both.len(),
        attackers.values().flatten().count()
    );
    // The table form names the three groups and ends with the rate.
    let out = run(&[
        "replay",
        "--config",
        c,
        "--against",
        b.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    let (code, stdout, _) = text(&out);
    assert_eq!(code, 0);
    for part in [
        "only in A (--rules): ",
        "only in B (--against): 0 incidents",
        "in both: ",
    ] {
        assert!(stdout.contains(part), "{part}\n{stdout}");
    }
    assert!(stdout.trim_end().ends_with("lines/s"), "{stdout}");
}

#[test]
fn replay_prints_a_table_per_rule_with_the_rate() {
    let s = Setup::new();
    let config = replay_config(&s);
    let (lines, attackers) = auth_day(&mut Rng::new(3));
    let log = s.path("auth.log");
    write_log(&log, &lines, false);
    let out = run(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {stderr:?}"
    );
    let mut rows = stdout.lines();
    let header: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["RULE", "INCIDENTS", "KEYS", "FIRST", "LAST"]);
    let brute: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("ssh-bruteforce "))
        .unwrap()
        .split_whitespace()
        .collect();
    let n = attackers["ssh-bruteforce"].len().to_string();
    assert_eq!(&brute[1..3], [n.as_str(), n.as_str()]);
    assert!(brute[3].starts_with("2026-11-2") && brute[4].starts_with("2026-11-2"));
    let last = stdout.lines().last().unwrap();
    assert!(
        last.contains(&format!("from {} lines in ", lines.len())) && last.ends_with(" lines/s"),
        "{last}"
    );
}

#[test]
fn replay_picks_the_source_by_path_or_asks_for_one() {
    let s = Setup::new();
    let config = replay_config(&s);
    let c = config.to_str().unwrap();
    let web = s.path("nginx/access.log.2.gz");
    let lines: Vec<String> = (0..25)
        .map(|i| format!("203.0.113.7 - - [22/Nov/2026:10:00:{i:02} +0000] \"GET /admin HTTP/1.1\" 401 10 \"-\" \"x\""))
        .collect();
    write_log(&web, &lines, true);
    std::fs::copy(repo("rules/web.yaml"), s.path("rules/web.yaml")).unwrap();
    // By path: a rotated, compressed generation of nginx/*.log is the web source's (clf).
    let report = replay_json(&["--config", c, web.to_str().unwrap()]);
    assert_eq!(
        report["incidents"][0]["rule"], "web-auth-failure-flood",
        "{report:#}"
    );
    assert_eq!(report["incidents"][0]["opened_at"], "2026-11-22T10:00:19Z");
    // Elsewhere, with two sources, it must be told.
    let elsewhere = s.path("copy/access.log");
    write_log(&elsewhere, &lines, false);
    let (code, _, stderr) = text(&run(&[
        "replay",
        "--config",
        c,
        elsewhere.to_str().unwrap(),
    ]));
    assert_eq!(code, 2);
    assert!(stderr.contains("--source"), "{stderr}");
    let report = replay_json(&[
        "--config",
        c,
        "--source",
        "web",
        elsewhere.to_str().unwrap(),
    ]);
    assert_eq!(report["incidents"].as_array().unwrap().len(), 1);
    let (code, _, stderr) = text(&run(&[
        "replay",
        "--config",
        c,
        s.path("nope.log").to_str().unwrap(),
    ]));
    assert_eq!(code, 2, "{stderr}");
}

// --- explain ----------------------------------------------------------------------------

const EXPLAIN_RULES: &str = r#"
lists:
  trusted: [10.0.0.0/8]
rules:
  - id: ssh-fail
    match: 'Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>\S+) port'
    ignore: 'from 192\.0\.2\.1 '
    allow: {ip: ["@trusted"]}
    group_by: [ip]
    threshold: {count: 5, within: 1m}
    severity: low
  - id: admin-fail
    match: 'Failed password for (?P<user>\S+) from'
    only: {user: [root, admin]}
    group_by: [user]
    threshold: {count: 3, within: 1m}
    severity: low
  - id: breach
    group_by: [ip]
    sequence:
      within: 10m
      steps:
        - {match: 'Failed password for \S+ from (?P<ip>\S+)', count: 3}
        - {match: 'Accepted \w+ for \S+ from (?P<ip>\S+)'}
    severity: high
"#;

fn explain(s: &Setup, line: &str) -> Value {
    let out = run(&[
        "explain",
        "--config",
        s.path("logwarden.yaml").to_str().unwrap(),
        "--json",
        line,
    ]);
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn explain_setup() -> Setup {
    let s = Setup::new();
    s.write("rules/r.yaml", EXPLAIN_RULES);
    s.write(
        "logwarden.yaml",
        "state_dir: state\nrules: [rules]\nsources:\n  - {name: auth, paths: [auth.log]}\n",
    );
    s
}

#[test]
fn explain_shows_captures_keys_and_each_kind_of_exclusion() {
    let s = explain_setup();
    let counted = explain(
        &s,
        "Nov 22 10:00:01 h sshd[1]: Failed password for root from 203.0.113.9 port 22 ssh2",
    );
    assert_eq!(
        counted,
        serde_json::json!({"matches": [
            {"rule": "ssh-fail", "captures": {"user": "root", "ip": "203.0.113.9"}, "key": {"ip": "203.0.113.9"}, "excluded_by": null},
            {"rule": "admin-fail", "captures": {"user": "root"}, "key": {"user": "root"}, "excluded_by": null},
            {"rule": "breach", "step": 1, "captures": {"ip": "203.0.113.9"}, "key": {"ip": "203.0.113.9"}, "excluded_by": null},
        ]})
    );
    let allowed = explain(
        &s,
        "sshd[1]: Failed password for bob from 10.1.2.3 port 22 ssh2",
    );
    let why: Vec<(&str, &Value)> = allowed["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["rule"].as_str().unwrap(), &m["excluded_by"]))
        .collect();
    assert_eq!(
        why,
        [
            ("ssh-fail", &Value::from("allow.ip")),
            ("admin-fail", &Value::from("only.user")),
            ("breach", &Value::Null),
        ]
    );
    let ignored = explain(
        &s,
        "sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2",
    );
    assert_eq!(ignored["matches"][0]["excluded_by"], "ignore");
    assert_eq!(ignored["matches"][1]["excluded_by"], Value::Null);
    let nothing = explain(&s, "kernel: all quiet");
    assert_eq!(nothing, serde_json::json!({"matches": []}));
}

#[test]
fn explain_reads_stdin_and_speaks_plainly() {
    let s = explain_setup();
    let out = run_with_stdin(
        Command::new(bin()).args([
            "explain",
            "--config",
            s.path("logwarden.yaml").to_str().unwrap(),
            "-",
        ]),
        b"sshd[1]: Failed password for bob from 10.1.2.3 port 22 ssh2\nsshd[1]: Accepted publickey for bob from 198.51.100.1 port 22 ssh2\nnothing here\n",
    );
    let (code, stdout, _) = text(&out);
    assert_eq!(code, 0, "{stdout}");
    // Each explanation under the line it belongs to.
    let want = [
        "line 1: sshd[1]: Failed password for bob from 10.1.2.3 port 22 ssh2",
        "ssh-fail: NOT counted: stopped by allow.ip",
        "  captures: {ip=\"10.1.2.3\", user=\"bob\"}",
        "admin-fail: NOT counted: stopped by only.user",
        "  captures: {user=\"bob\"}",
        "breach (step 1): counted under key {ip=\"10.1.2.3\"}",
        "  captures: {ip=\"10.1.2.3\"}",
        "line 2: sshd[1]: Accepted publickey for bob from 198.51.100.1 port 22 ssh2",
        "breach (step 2): counted under key {ip=\"198.51.100.1\"}",
        "  captures: {ip=\"198.51.100.1\"}",
        "line 3: nothing here",
        "no rule matches this line",
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), want, "{stdout}");
}

#[test]
fn explain_and_replay_work_with_rules_alone() {
    let s = Setup::new();
    let rules = s.write(
        "rules/ssh.yaml",
        "rules:\n  - id: ssh-fail\n    match: 'Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 3, within: 1m}\n    severity: low\n",
    );
    let missing = s.path("no-such-config.yaml");
    let explain = text(&run(&[
        "explain",
        "--config",
        missing.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "sshd[1]: Failed password for bob from 203.0.113.9 port 22 ssh2",
    ]));
    assert_eq!(explain.0, 0, "{explain:?}");
    assert!(
        explain
            .1
            .starts_with("ssh-fail: counted under key {ip=\"203.0.113.9\"}"),
        "{explain:?}"
    );
    let log = s.write(
        "auth.log",
        &(1..=3)
            .map(|i| format!("Nov 22 10:00:0{i} web1 sshd[1]: Failed password for bob from 203.0.113.9 port 22 ssh2\n"))
            .collect::<String>(),
    );
    let replay = text(&run(&[
        "replay",
        "--config",
        missing.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--json",
        log.to_str().unwrap(),
    ]));
    assert_eq!(replay.0, 0, "{replay:?}");
    let report: Value = serde_json::from_str(&replay.1).unwrap();
    assert_eq!(report["incidents"][0]["rule"], "ssh-fail");
    assert_eq!(report["incidents"][0]["count"], 3);
    // Without --rules, a missing config is an I/O error (2) that says what to do, with no
    // made-up position.
    let (code, _, stderr) = text(&run(&[
        "explain",
        "--config",
        missing.to_str().unwrap(),
        "a line",
    ]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot read config") && stderr.contains("--rules"),
        "{stderr}"
    );
    assert!(!stderr.contains(":0:0"), "{stderr}");
}

#[test]
fn no_command_panics_when_its_output_is_closed() {
    let s = explain_setup();
    s.write(
        "logwarden.yaml",
        "state_dir: state\nrules: [rules]\nsources:\n  - {name: auth, paths: [auth.log], timestamp: rfc3339}\n",
    );
    let config = s.path("logwarden.yaml");
    let config = config.to_str().unwrap();
    let log = s.write(
        "auth.log",
        &(0..2000)
            .map(|i| format!("2026-11-22T10:{:02}:{:02}Z sshd[1]: Failed password for u{i} from 203.0.113.{} port 22 ssh2\n", i / 60 % 60, i % 60, i % 250))
            .collect::<String>(),
    );
    let state = s.path("state");
    // An empty store: its CSV export still writes a header.
    drop(logwarden::store::Store::open(&state).unwrap());
    for args in [
        vec![
            "explain",
            "--config",
            config,
            "sshd[1]: Failed password for bob from 10.1.2.3 port 22 ssh2",
        ],
        vec![
            "replay",
            "--config",
            config,
            "--source",
            "auth",
            log.to_str().unwrap(),
        ],
        vec!["test", repo("tests/rules/ssh.yaml").to_str().unwrap()],
        vec!["check", "--config", config],
        vec![
            "audit",
            "export",
            "--format",
            "csv",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        let mut child = Command::new(bin())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written: every write fails with EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
