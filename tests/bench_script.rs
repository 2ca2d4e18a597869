//! `bench/run.sh` runs and prints its figures: run on a small generated log with the debug
//! build of `detect_bench`. The figures of a
//! debug build mean nothing; what is checked is that every row is there and that the
//! comparison is fair (the filler rules match nothing, so each rule count sees the same
//! matches).

use std::path::PathBuf;
use std::process::Command;

/// The debug build of the example, brought up to date (`cargo test` builds examples, but
/// not when only this test is asked for).
fn detect_bench() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--example", "detect_bench"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // The variables cargo set for this test crate: a build script that watches one (ring's
    // watches CARGO_MANIFEST_DIR) would otherwise rebuild its crate, and everything above
    // it, on every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || name == "CARGO_TARGET_TMPDIR"
        {
            build.env_remove(name.as_ref());
        }
    }
    let status = build.status().expect("run cargo");
    assert!(status.success(), "cannot build detect_bench");
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    dir.join("examples").join("detect_bench")
}

/// The value of `"name": N` in one of the script's JSON lines.
fn number(json: &str, name: &str) -> f64 {
    let at = json.find(&format!("\"{name}\": ")).expect(name) + name.len() + 4;
    let end = json[at..].find([',', '}']).map_or(json.len(), |e| at + e);
    json[at..end].trim().parse().expect("a number")
}

#[test]
fn the_benchmark_script_prints_both_stages_for_every_rule_count() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("bench/run.sh"))
        .arg("5000")
        .env("DETECT_BENCH", detect_bench())
        .output()
        .expect("run bench/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench/run.sh failed:\n{stdout}\n{stderr}"
    );

    for log in ["attack-heavy", "benign-heavy"] {
        let rows: Vec<Vec<&str>> = stdout
            .lines()
            .filter(|l| l.starts_with(log) && !l.contains("slowdown"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows.len(),
            7,
            "grep row and 3 × 2 stages for {log}:\n{stdout}"
        );
        assert_eq!(rows[0][2..4], ["grep", "-c"], "{stdout}");
        let mut expected = Vec::new();
        for rules in ["10", "100", "500"] {
            expected.push((rules, "pass"));
            expected.push((rules, "detect"));
        }
        for (row, (rules, stage)) in rows[1..].iter().zip(expected) {
            assert_eq!((row[1], row[2]), (rules, stage), "{stdout}");
            let rate: f64 = row[3].parse().expect("lines/s");
            let ratio: f64 = row[5].parse().expect("ratio");
            assert!(rate > 0.0 && ratio > 0.0, "{stdout}");
        }
        assert!(
            stdout.contains(&format!("{log}: detector slowdown from 10 to 500 rules: ")),
            "{stdout}"
        );
    }

    // Per log, the three rule counts: the same candidates and matches (the filler rules,
    // generated to compile into the set, never match the log).
    let json: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .collect();
    assert_eq!(json.len(), 12, "{stderr}");
    for per_log in json.chunks(6) {
        let passes: Vec<f64> = per_log
            .iter()
            .step_by(2)
            .map(|j| number(j, "lines_with_candidates"))
            .collect();
        let matches: Vec<f64> = per_log
            .iter()
            .skip(1)
            .step_by(2)
            .map(|j| number(j, "matches"))
            .collect();
        assert!(passes[0] > 0.0 && matches[0] > 0.0, "{stderr}");
        assert!(passes.iter().all(|p| *p == passes[0]), "{stderr}");
        assert!(matches.iter().all(|m| *m == matches[0]), "{stderr}");
        let rules: Vec<f64> = per_log.iter().map(|j| number(j, "rules")).collect();
        assert!(rules[0] < rules[2] && rules[4] >= 500.0, "{stderr}");
    }
}
