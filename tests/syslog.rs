//! A syslog source receives RFC 3164 and RFC 5424 over UDP and TCP (octet-counted and
//! newline-framed); garbage and oversized frames are counted and dropped, detection goes on.

mod common;

use common::*;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

const RULES: &str = SSH_RULES;

fn rfc3164(ip: &str, i: u32) -> String {
    format!(
        "<38>Nov 22 10:00:0{i} web1 sshd[811]: Failed password for root from {ip} port 4000{i} ssh2"
    )
}

fn rfc5424(ip: &str, i: u32) -> String {
    format!(
        "<38>1 2026-11-22T10:00:0{i}.000Z web1 sshd 811 - [origin ip=\"10.0.0.5\"] Failed password for invalid user admin from {ip} port 4000{i} ssh2"
    )
}

#[test]
fn udp_and_tcp_syslog_in_both_formats_open_incidents_and_bad_frames_are_counted() {
    let s = Setup::new();
    s.write("rules/r.yaml", RULES);
    let (udp_port, tcp_port) = (free_port(), free_port());
    s.config(&format!(
        "sources:\n  - name: net\n    syslog: {{udp: '127.0.0.1:{udp_port}', tcp: '127.0.0.1:{tcp_port}'}}\n    max_line_bytes: 4096\n"
    ));
    let d = s.start();

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 1..=5 {
        udp.send_to(rfc3164("192.0.2.1", i).as_bytes(), ("127.0.0.1", udp_port))
            .unwrap();
    }
    udp.send_to(b"no priority here", ("127.0.0.1", udp_port))
        .unwrap();
    udp.send_to(&vec![b'x'; 8000], ("127.0.0.1", udp_port))
        .unwrap();

    let mut tcp = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    for i in 1..=5 {
        let msg = rfc5424("192.0.2.2", i);
        write!(tcp, "{} {msg}", msg.len()).unwrap();
    }
    // An oversized octet-counted frame (within 16 x max_line_bytes), skipped whole, then
    // newline framing on a new stream.
    write!(tcp, "60000 ").unwrap();
    tcp.write_all(&vec![b'y'; 60_000]).unwrap();
    tcp.flush().unwrap();
    let mut lines = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    for i in 1..=5 {
        writeln!(lines, "{}", rfc3164("192.0.2.3", i)).unwrap();
    }
    lines
        .write_all(b"\x00\xff garbage without a pri\n")
        .unwrap();
    lines.flush().unwrap();

    let limit = Duration::from_secs(10);
    let keys = wait_for("three incidents", limit, || {
        let mut keys: Vec<String> = d
            .incidents()
            .iter()
            .map(|i| i["key"]["ip"].as_str().unwrap().to_string())
            .collect();
        keys.sort();
        (keys.len() == 3).then_some(keys)
    });
    assert_eq!(keys, ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
    let tcp_incident = d
        .incidents()
        .into_iter()
        .find(|i| i["key"]["ip"] == "192.0.2.2")
        .unwrap();
    assert_eq!(tcp_incident["count"], 5);
    assert_eq!(
        tcp_incident["evidence"][0]["line"],
        "2026-11-22T10:00:01.000Z web1 sshd[811]: Failed password for invalid user admin from 192.0.2.2 port 40001 ssh2"
    );
    assert!(
        tcp_incident["first_seen"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-22T10:00:01")
    );
    wait_for("the dropped frames to be counted", limit, || {
        let malformed = metric(
            s.port,
            "logwarden_syslog_frames_dropped_total{reason=\"malformed\",source=\"net\"}",
        );
        let oversized = metric(
            s.port,
            "logwarden_syslog_frames_dropped_total{reason=\"oversized\",source=\"net\"}",
        );
        (malformed == 2.0 && oversized == 2.0).then_some(())
    });
    assert_eq!(
        metric(s.port, "logwarden_lines_read_total{source=\"net\"}"),
        15.0
    );
    assert_eq!(
        http("GET", s.port, "/healthz", None, None).unwrap().status,
        200
    );
}

fn closed(port: u16, reason: &str) -> f64 {
    metric(
        port,
        &format!("logwarden_syslog_connections_closed_total{{reason=\"{reason}\",source=\"net\"}}"),
    )
}

#[test]
fn idle_trickling_and_lying_tcp_peers_are_closed_and_counted_and_a_real_sender_gets_through() {
    let s = Setup::new();
    s.write("rules/r.yaml", RULES);
    let tcp_port = free_port();
    s.config(&format!(
        "sources:\n  - name: net\n    syslog: {{tcp: '127.0.0.1:{tcp_port}', max_connections: 16, idle_timeout: 3s, frame_timeout: 2s}}\n"
    ));
    let d = s.start();
    let limit = Duration::from_secs(30);
    for reason in ["idle", "frame_timeout", "frame_too_long"] {
        assert_eq!(closed(s.port, reason), 0.0, "{reason} present at 0");
    }

    // Every slot held by a peer that sends nothing: all of them are closed.
    let mut idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(("127.0.0.1", tcp_port)).unwrap())
        .collect();
    wait_for("the idle connections to be closed", limit, || {
        (closed(s.port, "idle") == 16.0).then_some(())
    });
    for stream in &mut idle {
        assert!(
            closed_by_peer(stream, limit),
            "an idle connection left open"
        );
    }

    // A peer trickling one frame a byte at a time, faster than the idle timeout.
    let mut trickle = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    let start = std::time::Instant::now();
    let mut cut_off = false;
    for b in rfc3164("192.0.2.66", 1).bytes().cycle() {
        if trickle.write_all(&[b]).is_err() {
            cut_off = true;
            break;
        }
        if start.elapsed() > limit {
            break;
        }
        if closed(s.port, "frame_timeout") == 1.0 {
            cut_off = closed_by_peer(&mut trickle, limit);
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(cut_off, "the trickling peer was never cut off");
    assert_eq!(closed(s.port, "frame_timeout"), 1.0);

    // A frame announcing 99999999999 bytes: the connection is closed and counted, not the
    // rest of its stream silently swallowed.
    let mut liar = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    let mut data = b"99999999999 ".to_vec();
    for i in 1..=5 {
        data.extend_from_slice(format!("{}\n", rfc3164("192.0.2.99", i)).as_bytes());
    }
    liar.write_all(&data).unwrap();
    assert!(
        closed_by_peer(&mut liar, limit),
        "the lying connection stays open"
    );
    assert_eq!(closed(s.port, "frame_too_long"), 1.0);

    // A real sender now gets a slot and its attack is detected.
    let mut sender = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    for i in 1..=5 {
        let msg = rfc5424("192.0.2.7", i);
        write!(sender, "{} {msg}", msg.len()).unwrap();
    }
    sender.flush().unwrap();
    let incident = wait_for("the real sender's incident", limit, || {
        d.incidents()
            .into_iter()
            .find(|i| i["key"]["ip"] == "192.0.2.7")
    });
    assert_eq!(incident["count"], 5);
    assert_eq!(
        metric(
            s.port,
            "logwarden_syslog_frames_dropped_total{reason=\"connection_refused\",source=\"net\"}"
        ),
        0.0,
        "no sender was refused: the idle peers were gone"
    );
    assert!(
        d.incidents().iter().all(|i| i["key"]["ip"] == "192.0.2.7"),
        "nothing of the cut-off connections was taken as lines"
    );
    d.stop();
}

#[test]
fn udp_datagrams_the_kernel_drops_for_a_full_receive_buffer_are_counted() {
    let s = Setup::new();
    s.write("rules/r.yaml", RULES);
    let udp_port = free_port();
    s.config(&format!(
        "sources:\n  - name: net\n    syslog: {{udp: '127.0.0.1:{udp_port}', udp_buffer_bytes: 4096}}\n"
    ));
    let d = s.start();
    let drops = || {
        metric(
            s.port,
            "logwarden_syslog_udp_kernel_drops_total{source=\"net\"}",
        )
    };
    assert_eq!(drops(), 0.0);
    // A burst far beyond a 4 KiB buffer, as fast as loopback takes it.
    const SENT: usize = 20_000;
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..SENT {
        udp.send_to(
            format!("<13>Nov 22 10:00:01 h app: filler {i}").as_bytes(),
            ("127.0.0.1", udp_port),
        )
        .unwrap();
    }
    // Every datagram is either read or counted as dropped by the kernel.
    let (read, dropped) = wait_for(
        "every datagram read or counted",
        Duration::from_secs(30),
        || {
            let read = metric(s.port, "logwarden_lines_read_total{source=\"net\"}");
            let dropped = drops();
            (read + dropped == SENT as f64).then_some((read, dropped))
        },
    );
    assert!(dropped > 0.0, "no drops counted ({read} read)");
    assert!(
        d.log().contains("udp receive buffer"),
        "the granted buffer size is logged:\n{}",
        d.log()
    );
    d.stop();
}

#[test]
fn check_rejects_a_source_with_both_paths_and_syslog_or_a_bad_address() {
    let s = Setup::new();
    s.write("rules/r.yaml", RULES);
    let check = |sources: &str| {
        let config = s.config(sources);
        let out = std::process::Command::new(bin())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let both =
        check("sources:\n  - name: net\n    paths: [a.log]\n    syslog: {udp: '127.0.0.1:5514'}\n");
    assert!(
        both.contains(":10:5: source \"net\" has both paths and syslog"),
        "{both}"
    );
    let bad = check("sources:\n  - name: net\n    syslog: {udp: 'nowhere'}\n");
    assert!(
        bad.contains(":9:5: syslog address \"nowhere\" is not host:port"),
        "{bad}"
    );
}
