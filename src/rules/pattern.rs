//! User patterns compiled with the bounds every rule pattern gets.
//!
//! Apart from rule compilation because `check` and the replay tools compile single
//! patterns too, and because a pattern error carries a character offset that the rule
//! loader turns into a `file:line:col`.

use regex::bytes::{Regex, RegexBuilder};

/// Compiled-program budget for one user pattern: a pathological rule must fail to load,
/// not exhaust memory.
const REGEX_SIZE_LIMIT: usize = 8 << 20;
/// Budget for the lazy DFA cache of one pattern.
const REGEX_DFA_LIMIT: usize = 8 << 20;

/// Longest pattern compiled: the regex parser's memory grows with the text before the
/// compiled-size limit can refuse it.
pub const MAX_PATTERN_BYTES: usize = 64 * 1024;

/// A pattern that does not compile: why, and at which character when the parser says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PatternError {
    /// The regex crate's reason, on one line.
    pub message: String,
    /// 0-based character offset of the problem inside the pattern.
    pub offset: Option<usize>,
}

/// Compiles a user regex with the resource bounds every pattern gets.
///
/// Patterns run on raw bytes with Unicode classes off (`\S`, `.` and `\w` work byte-wise,
/// as grep in the C locale): with Unicode on, `\S` would not match invalid UTF-8, and an
/// attacker could slip past a rule by putting such bytes in a user name. `(?u)` turns
/// Unicode back on inside a pattern.
pub fn compile_pattern(pattern: &str) -> Result<Regex, PatternError> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(PatternError {
            message: format!(
                "pattern is {} bytes; at most {MAX_PATTERN_BYTES} are allowed",
                pattern.len()
            ),
            offset: None,
        });
    }
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map_err(|e| PatternError {
            message: regex_message(&e),
            offset: syntax_error_offset(pattern),
        })
}

/// The regex crate's own message on one line (its syntax errors span several lines).
fn regex_message(err: &regex::Error) -> String {
    let text = err.to_string();
    match text.lines().find_map(|l| l.trim().strip_prefix("error: ")) {
        Some(reason) => reason.to_string(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Where the regex parser places a syntax error, as a character offset into the pattern.
fn syntax_error_offset(pattern: &str) -> Option<usize> {
    let err = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .err()?;
    let span = match &err {
        regex_syntax::Error::Parse(e) => e.span(),
        regex_syntax::Error::Translate(e) => e.span(),
        _ => return None,
    };
    Some(pattern.get(..span.start.offset)?.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_bytes_and_syntax_errors_name_their_character() {
        let r = compile_pattern(r"user (\S+)").unwrap();
        assert!(r.is_match(b"user \xff\xfe"));
        let e = compile_pattern("ab(c").unwrap_err();
        assert_eq!(e.offset, Some(2), "{e:?}");
        assert!(!e.message.contains('\n'), "{e:?}");
        assert_eq!(e.to_string(), e.message);
    }

    #[test]
    fn an_oversized_pattern_is_refused_before_it_is_parsed() {
        let e = compile_pattern(&"a".repeat(MAX_PATTERN_BYTES + 1)).unwrap_err();
        assert!(e.message.contains("at most"), "{e:?}");
        assert_eq!(e.offset, None);
    }
}
