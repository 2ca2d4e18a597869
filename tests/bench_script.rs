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
        .env("LOGWARDEN_BIN", env!("CARGO_BIN_EXE_logwarden"))
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
            13,
            "grep row and 3 × 2 stages × 2 front ends for {log}:\n{stdout}"
        );
        assert_eq!(rows[0][2..4], ["grep", "-c"], "{stdout}");
        let mut expected = Vec::new();
        for rules in ["10", "100", "500"] {
            for stage in ["pass", "detect"] {
                expected.push((rules, stage, "prev"));
                expected.push((rules, stage, "cur"));
            }
        }
        for (row, (rules, stage, front)) in rows[1..].iter().zip(expected) {
            assert_eq!((row[1], row[2], row[3]), (rules, stage, front), "{stdout}");
            let rate: f64 = row[4].parse().expect("lines/s");
            let to_grep: f64 = row[8].parse().expect("ratio to grep");
            let to_set: f64 = row[9].parse().expect("ratio to set");
            assert!(rate > 0.0 && to_grep > 0.0 && to_set > 0.0, "{stdout}");
            if front == "prev" {
                assert_eq!(row[9], "1.00", "{stdout}");
            }
        }
        assert!(
            stdout.contains(&format!("{log}: detector slowdown from 10 to 500 rules: ")),
            "{stdout}"
        );
    }

    // Per log, the three rule counts: the same candidates and matches (the filler rules,
    // generated to compile into the front end, never match the log), and both front ends
    // the same matches.
    let json: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .collect();
    assert_eq!(json.len(), 24, "{stderr}");
    for per_log in json.chunks(12) {
        // Per rule count: pass set, pass gate, run set, run gate.
        let of = |at: usize, name: &str| -> Vec<f64> {
            per_log
                .iter()
                .skip(at)
                .step_by(4)
                .map(|j| number(j, name))
                .collect()
        };
        for candidates in [
            of(0, "lines_with_candidates"),
            of(1, "lines_with_candidates"),
        ] {
            assert!(candidates[0] > 0.0, "{stderr}");
            assert!(candidates.iter().all(|c| *c == candidates[0]), "{stderr}");
        }
        let (set, gate) = (of(2, "matches"), of(3, "matches"));
        // Both designs count the same matches.
        assert!(set[0] > 0.0 && set == gate, "{stderr}");
        assert!(set.iter().all(|m| *m == set[0]), "{stderr}");
        let rules = of(0, "rules");
        assert!(rules[0] < rules[1] && rules[2] >= 500.0, "{stderr}");
    }

    // Replay: both designs, on one thread and on every core.
    let cores = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .to_string();
    let replay: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("replay"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let expected: Vec<(&str, &str)> = ["previous", "current"]
        .iter()
        .flat_map(|d| [("1", *d), (cores.as_str(), *d)])
        .collect();
    assert_eq!(
        replay.iter().map(|r| (r[1], r[2])).collect::<Vec<_>>(),
        expected,
        "{stdout}"
    );
    for row in &replay {
        let rate: f64 = row[3].parse().expect("lines/s");
        let to_prev: f64 = row[7].parse().expect("ratio to previous");
        let to_one: f64 = row[8].parse().expect("ratio to one thread");
        assert!(rate > 0.0 && to_prev > 0.0 && to_one > 0.0, "{stdout}");
        // The ratio to mtail when it is installed, else a dash.
        assert!(
            row[9] == "-" || row[9].parse::<f64>().is_ok_and(|r| r > 0.0),
            "{stdout}"
        );
    }
}
