//! Addresses never contained: loopback, link-local, unspecified and multicast addresses, the
//! host's own addresses, and the user's `never_contain` (addresses, networks, `@lists`).
//! Banning one of them would cut the host off from itself or its operators; a forged log
//! line naming one must not be able to.

use crate::rules::values::{Lists, ValueError, ValueSet};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// A `never_contain` entry that cannot be used (an unknown `@list`, a malformed address):
/// the protections in force stay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("never_contain: {0}")]
pub struct NeverContainError(#[from] pub ValueError);

/// The protected addresses.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    user: ValueSet,
    own: BTreeSet<IpAddr>,
}

impl Protected {
    /// The user's entries (with `@name` taken from the rule files' `lists`) and the host's
    /// own addresses; an unknown list or a malformed entry is an error.
    pub fn new(never_contain: &[String], lists: &Lists) -> Result<Protected, NeverContainError> {
        let user = ValueSet::parse(never_contain, lists, &mut BTreeSet::new())?;
        Ok(Protected {
            user,
            own: own_addresses(),
        })
    }

    /// Why `target` must not be contained, if it must not. A target that is not an address
    /// is refused where an address is needed (`needs_address`), else left to the command.
    pub fn refusal(&self, target: &str, needs_address: bool) -> Option<String> {
        let Ok(ip) = target.parse::<IpAddr>() else {
            return needs_address.then(|| format!("{target:?} is not an IP address"));
        };
        let ip = ip.to_canonical();
        let builtin = match ip {
            IpAddr::V4(a) => {
                a.is_loopback()
                    || a.is_link_local()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || a.is_broadcast()
            }
            IpAddr::V6(a) => {
                a.is_loopback()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || a.is_unicast_link_local()
            }
        };
        if builtin {
            return Some(format!(
                "{ip} is a loopback, link-local, multicast or unspecified address"
            ));
        }
        if self.own.contains(&ip) {
            return Some(format!("{ip} is one of this host's own addresses"));
        }
        if self.user.contains(target) || self.user.contains(&ip.to_string()) {
            return Some(format!("{ip} is in never_contain"));
        }
        None
    }
}

/// The addresses of this host's interfaces (in its network namespace), from getifaddrs(3).
fn own_addresses() -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            tracing::warn!("cannot list this host's addresses; only never_contain protects them");
            return out;
        }
        let mut at = head;
        while !at.is_null() {
            let addr = (*at).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.insert(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            at = (*at).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_own_user_and_list_addresses_are_refused() {
        let lists = Lists::from([("trusted-nets".to_string(), vec!["203.0.113.0/24".into()])]);
        let p = Protected::new(&["198.51.100.9".into(), "@trusted-nets".into()], &lists).unwrap();
        for protected in [
            "127.0.0.1",
            "::1",
            "169.254.3.4",
            "fe80::1",
            "198.51.100.9",
            "203.0.113.77",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.refusal(protected, true).is_some(), "{protected}");
        }
        assert!(p.refusal("198.51.100.10", true).is_none());
        assert!(p.refusal("2001:db8::5", true).is_none());
        assert!(p.refusal("alice", true).is_some());
        assert!(p.refusal("alice", false).is_none());
        assert!(Protected::new(&["@nope".into()], &lists).is_err());
    }
}
