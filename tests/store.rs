//! What a brute force costs the store: every matching line's evidence is stored once (in
//! its commit's compressed block), windows and incidents hold references, and a line that
//! only bumps an incident's count rewrites a small head. A loose bound against the log's
//! own size that only a return of per-line copies (JSON incidents with their evidence
//! rewritten on every match) would break; and the references resolve after a restart.

mod common;

use common::*;
use std::time::Duration;

/// How long a counted match may take to be stored on a loaded machine.
const WAIT_STORED: Duration = Duration::from_secs(20);

#[test]
fn a_brute_force_is_stored_in_fewer_bytes_than_its_log_and_reads_back_after_a_restart() {
    let s = Setup::new();
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/ssh.yaml"),
    )
    .unwrap();
    s.write("rules/ssh.yaml", &rules);
    s.console_config("auth", "auth.log", "syslog");
    let d = s.start();
    // 20 addresses, 150 failures each, interleaved, one a second: every address opens an
    // incident and then only bumps its count.
    let (addresses, each) = (20, 150);
    let lines: Vec<String> = (0..each)
        .flat_map(|n| (0..addresses).map(move |a| ssh_fail(&format!("203.0.113.{}", a + 1), n)))
        .collect();
    for chunk in lines.chunks(500) {
        s.append("auth.log", chunk);
    }
    let log_bytes = std::fs::metadata(s.path("auth.log")).unwrap().len() as f64;
    let total = (addresses * each) as f64;
    wait_for("every line counted", Duration::from_secs(60), || {
        (metric(
            d.port,
            "logwarden_rule_matches_total{rule=\"ssh-bruteforce\"}",
        ) >= total)
            .then_some(())
    });
    let written = metric(d.port, "logwarden_store_written_bytes_total");
    assert!(
        written < 3.0 * log_bytes,
        "the store was asked to write {written} bytes for a {log_bytes}-byte log"
    );
    // Matches are counted as they are evaluated, their commit follows a moment later.
    let before: Vec<serde_json::Value> = wait_for("every count stored", WAIT_STORED, || {
        let incidents = d.incidents();
        (incidents.len() == addresses as usize && incidents.iter().all(|i| i["count"] == each))
            .then_some(incidents)
    });
    assert_eq!(before.len(), addresses as usize);
    assert!(before.iter().all(|i| i["count"] == each));
    assert!(
        before
            .iter()
            .all(|i| i["evidence"].as_array().unwrap().len() == 20),
        "every incident keeps its first and latest lines"
    );
    d.stop();
    let d = s.start();
    assert_eq!(
        d.incidents(),
        before,
        "incidents, evidence lines included, read back the same after a restart"
    );
}
