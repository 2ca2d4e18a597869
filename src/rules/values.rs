//! Value sets for `allow` / `only`: plain values, IP addresses and CIDR networks, and
//! `@name` references to the rule files' named `lists`.
//!
//! Addresses are compared as addresses, not text, so `::1` matches `0:0:0:0:0:0:0:1` and an
//! IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) matches the IPv4 network it belongs to.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

/// Named lists from every rule file, by name.
pub type Lists = BTreeMap<String, Vec<String>>;

/// An IP network: an address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    /// Network address, IPv4 in the low 32 bits.
    bits: u128,
    /// Prefix length in bits.
    prefix: u8,
    /// Whether this is an IPv4 network.
    v4: bool,
}

/// A value-set entry that cannot be used; the message quotes the entry or list as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// An address with a prefix longer than the address (or not a number): a typo that
    /// would otherwise silently become a plain string matching nothing.
    #[error("{text:?} has an invalid prefix length (0 to {max})")]
    Prefix { text: String, max: u8 },
    #[error("unknown list \"@{0}\"")]
    UnknownList(String),
    /// A bad entry inside a named list, named by the list it came from.
    #[error("in list \"@{list}\": {error}")]
    InList {
        list: String,
        error: Box<ValueError>,
    },
}

impl Net {
    /// Parses `addr` or `addr/prefix`; `Ok(None)` when the text is not an address at all
    /// (a plain value), an error when it is an address with an impossible prefix.
    pub fn parse(text: &str) -> Result<Option<Net>, ValueError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            return Ok(None);
        };
        let (bits, v4, max) = ip_bits(ip);
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(ValueError::Prefix {
                        text: text.to_string(),
                        max,
                    });
                }
            },
        };
        Ok(Some(Net {
            bits: bits & mask(prefix, max),
            prefix,
            v4,
        }))
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, v4, max) = ip_bits(ip);
        v4 == self.v4 && bits & mask(self.prefix, max) == self.bits
    }

    /// Whether every address of `other` lies in this network.
    pub fn covers(&self, other: &Net) -> bool {
        let max = if self.v4 { 32 } else { 128 };
        self.v4 == other.v4
            && other.prefix >= self.prefix
            && other.bits & mask(self.prefix, max) == self.bits
    }
}

/// The address as bits (IPv4-mapped IPv6 addresses count as IPv4), whether it is IPv4,
/// and its width.
fn ip_bits(ip: IpAddr) -> (u128, bool, u8) {
    match ip.to_canonical() {
        IpAddr::V4(a) => (u32::from(a) as u128, true, 32),
        IpAddr::V6(a) => (u128::from(a), false, 128),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let all: u128 = if width == 32 {
        u32::MAX as u128
    } else {
        u128::MAX
    };
    (all << (width - prefix)) & all
}

/// The values one capture is compared with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValueSet {
    exact: HashSet<String>,
    nets: Vec<Net>,
}

impl ValueSet {
    /// Builds a set from rule entries, expanding `@name` from `lists` and noting in `used`
    /// which lists were referenced.
    pub fn parse(
        entries: &[String],
        lists: &Lists,
        used: &mut BTreeSet<String>,
    ) -> Result<ValueSet, ValueError> {
        let mut set = ValueSet::default();
        for entry in entries {
            if let Some(name) = entry.strip_prefix('@') {
                let list = lists
                    .get(name)
                    .ok_or_else(|| ValueError::UnknownList(name.to_string()))?;
                used.insert(name.to_string());
                for value in list {
                    set.add(value).map_err(|e| ValueError::InList {
                        list: name.to_string(),
                        error: Box::new(e),
                    })?;
                }
            } else {
                set.add(entry)?;
            }
        }
        Ok(set)
    }

    /// Adds one plain value, address or network.
    pub fn add(&mut self, entry: &str) -> Result<(), ValueError> {
        match Net::parse(entry)? {
            Some(net) => self.nets.push(net),
            None => {
                self.exact.insert(entry.to_string());
            }
        }
        Ok(())
    }

    /// Whether a captured value is in the set.
    pub fn contains(&self, value: &str) -> bool {
        if self.exact.contains(value) {
            return true;
        }
        if self.nets.is_empty() {
            return false;
        }
        value
            .parse::<IpAddr>()
            .is_ok_and(|ip| self.nets.iter().any(|n| n.contains(ip)))
    }

    /// Whether the set holds nothing (so `only` with it can never count a line).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.nets.is_empty()
    }

    /// Whether every value `other` can hold is also in this set.
    pub fn covers(&self, other: &ValueSet) -> bool {
        other.exact.iter().all(|v| self.contains(v))
            && other
                .nets
                .iter()
                .all(|n| self.nets.iter().any(|mine| mine.covers(n)))
    }

    /// How many values the set can hold, when it holds no network (networks are large).
    pub fn finite_len(&self) -> Option<usize> {
        self.nets.is_empty().then_some(self.exact.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> ValueSet {
        let lists = Lists::from([(
            "nets".to_string(),
            vec!["192.168.0.0/16".to_string(), "db1".to_string()],
        )]);
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        ValueSet::parse(&entries, &lists, &mut BTreeSet::new()).unwrap()
    }

    #[test]
    fn ipv4_cidr_boundaries() {
        let s = set(&["10.0.0.0/8"]);
        assert!(s.contains("10.0.0.0"));
        assert!(s.contains("10.255.255.255"));
        assert!(!s.contains("11.0.0.0"));
        assert!(!s.contains("9.255.255.255"));
        assert!(s.contains("::ffff:10.1.2.3"), "IPv4-mapped IPv6 is IPv4");
        assert!(!s.contains("not-an-ip"));
    }

    #[test]
    fn ipv6_addresses_compare_as_addresses() {
        let s = set(&["::1", "2001:db8::/32"]);
        assert!(s.contains("0:0:0:0:0:0:0:1"));
        assert!(s.contains("2001:db8:ffff::7"));
        assert!(!s.contains("2001:db9::1"));
        assert!(!s.contains("127.0.0.1"));
    }

    #[test]
    fn zero_prefix_matches_every_address_of_its_family() {
        let s = set(&["0.0.0.0/0"]);
        assert!(s.contains("203.0.113.9"));
        assert!(!s.contains("::2"));
    }

    #[test]
    fn plain_values_and_lists() {
        let mut used = BTreeSet::new();
        let lists = Lists::from([("admins".to_string(), vec!["root".to_string()])]);
        let s = ValueSet::parse(&["@admins".into(), "admin".into()], &lists, &mut used).unwrap();
        assert!(s.contains("root") && s.contains("admin") && !s.contains("Root"));
        assert_eq!(used, BTreeSet::from(["admins".to_string()]));
        assert_eq!(
            ValueSet::parse(&["@nope".into()], &lists, &mut used)
                .unwrap_err()
                .to_string(),
            "unknown list \"@nope\""
        );
        assert!(set(&["@nets"]).contains("192.168.4.4") && set(&["@nets"]).contains("db1"));
    }

    #[test]
    fn a_bad_entry_of_a_list_is_named_with_its_list() {
        let lists = Lists::from([("nets".to_string(), vec!["10.0.0.0/33".to_string()])]);
        let e = ValueSet::parse(&["@nets".into()], &lists, &mut BTreeSet::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "in list \"@nets\": \"10.0.0.0/33\" has an invalid prefix length (0 to 32)"
        );
    }

    #[test]
    fn bad_prefixes_are_errors() {
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("::/129").is_err());
        assert!(Net::parse("10.0.0.0/x").is_err());
        assert_eq!(Net::parse("a/b"), Ok(None));
    }

    #[test]
    fn coverage() {
        let wide = set(&["10.0.0.0/8", "root"]);
        assert!(wide.covers(&set(&["10.1.0.0/16", "10.9.9.9", "root"])));
        assert!(!wide.covers(&set(&["10.0.0.0/7"])));
        assert!(!wide.covers(&set(&["admin"])));
        assert_eq!(set(&["a", "b"]).finite_len(), Some(2));
        assert_eq!(set(&["a", "10.0.0.0/8"]).finite_len(), None);
    }
}
