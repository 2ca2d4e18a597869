//! The daemon's own log output. Log records carry text an attacker controls (file names,
//! captured fields, request paths, syslog peers' messages), and a terminal or log viewer
//! obeys escape sequences in it: a file name could clear the screen, retitle the window or
//! forge log lines. Every record therefore passes one writer that escapes control
//! characters, whatever field or message they came in, instead of each call site having to
//! remember to.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};
use tracing_subscriber::fmt::MakeWriter;

/// Sets up logging to stderr at `RUST_LOG` (default `info`), every record escaped. No ANSI
/// colours: the escaping could not tell the formatter's colour codes from a file name's.
pub fn init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Escaping(std::io::stderr))
        .with_ansi(false)
        .try_init();
}

/// A [`MakeWriter`] whose writers escape control characters (see [`escape_controls`]).
pub struct Escaping<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Escaping<M> {
    type Writer = EscapingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter(self.0.make_writer())
    }
}

/// Writes each buffer with its control characters escaped. The formatter hands over one
/// whole record per write, so the newline that ends it is the only one kept.
pub struct EscapingWriter<W>(W);

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(escape_controls(buf).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `record` with every control character (C0, DEL, C1) and every bidirectional-text
/// override written as an escape (`\n`, `\t`, `\x1b`, `\u{202e}`), except one newline at
/// its end. Invalid UTF-8 becomes U+FFFD.
pub fn escape_controls(record: &[u8]) -> Cow<'_, str> {
    let text = String::from_utf8_lossy(record);
    let (body, end) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (text.as_ref(), ""),
    };
    if !body.chars().any(needs_escape) {
        return text;
    }
    let mut out = String::with_capacity(record.len() + 16);
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push_str(end);
    Cow::Owned(out)
}

/// Control characters, and the invisible marks that reorder how text around them is shown.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_final_newline_kept() {
        assert_eq!(
            escape_controls(b"INFO tailing path=/var/log/a.log\n"),
            "INFO tailing path=/var/log/a.log\n"
        );
        assert_eq!(
            escape_controls(b"path=/x/\x1b]0;pwned\x07\x1b[2Jy.log\n"),
            "path=/x/\\x1b]0;pwned\\x07\\x1b[2Jy.log\n"
        );
        assert_eq!(
            escape_controls("a\nfake INFO line\r\tb\u{9b}c\u{202e}d\x7f\n".as_bytes()),
            "a\\nfake INFO line\\r\\tb\\u{9b}c\\u{202e}d\\x7f\n"
        );
        assert_eq!(
            escape_controls(b"bad \xff utf8\x00"),
            "bad \u{fffd} utf8\\x00"
        );
    }

    #[test]
    fn the_writer_escapes_whole_records() {
        let mut sink = Vec::new();
        let mut w = EscapingWriter(&mut sink);
        w.write_all(b"one \x1b[31mred\x1b[0m\n").unwrap();
        assert_eq!(
            String::from_utf8(sink).unwrap(),
            "one \\x1b[31mred\\x1b[0m\n"
        );
    }
}
