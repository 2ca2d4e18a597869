//! Syslog messages (RFC 3164 and RFC 5424) turned into the text a local log file holds, so
//! one rule pack serves files and network alike.
//!
//! Apart from the listener because it is pure: one frame in, one line (or nothing) out.

/// Turns one syslog message into the text a local log file would hold; `None` when it has
/// no valid `<PRI>`.
pub fn normalize(frame: &[u8]) -> Option<Vec<u8>> {
    let rest = frame.strip_prefix(b"<")?;
    let close = rest.iter().take(4).position(|b| *b == b'>')?;
    let pri: u16 = std::str::from_utf8(&rest[..close]).ok()?.parse().ok()?;
    if close == 0 || pri > 191 {
        return None;
    }
    let body = &rest[close + 1..];
    match body.strip_prefix(b"1 ") {
        Some(v1) => rfc5424(v1),
        // RFC 3164 already reads like a log file line.
        None => Some(body.to_vec()),
    }
}

/// `TIMESTAMP HOST APP PROCID MSGID SD MSG` → `TIMESTAMP HOST APP[PROCID]: MSG`.
fn rfc5424(v1: &[u8]) -> Option<Vec<u8>> {
    let mut fields = v1.splitn(6, |b| *b == b' ');
    let timestamp = fields.next()?;
    let host = fields.next()?;
    let app = fields.next()?;
    let procid = fields.next()?;
    let _msgid = fields.next()?;
    let rest = fields.next().unwrap_or(b"");
    let msg = skip_structured_data(rest)?;
    let msg = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
    let mut out = Vec::with_capacity(v1.len());
    out.extend_from_slice(timestamp);
    out.push(b' ');
    out.extend_from_slice(host);
    out.push(b' ');
    out.extend_from_slice(app);
    if procid != b"-" {
        out.push(b'[');
        out.extend_from_slice(procid);
        out.push(b']');
    }
    out.extend_from_slice(b": ");
    out.extend_from_slice(msg);
    Some(out)
}

/// The message after STRUCTURED-DATA (`-` or `[id k="v" ...]...`, with `\]` escapes).
fn skip_structured_data(rest: &[u8]) -> Option<&[u8]> {
    if let Some(after) = rest.strip_prefix(b"-") {
        return Some(after.strip_prefix(b" ").unwrap_or(after));
    }
    let mut i = 0;
    while rest.get(i) == Some(&b'[') {
        let mut escaped = false;
        let mut in_quotes = false;
        loop {
            i += 1;
            let b = *rest.get(i)?;
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_quotes = !in_quotes,
                b']' if !in_quotes => break,
                _ => {}
            }
        }
        i += 1;
    }
    let after = &rest[i..];
    Some(after.strip_prefix(b" ").unwrap_or(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_rfcs_become_log_file_lines() {
        assert_eq!(
            normalize(b"<38>Nov 22 10:00:01 web1 sshd[811]: Failed password").unwrap(),
            b"Nov 22 10:00:01 web1 sshd[811]: Failed password"
        );
        assert_eq!(
            normalize(b"<38>1 2026-11-22T10:00:01.5Z web1 sshd 811 - [meta x=\"a]\\\"b\"][o y=\"1\"] \xEF\xBB\xBFFailed password").unwrap(),
            b"2026-11-22T10:00:01.5Z web1 sshd[811]: Failed password"
        );
        assert_eq!(
            normalize(b"<13>1 2026-11-22T10:00:01Z h app - - - hello").unwrap(),
            b"2026-11-22T10:00:01Z h app: hello"
        );
    }

    #[test]
    fn frames_without_a_valid_pri_are_malformed() {
        for bad in [
            &b"no pri"[..],
            b"<>x",
            b"<999>x",
            b"<12",
            b"<1a>x",
            b"<38>1 2026 h app 1",
        ] {
            assert_eq!(normalize(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
