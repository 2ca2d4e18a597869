//! The capture engine: runs one pattern on a line and reports where its groups matched.
//!
//! Measured on the shipped rules (docs/performance.md), one capture run of the `regex`
//! crate costs ~1,150 ns on an attack line and PCRE2 with its JIT ~125 ns; the pure-Rust
//! bounded backtracker of `regex-automata` ~870 ns, far from within 20 %. So patterns run
//! on PCRE2's JIT where that is known to be safe, and on the `regex` crate otherwise:
//!
//! - Every pattern is still parsed, validated and compiled by the `regex` crate (syntax and
//!   `check` messages unchanged): that regex is the reference and the fallback.
//! - The PCRE2 pattern is not the rule's text: it is written from the `regex` crate's own
//!   syntax tree (byte mode, as the rules compile), with every class spelled out as byte
//!   ranges and `^`/`$` as `\A`/`\z`, so both engines read the same bytes the same way.
//!   Constructs whose semantics could differ between a backtracker and the `regex` crate
//!   (Unicode classes or word boundaries, multi-line anchors, repeated groups that capture
//!   or can match empty) keep the pattern on the `regex` crate. A differential check then
//!   runs both engines on lines built from the pattern's own pieces; any difference keeps
//!   it on the `regex` crate too.
//! - PCRE2 runs with a match limit and a depth limit; an error or a limit on a line (a
//!   crafted line that makes it backtrack) re-runs that line on the `regex` crate. So a
//!   line never matches differently, and costs at most the limit more than the `regex`
//!   crate would.
//! - Without a JIT (a host whose W^X policy forbids it) patterns stay on the `regex` crate.

use regex_syntax::hir::{Class, Hir, HirKind, Look};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// PCRE2's backtracking steps allowed per line before the line goes to the `regex` crate.
/// Attack lines of the shipped rules need well under a thousand; crafted 64 kB lines a
/// few hundred thousand.
const MATCH_LIMIT: u32 = 1_000_000;
/// PCRE2's backtracking depth allowed per line (the interpreter's; the JIT is bounded by
/// its stack, whose overflow is an error like any other).
const DEPTH_LIMIT: u32 = 10_000;
/// Largest repetition count written to PCRE2 (its own limit is 65,535).
const MAX_REPEAT: u32 = 65_535;

/// Lines PCRE2 gave up on (limit or error) and the `regex` crate answered, since start.
static FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// How many lines fell back from PCRE2 to the `regex` crate since the process started.
pub fn fallbacks() -> u64 {
    FALLBACKS.load(Ordering::Relaxed)
}

/// Which engine runs captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// PCRE2's JIT for the patterns the checks accept, the `regex` crate for the others.
    Pcre2,
    /// The `regex` crate for every pattern (the previous design; and what a host without
    /// a JIT gets).
    Regex,
}

/// One pattern, ready to run captures.
#[derive(Clone)]
pub struct CaptureRegex {
    regex: regex::bytes::Regex,
    pcre: Option<Arc<pcre2::bytes::Regex>>,
}

/// Where the groups of a pattern's last run matched: slots reused from line to line.
#[derive(Clone)]
pub struct Slots {
    regex: regex::bytes::CaptureLocations,
    pcre: Option<pcre2::bytes::CaptureLocations>,
    /// The last run's answer came from PCRE2.
    from_pcre: bool,
}

impl Slots {
    /// Start and end of group `group` in the last matching line, if it took part.
    #[inline]
    pub fn get(&self, group: usize) -> Option<(usize, usize)> {
        match (&self.pcre, self.from_pcre) {
            (Some(pcre), true) => pcre.get(group),
            _ => self.regex.get(group),
        }
    }
}

impl CaptureRegex {
    /// `regex` (the rule's compiled pattern) and its text, run by `engine`.
    pub fn new(regex: &regex::bytes::Regex, engine: Engine) -> Self {
        let pcre = match engine {
            Engine::Regex => None,
            Engine::Pcre2 => pcre_twin(regex).map(Arc::new),
        };
        CaptureRegex {
            regex: regex.clone(),
            pcre,
        }
    }

    /// Whether PCRE2 runs this pattern.
    pub fn on_pcre2(&self) -> bool {
        self.pcre.is_some()
    }

    /// Slots for this pattern's runs.
    pub fn slots(&self) -> Slots {
        Slots {
            regex: self.regex.capture_locations(),
            pcre: self.pcre.as_ref().map(|p| p.capture_locations()),
            from_pcre: false,
        }
    }

    /// Runs the pattern on `line`; on a match, `slots` hold its groups.
    #[inline]
    pub fn captures(&self, slots: &mut Slots, line: &[u8]) -> bool {
        if let (Some(pcre), Some(locations)) = (&self.pcre, &mut slots.pcre) {
            match pcre.captures_read(locations, line) {
                Ok(found) => {
                    slots.from_pcre = true;
                    return found.is_some();
                }
                Err(_) => {
                    FALLBACKS.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        slots.from_pcre = false;
        self.regex.captures_read(&mut slots.regex, line).is_some()
    }
}

/// The PCRE2 twin of `regex`, when the pattern translates, compiles with the JIT and
/// passes the differential check.
fn pcre_twin(regex: &regex::bytes::Regex) -> Option<pcre2::bytes::Regex> {
    let hir = parse(regex.as_str())?;
    let mut text = format!("(*LIMIT_MATCH={MATCH_LIMIT})(*LIMIT_DEPTH={DEPTH_LIMIT})");
    translate(&hir, &mut text).ok()?;
    let pcre = match pcre2::bytes::RegexBuilder::new().jit(true).build(&text) {
        Ok(pcre) => pcre,
        Err(e) => {
            // No JIT here (or a pattern PCRE2 cannot hold): the `regex` crate serves.
            tracing::debug!(pattern = regex.as_str(), error = %e, "pattern runs on the regex crate");
            return None;
        }
    };
    agree(regex, &pcre, &hir).then_some(pcre)
}

/// The pattern's syntax tree, parsed as [`crate::rules::compile_pattern`] compiles it.
fn parse(pattern: &str) -> Option<Hir> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()
}

/// Why a pattern stays on the `regex` crate.
#[derive(Debug)]
struct Untranslatable;

/// Writes `hir` as a PCRE2 pattern (no UTF, no UCP: one byte is one character) that
/// matches exactly the same bytes with the same groups, or refuses.
fn translate(hir: &Hir, out: &mut String) -> Result<(), Untranslatable> {
    use std::fmt::Write;
    match hir.kind() {
        HirKind::Empty => {}
        HirKind::Literal(lit) => {
            for &b in lit.0.iter() {
                push_byte(out, b);
            }
        }
        HirKind::Class(class) => {
            let ranges: Vec<(u32, u32)> = match class {
                Class::Bytes(bytes) => bytes
                    .iter()
                    .map(|r| (u32::from(r.start()), u32::from(r.end())))
                    .collect(),
                Class::Unicode(chars) => chars
                    .iter()
                    .map(|r| (u32::from(r.start()), u32::from(r.end())))
                    .collect(),
            };
            // A Unicode class beyond ASCII matches multi-byte characters: not bytes.
            if ranges.is_empty()
                || ranges
                    .iter()
                    .any(|&(_, end)| end > 0x7f && matches!(class, Class::Unicode(_)))
            {
                return Err(Untranslatable);
            }
            out.push('[');
            for (start, end) in ranges {
                push_byte(out, start as u8);
                if end != start {
                    out.push('-');
                    push_byte(out, end as u8);
                }
            }
            out.push(']');
        }
        HirKind::Look(look) => out.push_str(match look {
            Look::Start => r"\A",
            Look::End => r"\z",
            Look::WordAscii => r"\b",
            Look::WordAsciiNegate => r"\B",
            _ => return Err(Untranslatable),
        }),
        HirKind::Repetition(rep) => {
            let repeats = rep.max != Some(1);
            let props = rep.sub.properties();
            // A backtracker and the `regex` crate may report different groups for a group
            // repeated, and treat empty iterations differently.
            if repeats && (props.explicit_captures_len() > 0 || props.minimum_len() == Some(0)) {
                return Err(Untranslatable);
            }
            if rep.min > MAX_REPEAT || rep.max.is_some_and(|m| m > MAX_REPEAT) {
                return Err(Untranslatable);
            }
            out.push_str("(?:");
            translate(&rep.sub, out)?;
            out.push(')');
            let _ = match rep.max {
                Some(max) if max == rep.min => write!(out, "{{{max}}}"),
                Some(max) => write!(out, "{{{},{max}}}", rep.min),
                None => write!(out, "{{{},}}", rep.min),
            };
            if !rep.greedy {
                out.push('?');
            }
        }
        HirKind::Capture(capture) => {
            // Unnamed: groups are read by index, which both engines number alike.
            out.push('(');
            translate(&capture.sub, out)?;
            out.push(')');
        }
        HirKind::Concat(children) => {
            for child in children {
                translate(child, out)?;
            }
        }
        HirKind::Alternation(branches) => {
            out.push_str("(?:");
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                translate(branch, out)?;
            }
            out.push(')');
        }
    }
    Ok(())
}

/// One byte as a PCRE2 literal character, in a class or not.
fn push_byte(out: &mut String, b: u8) {
    use std::fmt::Write;
    if b.is_ascii_alphanumeric() {
        out.push(b as char);
    } else {
        let _ = write!(out, "\\x{{{b:02x}}}");
    }
}

/// The differential check: both engines on lines made of the pattern's own pieces (each
/// choice taken first and last), alone and amid other text, must report the same groups.
fn agree(regex: &regex::bytes::Regex, pcre: &pcre2::bytes::Regex, hir: &Hir) -> bool {
    let mut lines: Vec<Vec<u8>> = vec![Vec::new(), b"x".to_vec()];
    for last in [false, true] {
        let mut sample = Vec::new();
        example(hir, last, &mut sample);
        let mut padded = b"x ".to_vec();
        padded.extend_from_slice(&sample);
        padded.extend_from_slice(b" x");
        let mut twice = sample.clone();
        twice.push(b' ');
        twice.extend_from_slice(&sample);
        lines.extend([sample, padded, twice]);
    }
    let mut ours = regex.capture_locations();
    let mut theirs = pcre.capture_locations();
    lines.iter().all(|line| {
        let a = regex.captures_read(&mut ours, line).is_some();
        let Ok(b) = pcre.captures_read(&mut theirs, line) else {
            return false;
        };
        a == b.is_some() && (!a || (0..ours.len()).all(|g| ours.get(g) == theirs.get(g)))
    })
}

/// A string `hir` matches, taking each class's and alternation's first choice, or last
/// (`last`), and each repetition's least count (at least one).
fn example(hir: &Hir, last: bool, out: &mut Vec<u8>) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => out.extend_from_slice(&lit.0),
        HirKind::Class(Class::Bytes(bytes)) => {
            let range = if last {
                bytes.ranges().last()
            } else {
                bytes.ranges().first()
            };
            if let Some(r) = range {
                out.push(if last { r.end() } else { r.start() });
            }
        }
        HirKind::Class(Class::Unicode(chars)) => {
            let range = if last {
                chars.ranges().last()
            } else {
                chars.ranges().first()
            };
            if let Some(r) = range {
                let c = if last { r.end() } else { r.start() };
                out.extend_from_slice(c.to_string().as_bytes());
            }
        }
        HirKind::Repetition(rep) => {
            for _ in 0..rep.min.clamp(1, 8) {
                example(&rep.sub, last, out);
            }
        }
        HirKind::Capture(capture) => example(&capture.sub, last, out),
        HirKind::Concat(children) => children.iter().for_each(|c| example(c, last, out)),
        HirKind::Alternation(branches) => {
            let branch = if last {
                branches.last()
            } else {
                branches.first()
            };
            if let Some(b) = branch {
                example(b, last, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(pattern: &str) -> CaptureRegex {
        CaptureRegex::new(
            &crate::rules::compile_pattern(pattern).unwrap(),
            Engine::Pcre2,
        )
    }

    fn groups(c: &CaptureRegex, line: &[u8]) -> Option<Vec<Option<(usize, usize)>>> {
        let mut slots = c.slots();
        c.captures(&mut slots, line)
            .then(|| (0..slots.regex.len()).map(|g| slots.get(g)).collect())
    }

    fn reference(pattern: &str, line: &[u8]) -> Option<Vec<Option<(usize, usize)>>> {
        let regex = crate::rules::compile_pattern(pattern).unwrap();
        let mut locations = regex.capture_locations();
        regex
            .captures_read(&mut locations, line)
            .map(|_| (0..locations.len()).map(|g| locations.get(g)).collect())
    }

    #[test]
    fn shipped_shapes_run_on_pcre2_and_report_the_same_groups() {
        let pattern = r"sshd\[\d+\]: Failed (?:password|publickey) for (?:invalid user )?(?P<user>.*) from (?P<ip>\S+) port \d+";
        let c = compiled(pattern);
        assert!(c.on_pcre2(), "no JIT on this host?");
        for line in [
            &b"Jan  1 00:00:00 h sshd[12]: Failed password for root from 1.2.3.4 port 22 ssh2"[..],
            b"sshd[1]: Failed password for invalid user a from 5.6.7.8 port 1 from 9.9.9.9 port 2",
            b"sshd[1]: Failed password for \xff\xfe from 2001:db8::1 port 3",
            b"sshd[1]: Accepted password for root from 1.2.3.4 port 22",
        ] {
            assert_eq!(groups(&c, line), reference(pattern, line), "{line:?}");
        }
    }

    #[test]
    fn constructs_that_may_differ_stay_on_the_regex_crate() {
        for pattern in [
            r"(?u)\w+ failed",
            r"(?m)^failed$",
            r"(?:(a)|b)+c",
            r"(?:a*)+b",
            r"(?u)\bfail",
        ] {
            assert!(!compiled(pattern).on_pcre2(), "{pattern}");
        }
        for pattern in [
            r"^fail(?:ed)?$",
            r"(?i)FAILED \w+",
            r"\bfrom\b [^ ]+",
            r"a{2,5}?b",
        ] {
            assert!(compiled(pattern).on_pcre2(), "{pattern}");
        }
    }

    /// A line that makes PCRE2 backtrack past its limit is answered by the `regex` crate.
    #[test]
    fn a_line_past_the_match_limit_falls_back_with_the_same_answer() {
        let pattern = r"(?:a|aa)+(?:b|c)x";
        let c = compiled(pattern);
        assert!(c.on_pcre2());
        // The `x` is on the line after the `a`s (so PCRE2 cannot rule the match out before
        // trying), but not right after the `b`: every way to split the `a`s is tried.
        let mut line = vec![b'a'; 60];
        line.extend_from_slice(b"b x");
        let before = fallbacks();
        assert_eq!(groups(&c, &line), reference(pattern, &line));
        assert!(fallbacks() > before, "the limit was not reached");
        let line = [&[b'a'; 60][..], b"bx"].concat();
        assert!(groups(&c, &line).is_some());
        assert_eq!(groups(&c, &line), reference(pattern, &line));
    }

    /// The shipped rules are what most hosts run: every one of their patterns must get the
    /// faster engine (a shape the translation refuses would silently cost 9× per capture).
    #[test]
    fn every_shipped_pattern_runs_on_pcre2() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let set = crate::rules::RuleSet::load(&[dir], &crate::rules::RuleContext::default())
            .expect("shipped rules load");
        let mut patterns = 0;
        for rule in &set.rules {
            for regex in &rule.patterns {
                patterns += 1;
                let c = CaptureRegex::new(regex, Engine::Pcre2);
                assert!(c.on_pcre2(), "{}: {}", rule.id(), regex.as_str());
            }
        }
        assert!(patterns >= 20, "{patterns}");
    }

    #[test]
    fn the_regex_engine_never_builds_pcre2() {
        let regex = crate::rules::compile_pattern("from (?P<ip>\\S+)").unwrap();
        let c = CaptureRegex::new(&regex, Engine::Regex);
        assert!(!c.on_pcre2());
        assert_eq!(
            groups(&c, b"from 1.2.3.4"),
            reference("from (?P<ip>\\S+)", b"from 1.2.3.4")
        );
    }
}
