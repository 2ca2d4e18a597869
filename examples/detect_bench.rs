//! Benchmark program for `bench/run.sh`: generates an auth log and rule sets, and measures
//! how many lines per second the detector evaluates (timestamp parsing, the front end that
//! finds candidate patterns, captures on hits, windows), single-threaded, with no store or
//! notifications. DESIGN is `FRONT[+ENGINE]` (`set` or `gate`; `regex` or `pcre2`),
//! `previous` (`set+regex`, the design before PCRE2), or nothing (the detector's own).
//!
//! ```text
//! detect_bench gen-log LINES FILE
//! detect_bench gen-rules SHIPPED_DIR OUT_DIR TOTAL
//! detect_bench run RULES_DIR LOG [DESIGN]   # the detector
//! detect_bench pass RULES_DIR LOG [DESIGN]  # only finding candidates: the front end's floor
//! detect_bench keys RULES_DIR KEYS  # memory per key: a flood of one-time addresses
//! ```

#[path = "../bench/support.rs"]
mod support;

use chrono::{DateTime, Utc};
use logwarden::detection::Detector;
use logwarden::detection::capture::Engine;
use logwarden::detection::matcher::{Design, Front, Screened, Screening, SourceMatcher};
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
        ["run", rules, log, front @ ..] if front.len() <= 1 => run(
            &PathBuf::from(rules),
            &PathBuf::from(log),
            parse_front(front),
        ),
        ["pass", rules, log, front @ ..] if front.len() <= 1 => pass(
            &PathBuf::from(rules),
            &PathBuf::from(log),
            parse_front(front),
        ),
        ["keys", rules, count] => keys(&PathBuf::from(rules), count.parse().expect("KEYS")),
        _ => {
            eprintln!(
                "usage: detect_bench gen-log LINES FILE | gen-rules SHIPPED OUT TOTAL | run RULES LOG [gate|set] | pass RULES LOG [gate|set] | keys RULES KEYS"
            );
            std::process::exit(2);
        }
    }
}

/// `FRONT[+ENGINE]`: `set` or `gate`, then `regex` or `pcre2` (default: the detector's
/// engine); `previous` is the design before PCRE2 (`set+regex`), nothing the detector's.
fn parse_front(arg: &[&str]) -> Design {
    let text = match arg {
        [] => return Design::CURRENT,
        ["previous"] => return Design::PREVIOUS,
        [text] => *text,
        _ => unreachable!("at most one argument"),
    };
    let (front, engine) = text.split_once('+').unwrap_or((text, ""));
    let front = match front {
        "set" => Front::Set,
        "gate" => Front::Gate,
        other => {
            eprintln!("front end is gate or set, not {other:?}");
            std::process::exit(2);
        }
    };
    let engine = match engine {
        "" => Design::CURRENT.engine,
        "regex" => Engine::Regex,
        "pcre2" => Engine::Pcre2,
        other => {
            eprintln!("capture engine is regex or pcre2, not {other:?}");
            std::process::exit(2);
        }
    };
    Design { front, engine }
}

fn load(rules: &std::path::Path) -> RuleSet {
    RuleSet::load(&[rules.to_path_buf()], &RuleContext::default()).unwrap_or_else(|e| {
        for d in e {
            eprintln!("{d}");
        }
        std::process::exit(1);
    })
}

/// Reads `log` as source `auth` with syslog times and hands each line and its time to
/// `each`; returns the number of lines and the seconds it took (reading included).
fn read_log(log: &std::path::Path, mut each: impl FnMut(&LogLine, DateTime<Utc>)) -> (u64, f64) {
    let format = TimestampFormat::Syslog;
    let reader =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(log).expect("open log"));
    let source: Arc<str> = "auth".into();
    let path: Arc<str> = log.display().to_string().into();
    let arrival = chrono::Utc::now();
    let (mut lines, mut offset) = (0u64, 0);
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
            time: None,
        };
        offset += len;
        let time = format.parse(&line.bytes, arrival).unwrap_or(arrival);
        each(&line, time);
        lines += 1;
    }
    (lines, start.elapsed().as_secs_f64())
}

/// The whole detector: the pass, captures on hits, keys and windows.
fn run(rules: &std::path::Path, log: &std::path::Path, front: Design) {
    let set = load(rules);
    let rule_count = set.rules.len();
    let mut detector = Detector::with_design(Arc::new(set), &["auth".to_string()], front);
    let mut hits = Vec::new();
    let (mut seen, mut matches, mut crossed) = (0u64, 0u64, 0u64);
    let (lines, seconds) = read_log(log, |line, time| {
        detector.observe(line, time, &mut hits);
        seen += 1;
        matches += hits.len() as u64;
        crossed += hits.iter().filter(|h| h.crossed.is_some()).count() as u64;
        hits.clear();
        if seen % 100_000 == 0 {
            detector.expire(time);
        }
    });
    println!(
        "{{\"rules\": {rule_count}, \"lines\": {lines}, \"matches\": {matches}, \"crossed\": {crossed}, \"seconds\": {seconds:.3}, \"lines_per_second\": {:.0}, \"live_keys\": {}}}",
        lines as f64 / seconds,
        detector.live_keys()
    );
}

/// The floor of a front end: reading, timestamps and finding candidate patterns, with no
/// captures, keys or windows, as replay's workers do it: the log in pieces of whole lines,
/// one screen over each piece, then the candidates of the lines it names. (With the gate,
/// a candidate is not yet a match: its capture run decides, and that is counted in `run`.)
fn pass(rules: &std::path::Path, log: &std::path::Path, front: Design) {
    let set = load(rules);
    let rule_count = set.rules.len();
    let mut matcher = SourceMatcher::with_design(&set, "auth", front);
    let mut candidates = Vec::new();
    let (mut screened, mut ranges) = (Screened::default(), Vec::new());
    let (mut lines, mut with_candidates) = (0u64, 0u64);
    let format = TimestampFormat::Syslog;
    let arrival = chrono::Utc::now();
    let mut file = std::fs::File::open(log).expect("open log");
    let mut piece: Vec<u8> = Vec::with_capacity(PIECE + (64 << 10));
    let start = Instant::now();
    loop {
        // A piece of whole lines: what is left of the last read, then up to `PIECE` more
        // bytes, cut after its last newline.
        let kept = piece.len();
        piece.resize(kept + PIECE, 0);
        let read = std::io::Read::read(&mut file, &mut piece[kept..]).expect("read log");
        piece.truncate(kept + read);
        if piece.is_empty() {
            break;
        }
        let end = match memchr::memrchr(b'\n', &piece) {
            Some(newline) if read > 0 => newline + 1,
            _ => piece.len(),
        };
        ranges.clear();
        let mut at = 0;
        while at < end {
            let stop = memchr::memchr(b'\n', &piece[at..end]).map_or(end, |n| at + n);
            ranges.push(at..stop);
            std::hint::black_box(format.parse(&piece[at..stop], arrival));
            at = stop + 1;
        }
        matcher.screen(&piece, &ranges, &mut screened);
        for (i, range) in ranges.iter().enumerate() {
            let literals = match screened.line(i) {
                Screening::Nothing => continue,
                Screening::Literals(literals) => Some(literals),
                Screening::Unscreened => None,
            };
            matcher.candidates(&piece[range.clone()], literals, &mut candidates);
            with_candidates += u64::from(!candidates.is_empty());
        }
        lines += ranges.len() as u64;
        piece.drain(..end);
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"rules\": {rule_count}, \"lines\": {lines}, \"lines_with_candidates\": {with_candidates}, \"seconds\": {seconds:.3}, \"lines_per_second\": {:.0}}}",
        lines as f64 / seconds,
    );
}

/// Bytes read at a time in `pass` (replay's pieces are of the same order).
const PIECE: usize = 1 << 20;

/// Resident memory of this process in bytes (Linux).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Memory per key: `keys` failed SSH logins, each from a new address (the flood an
/// attacker uses to push its own key out), through the rules as the daemon runs them
/// (changed windows taken for storing as they are made). Prints the growth of the resident
/// set per live key.
fn keys(rules: &std::path::Path, keys: u32) {
    let set = load(rules);
    let rule_count = set.rules.len();
    let mut detector = Detector::new(Arc::new(set), &["auth".to_string()]);
    let mut hits = Vec::new();
    let (source, path): (Arc<str>, Arc<str>) = ("auth".into(), "/var/log/auth.log".into());
    let start = chrono::Utc::now();
    let before = rss();
    for i in 0..keys {
        let time = start + chrono::Duration::milliseconds(i64::from(i) / 100);
        let bytes = format!(
            "Nov 22 10:00:00 web1 sshd[{}]: Failed password for invalid user u{i} from 10.{}.{}.{} port {} ssh2",
            1000 + i % 30000,
            i >> 16,
            (i >> 8) & 255,
            i & 255,
            40000 + i % 20000
        )
        .into_bytes();
        let line = LogLine {
            source: source.clone(),
            path: path.clone(),
            offset: u64::from(i) * 120,
            bytes,
            arrival: time,
            time: None,
        };
        detector.observe(&line, time, &mut hits);
        hits.clear();
        if i % 1000 == 0 {
            drop(detector.take_dirty());
        }
    }
    drop(detector.take_dirty());
    let grown = rss().saturating_sub(before);
    let live = detector.live_keys() as u64;
    println!(
        "{{\"rules\": {rule_count}, \"lines\": {keys}, \"live_keys\": {live}, \"rss_growth_bytes\": {grown}, \"bytes_per_key\": {}}}",
        grown / live.max(1)
    );
}
