//! The daemon at rest and under a distributed attack, through the real binary: an idle
//! daemon sleeps (its own reads wake nothing), reading rule files or an unchanged SIGHUP
//! reloads nothing, and thousands of open incidents neither slow a new one's notification
//! nor delay the old ones' escalation steps.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap())
}

/// A daemon watching directories full of files it does not read (as `/var/log` is), with
/// the shipped rule packs: reading its rule files, rewriting one with the same bytes and a
/// SIGHUP swap nothing and record nothing, and over ten seconds of rest it uses well under
/// a second of CPU. (Before, its own directory listings and opens woke it forever: a whole
/// core.)
#[test]
fn an_idle_daemon_sleeps_and_reading_rules_reloads_nothing() {
    let s = Setup::new();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    for entry in std::fs::read_dir(&rules).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        s.write(
            &format!("rules/{name}"),
            &std::fs::read_to_string(&path).unwrap(),
        );
    }
    for i in 0..40 {
        s.write(&format!("log/other-{i}.log"), "not watched\n");
        s.write(&format!("log/nginx/site-{i}.log.1"), "rotated\n");
    }
    s.write("log/auth.log", "");
    s.write("log/nginx/access.log", "");
    s.config(
        "sources:\n  - {name: auth, paths: [log/auth.log], timestamp: syslog}\n\
         \x20 - {name: web, paths: [log/nginx/*.log], exclude: ['*.gz'], timestamp: clf}\n\
         receivers:\n  - {name: console, type: file, path: out.jsonl}\n\
         roles:\n  analysts: {receivers: [console]}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n",
    );
    let d = s.start();
    let pid = d.child.id();

    // What `cat`, `logwarden check` or an editor's save-without-change do to rule files.
    for _ in 0..5 {
        for entry in std::fs::read_dir(s.path("rules")).unwrap() {
            std::fs::read(entry.unwrap().path()).unwrap();
        }
    }
    let ssh = s.path("rules/ssh.yaml");
    std::fs::write(&ssh, std::fs::read(&ssh).unwrap()).unwrap();
    let check = Command::new(bin())
        .args(["check", "--config"])
        .arg(s.path("logwarden.yaml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_for(
        "the SIGHUP reload to find the rules unchanged",
        WAIT,
        || {
            d.log()
                .lines()
                .any(|l| l.contains("rule files unchanged") && l.contains("SIGHUP"))
                .then_some(())
        },
    );

    let before = cpu_seconds(pid);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        // Looking at the daemon does not wake it either.
        std::fs::read_dir(s.path("log")).unwrap().for_each(drop);
    }
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "an idle daemon used {used:.2} s of CPU in 10 s:\n{}",
        d.log()
    );
    let log = d.log();
    assert!(!log.contains("rules reloaded"), "{log}");
    d.stop();

    let records = audit_export(&s.path("state"));
    let reloads: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "rules.reloaded")
        .collect();
    assert!(reloads.is_empty(), "{reloads:?}");
    assert!(records.iter().any(|r| r["event"] == "rules.loaded"));
}

/// `n` addresses failing `rounds` SSH logins each, address after address, round after
/// round, all dated now.
fn attack(first: usize, n: usize, rounds: usize) -> Vec<String> {
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let mut lines = Vec::with_capacity(n * rounds);
    for round in 0..rounds {
        for i in first..first + n {
            lines.push(format!(
                "{stamp} web1 sshd[{}]: Failed password for root from 10.{}.{}.{} port {} ssh2",
                1000 + i,
                i / 65536,
                (i / 256) % 256,
                i % 256,
                40000 + round
            ));
        }
    }
    lines
}

/// The sum of every series of a metric.
fn metric_sum(port: u16, name: &str) -> f64 {
    let text = http("GET", port, "/metrics", None, None).unwrap().body;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn json_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn rfc3339(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .to_utc()
}

/// Thousands of open incidents from a distributed brute force: every one's later
/// escalation step still fires on time, one more attacker is notified promptly, and then
/// the daemon rests.
#[test]
fn thousands_of_open_incidents_keep_escalation_on_time_and_new_ones_prompt() {
    const ATTACKERS: usize = 2_000;
    const STEP: i64 = 5;
    let s = Setup::new();
    s.write(
        "rules/ssh.yaml",
        "rules:\n  - id: ssh-bruteforce\n    match: 'Failed password for (?P<user>.*) from (?P<ip>[0-9.]+) port \\d+'\n    group_by: [ip]\n    threshold: {count: 5, within: 1m}\n    severity: moderate\n",
    );
    s.write("auth.log", "");
    s.config(&format!(
        "sources:\n  - {{name: auth, paths: [auth.log], start_at: beginning, timestamp: rfc3339}}\n\
         receivers:\n  - {{name: first, type: file, path: first.jsonl}}\n\
         \x20 - {{name: later, type: file, path: later.jsonl, events: [escalated]}}\n\
         roles:\n  analysts: {{receivers: [first]}}\n  lead: {{receivers: [later]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n    - {{after: {STEP}s, notify: [lead]}}\n"
    ));
    let d = s.start();
    s.append("auth.log", &attack(0, ATTACKERS, 5));
    wait_for(
        "every attacker's incident",
        Duration::from_secs(120),
        || {
            (metric_sum(d.port, "logwarden_incidents_opened_total") >= ATTACKERS as f64)
                .then_some(())
        },
    );

    // Once the openings are delivered (one receiver writes them one after another), one
    // more attacker, with thousands open: its opening notification is written soon.
    wait_for("every opening delivered", Duration::from_secs(120), || {
        (json_lines(&s.path("first.jsonl")).len() >= ATTACKERS).then_some(())
    });
    let newcomer = attack(ATTACKERS + 1, 1, 5);
    let ip = newcomer[0]
        .split(" from ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let appended = Instant::now();
    s.append("auth.log", &newcomer);
    wait_for(
        "the newcomer's notification",
        Duration::from_secs(10),
        || {
            json_lines(&s.path("first.jsonl"))
                .iter()
                .any(|n| n["incident"]["key"]["ip"] == ip.as_str())
                .then_some(())
        },
    );
    let latency = appended.elapsed();
    assert!(
        latency < Duration::from_secs(5),
        "new attacker notified after {latency:?}"
    );

    // Every incident's second step: fired once, no earlier than its time and not long
    // after it.
    let escalated = wait_for("every escalation step", Duration::from_secs(120), || {
        let lines = json_lines(&s.path("later.jsonl"));
        (lines.len() > ATTACKERS).then_some(lines)
    });
    let mut ids: Vec<&str> = escalated
        .iter()
        .map(|n| n["incident"]["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), escalated.len(), "a step fired twice");
    for n in &escalated {
        let fired = n["incident"]["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .rfind(|e| e["event"] == "escalated")
            .unwrap();
        let late = rfc3339(&fired["at"]) - rfc3339(&n["incident"]["opened_at"]);
        assert!(
            late >= chrono::Duration::seconds(STEP) && late < chrono::Duration::seconds(STEP + 5),
            "{} escalated {late} after opening",
            n["incident"]["id"]
        );
    }

    // At rest with them all open: a clock tick costs what is due, not what is open. Loose
    // (a debug build on a loaded 2-core machine): only a pass over every key, incident or
    // window per tick trips it.
    let before = thread_cpu(d.child.id());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let after = thread_cpu(d.child.id());
    let seconds = start.elapsed().as_secs_f64();
    let used: f64 = after.values().sum::<f64>() - before.values().sum::<f64>();
    let mut busiest: Vec<(String, f64)> = after
        .iter()
        .map(|(name, t)| (name.clone(), t - before.get(name).copied().unwrap_or(0.0)))
        .collect();
    busiest.sort_by(|a, b| b.1.total_cmp(&a.1));
    assert!(
        used / seconds < 0.25,
        "at rest with {ATTACKERS} open incidents the daemon used {:.0} % of a core; by thread: {busiest:?}",
        100.0 * used / seconds
    );
    d.stop();
}

/// CPU seconds each of a process's threads has used, by thread name (threads of one name
/// summed), from `/proc/PID/task/*/stat`.
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        *by_name.entry(name.trim().to_string()).or_insert(0.0) += stat_cpu_seconds(&stat);
    }
    by_name
}

/// CPU seconds (user + system) in a `/proc/.../stat` line.
fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    (utime + stime) / ticks
}
