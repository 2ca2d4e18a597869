//! The journal source against real journal files: written by systemd-journal-remote from
//! journal export format, read through `journal: {directory}` by the real daemon with the
//! shipped rule packs. Counts are exact: an entry read twice or skipped changes them.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const REMOTE_PATHS: [&str; 2] = [
    "/lib/systemd/systemd-journal-remote",
    "/usr/lib/systemd/systemd-journal-remote",
];

/// journalctl and systemd-journal-remote, or a loud skip (a failure under
/// LOGWARDEN_REQUIRE_PEERS=1).
fn journal_tools() -> Option<PathBuf> {
    peer("journalctl", "systemd")?;
    let remote = REMOTE_PATHS.iter().map(PathBuf::from).find(|p| p.is_file());
    if remote.is_none() {
        assert!(
            !peers_required(),
            "systemd-journal-remote (Debian package systemd-journal-remote) is required: LOGWARDEN_REQUIRE_PEERS=1"
        );
        eprintln!(
            "\n!!! SKIPPED: systemd-journal-remote not installed (apt-get install systemd-journal-remote); set LOGWARDEN_REQUIRE_PEERS=1 to make this a failure\n"
        );
    }
    remote
}

/// One journal entry to write.
struct Entry {
    identifier: Option<&'static str>,
    comm: Option<&'static str>,
    pid: Option<u32>,
    message: Vec<u8>,
}

impl Entry {
    fn sshd(message: impl Into<Vec<u8>>) -> Self {
        Entry {
            identifier: Some("sshd"),
            comm: Some("sshd"),
            pid: Some(811),
            message: message.into(),
        }
    }
}

/// A failed SSH login as sshd logs it.
fn failure(ip: &str, n: u32) -> Vec<u8> {
    format!(
        "Failed password for invalid user admin from {ip} port {} ssh2",
        40000 + n
    )
    .into_bytes()
}

/// `n` failures from `ip`, as sshd entries.
fn failures(ip: &str, n: u32) -> Vec<Entry> {
    (0..n).map(|i| Entry::sshd(failure(ip, i))).collect()
}

/// A directory of journal files written with systemd-journal-remote.
struct Journal {
    dir: PathBuf,
    remote: PathBuf,
    monotonic: u64,
    realtime: u64,
    exports: u32,
}

impl Journal {
    fn new(dir: PathBuf, remote: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        Journal {
            dir,
            remote,
            monotonic: 1_000_000,
            realtime: 0,
            exports: 0,
        }
    }

    /// Appends entries to `file` (created if new) in the journal directory.
    fn write(&mut self, file: &str, entries: &[Entry]) {
        let mut export = Vec::new();
        for e in entries {
            let now = chrono::Utc::now().timestamp_micros() as u64;
            self.realtime = now.max(self.realtime + 1);
            self.monotonic += 1000;
            let mut text = format!(
                "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=web1\n",
                self.realtime, self.monotonic
            );
            if let Some(ident) = e.identifier {
                text.push_str(&format!("SYSLOG_IDENTIFIER={ident}\n"));
            }
            if let Some(comm) = e.comm {
                text.push_str(&format!("_COMM={comm}\n"));
            }
            if let Some(pid) = e.pid {
                text.push_str(&format!("_PID={pid}\n"));
            }
            export.extend_from_slice(text.as_bytes());
            // Binary form: any bytes, any length.
            export.extend_from_slice(b"MESSAGE\n");
            export.extend_from_slice(&(e.message.len() as u64).to_le_bytes());
            export.extend_from_slice(&e.message);
            export.extend_from_slice(b"\n\n");
        }
        self.exports += 1;
        let source = self
            .dir
            .with_file_name(format!("export-{}.txt", self.exports));
        std::fs::write(&source, &export).unwrap();
        let out = Command::new(&self.remote)
            .arg(format!("--output={}", self.dir.join(file).display()))
            .arg(&source)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-journal-remote failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.join(file)).unwrap();
    }
}

/// A setup with the shipped rule packs, a journal source `auth` reading the journal
/// directory `journal/` with these `journal:` settings, and a webhook; `None` (skipped)
/// without the journal tools.
fn setup(journal: &str) -> Option<(Receiver, Setup, Journal)> {
    let remote = journal_tools()?;
    let receiver = Receiver::start();
    let s = Setup::new();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    std::fs::create_dir_all(s.path("rules")).unwrap();
    for pack in std::fs::read_dir(shipped).unwrap() {
        let pack = pack.unwrap().path();
        std::fs::copy(&pack, s.path("rules").join(pack.file_name().unwrap())).unwrap();
    }
    s.config(&format!(
        "sources:\n  - name: auth\n    journal: {journal}\n    start_at: beginning\n\
         receivers:\n  - {{name: hook, type: webhook, url: '{}'}}\n\
         roles:\n  analysts: {{receivers: [hook]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n",
        receiver.url("/hook")
    ));
    let journal = Journal::new(s.path("journal"), remote);
    Some((receiver, s, journal))
}

/// How many failures the brute-force incident of `ip` has counted (0: none open).
fn counted(d: &Daemon, ip: &str) -> u64 {
    d.incidents()
        .iter()
        .find(|i| i["rule"] == "ssh-bruteforce" && i["key"]["ip"] == ip)
        .map_or(0, |i| i["count"].as_u64().unwrap())
}

/// Waits until the incident of `ip` has counted exactly `n`, and fails at once if it
/// counts more.
fn wait_count(d: &Daemon, ip: &str, n: u64) {
    wait_for(
        &format!("{n} failures counted for {ip}"),
        Duration::from_secs(15),
        || {
            let c = counted(d, ip);
            assert!(
                c <= n,
                "{ip}: counted {c}, more than the {n} written:\n{}",
                d.log()
            );
            (c == n).then_some(())
        },
    );
}

/// Lines this daemon process has read, and gaps it has found: exact.
fn assert_totals(d: &Daemon, lines: u32, gap_count: u32) {
    assert_eq!(
        (lines_read(d), gaps(d)),
        (f64::from(lines), f64::from(gap_count)),
        "(lines read, gaps):\n{}",
        d.log()
    );
}

fn lines_read(d: &Daemon) -> f64 {
    metric(d.port, "logwarden_lines_read_total{source=\"auth\"}")
}

fn gaps(d: &Daemon) -> f64 {
    metric(d.port, "logwarden_journal_gaps_total{source=\"auth\"}")
}

/// The journalctl processes reading `dir`.
fn journalctls_reading(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.starts_with("journalctl") && cmdline.contains(&needle)
        })
        .count()
}

#[test]
fn a_backlog_is_read_from_the_beginning_and_new_entries_reach_the_webhook_within_two_seconds() {
    let Some((receiver, s, mut j)) = setup("{directory: journal}") else {
        return;
    };
    j.write("system.journal", &failures("198.51.100.1", 7));
    let d = s.start();
    wait_count(&d, "198.51.100.1", 7);
    let incident = d
        .incidents()
        .into_iter()
        .find(|i| i["key"]["ip"] == "198.51.100.1")
        .unwrap();
    let line = incident["evidence"][0]["line"].as_str().unwrap();
    let time = incident["evidence"][0]["time"].as_str().unwrap();
    // The line is the entry as syslog would have written it, stamped with the entry's time.
    let stamp = line.split(' ').next().unwrap();
    assert!(
        line.ends_with(" web1 sshd[811]: Failed password for invalid user admin from 198.51.100.1 port 40000 ssh2"),
        "{line}"
    );
    assert_eq!(
        stamp.len(),
        "2026-12-01T20:32:40.123456+00:00".len(),
        "{line}"
    );
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(stamp).unwrap(),
        chrono::DateTime::parse_from_rfc3339(time).unwrap(),
        "the evidence time is the entry's"
    );
    let first = receiver
        .next(Duration::from_secs(10))
        .expect("the backlog's webhook");
    assert!(String::from_utf8_lossy(&first.raw).contains("198.51.100.1"));

    let written = chrono::Utc::now();
    j.write("system.journal", &failures("198.51.100.2", 5));
    let hook = wait_for(
        "the live incident's webhook",
        Duration::from_secs(10),
        || {
            receiver
                .drain()
                .into_iter()
                .find(|r| String::from_utf8_lossy(&r.raw).contains("198.51.100.2"))
        },
    );
    let latency = (hook.at - written).to_std().unwrap_or_default();
    eprintln!("journal entry written -> webhook received: {latency:?}");
    assert!(
        latency < Duration::from_secs(2),
        "webhook after {latency:?}"
    );
    wait_count(&d, "198.51.100.2", 5);
    assert_totals(&d, 12, 0);
    d.stop();
}

#[test]
fn entries_written_while_killed_are_read_exactly_once_after_restart() {
    let Some((_receiver, s, mut j)) = setup("{directory: journal}") else {
        return;
    };
    j.write("system.journal", &failures("203.0.113.1", 5));
    let d = s.start();
    wait_count(&d, "203.0.113.1", 5);
    let pid = d.child.id();
    d.kill();
    // The daemon's journalctl dies with it.
    wait_for(
        "journalctl to end with the daemon",
        Duration::from_secs(5),
        || (journalctls_reading(&j.dir) == 0).then_some(()),
    );

    j.write("system.journal", &failures("203.0.113.1", 4));
    j.write("system.journal", &failures("203.0.113.2", 6));
    let d = s.start();
    assert_ne!(d.child.id(), pid);
    wait_count(&d, "203.0.113.2", 6);
    wait_count(&d, "203.0.113.1", 9);
    // The counts are exact: nothing counted twice, nothing skipped. (Lines read may exceed
    // the 10 written while down: SIGKILL can land after a commit is visible and before it
    // is on disk, and then its lines are read, and counted, once more, with their cursor.)
    assert!(lines_read(&d) >= 10.0);
    assert_eq!(gaps(&d), 0.0);

    // Killed again right after new entries were read: whatever was read but not stored is
    // read again, whatever was stored is not.
    j.write("system.journal", &failures("203.0.113.3", 8));
    wait_for("the new entries read", Duration::from_secs(10), || {
        (lines_read(&d) >= 14.0).then_some(())
    });
    d.kill();
    let d = s.start();
    wait_count(&d, "203.0.113.3", 8);
    assert_eq!(counted(&d, "203.0.113.1"), 9);
    assert_eq!(counted(&d, "203.0.113.2"), 6);
    assert_eq!(gaps(&d), 0.0);
    d.stop();
}

#[test]
fn a_new_journal_file_is_followed_and_a_deleted_one_is_let_go() {
    let Some((_receiver, s, mut j)) = setup("{directory: journal}") else {
        return;
    };
    j.write("system.journal", &failures("192.0.2.10", 5));
    let d = s.start();
    wait_count(&d, "192.0.2.10", 5);
    // Rotation: journald archives the file and starts a new one.
    j.write("system@rotated.journal", &failures("192.0.2.11", 5));
    wait_count(&d, "192.0.2.11", 5);
    // Vacuum: the old file goes; the new one keeps being read.
    j.remove("system.journal");
    j.write("system@rotated.journal", &failures("192.0.2.11", 1));
    wait_count(&d, "192.0.2.11", 6);
    assert_totals(&d, 11, 0);
    d.stop();
}

#[test]
fn the_saved_entry_vacuumed_while_down_is_a_counted_gap_and_the_rest_is_read() {
    let Some((_receiver, s, mut j)) = setup("{directory: journal}") else {
        return;
    };
    j.write("old.journal", &failures("192.0.2.20", 5));
    let d = s.start();
    wait_count(&d, "192.0.2.20", 5);
    d.stop();

    j.write("new.journal", &failures("192.0.2.21", 5));
    j.remove("old.journal");
    let d = s.start();
    // Every remaining entry is read, the first one included (--after-cursor would skip it).
    wait_count(&d, "192.0.2.21", 5);
    assert_totals(&d, 5, 1);
    let audit = d.get("/api/v1/audit");
    assert_eq!(audit.status, 200);
    let gap_records: Vec<serde_json::Value> = audit
        .body
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "source.journal_gap")
        .collect();
    assert_eq!(gap_records.len(), 1, "{}", audit.body);
    assert_eq!(gap_records[0]["details"]["source"], "auth");
    assert!(gap_records[0]["details"]["gap"]["resumed_cursor"].is_string());
    assert_promtool_clean(&http("GET", d.port, "/metrics", None, None).unwrap().body);

    // The gap is stored with the position after it: a restart records no second one.
    d.stop();
    let d = s.start();
    j.write("new.journal", &failures("192.0.2.21", 1));
    wait_count(&d, "192.0.2.21", 6);
    assert_eq!(gaps(&d), 0.0);
    d.stop();
}

#[test]
fn a_cursor_journalctl_refuses_is_a_counted_gap_and_reading_resumes_after_its_time() {
    let Some((_receiver, s, mut j)) = setup("{directory: journal}") else {
        return;
    };
    j.write("system.journal", &failures("192.0.2.25", 5));
    let d = s.start();
    wait_count(&d, "192.0.2.25", 5);
    d.stop();
    // A cursor journalctl cannot parse (as from a damaged or foreign state directory).
    {
        use logwarden::store::{Batch, Space, Store};
        let store = wait_for("the store to be free", Duration::from_secs(10), || {
            Store::open(&s.path("state")).ok()
        });
        let mut position: serde_json::Value =
            store.get(Space::JournalCursors, b"auth").unwrap().unwrap();
        position["cursor"] = "not-a-cursor".into();
        let mut batch = Batch::new();
        batch
            .put(Space::JournalCursors, b"auth", &position)
            .unwrap();
        store.commit(batch).unwrap();
        store.flush_blocking().unwrap();
    }
    j.write("system.journal", &failures("192.0.2.26", 5));
    let d = wait_for("the daemon to start", Duration::from_secs(10), || {
        std::panic::catch_unwind(|| s.start()).ok()
    });
    wait_count(&d, "192.0.2.26", 5);
    assert_eq!(
        counted(&d, "192.0.2.25"),
        5,
        "the saved entry was read again"
    );
    assert_totals(&d, 5, 1);
    d.stop();
}

#[test]
fn matches_leave_out_entries_of_other_identifiers() {
    let Some((_receiver, s, mut j)) =
        setup("{directory: journal, matches: [SYSLOG_IDENTIFIER=sshd]}")
    else {
        return;
    };
    // The shipped rule counts sshd-session lines too: only the match keeps them out.
    let other = |ip: &str| {
        (0..5)
            .map(|i| Entry {
                identifier: Some("sshd-session"),
                comm: Some("sshd-session"),
                pid: Some(900),
                message: failure(ip, i),
            })
            .collect::<Vec<_>>()
    };
    j.write("system.journal", &other("192.0.2.31"));
    j.write("system.journal", &failures("192.0.2.30", 5));
    j.write("system.journal", &other("192.0.2.32"));
    let d = s.start();
    wait_count(&d, "192.0.2.30", 5);
    j.write("system.journal", &other("192.0.2.33"));
    j.write("system.journal", &failures("192.0.2.34", 5));
    wait_count(&d, "192.0.2.34", 5);
    assert_eq!(lines_read(&d), 10.0);
    let ips: Vec<String> = d
        .incidents()
        .iter()
        .map(|i| i["key"]["ip"].as_str().unwrap_or("").to_string())
        .collect();
    for ip in ["192.0.2.31", "192.0.2.32", "192.0.2.33"] {
        assert!(!ips.iter().any(|i| i == ip), "{ip} was read: {ips:?}");
    }
    d.stop();
}

#[test]
fn non_utf8_and_ten_kilobyte_messages_are_read_whole() {
    let Some((_receiver, s, mut j)) = setup("{directory: journal}") else {
        return;
    };
    let user = "u".repeat(10_000);
    let mut entries = Vec::new();
    for i in 0..5 {
        // No SYSLOG_IDENTIFIER: the line names the process (_COMM), as journald would.
        let mut message =
            b"Failed password for invalid user \xff\xfe from 192.0.2.40 port ".to_vec();
        message.extend_from_slice(format!("{} ssh2", 50000 + i).as_bytes());
        entries.push(Entry {
            identifier: None,
            comm: Some("sshd-session"),
            pid: Some(1200 + i),
            message,
        });
        entries.push(Entry::sshd(format!(
            "Failed password for invalid user {user} from 192.0.2.41 port {} ssh2",
            51000 + i
        )));
    }
    j.write("system.journal", &entries);
    let d = s.start();
    wait_count(&d, "192.0.2.40", 5);
    wait_count(&d, "192.0.2.41", 5);
    // The address comes after the 10 kB user name: counted means read whole (JSON output
    // without --all would have given `MESSAGE: null`).
    let incidents = d.incidents();
    let binary = incidents
        .iter()
        .find(|i| i["key"]["ip"] == "192.0.2.40")
        .unwrap();
    let line = binary["evidence"][0]["line"].as_str().unwrap();
    assert!(
        line.contains(" web1 sshd-session[1200]: Failed password for invalid user "),
        "{line}"
    );
    assert_eq!(lines_read(&d), 10.0);
    d.stop();
}

#[test]
fn start_at_end_skips_the_backlog_once_and_keeps_its_place_across_restarts() {
    let Some((_receiver, s, mut j)) = setup("{directory: journal}") else {
        return;
    };
    let config = std::fs::read_to_string(s.path("logwarden.yaml")).unwrap();
    s.write(
        "logwarden.yaml",
        &config.replace("start_at: beginning", "start_at: end"),
    );
    j.write("system.journal", &failures("192.0.2.50", 6));
    let d = s.start();
    j.write("system.journal", &failures("192.0.2.51", 5));
    wait_count(&d, "192.0.2.51", 5);
    assert_eq!(counted(&d, "192.0.2.50"), 0);
    assert_eq!(lines_read(&d), 5.0);
    d.kill();
    // Written while down, after the first sight: read, not skipped as "the backlog".
    j.write("system.journal", &failures("192.0.2.52", 5));
    let d = s.start();
    wait_count(&d, "192.0.2.52", 5);
    assert_eq!(counted(&d, "192.0.2.50"), 0);
    assert_eq!(counted(&d, "192.0.2.51"), 5);
    d.stop();
}

/// `start_at: end` skips what was there when the journal was first looked at, and the
/// daemon reports ready only after that look: an entry written once it is ready is read,
/// even when finding the journal's end is slow (a loaded host; here a journalctl that takes
/// two seconds to answer that one question).
#[test]
fn start_at_end_reads_what_is_written_once_ready_even_when_finding_the_end_is_slow() {
    let Some((_receiver, s, mut j)) = setup("{directory: journal}") else {
        return;
    };
    let real = peer("journalctl", "systemd").expect("journal_tools found it");
    let config = std::fs::read_to_string(s.path("logwarden.yaml")).unwrap();
    s.write(
        "logwarden.yaml",
        &config.replace("start_at: beginning", "start_at: end"),
    );
    s.write(
        "bin/journalctl",
        &format!(
            "#!/bin/sh\ncase \" $* \" in *\" --lines=1 \"*) sleep 2;; esac\nexec '{}' \"$@\"\n",
            real.display()
        ),
    );
    let wrapper = s.path("bin/journalctl");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        s.path("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    j.write("system.journal", &failures("192.0.2.50", 6));
    let d = s.start_with_env(&[("PATH", &path)]);
    j.write("system.journal", &failures("192.0.2.51", 5));
    wait_count(&d, "192.0.2.51", 5);
    assert_eq!(counted(&d, "192.0.2.50"), 0, "the backlog is skipped");
    d.stop();
}

#[test]
fn an_unreadable_journal_is_a_check_warning_and_named_by_readyz() {
    if peer("journalctl", "systemd").is_none() {
        return;
    }
    let s = Setup::new();
    s.write("rules/r.yaml", SSH_RULES);
    let config = s.config("sources:\n  - name: auth\n    journal: {directory: missing}\n");
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(":9:5: source \"auth\": the journal cannot be read:"),
        "{stdout}"
    );
    assert!(stdout.contains("ok: 1 rules"), "{stdout}");

    let empty = s.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let config = s.config("sources:\n  - name: auth\n    journal: {directory: empty}\n");
    let mut child = KillOnDrop(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let reason = wait_for(
        "/readyz to name the source",
        Duration::from_secs(10),
        || {
            http("GET", s.port, "/readyz", None, None)
                .ok()
                .filter(|r| r.status == 200 || r.body.contains("auth"))
        },
    );
    assert_eq!(reason.status, 503, "{}", reason.body);
    assert!(
        reason
            .body
            .contains("source \"auth\" cannot be read: no journal files found"),
        "{}",
        reason.body
    );
    let start = Instant::now();
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert!(child.0.wait().unwrap().success());
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn the_shipped_production_config_reads_the_journal_and_passes_check() {
    if peer("journalctl", "systemd").is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("config/production.yaml")).unwrap();
    assert!(shipped.contains("    journal: {}"), "{shipped}");
    // As installed: the rule packs next to the config, where it expects them.
    let s = Setup::new();
    for entry in std::fs::read_dir(root.join("rules")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        s.write(
            &format!("rules/{name}"),
            &std::fs::read_to_string(&path).unwrap(),
        );
    }
    let text = shipped.replace("/var/lib/logwarden", &s.path("state").to_string_lossy());
    let config = s.write("logwarden.yaml", &text);
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("ok: "), "{stdout}");
    // Where the journal cannot be read (no journal files, no permission) check says so.
    let readable = Command::new("journalctl")
        .args(["--lines=1", "--no-pager"])
        .output()
        .unwrap();
    let readable = readable.status.success()
        && !String::from_utf8_lossy(&readable.stderr).contains("No journal files");
    assert_eq!(
        stdout.contains("source \"journal\": the journal cannot be read"),
        !readable,
        "{stdout}"
    );
}

#[test]
fn a_journal_the_user_may_not_read_is_a_check_warning_naming_the_groups() {
    let Some((_receiver, s, mut j)) = setup("{directory: journal}") else {
        return;
    };
    let runuser = Path::new("/usr/sbin/runuser");
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 || !runuser.is_file() {
        eprintln!("\n!!! SKIPPED: needs root and runuser to check as an unprivileged user\n");
        return;
    }
    j.write("system.journal", &failures("192.0.2.60", 1));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // systemd-journal-remote writes files readable by root and its group only.
    let out = Command::new(runuser)
        .args(["-u", "nobody", "--", bin(), "check", "--config"])
        .arg(s.path("logwarden.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.is_empty() && stderr.contains("Permission denied") {
        eprintln!(
            "\n!!! SKIPPED: nobody cannot run the test binary or read its config: {stderr}\n"
        );
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "no permission to read the journal: run logwarden in group systemd-journal or adm"
        ),
        "{stdout}"
    );
}
