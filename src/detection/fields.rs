//! Named values in one compact, shared string: a key's `group_by` values and a match's
//! captures.
//!
//! Every counted match needs both. As `BTreeMap<String, String>` each cost an allocation per
//! name, value and node, and hashing or comparing one walks the tree: that was most of the
//! per-match cost. Here the pairs are encoded in name order into one `Arc<str>`: a key is
//! written into a reused buffer and looked up as `&str` without allocating, and putting it
//! into a hit or the dirty set is a reference-count increment. Maps are made only where a
//! person or the store sees the values.
//!
//! Encoding: for each pair, `<name length>:<name><value length>:<value>`, so any name or
//! value (colons, digits, empty) reads back unambiguously.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Named values, in name order, in one shared string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fields(Arc<str>);

impl Fields {
    /// Fields from text written by [`push`] (pairs in name order).
    pub fn from_encoded(encoded: &str) -> Self {
        Fields(Arc::from(encoded))
    }

    /// Fields holding a map's pairs (already in name order).
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        let mut text = String::new();
        for (name, value) in map {
            push(&mut text, name, value);
        }
        Fields::from_encoded(&text)
    }

    /// A borrowed view to read the values.
    pub fn view(&self) -> FieldsView<'_> {
        FieldsView(&self.0)
    }

    /// The value stored under `name`, `None` when there is no such pair (a scan: a key or
    /// a match holds a handful).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.view().get(name)
    }

    /// The pairs as a map (for incidents, the store and people).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.view().to_map()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Lets a table keyed by `Fields` be searched with a key written into a reused buffer.
impl Borrow<str> for Fields {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.view().fmt(f)
    }
}

/// Encoded fields read in place: what the detection kinds and exclusions look values up in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FieldsView<'a>(&'a str);

impl<'a> FieldsView<'a> {
    /// A view of text written by [`push`].
    pub fn new(encoded: &'a str) -> Self {
        FieldsView(encoded)
    }

    /// The value stored under `name`, borrowed from the encoded text; `None` when absent. A
    /// linear scan: keys and captures hold a handful of pairs.
    pub fn get(self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The pairs in name order.
    pub fn iter(self) -> impl Iterator<Item = (&'a str, &'a str)> + Clone {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            // Text not written by `push` ends the pairs instead of panicking.
            let name = take(&mut rest)?;
            let value = take(&mut rest)?;
            Some((name, value))
        })
    }

    /// The pairs as a map.
    pub fn to_map(self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }
}

impl fmt::Debug for FieldsView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Appends one pair to encoded text; pairs must be appended in name order (that makes equal
/// fields equal strings).
pub fn push(text: &mut String, name: &str, value: &str) {
    push_len(text, name.len());
    text.push(':');
    text.push_str(name);
    push_len(text, value.len());
    text.push(':');
    text.push_str(value);
}

/// Appends a length in decimal without the formatting machinery (this runs per match).
fn push_len(text: &mut String, n: usize) {
    // Names and values are mostly shorter than 100 bytes: one or two digits, pushed
    // without the general loop.
    if n < 10 {
        text.push(char::from(b'0' + n as u8));
        return;
    }
    if n < 100 {
        text.push(char::from(b'0' + (n / 10) as u8));
        text.push(char::from(b'0' + (n % 10) as u8));
        return;
    }
    let mut n = n;
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Digit by digit: no UTF-8 check of text known to be ASCII.
    for &digit in &digits[at..] {
        text.push(char::from(digit));
    }
}

/// Appends one pair whose value is raw bytes (invalid UTF-8 replaced). Valid text, the
/// usual case, is checked by the faster validator first (`from_utf8_lossy` walks its
/// chunks even when there is nothing to replace).
pub fn push_bytes(text: &mut String, name: &str, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(valid) => push(text, name, valid),
        Err(_) => push(text, name, &String::from_utf8_lossy(value)),
    }
}

/// A line whose values are taken as text: checked as UTF-8 at most once, however many
/// values are taken from it (a check per value costs more than one per line: short
/// strings miss the validator's word-at-a-time path).
#[derive(Debug, Clone, Copy)]
pub struct LineText<'a> {
    bytes: &'a [u8],
    /// `None` until checked; then the line as text, if it is valid UTF-8.
    checked: Option<Option<&'a str>>,
}

impl<'a> LineText<'a> {
    /// The line `bytes`, not yet checked.
    pub fn new(bytes: &'a [u8]) -> Self {
        LineText {
            bytes,
            checked: None,
        }
    }

    /// The line's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Appends one pair whose value is `self.bytes()[start..end]`, exactly as
    /// [`push_bytes`] would: borrowed from the line's text when the line is valid UTF-8
    /// and the value's ends are character boundaries (then the value is valid UTF-8
    /// itself), else through [`push_bytes`].
    pub fn push_value(&mut self, text: &mut String, name: &str, start: usize, end: usize) {
        let bytes = self.bytes;
        let line = *self
            .checked
            .get_or_insert_with(|| std::str::from_utf8(bytes).ok());
        match line.and_then(|line| line.get(start..end)) {
            Some(value) => push(text, name, value),
            None => push_bytes(text, name, &bytes[start..end]),
        }
    }
}

/// A length as [`push_len`] writes it: decimal digits only (no sign, no spaces), without
/// the general integer parser (this runs per value read, as `push_len` per value written).
fn parse_len(digits: &str) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.bytes().try_fold(0usize, |n, d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// Reads one length-prefixed item off the front of `rest`; `None` (and `rest` emptied)
/// when it is not one.
fn take<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let item = rest.split_once(':').and_then(|(len, tail)| {
        let len = parse_len(len)?;
        Some((tail.get(..len)?, tail.get(len..)?))
    });
    match item {
        Some((item, tail)) => {
            *rest = tail;
            Some(item)
        }
        None => {
            *rest = "";
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn any_value_reads_back_as_written() {
        let long = "x".repeat(1234);
        let m = map(&[
            ("long", long.as_str()),
            ("ip", "10.0.0.1"),
            ("user", "a:b 3:c"),
            ("empty", ""),
            ("n", "12"),
        ]);
        let f = Fields::from_map(&m);
        assert_eq!(f.to_map(), m);
        assert_eq!(f.get("user"), Some("a:b 3:c"));
        assert_eq!(f.get("empty"), Some(""));
        assert_eq!(f.get("missing"), None);
        assert!(Fields::from_map(&BTreeMap::new()).is_empty());
    }

    /// Lengths are written as plain decimal on every path (one digit, two, the loop).
    #[test]
    fn lengths_are_written_in_decimal() {
        let mut lengths: Vec<usize> = (0..1200).collect();
        lengths.extend([9_999, 10_000, 65_535, 1 << 20, usize::MAX]);
        for n in lengths {
            let mut text = String::new();
            push_len(&mut text, n);
            assert_eq!(text, n.to_string());
        }
    }

    /// A value taken from a line writes exactly what `push_bytes` of its bytes writes:
    /// valid and invalid UTF-8, multi-byte characters cut anywhere, empty values.
    #[test]
    fn a_value_from_a_line_is_written_as_its_bytes_would_be() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pieces: [&[u8]; 6] = [
            b"ab",
            b" ",
            "\u{e9}".as_bytes(),
            "\u{1f600}".as_bytes(),
            b"\xff",
            b":1",
        ];
        for _ in 0..2000 {
            let line: Vec<u8> = (0..rng.usize(0..12))
                .flat_map(|_| pieces[rng.usize(0..pieces.len())].iter().copied())
                .collect();
            let mut text = LineText::new(&line);
            for _ in 0..4 {
                let start = rng.usize(0..=line.len());
                let end = rng.usize(start..=line.len());
                let (mut taken, mut expected) = (String::new(), String::new());
                text.push_value(&mut taken, "v", start, end);
                push_bytes(&mut expected, "v", &line[start..end]);
                assert_eq!(taken, expected, "{line:?} {start}..{end}");
            }
        }
    }

    #[test]
    fn values_cannot_be_confused_across_fields() {
        // Without lengths these two would both read "a1b".
        let one = Fields::from_map(&map(&[("a", "1b")]));
        let two = Fields::from_map(&map(&[("a", "1"), ("b", "")]));
        assert_ne!(one, two);
    }

    #[test]
    fn text_not_written_by_push_reads_as_no_more_pairs() {
        for bad in [
            "x",
            "2:ip",
            "2:ip99:short",
            "9999999999999999999999:x",
            "2:i\u{e9}1:a",
            // Only digits, as `push` writes them: no sign.
            "+2:ip8:10.0.0.1",
        ] {
            let f = Fields::from_encoded(bad);
            assert_eq!(f.get("ip"), None, "{bad:?}");
            let _ = f.to_map();
        }
    }

    #[test]
    fn a_key_written_in_a_buffer_finds_the_stored_one() {
        let mut table = std::collections::HashMap::new();
        table.insert(Fields::from_map(&map(&[("ip", "10.0.0.1")])), 1);
        let mut buf = String::new();
        push_bytes(&mut buf, "ip", b"10.0.0.1");
        assert_eq!(table.get(buf.as_str()), Some(&1));
        buf.clear();
        push_bytes(&mut buf, "ip", b"10.0.0.\xff");
        assert_eq!(
            Fields::from_encoded(&buf).get("ip"),
            Some("10.0.0.\u{fffd}")
        );
    }
}
