//! Hot reload through the real binary: rule-file changes and SIGHUP swap rules in a running
//! daemon; a broken file keeps the old rules; unchanged rules keep their windows.

mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// Three lines of `KEEP` or `CHANGE` within a minute open an incident.
fn rules(change_description: &str, extra: &str) -> String {
    format!(
        "rules:\n\
         \x20 - id: keep\n    match: 'KEEP (?P<n>\\d+)'\n    threshold: {{count: 3, within: 1m}}\n    severity: low\n\
         \x20 - id: change\n    description: {change_description}\n    match: 'CHANGE (?P<n>\\d+)'\n    threshold: {{count: 3, within: 1m}}\n    severity: low\n\
         {extra}"
    )
}

fn setup() -> Setup {
    let s = Setup::new();
    s.write("rules/test.yaml", &rules("first", ""));
    s.write("auth.log", "");
    s.console_config("auth", "auth.log", "syslog");
    s
}

fn line(text: &str, second: u32) -> String {
    format!("Nov 22 10:00:{second:02} web1 test: {text}")
}

/// The value of one metric sample (`name{labels}` as exposed), 0 when absent.
fn metric(d: &Daemon, sample: &str) -> f64 {
    let body = http("GET", d.port, "/metrics", None, None).unwrap().body;
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `rule` has counted `n` matches: every line before has been evaluated.
fn wait_matches(d: &Daemon, rule: &str, n: f64) {
    let sample = format!("logwarden_rule_matches_total{{rule=\"{rule}\"}}");
    wait_for(&format!("{n} matches of {rule}"), WAIT, || {
        (metric(d, &sample) == n).then_some(())
    });
}

fn rules_version(d: &Daemon) -> String {
    d.get("/api/v1/rules").json()["version"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_changed_file_is_reloaded_and_only_changed_rules_lose_their_windows() {
    let s = setup();
    let d = s.start();
    let before = rules_version(&d);
    s.append(
        "auth.log",
        &[
            line("KEEP 1", 1),
            line("KEEP 1", 2),
            line("CHANGE 1", 3),
            line("CHANGE 1", 4),
        ],
    );
    wait_matches(&d, "change", 2.0);

    let added = "  - id: added\n    match: 'ADDED'\n    threshold: {count: 1, within: 1m}\n    severity: low\n";
    s.write("rules/test.yaml", &rules("second", added));
    let after = wait_for("the new rule set in the API", WAIT, || {
        let v = rules_version(&d);
        (v != before).then_some(v)
    });
    assert_eq!(
        d.get("/api/v1/rules").json()["rules"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(metric(&d, "logwarden_rules_loaded"), 3.0);
    let log = d.log();
    let reloaded = log
        .lines()
        .find(|l| l.contains("rules reloaded"))
        .expect("the reload is logged");
    for part in [
        format!("old_version={before}"),
        format!("new_version={after}"),
        "added=[\"added\"]".to_string(),
        "removed=[]".to_string(),
        "changed=[\"change\"]".to_string(),
    ] {
        assert!(reloaded.contains(&part), "{part} missing in {reloaded}");
    }

    // One more line each: `keep` kept its two, `change` starts again from none.
    s.append(
        "auth.log",
        &[line("KEEP 1", 5), line("CHANGE 1", 6), line("ADDED", 7)],
    );
    let keep = d.wait_incident("keep", WAIT);
    assert_eq!(keep["count"], 3);
    assert_eq!(keep["ruleset_version"], after.as_str());
    d.wait_incident("added", WAIT);
    wait_matches(&d, "change", 3.0);
    assert!(
        d.incidents().iter().all(|i| i["rule"] != "change"),
        "a changed rule must not reuse its old window"
    );
    d.stop();
}

#[test]
fn a_broken_file_keeps_the_old_rules_running_until_it_is_fixed() {
    let s = setup();
    let d = s.start();
    let version = rules_version(&d);
    let broken = rules("first", "").replace("'KEEP (?P<n>\\d+)'", "'KEEP ((?P<n>\\d+)'");
    let file = s.write("rules/test.yaml", &broken);

    let reason = wait_for("/readyz to fail", WAIT, || {
        let r = http("GET", d.port, "/readyz", None, None).unwrap();
        (r.status == 503).then_some(r.body)
    });
    // At the unclosed parenthesis inside the pattern.
    let place = format!("{}:3:18: bad regex in match", file.display());
    assert!(reason.contains(&place), "{reason}");
    assert_eq!(metric(&d, "logwarden_rule_reload_failures_total"), 1.0);
    assert!(d.log().contains(&place), "the problem is logged");
    assert_eq!(rules_version(&d), version, "the old rules stay in force");
    // Change-management evidence: the failed reload is in the audit log, mapped to CC8.1.
    let audit = d.get("/api/v1/audit?format=jsonl").body;
    let failed = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event"] == "rules.reload_failed")
        .unwrap_or_else(|| panic!("no rules.reload_failed record in:\n{audit}"));
    assert_eq!(failed["details"]["version_kept"], version.as_str());
    assert!(
        failed["details"]["problems"][0]
            .as_str()
            .unwrap()
            .contains(&place),
        "{failed}"
    );
    assert!(failed.to_string().contains("CC8.1"), "{failed}");

    // Detection goes on with the old rules.
    s.append(
        "auth.log",
        &[line("KEEP 1", 1), line("KEEP 1", 2), line("KEEP 1", 3)],
    );
    assert_eq!(d.wait_incident("keep", WAIT)["count"], 3);

    s.write("rules/test.yaml", &rules("first", ""));
    wait_for("/readyz to recover", WAIT, || {
        (http("GET", d.port, "/readyz", None, None).unwrap().status == 200).then_some(())
    });
    assert_eq!(rules_version(&d), version);
    assert_eq!(metric(&d, "logwarden_rule_reload_failures_total"), 1.0);
    d.stop();
}

#[test]
fn sighup_reloads_and_does_not_stop_the_daemon() {
    let s = setup();
    let d = s.start();
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    // The files were loaded and found to define the rules already running.
    wait_for("a SIGHUP reload in the log", WAIT, || {
        d.log()
            .lines()
            .any(|l| l.contains("rule files unchanged") && l.contains("SIGHUP"))
            .then_some(())
    });
    assert!(!d.log().contains("rules reloaded"), "{}", d.log());
    assert_eq!(
        http("GET", d.port, "/readyz", None, None).unwrap().status,
        200
    );
    s.append(
        "auth.log",
        &[line("KEEP 2", 1), line("KEEP 2", 2), line("KEEP 2", 3)],
    );
    d.wait_incident("keep", WAIT);
    d.stop();
}

#[test]
fn an_emptied_rule_file_is_refused_and_its_rules_keep_running() {
    let s = setup();
    let d = s.start();
    let version = rules_version(&d);
    // An editor's truncating save, or a file emptied to "switch rules off".
    let file = s.write("rules/test.yaml", "# nothing here yet\n");
    let reason = wait_for("/readyz to fail", WAIT, || {
        let r = http("GET", d.port, "/readyz", None, None).unwrap();
        (r.status == 503).then_some(r.body)
    });
    let place = format!(
        "{}:1:1: defines no rules; delete the file to remove its rules",
        file.display()
    );
    assert!(reason.contains(&place), "{reason}");
    assert_eq!(rules_version(&d), version, "the old rules stay in force");
    s.append(
        "auth.log",
        &[line("KEEP 3", 1), line("KEEP 3", 2), line("KEEP 3", 3)],
    );
    assert_eq!(d.wait_incident("keep", WAIT)["count"], 3);
    d.stop();
}
