//! This host's name as the kernel knows it: the default `host` of the config, the first
//! part of every fleet-unique incident id. A module of its own so the incident book can
//! name new incidents without depending on the config.

/// The kernel's host name (`/proc/sys/kernel/hostname`), `localhost` when unreadable.
pub fn kernel_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
