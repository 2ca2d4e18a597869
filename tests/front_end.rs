//! Differential proof of the detection front ends and capture engines: the literal gate
//! and PCRE2 captures must count exactly the hits the previous design (combined-set pass,
//! `regex` crate captures) counts — same rule, key, captures, step, time and crossing —
//! over the generated bench log, the real lines of the CrowdSec
//! hub corpora and a fuzzed mix of the patterns' own pieces, at 10, 100 and 500 rules.

#[path = "../bench/support.rs"]
mod support;

use chrono::{DateTime, Utc};
use logwarden::detection::capture::{CaptureRegex, Engine};
use logwarden::detection::matcher::{Design, Front};
use logwarden::detection::{Detector, Found, Hit, Matchers, literals};
use logwarden::rules::{RuleContext, RuleSet};
use logwarden::sources::LogLine;
use std::path::Path;
use std::sync::Arc;

const T0: i64 = 1_700_000_000_000;

/// What a hit says, in a form two detectors' hits compare by.
type Summary = (String, String, String, usize, i64, Option<u64>, Option<u64>);

fn summary(hit: &Hit) -> Summary {
    (
        hit.rule.id().to_string(),
        format!("{:?}", hit.key),
        format!("{:?}", hit.captures),
        hit.step,
        hit.time.timestamp_millis(),
        hit.crossed.as_ref().map(|c| c.count),
        hit.evidence.as_ref().map(|e| e.offset),
    )
}

/// Every line of every log of the corpora (empty when they are not beside the repository).
fn corpus_lines() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/crowdsec-hub-tests");
    let mut lines = Vec::new();
    let Ok(cases) = std::fs::read_dir(&dir) else {
        eprintln!(
            "\n!!! corpora not found at {}: only generated lines are compared\n",
            dir.display()
        );
        return lines;
    };
    let mut cases: Vec<_> = cases.filter_map(Result::ok).map(|e| e.path()).collect();
    cases.sort();
    for case in cases {
        let Ok(files) = std::fs::read_dir(&case) else {
            continue;
        };
        let mut files: Vec<_> = files.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for file in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "log"))
        {
            let bytes = std::fs::read(file).expect("read corpus log");
            lines.extend(bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec));
        }
    }
    lines
}

/// Real lines mutated with the patterns' required literals, words of other lines and
/// crafted values (a word replaced, inserted or dropped): near misses and crafted matches
/// the real logs lack.
fn fuzzed_lines(set: &RuleSet, bases: &[Vec<u8>], count: usize) -> Vec<Vec<u8>> {
    let words: Vec<Vec<u8>> = bases
        .iter()
        .flat_map(|l| l.split(|&b| b == b' ').map(<[u8]>::to_vec))
        .filter(|w| !w.is_empty())
        .collect();
    let mut pieces: Vec<Vec<u8>> = set
        .rules
        .iter()
        .flat_map(|r| r.pattern_texts())
        .filter_map(literals::required)
        .flatten()
        .flatten()
        .collect();
    pieces.extend(words);
    for extra in [
        &b"1.2.3.4"[..],
        b"2001:db8::7",
        b"from 5.6.7.8 port 22 ssh2",
        b"from",
        b"",
        b"\xff\xfe",
        b"root",
        b"[preauth]",
    ] {
        pieces.push(extra.to_vec());
    }
    let mut rng = support::Rng::new(7);
    (0..count)
        .map(|_| {
            let base = &bases[rng.below(bases.len() as u64) as usize];
            let mut words: Vec<Vec<u8>> = base.split(|&b| b == b' ').map(<[u8]>::to_vec).collect();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(words.len() as u64 + 1) as usize;
                let piece = pieces[rng.below(pieces.len() as u64) as usize].clone();
                match rng.below(3) {
                    0 if at < words.len() => words[at] = piece,
                    1 if at < words.len() => {
                        words.remove(at);
                    }
                    _ => words.insert(at, piece),
                }
            }
            words.join(&b' ')
        })
        .collect()
}

/// Every design but the reference.
const DESIGNS: [Design; 3] = [
    Design {
        front: Front::Gate,
        engine: Engine::Regex,
    },
    Design {
        front: Front::Set,
        engine: Engine::Pcre2,
    },
    Design {
        front: Front::Gate,
        engine: Engine::Pcre2,
    },
];

/// Feeds every line to a detector of every design and to one of the previous design
/// (combined set, `regex` crate captures), and requires the same hits; returns how many
/// there were.
fn compare(set: Arc<RuleSet>, lines: &[Vec<u8>]) -> usize {
    let sources = ["auth".to_string()];
    let mut designs: Vec<Detector> = DESIGNS
        .iter()
        .map(|d| Detector::with_design(set.clone(), &sources, *d))
        .collect();
    let mut reference = Detector::with_design(set, &sources, Design::PREVIOUS);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut total = 0;
    for (i, bytes) in lines.iter().enumerate() {
        let time: DateTime<Utc> = DateTime::from_timestamp_millis(T0 + i as i64 * 10).unwrap();
        let line = LogLine {
            source: "auth".into(),
            path: "auth.log".into(),
            offset: i as u64,
            bytes: bytes.clone(),
            arrival: time,
            time: None,
        };
        reference.observe(&line, time, &mut b);
        let expected: Vec<Summary> = b.iter().map(summary).collect();
        for (design, detector) in DESIGNS.iter().zip(&mut designs) {
            detector.observe(&line, time, &mut a);
            let found: Vec<Summary> = a.iter().map(summary).collect();
            assert_eq!(
                found,
                expected,
                "{design:?}, line {i}: {:?}",
                String::from_utf8_lossy(bytes)
            );
            a.clear();
        }
        total += b.len();
        b.clear();
    }
    total
}

#[test]
fn every_front_end_and_capture_engine_counts_exactly_what_the_previous_design_counts() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_lines();
    let mut rng = support::Rng::new(42);
    let generated: Vec<Vec<u8>> = (0..20_000)
        .map(|i| support::auth_line(i, &mut rng).into_bytes())
        .collect();
    // Lines of the filler rules' own applications, so the 500-rule sets match them too.
    let apps: Vec<Vec<u8>> = (0..400)
        .map(|i| {
            format!("Nov 22 10:00:00 web1 app{i}[77]: denied request for u{i} from 10.0.0.{i}")
                .into_bytes()
        })
        .collect();
    let bases: Vec<Vec<u8>> = corpus
        .iter()
        .chain(&generated[..2_000])
        .chain(&apps)
        .cloned()
        .collect();
    for total in [10, 100, 500] {
        let set = shipped_rules_as(dir.path(), total);
        let fuzzed = fuzzed_lines(&set, &bases, 20_000);
        let set = Arc::new(set);
        let generated_hits = compare(set.clone(), &generated);
        let corpus_hits = compare(set.clone(), &corpus);
        let fuzzed_hits = compare(set, &fuzzed);
        eprintln!(
            "{total} rules: {generated_hits} generated, {corpus_hits} corpus, {fuzzed_hits} fuzzed hits alike"
        );
        // The comparison means something only if the lines match rules.
        assert!(generated_hits > 5_000, "{generated_hits}");
        assert!(corpus.is_empty() || corpus_hits > 500, "{corpus_hits}");
        assert!(fuzzed_hits > 2_000, "{fuzzed_hits}");
    }
}

/// The shipped rules multiplied out to `total` rules (written under `dir`), loaded.
fn shipped_rules_as(dir: &Path, total: usize) -> RuleSet {
    let rules = dir.join(format!("rules-{total}"));
    support::write_rules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
        &rules,
        total,
    )
    .unwrap();
    RuleSet::load(&[rules], &RuleContext::default()).expect("rules load")
}

/// What a line's matches say: rule, step, captures and key, in order.
fn found_line(found: &Found, i: usize) -> Vec<(String, usize, String, String)> {
    let line = found.line(i);
    line.matches
        .iter()
        .map(|m| {
            (
                m.rule.id().to_string(),
                m.step,
                line.text[m.captures.clone()].to_string(),
                line.text[m.key.clone()].to_string(),
            )
        })
        .collect()
}

/// One literal pass over a whole piece of lines, then the gate and captures of the lines
/// it names (`Matchers::find_run`, what `replay` runs), finds exactly what the gate finds
/// line by line (`Matchers::find`, what the daemon runs): over generated, corpus and fuzzed
/// lines, ended by LF or CRLF, some cut before their end (a literal beyond the cut must
/// not count), pieces of many sizes (lines at every piece boundary), a piece's first line
/// empty and its last line without a newline, at 10, 100 and 500 rules.
#[test]
fn one_pass_over_a_piece_finds_what_the_gate_finds_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_lines();
    let mut rng = support::Rng::new(5);
    let generated: Vec<Vec<u8>> = (0..6_000)
        .map(|i| support::auth_line(i, &mut rng).into_bytes())
        .collect();
    let bases: Vec<Vec<u8>> = corpus.iter().chain(&generated).cloned().collect();
    for total in [10, 100, 500] {
        let set = shipped_rules_as(dir.path(), total);
        let mut lines = vec![Vec::new()];
        lines.extend(fuzzed_lines(&set, &bases, 6_000));
        lines.extend(bases.iter().cloned());
        let set = Arc::new(set);
        // The piece: every line followed by a newline (every third by CRLF) but the last;
        // every seventh line's range cut 30 bytes short.
        let mut text = Vec::new();
        let mut ranges = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let start = text.len();
            text.extend_from_slice(line);
            let end = if i % 7 == 3 {
                start + line.len().saturating_sub(30)
            } else {
                text.len()
            };
            ranges.push(start..end);
            if i + 1 < lines.len() {
                text.extend_from_slice(if i % 3 == 0 { b"\r\n" } else { b"\n" });
            }
        }
        let sources = ["auth".to_string()];
        let mut by_line = Matchers::new(set.clone(), &sources, Design::CURRENT);
        let mut expected = Found::default();
        for range in &ranges {
            let line = LogLine {
                source: "auth".into(),
                path: "auth.log".into(),
                offset: 0,
                bytes: text[range.clone()].to_vec(),
                arrival: DateTime::from_timestamp_millis(T0).unwrap(),
                time: None,
            };
            by_line.find(&line, &mut expected);
        }
        let mut by_run = Matchers::new(set, &sources, Design::CURRENT);
        let mut found = Found::default();
        let (mut start, mut matched) = (0, 0);
        for size in [1usize, 2, 3, 5, 64, 1_000, 4_096].iter().cycle() {
            if start == ranges.len() {
                break;
            }
            let end = (start + size).min(ranges.len());
            by_run.find_run("auth", &text, &ranges[start..end], &mut found);
            for (i, line) in (start..end).enumerate() {
                let got = found_line(&found, i);
                assert_eq!(
                    got,
                    found_line(&expected, line),
                    "{total} rules, line {line}: {:?}",
                    String::from_utf8_lossy(&text[ranges[line].clone()])
                );
                matched += usize::from(!got.is_empty());
            }
            found.clear();
            start = end;
        }
        eprintln!(
            "{total} rules: {matched} of {} lines matched alike",
            ranges.len()
        );
        assert!(matched > 3_000, "{matched}");
    }
}

/// `replay` finds matches on worker threads and counts them in input order by one stage:
/// its report (every incident, with its key, count, times and evidence, for the shipped
/// rules and a 100-rule set compared in the same pass) is the same on 1, 2 and 3 threads.
#[test]
fn replay_reports_the_same_incidents_on_any_number_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    let mut rng = support::Rng::new(11);
    // Several chunks of lines, so chunks are matched out of order and reordered.
    let text: String = (0..60_000)
        .map(|i| support::auth_line(i, &mut rng) + "\n")
        .collect();
    std::fs::write(&log, text).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let against = dir.path().join("rules-100");
    support::write_rules(&shipped, &against, 100).unwrap();
    let report = |threads: &str| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_logwarden"))
            .args(["replay", "--json", "--config"])
            .arg(dir.path().join("no-config.yaml"))
            .arg("--rules")
            .arg(&shipped)
            .arg("--against")
            .arg(&against)
            .args(["--threads", threads])
            .arg(&log)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let fields = report.as_object_mut().unwrap();
        // How long it took is the only thing allowed to differ.
        fields.remove("seconds");
        fields.remove("lines_per_second");
        report
    };
    let one = report("1");
    assert_eq!(one["lines"], 60_000);
    let both = one["in_both"].as_array().unwrap().len();
    assert!(both >= 5, "the comparison needs incidents: {both}");
    for threads in ["2", "3"] {
        assert!(
            report(threads) == one,
            "--threads {threads} differs from --threads 1"
        );
    }
}

/// A host whose policy forbids memory that is both writable and executable (systemd's
/// `MemoryDenyWriteExecute`, which the shipped unit sets; here the kernel's per-process
/// switch) has no PCRE2 JIT: every pattern falls back to the `regex` crate, and every
/// design still counts exactly the previous design's hits.
#[test]
fn without_a_jit_patterns_fall_back_to_the_regex_crate() {
    const CHILD: &str = "LOGWARDEN_TEST_NO_JIT";
    if std::env::var_os(CHILD).is_none() {
        // In a child process: the switch cannot be turned off again.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "without_a_jit_patterns_fall_back_to_the_regex_crate",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran no test: {text}");
        return;
    }
    // PR_MDWE_REFUSE_EXEC_GAIN: no mapping may become writable and executable.
    // SAFETY: prctl with integer arguments only changes this process's memory policy.
    if unsafe { libc::prctl(libc::PR_SET_MDWE, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "\n!!! this kernel has no PR_SET_MDWE ({}): the no-JIT fallback is not checked here\n",
            std::io::Error::last_os_error()
        );
        return;
    }
    let regex = logwarden::rules::compile_pattern(r"Failed password for (?P<u>\S+)").unwrap();
    let capture = CaptureRegex::new(&regex, Engine::Pcre2);
    assert!(!capture.on_pcre2(), "a JIT was built where W^X is refused");
    let dir = tempfile::tempdir().unwrap();
    let set = Arc::new(shipped_rules_as(dir.path(), 10));
    let mut rng = support::Rng::new(3);
    let lines: Vec<Vec<u8>> = (0..5_000)
        .map(|i| support::auth_line(i, &mut rng).into_bytes())
        .collect();
    assert!(compare(set, &lines) > 1_000);
}
