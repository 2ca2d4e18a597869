//! Shared by the criterion benchmark (`benches/detection.rs`) and the benchmark program
//! (`examples/detect_bench.rs`, driven by `bench/run.sh`): a realistic sshd/PAM/sudo/cron
//! auth log, and rule sets of any size made of the shipped packs plus filler rules.

#![allow(dead_code)]

use std::path::Path;

/// A small deterministic generator (xorshift), so every run sees the same log.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// Next value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const USERS: &[&str] = &[
    "root", "admin", "oracle", "test", "ubuntu", "deploy", "git", "postgres", "guest", "pi",
];

/// Line `i` of a syslog-format auth log: mostly benign cron/PAM/sudo noise, with failed and
/// accepted SSH logins, invalid users and sudo failures mixed in, from a pool of addresses.
pub fn auth_line(i: u64, rng: &mut Rng) -> String {
    let sec = i / 20;
    let stamp = format!(
        "Nov {:2} {:02}:{:02}:{:02}",
        1 + (sec / 86_400) % 28,
        (sec / 3600) % 24,
        (sec / 60) % 60,
        sec % 60
    );
    let ip = format!("203.0.{}.{}", rng.below(64), rng.below(256));
    let user = USERS[rng.below(USERS.len() as u64) as usize];
    let pid = 1000 + rng.below(60_000);
    let port = 30_000 + rng.below(30_000);
    match rng.below(100) {
        0..=29 => format!(
            "{stamp} web1 CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
        ),
        30..=44 => format!(
            "{stamp} web1 sshd[{pid}]: pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)"
        ),
        45..=54 => format!("{stamp} web1 systemd-logind[612]: New session {pid} of user deploy."),
        55..=74 => format!(
            "{stamp} web1 sshd[{pid}]: Failed password for invalid user {user} from {ip} port {port} ssh2"
        ),
        75..=82 => format!("{stamp} web1 sshd[{pid}]: Invalid user {user} from {ip} port {port}"),
        83..=88 => format!(
            "{stamp} web1 sshd[{pid}]: Accepted publickey for deploy from {ip} port {port} ssh2: ED25519 SHA256:abc"
        ),
        89..=94 => format!(
            "{stamp} web1 sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/systemctl restart nginx"
        ),
        95..=97 => format!(
            "{stamp} web1 sudo:    {user} : 3 incorrect password attempts ; TTY=pts/1 ; PWD=/tmp ; USER=root ; COMMAND=/bin/sh"
        ),
        _ => format!(
            "{stamp} web1 sshd[{pid}]: Received disconnect from {ip} port {port}:11: Bye Bye [preauth]"
        ),
    }
}

/// A filler rule: its own application and message, like the rules of a site's own services.
fn filler_rule(i: usize) -> String {
    format!(
        "  - id: app-{i}-denied\n    match: 'app{i}\\[\\d+\\]: (?:denied|refused) request for (?P<user>\\S+) from (?P<ip>[0-9A-Fa-f:.]+)'\n    group_by: [ip]\n    threshold: {{count: 5, within: 1m}}\n    severity: low\n"
    )
}

/// Writes a rule directory with the shipped packs (from `shipped`) and enough filler rules
/// for `total` rules in all; returns how many rules it holds.
pub fn write_rules(shipped: &Path, dir: &Path, total: usize) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut shipped_count = 0;
    for entry in std::fs::read_dir(shipped)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?;
            shipped_count += text.matches("\n  - id: ").count();
            std::fs::write(dir.join(path.file_name().unwrap()), text)?;
        }
    }
    let fillers = total.saturating_sub(shipped_count);
    // No file without rules: a rule file that defines nothing is an error.
    if fillers > 0 {
        let mut text = String::from("rules:\n");
        for i in 0..fillers {
            text.push_str(&filler_rule(i));
        }
        std::fs::write(dir.join("zz-filler.yaml"), text)?;
    }
    Ok(shipped_count + fillers)
}
