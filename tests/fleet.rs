//! A fleet on existing engines: three daemons with different host names report to a
//! two-member Alertmanager cluster (Debian's `prometheus-alertmanager`, gossiping on
//! 127.0.0.1). One address attacking all three hosts becomes one notification naming the
//! three; incidents still arrive with one member stopped; a member restarted with empty
//! storage shows the open incidents again through the daemons' re-sends; closing resolves,
//! and later re-sends do not bring a resolved alert back.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(40);
/// The daemons' re-send interval: short, so a restarted member is refilled quickly.
const RESEND_SECS: u64 = 2;
const FIRST: &str = "203.0.113.50";
const SECOND: &str = "198.51.100.7";

/// The README's fleet route (grouping by address across hosts), with the test's webhook and
/// waits short enough for a test.
fn alertmanager_config(hook: &str) -> String {
    let readme = include_str!("../README.md");
    let block = readme
        .split("<!-- fleet-route")
        .nth(1)
        .and_then(|rest| rest.split("```yaml\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("README's fleet route example");
    let mut config = block.to_string();
    for (from, to) in [
        ("http://chat-bridge.internal:8080/alerts", hook),
        ("group_wait: 30s", "group_wait: 3s"),
        ("group_interval: 5m", "group_interval: 1s"),
    ] {
        assert!(config.contains(from), "README's route lacks {from:?}");
        config = config.replace(from, to);
    }
    config
}

struct Host {
    name: String,
    setup: Setup,
    daemon: Daemon,
}

fn start_host(name: &str, members: &[u16]) -> Host {
    let setup = Setup::new();
    setup.write("rules/ssh.yaml", SSH_BRUTEFORCE_RULE);
    setup.write("auth.log", "");
    let urls: Vec<String> = members
        .iter()
        .map(|p| format!("'http://127.0.0.1:{p}'"))
        .collect();
    setup.config(&format!(
        "host: {name}\n\
         sources:\n  - {{name: auth, paths: [auth.log], start_at: beginning}}\n\
         receivers:\n  - {{name: am, type: webhook, format: alertmanager, urls: [{}], resend: {RESEND_SECS}s, retry: {{initial: 200ms, max: 1s}}}}\n\
         roles:\n  analysts: {{receivers: [am]}}\n\
         escalation_policies:\n  default:\n    - notify: [analysts]\n",
        urls.join(", ")
    ));
    let daemon = setup.start();
    Host {
        name: name.to_string(),
        setup,
        daemon,
    }
}

impl Host {
    fn attack(&self, ip: &str) {
        self.setup.append("auth.log", &ssh_attack(ip));
    }

    /// The incident for `ip`, once open.
    fn incident(&self, ip: &str) -> serde_json::Value {
        wait_for(&format!("{}'s incident for {ip}", self.name), WAIT, || {
            self.daemon
                .incidents()
                .into_iter()
                .find(|i| i["key"]["ip"] == ip)
        })
    }

    fn counter(&self, outcome: &str) -> f64 {
        metric(
            self.daemon.port,
            &format!("logwarden_notifications_total{{outcome=\"{outcome}\",receiver=\"am\"}}"),
        )
    }

    fn close(&self, ip: &str) {
        let id = self.incident(ip)["id"].as_str().unwrap().to_string();
        self.daemon.close_incident(&id);
    }
}

/// The hosts of the alerts about `ip`.
fn hosts(alerts: &[serde_json::Value], ip: &str) -> BTreeSet<String> {
    alerts
        .iter()
        .filter(|a| a["labels"]["ip"] == ip)
        .map(|a| a["labels"]["host"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn all_hosts() -> BTreeSet<String> {
    ["web1", "web2", "web3"].map(String::from).into()
}

/// One Alertmanager metric's value (summed over its series), 0 when absent.
fn am_metric(am: &Alertmanager, name: &str) -> f64 {
    let text = http("GET", am.port, "/metrics", None, None).unwrap().body;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The next notification the webhook gets about `ip` in `status`.
fn notification(hook: &Receiver, ip: &str, status: &str, seen: &mut Vec<Received>) -> Received {
    wait_for(&format!("a {status} notification for {ip}"), WAIT, || {
        let r = hook.next(Duration::from_millis(200))?;
        seen.push(r.clone());
        (r.body["groupLabels"]["ip"] == ip && r.body["status"] == status).then_some(r)
    })
}

fn member(program: &Path, dir: &Path, hook: &str, port: u16, gossip: (u16, u16)) -> Alertmanager {
    Alertmanager::start(
        program,
        dir,
        &alertmanager_config(hook),
        port,
        Some((gossip.0, &[gossip.1])),
    )
}

#[test]
fn three_hosts_one_address_one_notification_through_a_cluster_that_loses_a_member() {
    let Some(program) = peer("prometheus-alertmanager", "prometheus-alertmanager") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start();
    let hook_url = hook.url("/am");
    let (web1, web2) = (free_port(), free_port());
    let (gossip1, gossip2) = (free_port(), free_port());
    let am1 = member(
        &program,
        &dir.path().join("am1"),
        &hook_url,
        web1,
        (gossip1, gossip2),
    );
    let am2 = member(
        &program,
        &dir.path().join("am2"),
        &hook_url,
        web2,
        (gossip2, gossip1),
    );
    wait_for("the two members to gossip", WAIT, || {
        (am1.peers() == 2 && am2.peers() == 2).then_some(())
    });
    let fleet: Vec<Host> = ["web1", "web2", "web3"]
        .iter()
        .map(|name| start_host(name, &[web1, web2]))
        .collect();

    // One address attacks all three hosts.
    for host in &fleet {
        host.attack(FIRST);
    }
    let mut uids = BTreeSet::new();
    for host in &fleet {
        let incident = host.incident(FIRST);
        assert_eq!(
            incident["uid"],
            format!("{}/{}", host.name, incident["id"].as_str().unwrap()).as_str()
        );
        uids.insert(incident["uid"].as_str().unwrap().to_string());
        // The API takes the uid too, percent-encoded in the path.
        let encoded = incident["uid"].as_str().unwrap().replace('/', "%2F");
        let r = host.daemon.get(&format!("/api/v1/incidents/{encoded}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["id"], incident["id"]);
    }
    assert_eq!(uids.len(), 3, "every host's INC-1 is its own: {uids:?}");
    for am in [&am1, &am2] {
        wait_for("every member to list the three hosts' alerts", WAIT, || {
            (hosts(&am.alerts(), FIRST) == all_hosts()).then_some(())
        });
    }
    let mut seen = Vec::new();
    let grouped = notification(&hook, FIRST, "firing", &mut seen);
    assert_eq!(
        hosts(grouped.body["alerts"].as_array().unwrap(), FIRST),
        all_hosts(),
        "one notification names the three hosts: {}",
        grouped.body
    );
    // Both members have run their pipeline for the group (the second one after waiting
    // for its peer's notification log) more than once: only one of them notified.
    wait_for(
        "both members to have checked the notification log",
        WAIT,
        || {
            (am_metric(&am1, "alertmanager_nflog_queries_total") >= 2.0
                && am_metric(&am2, "alertmanager_nflog_queries_total") >= 2.0)
                .then_some(())
        },
    );
    seen.extend(hook.drain());
    let firing: Vec<&Received> = seen
        .iter()
        .filter(|r| r.body["status"] == "firing")
        .collect();
    assert_eq!(
        firing.len(),
        1,
        "one notification for the address: {firing:?}"
    );

    // One member stopped: incidents still arrive, through the other.
    drop(am2);
    for host in &fleet {
        host.attack(SECOND);
    }
    let grouped = notification(&hook, SECOND, "firing", &mut seen);
    assert_eq!(
        hosts(grouped.body["alerts"].as_array().unwrap(), SECOND),
        all_hosts(),
        "{}",
        grouped.body
    );
    // The stopped member's copies wait and retry on their own.
    for host in &fleet {
        wait_for("the stopped member's copies to be retried", WAIT, || {
            (host.counter("retried") > 0.0).then_some(())
        });
    }

    // Restarted with empty storage: the member shows every open incident again, the
    // first address's only through the daemons' re-sends (its copies were delivered).
    let restarted = Instant::now();
    let am2 = member(
        &program,
        &dir.path().join("am2-empty"),
        &hook_url,
        web2,
        (gossip2, gossip1),
    );
    wait_for(
        "the restarted member to show the open incidents",
        WAIT,
        || {
            let alerts = am2.alerts();
            (hosts(&alerts, FIRST) == all_hosts() && hosts(&alerts, SECOND) == all_hosts())
                .then_some(())
        },
    );
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(RESEND_SECS * 4 + 10),
        "open incidents took {took:?} to reappear (re-send every {RESEND_SECS}s)"
    );
    for host in &fleet {
        assert!(host.counter("resent") > 0.0, "{}", host.daemon.log());
        wait_for("every copy delivered", WAIT, || {
            (metric(
                host.daemon.port,
                "logwarden_outbox_pending{receiver=\"am\"}",
            ) == 0.0)
                .then_some(())
        });
    }

    // Closing resolves on every member, and re-sends (still running for the second
    // address) do not bring the resolved alerts back.
    for host in &fleet {
        host.close(FIRST);
    }
    for am in [&am1, &am2] {
        wait_for("the first address's alerts to be resolved", WAIT, || {
            hosts(&am.alerts(), FIRST).is_empty().then_some(())
        });
    }
    let resolved = notification(&hook, FIRST, "resolved", &mut seen);
    assert_eq!(
        hosts(resolved.body["alerts"].as_array().unwrap(), FIRST),
        all_hosts()
    );
    let resent: Vec<f64> = fleet.iter().map(|h| h.counter("resent")).collect();
    for (host, before) in fleet.iter().zip(&resent) {
        // Two re-sends of the second address's alert to each member after the close.
        wait_for("two more re-sends", WAIT, || {
            (host.counter("resent") >= before + 4.0).then_some(())
        });
    }
    for am in [&am1, &am2] {
        let alerts = am.alerts();
        assert!(hosts(&alerts, FIRST).is_empty(), "re-fired: {alerts:?}");
        assert_eq!(hosts(&alerts, SECOND), all_hosts());
    }
    for host in &fleet {
        assert_eq!(host.counter("dead"), 0.0, "{}", host.daemon.log());
    }
}
