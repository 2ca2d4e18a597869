//! Containment against a real kernel firewall: network namespaces made by the test (an
//! "attacker", a "friend" and the "host" running the daemon, joined by veth pairs), real
//! nftables, real TCP. Needs root, `ip` (iproute2) and `nft` (nftables); skips loudly
//! without them and fails under LOGWARDEN_REQUIRE_PEERS=1.

mod common;

use common::*;
use serde_json::Value;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
const HOST_A: &str = "10.77.1.1";
const ATTACKER: &str = "10.77.1.2";
const HOST_F: &str = "10.77.2.1";
const FRIEND: &str = "10.77.2.2";
const SERVICE_PORT: u16 = 7022;
const TABLE: &str = "lwtest";

/// Three namespaces joined to "host" by veth pairs, and a TCP listener in "host". The test
/// thread itself enters "host", so the daemon it starts (and its API on 127.0.0.1) live
/// there. Dropping it, also on a panic, leaves the thread's own namespace again, stops the
/// listener and deletes the namespaces (their veths and nft tables go with them).
struct Lab {
    prefix: String,
    made: Vec<String>,
    home: File,
    stop: Arc<AtomicBool>,
}

/// Runs a command; its error output when it fails.
fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn unavailable(why: &str) -> Option<Lab> {
    assert!(
        !peers_required(),
        "network namespaces with nftables are required (LOGWARDEN_REQUIRE_PEERS=1): {why}"
    );
    eprintln!(
        "\n!!! SKIPPED: network namespaces with nftables unavailable ({why}); set LOGWARDEN_REQUIRE_PEERS=1 to make this a failure\n"
    );
    None
}

/// Moves the calling thread into a namespace (by `ip netns` name).
fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("namespace exists");
    // SAFETY: setns on a valid namespace descriptor changes only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

impl Lab {
    fn new(tag: &str) -> Option<Lab> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return unavailable("not root");
        }
        peer("ip", "iproute2")?;
        peer("nft", "nftables")?;
        let home = File::open("/proc/thread-self/ns/net").expect("own namespace");
        let mut lab = Lab {
            prefix: format!("lw{}{tag}", std::process::id() % 100_000),
            made: Vec::new(),
            home,
            stop: Arc::new(AtomicBool::new(false)),
        };
        if let Err(e) = lab.build() {
            drop(lab);
            return unavailable(&e);
        }
        enter(&lab.ns("h"));
        let listener = TcpListener::bind(("0.0.0.0", SERVICE_PORT)).expect("listener in host");
        listener.set_nonblocking(true).unwrap();
        let stop = lab.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Some(lab)
    }

    fn ns(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    fn build(&mut self) -> Result<(), String> {
        let (h, a, f) = (self.ns("h"), self.ns("a"), self.ns("f"));
        for ns in [&h, &a, &f] {
            sh(&["ip", "netns", "add", ns])?;
            self.made.push(ns.clone());
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        for (host_if, peer_if, peer_ns, host_ip, peer_ip) in [
            ("ha", "ah", &a, HOST_A, ATTACKER),
            ("hf", "fh", &f, HOST_F, FRIEND),
        ] {
            sh(&[
                "ip", "-n", &h, "link", "add", host_if, "type", "veth", "peer", "name", peer_if,
                "netns", peer_ns,
            ])?;
            sh(&[
                "ip",
                "-n",
                &h,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                host_if,
            ])?;
            sh(&[
                "ip",
                "-n",
                peer_ns,
                "addr",
                "add",
                &format!("{peer_ip}/24"),
                "dev",
                peer_if,
            ])?;
            sh(&["ip", "-n", &h, "link", "set", host_if, "up"])?;
            sh(&["ip", "-n", peer_ns, "link", "set", peer_if, "up"])?;
        }
        sh(&["ip", "netns", "exec", &h, "nft", "list", "ruleset"]).map(|_| ())
    }

    /// Whether a TCP connection from namespace `from` to `to` on the service port succeeds.
    fn connects(&self, from: &str, to: &str) -> bool {
        let ns = self.ns(from);
        let addr: SocketAddr = format!("{to}:{SERVICE_PORT}").parse().unwrap();
        std::thread::spawn(move || {
            enter(&ns);
            TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).is_ok()
        })
        .join()
        .unwrap()
    }

    /// The attacker reaches the host.
    fn attacker_connects(&self) -> bool {
        self.connects("a", HOST_A)
    }

    /// The friend reaches the host.
    fn friend_connects(&self) -> bool {
        self.connects("f", HOST_F)
    }

    /// The host's whole nftables ruleset (the test thread is in "host").
    fn ruleset(&self) -> String {
        sh(&["nft", "list", "ruleset"]).unwrap()
    }

    /// The elements of a ban set, as `nft` lists them.
    fn ban4(&self) -> String {
        sh(&["nft", "list", "set", "inet", TABLE, "ban4"]).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: back to the namespace this thread started in (a valid descriptor).
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        for ns in &self.made {
            let _ = sh(&[
                "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", TABLE,
            ]);
            if let Err(e) = sh(&["ip", "netns", "del", ns]) {
                eprintln!("cannot delete namespace {ns}: {e}");
            }
        }
        let left = sh(&["ip", "netns", "list"]).unwrap_or_default();
        if !std::thread::panicking() {
            assert!(
                !left.contains(&self.prefix),
                "namespaces left behind: {left}"
            );
        }
    }
}

const RULES: &str = r#"
rules:
  - id: ssh-bruteforce
    match: 'sshd\[\d+\]: Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>\S+) port \d+'
    group_by: [ip]
    threshold: {count: 5, within: 1m}
    severity: high
"#;

/// A setup whose default policy notifies the analysts and contains with `ban-ip`
/// (`action_extra` added to the action, `top_extra` to the config).
fn setup(action_extra: &str, top_extra: &str) -> Setup {
    let s = Setup::new();
    s.write("rules/ssh.yaml", RULES);
    s.write("auth.log", "");
    s.config(&format!(
        "sources:\n  - {{name: auth, paths: [auth.log], start_at: beginning}}\n\
         receivers:\n  - {{name: console, type: file, path: out.jsonl}}\n\
         roles:\n  analysts: {{receivers: [console]}}\n\
         actions:\n  - {{name: ban-ip, type: nftables, target: ip, table: {TABLE}, {action_extra}}}\n\
         {top_extra}\
         escalation_policies:\n  default:\n    - notify: [analysts]\n      contain: [ban-ip]\n"
    ));
    s
}

fn attack(s: &Setup, ip: &str) {
    let lines: Vec<String> = (0..6).map(|i| ssh_fail(ip, i)).collect();
    s.append("auth.log", &lines);
}

/// The attacker's failed logins, and the id of the incident they open.
fn attack_until_opened(s: &Setup, d: &Daemon) -> String {
    attack(s, ATTACKER);
    d.wait_incident("ssh-bruteforce", WAIT)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn post(d: &Daemon, path: &str, body: &str) -> Response {
    http("POST", d.port, path, Some(&d.token), Some(body)).unwrap()
}

fn audit(d: &Daemon) -> Vec<Value> {
    let r = d.get("/api/v1/audit?format=jsonl");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn audit_events(d: &Daemon, event: &str) -> Vec<Value> {
    audit(d)
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

fn incident(d: &Daemon, id: &str) -> Value {
    let r = d.get(&format!("/api/v1/incidents/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The incident's containment, once it reaches `status`.
fn wait_containment(d: &Daemon, id: &str, status: &str, limit: Duration) -> Value {
    wait_for(&format!("{id}'s containment {status}"), limit, || {
        incident(d, id)["containments"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["status"] == status).cloned())
    })
}

fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn a_brute_force_is_banned_while_others_connect_and_the_ban_lifts_on_time() {
    let Some(lab) = Lab::new("b") else { return };
    let s = setup("duration: 3s", "");
    assert!(
        lab.attacker_connects() && lab.friend_connects(),
        "lab works"
    );
    let d = s.start();
    // The table, sets and drop rule are set up at start.
    wait_for("the ban sets", WAIT, || {
        lab.ruleset().contains("ip saddr @ban4 drop").then_some(())
    });
    attack(&s, ATTACKER);
    let opened = d.wait_incident("ssh-bruteforce", WAIT);
    let id = opened["id"].as_str().unwrap().to_string();
    let active = wait_containment(&d, &id, "active", WAIT);
    let banned_after = time(&active["applied_at"]) - time(&opened["opened_at"]);
    assert!(
        banned_after < chrono::Duration::seconds(2),
        "banned {banned_after} after the incident opened"
    );
    assert!(lab.ban4().contains(ATTACKER), "{}", lab.ban4());
    assert!(!lab.attacker_connects(), "the attacker is banned");
    assert!(lab.friend_connects(), "another address still connects");

    let i = incident(&d, &id);
    assert_eq!(i["state"], "contained", "{i:#}");
    let contained = i["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "contained")
        .expect("contained in the timeline");
    assert_eq!(contained["actor"], "logwarden");
    let applied = audit_events(&d, "containment.applied");
    assert_eq!(applied.len(), 1, "{applied:#?}");
    let record = &applied[0];
    assert_eq!(record["incident"], id.as_str());
    assert!(record["controls"].to_string().contains("CC7.4"), "{record}");
    assert_eq!(record["details"]["action"], "ban-ip");
    assert_eq!(record["details"]["target"], ATTACKER);
    assert_eq!(record["details"]["duration_secs"], 3);
    assert_eq!(record["details"]["exit_status"], 0);
    assert!(
        record["details"]["allowed_by"]
            .as_str()
            .unwrap()
            .starts_with("logwarden"),
        "{record}"
    );
    let listed = d.get("/api/v1/containments?status=active").json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        metric(d.port, r#"logwarden_contained_targets{action="ban-ip"}"#),
        1.0
    );

    // After the ban time the attacker connects again, and the release is recorded.
    let started = Instant::now();
    wait_for("the attacker to connect again", WAIT, || {
        lab.attacker_connects().then_some(())
    });
    let released = wait_containment(&d, &id, "released", WAIT);
    assert_eq!(released["released_by"], "logwarden");
    assert_eq!(released["reason"], "expired");
    let lifted = time(&released["released_at"]) - time(&released["applied_at"]);
    assert!(
        lifted >= chrono::Duration::seconds(3) && lifted < chrono::Duration::seconds(8),
        "lifted {lifted} after it was applied (ban time 3s; waited {:?})",
        started.elapsed()
    );
    assert_eq!(audit_events(&d, "containment.released").len(), 1);
    assert!(!lab.ban4().contains(ATTACKER));
    // Counted once the release is committed, a moment after the API shows the record.
    wait_for("the release counted", WAIT, || {
        (metric(
            d.port,
            r#"logwarden_actions_total{action="ban-ip",outcome="released"}"#,
        ) == 1.0)
            .then_some(())
    });
    assert_eq!(
        metric(d.port, r#"logwarden_contained_targets{action="ban-ip"}"#),
        0.0
    );
    d.stop();
}

#[test]
fn a_protected_address_is_never_banned_but_still_notified() {
    let Some(lab) = Lab::new("p") else { return };
    let s = setup("duration: 1h", "never_contain: [10.77.1.0/24]\n");
    let d = s.start();
    let id = attack_until_opened(&s, &d);
    let refused = wait_containment(&d, &id, "refused", WAIT);
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("never_contain"),
        "{refused}"
    );
    assert_eq!(audit_events(&d, "containment.refused").len(), 1);
    wait_for("the notification", WAIT, || {
        std::fs::read_to_string(s.path("out.jsonl"))
            .ok()
            .filter(|t| t.contains(&id))
    });
    assert!(
        lab.attacker_connects(),
        "a protected address stays reachable"
    );
    assert!(!lab.ban4().contains(ATTACKER));
    assert_eq!(incident(&d, &id)["state"], "open");
    d.stop();
}

#[test]
fn approval_required_holds_the_ban_until_an_approver_approves() {
    let Some(lab) = Lab::new("r") else { return };
    let s = setup("duration: 1h, approval: required", "");
    let d = s.start();
    let id = attack_until_opened(&s, &d);
    wait_containment(&d, &id, "held", WAIT);
    assert!(lab.attacker_connects(), "held: not banned yet");
    let r = post(&d, &format!("/api/v1/incidents/{id}/approve"), "{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let active = wait_containment(&d, &id, "active", WAIT);
    assert_eq!(active["allowed_by"], "tester");
    assert!(!lab.attacker_connects(), "approved: banned");
    // A responder releases it at once.
    let r = post(&d, &format!("/api/v1/incidents/{id}/release"), "{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let released = wait_containment(&d, &id, "released", WAIT);
    assert_eq!(released["released_by"], "tester");
    assert!(lab.attacker_connects(), "released");
    // Nothing left to release.
    let r = post(&d, &format!("/api/v1/incidents/{id}/release"), "{}");
    assert_eq!(r.status, 409, "{}", r.body);
    d.stop();
}

#[test]
fn dry_run_records_and_changes_no_firewall_state() {
    let Some(lab) = Lab::new("d") else { return };
    let s = setup("duration: 1h", "dry_run: true\n");
    let before = lab.ruleset();
    let d = s.start();
    let id = attack_until_opened(&s, &d);
    wait_containment(&d, &id, "dry_run", WAIT);
    let record = &audit_events(&d, "containment.dry_run")[0];
    assert_eq!(record["details"]["target"], ATTACKER);
    assert_eq!(lab.ruleset(), before, "dry run changed the firewall");
    assert!(lab.attacker_connects());
    assert_eq!(incident(&d, &id)["state"], "open");
    d.stop();
}

#[test]
fn a_restart_after_a_reboot_reapplies_an_active_ban_for_its_remaining_time() {
    let Some(lab) = Lab::new("k") else { return };
    let s = setup("duration: 60s", "");
    let d = s.start();
    let id = attack_until_opened(&s, &d);
    let active = wait_containment(&d, &id, "active", WAIT);
    assert!(!lab.attacker_connects());
    // No clean shutdown, and the firewall emptied as by a reboot.
    d.kill();
    sh(&["nft", "flush", "ruleset"]).unwrap();
    assert!(lab.attacker_connects(), "the reboot lifted the ban");
    let d = s.start();
    wait_for("the ban re-applied", WAIT, || {
        lab.ban4().contains(ATTACKER).then_some(())
    });
    assert!(!lab.attacker_connects(), "banned again after the restart");
    // For what was left of it, not a fresh minute.
    let listed = lab.ban4();
    let expires = listed
        .split("expires ")
        .nth(1)
        .and_then(|t| t.split('s').next())
        .and_then(|t| {
            t.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<u64>()
                .ok()
        });
    let left = (time(&active["until"]) - chrono::Utc::now()).num_seconds();
    assert!(
        expires.is_some_and(|e| e as i64 <= left + 2),
        "expires {expires:?}, {left}s left: {listed}"
    );
    wait_for("the re-application recorded", WAIT, || {
        (audit_events(&d, "containment.reapplied").len() == 1).then_some(())
    });
    assert_eq!(audit_events(&d, "containment.applied").len(), 1, "once");
    // False positive: the ban is lifted and recorded.
    let r = post(
        &d,
        &format!("/api/v1/incidents/{id}/transition"),
        r#"{"to": "false_positive"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let released = wait_containment(&d, &id, "released", WAIT);
    assert_eq!(released["reason"], "false_positive");
    assert!(lab.attacker_connects(), "lifted on false positive");
    d.stop();
}

#[test]
fn a_kill_between_banning_and_recording_is_recorded_once_after_the_restart() {
    let Some(lab) = Lab::new("x") else { return };
    let s = setup("duration: 60s", "");
    // The worker bans but never reports: the daemon dies before the ban is recorded.
    let d = s.start_with_env(&[("LOGWARDEN_TEST_WITHHOLD_OUTCOMES", "1")]);
    let id = attack_until_opened(&s, &d);
    wait_for("the ban in the kernel", WAIT, || {
        lab.ban4().contains(ATTACKER).then_some(())
    });
    wait_containment(&d, &id, "pending", WAIT);
    assert!(audit_events(&d, "containment.applied").is_empty());
    d.kill();
    let d = s.start();
    let active = wait_containment(&d, &id, "active", WAIT);
    assert_eq!(active["exit_status"], 0);
    assert!(lab.ban4().contains(ATTACKER), "still banned, once");
    assert_eq!(lab.ban4().matches(ATTACKER).count(), 1);
    assert!(!lab.attacker_connects());
    assert_eq!(audit_events(&d, "containment.applied").len(), 1);
    assert_eq!(incident(&d, &id)["state"], "contained");
    d.stop();
}
