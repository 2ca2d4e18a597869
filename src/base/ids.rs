//! The one parser of record ids as people, scripts and URLs spell them (`INC-7`, `SIL-3`).
//!
//! Every lookup — the incident book, the store, the API and the CLI through it — goes
//! through here, so one record has exactly one spelling: `INC-07`, `INC-+7`, `inc-7` or
//! `INC-7 ` name nothing (404), never an alias of `INC-7`. An alias would let the same
//! change be applied twice, or be applied to a copy the book never sees. A fleet-wide
//! incident uid is another spelling of the same record and belongs here too.

/// The number in `<prefix><n>`: `n` in plain decimal, no sign, no leading zero, no
/// whitespace, within `u64`, and the prefix in exactly this case. `None` otherwise.
pub fn number(prefix: &str, text: &str) -> Option<u64> {
    let digits = text.strip_prefix(prefix)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if !canonical {
        return None;
    }
    digits.parse().ok()
}

/// Prefix of incident ids (`INC-7`), in this case only: [`number`] accepts no other spelling.
pub const INCIDENT: &str = "INC-";
/// Prefix of silence ids (`SIL-3`), in this case only: [`number`] accepts no other spelling.
pub const SILENCE: &str = "SIL-";

/// The number of an incident named by `text` (its canonical `INC-<n>` id).
pub fn incident_number(text: &str) -> Option<u64> {
    number(INCIDENT, text)
}

/// The canonical id of incident `number`.
pub fn incident_id(number: u64) -> String {
    format!("{INCIDENT}{number}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_spelling_names_an_incident() {
        assert_eq!(incident_number("INC-1"), Some(1));
        assert_eq!(incident_number("INC-4711"), Some(4711));
        assert_eq!(incident_id(4711), "INC-4711");
        for alias in [
            "INC-01",
            "INC-+1",
            "INC--1",
            "inc-1",
            "Inc-1",
            "INC-1 ",
            " INC-1",
            "INC-",
            "INC-0",
            "INC-1a",
            "INC-١",
            "INC-99999999999999999999",
            "INC-1\n",
            "INC_1",
        ] {
            assert_eq!(incident_number(alias), None, "{alias:?} must name nothing");
        }
    }

    #[test]
    fn silences_are_parsed_the_same_way() {
        assert_eq!(number(SILENCE, "SIL-12"), Some(12));
        assert_eq!(number(SILENCE, "SIL-012"), None);
        assert_eq!(number(SILENCE, "INC-12"), None);
    }
}
