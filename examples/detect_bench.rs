//! Benchmark program for `bench/run.sh`: generates an auth log and rule sets, and measures
//! how many lines per second the detector evaluates (timestamp parsing, the multi-pattern
//! pass, captures on hits, windows), single-threaded, with no store or notifications.
//!
//! ```text
//! detect_bench gen-log LINES FILE
//! detect_bench gen-rules SHIPPED_DIR OUT_DIR TOTAL
//! detect_bench run RULES_DIR LOG
//! ```

#[path = "../bench/support.rs"]
mod support;

use logwarden::detection::Detector;
use logwarden::rules::{RuleContext, RuleSet};
use logwarden::sources::LogLine;
use logwarden::sources::timestamp::TimestampFormat;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["gen-log", lines, file] => {
            let n: u64 = lines.parse().expect("LINES is a number");
            let mut out = BufWriter::new(std::fs::File::create(file).expect("create log"));
            let mut rng = support::Rng::new(42);
            for i in 0..n {
                writeln!(out, "{}", support::auth_line(i, &mut rng)).expect("write log");
            }
            out.flush().expect("write log");
        }
        ["gen-rules", shipped, dir, total] => {
            let n = support::write_rules(
                &PathBuf::from(shipped),
                &PathBuf::from(dir),
                total.parse().expect("TOTAL is a number"),
            )
            .expect("write rules");
            println!("{n}");
        }
        ["run", rules, log] => run(&PathBuf::from(rules), &PathBuf::from(log)),
        _ => {
            eprintln!(
                "usage: detect_bench gen-log LINES FILE | gen-rules SHIPPED OUT TOTAL | run RULES LOG"
            );
            std::process::exit(2);
        }
    }
}

fn run(rules: &std::path::Path, log: &std::path::Path) {
    let set = RuleSet::load(&[rules.to_path_buf()], &RuleContext::default()).unwrap_or_else(|e| {
        for d in e {
            eprintln!("{d}");
        }
        std::process::exit(1);
    });
    let rule_count = set.rules.len();
    let mut detector = Detector::new(Arc::new(set), &["auth".to_string()]);
    let format = TimestampFormat::Syslog;
    let reader =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(log).expect("open log"));
    let source: Arc<str> = "auth".into();
    let path: Arc<str> = log.display().to_string().into();
    let arrival = chrono::Utc::now();
    let mut hits = Vec::new();
    let (mut lines, mut matches, mut crossed) = (0u64, 0u64, 0u64);
    let mut offset = 0;
    let start = Instant::now();
    for raw in reader.split(b'\n') {
        let bytes = raw.expect("read log");
        let len = bytes.len() as u64 + 1;
        let line = LogLine {
            source: source.clone(),
            path: path.clone(),
            offset,
            bytes,
            arrival,
        };
        offset += len;
        let time = format.parse(&line.bytes, arrival).unwrap_or(arrival);
        detector.observe(&line, time, &mut hits);
        lines += 1;
        matches += hits.len() as u64;
        crossed += hits.iter().filter(|h| h.crossed.is_some()).count() as u64;
        hits.clear();
        if lines % 100_000 == 0 {
            detector.expire(time);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"rules\": {rule_count}, \"lines\": {lines}, \"matches\": {matches}, \"crossed\": {crossed}, \"seconds\": {seconds:.3}, \"lines_per_second\": {:.0}, \"live_keys\": {}}}",
        lines as f64 / seconds,
        detector.live_keys()
    );
}
