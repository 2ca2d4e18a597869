//! The systemd contract: READY=1 once up, WATCHDOG=1 while the pipeline runs, STOPPING=1
//! on SIGTERM; and the shipped unit keeps its hardening.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn notifies_ready_then_feeds_the_watchdog_then_stopping() {
    let s = Setup::new();
    // (A rule file must define something: an empty one is refused.)
    s.write(
        "rules/r.yaml",
        "rules:\n  - {id: r, match: x, threshold: {count: 1, within: 1m}, severity: low}\n",
    );
    s.write("auth.log", "");
    let config = s.config("sources:\n  - {name: auth, paths: [auth.log]}\n");
    let socket_path = s.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut child = KillOnDrop(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "2000000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut messages = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let pings_after_ready = |messages: &[String]| {
        let ready = messages.iter().position(|m| m == "READY=1");
        ready.map_or(0, |r| {
            messages[r..].iter().filter(|m| *m == "WATCHDOG=1").count()
        })
    };
    while pings_after_ready(&messages) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "got only {messages:?}"
        );
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        messages.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    // Ready means ready: the HTTP endpoint answers.
    assert_eq!(
        http("GET", s.port, "/readyz", None, None).unwrap().status,
        200
    );
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        if String::from_utf8_lossy(&buf[..n]).trim() == "STOPPING=1" {
            break;
        }
    }
    assert!(child.0.wait().unwrap().success());
}

#[test]
fn the_unit_is_type_notify_with_watchdog_and_least_privilege() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/logwarden.service"
    ))
    .unwrap();
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for required in [
        "Type=notify",
        "WatchdogSec=30s",
        "DynamicUser=yes",
        "SupplementaryGroups=systemd-journal adm",
        "StateDirectory=logwarden",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "ExecStart=/usr/bin/logwarden run",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(directives.contains(&required), "unit lacks {required}");
    }
}
