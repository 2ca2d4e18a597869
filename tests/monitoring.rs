//! The monitoring mixin (monitoring/) against the real engines: the rendered files are
//! what the jsonnet renders, `promtool` accepts the rules and passes their unit tests, and a
//! real Prometheus scraping a real daemon evaluates every dashboard query, every rule
//! without error, and the recording rules return series.

mod common;

use common::*;
use logwarden::cli::client::encode;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(40);

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

fn rendered(name: &str) -> PathBuf {
    monitoring().join("rendered").join(name)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn rendered_files_are_what_the_mixin_renders() {
    let Some(_) = peer("jsonnet", "jsonnet") else {
        return;
    };
    let (ok, out) = run(Command::new(monitoring().join("render.sh")).arg("--check"));
    assert!(ok, "{out}");
}

#[test]
fn shipped_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = peer("promtool", "prometheus") else {
        return;
    };
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(rendered("alerts.yaml"))
        .arg(rendered("rules.yaml")));
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(monitoring().join("tests/rules_test.yaml")));
    assert!(ok, "{out}");
}

/// Every `logwarden_*` metric the mixin uses is registered by the daemon, or named by the
/// interface for a source still being built (journal gaps).
#[test]
fn the_mixin_uses_only_metrics_the_daemon_has() {
    let registered = include_str!("../src/metrics.rs");
    let promised = ["logwarden_journal_gaps_total"];
    let mut used = BTreeSet::new();
    for file in ["alerts.yaml", "rules.yaml", "dashboards/logwarden.json"] {
        let text = std::fs::read_to_string(rendered(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("logwarden_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            used.insert(name);
        }
    }
    assert!(used.len() > 10, "{used:?}");
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            registered.contains(&format!("\"{name}\""))
                || registered.contains(&format!("\"{base}\""))
                // A recorded rate drops the counter's `_total`, as Prometheus names them.
                || registered.contains(&format!("\"{name}_total\""))
                || promised.contains(&name.as_str()),
            "the mixin uses {name}, which the daemon does not export"
        );
    }
}

/// An instant query's result, or the error Prometheus gave.
fn query(port: u16, promql: &str) -> Result<Vec<serde_json::Value>, String> {
    let r = http(
        "GET",
        port,
        &format!("/api/v1/query?query={}", encode(promql)),
        None,
        None,
    )
    .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("{promql}: {}", r.body));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The dashboard's queries, with Grafana's variables as Grafana would substitute them
/// (every host, a one-minute rate interval).
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$host", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect()
}

#[test]
fn prometheus_scraping_a_daemon_evaluates_every_dashboard_query_and_rule() {
    let Some(prometheus) = peer("prometheus", "prometheus") else {
        return;
    };
    // A daemon with something to show: an incident taken through to closed (every KPI
    // observed), delivered to a file receiver.
    let s = Setup::new();
    s.write("rules/r.yaml", SSH_BRUTEFORCE_RULE);
    s.write("auth.log", "");
    let config = s.console_config("auth", "auth.log", "arrival");
    // SLAs, so the SLA counter has series (the incident's stages all within them).
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("slas:\n  moderate: {acknowledge: 1h, contain: 2h, resolve: 1d}\n");
    std::fs::write(&config, text).unwrap();
    let d = s.start();
    s.append("auth.log", &ssh_attack("203.0.113.9"));
    let id = d.wait_incident("ssh-bruteforce", WAIT)["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.close_incident(&id);

    // The shipped rules, evaluated every second instead of every minute so the test need
    // not wait for a whole interval; the queries are unchanged.
    let dir = s.path("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::fs::read_to_string(rendered("rules.yaml"))
        .unwrap()
        .replace("interval: \"1m\"", "interval: \"1s\"");
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    std::fs::copy(rendered("alerts.yaml"), dir.join("alerts.yaml")).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [rules.yaml, alerts.yaml]\n\
             scrape_configs:\n  - job_name: logwarden\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
            s.port
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("prometheus.log");
    let mut prom = KillOnDrop(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let prom_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("Prometheus to scrape the daemon twice", WAIT, || {
        if let Ok(Some(status)) = prom.0.try_wait() {
            panic!("prometheus exited with {status}:\n{}", prom_log());
        }
        let up = query(port, "count_over_time(up{job=\"logwarden\"}[1m]) >= 2").ok()?;
        (!up.is_empty()).then_some(())
    });
    assert_eq!(
        query(port, "up{job=\"logwarden\"}").unwrap()[0]["value"][1],
        "1"
    );

    // The host variable lists the daemon.
    let r = http(
        "GET",
        port,
        &format!(
            "/api/v1/label/instance/values?match[]={}",
            encode("logwarden_build_info{job=\"logwarden\"}")
        ),
        None,
        None,
    )
    .unwrap();
    assert!(
        r.body.contains(&format!("127.0.0.1:{}", s.port)),
        "{}",
        r.body
    );

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(rendered("dashboards/logwarden.json")).unwrap(),
    )
    .unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{queries:?}");
    // Series this daemon has no reason to have: failures, and a journal source.
    let may_be_empty = |q: &str| q.contains("journal_gaps") || q.contains("retried|dead");
    for q in &queries {
        assert!(!q.contains('$'), "unsubstituted variable in {q}");
        let result = wait_for(&format!("{q} to evaluate"), WAIT, || {
            let result = query(port, q).unwrap_or_else(|e| panic!("{e}"));
            (may_be_empty(q) || !result.is_empty()).then_some(result)
        });
        if !may_be_empty(q) {
            assert!(!result.is_empty(), "{q}");
        }
    }

    // Every recording rule returns series; every rule evaluates without error.
    let recorded: Vec<String> = std::fs::read_to_string(rendered("rules.yaml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("record: "))
        .map(|n| n.trim_matches('"').to_string())
        .collect();
    assert_eq!(recorded.len(), 17, "{recorded:?}");
    // Every severity's series exists from the start (at 0), so each recording rule returns
    // one series per severity, the incident's among them.
    for name in &recorded {
        let result = wait_for(&format!("{name} to be recorded"), WAIT, || {
            let r = query(port, name).unwrap_or_else(|e| panic!("{e}"));
            (!r.is_empty()).then_some(r)
        });
        assert!(
            result.iter().any(|s| s["metric"]["severity"] == "moderate"),
            "{name}: {result:?}"
        );
    }
    wait_for("every rule to be evaluated without error", WAIT, || {
        let r = http("GET", port, "/api/v1/rules", None, None).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let rules: Vec<serde_json::Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        for rule in &rules {
            assert_ne!(rule["health"], "err", "{rule}");
        }
        (rules.len() == 25 && rules.iter().all(|r| r["health"] == "ok")).then_some(())
    });
    // A healthy daemon: none of the alerts fires.
    let firing = query(port, "ALERTS{alertstate=\"firing\"}").unwrap();
    assert!(firing.is_empty(), "{firing:?}");
}
