//! The UDP socket's kernel side: the receive buffer asked for, and the datagrams the kernel
//! dropped because it was full (read from `/proc/net/udp`).
//!
//! Apart from the listener because it talks to the kernel through `libc` and `/proc`, not
//! through tokio, and its one unsafe block per call is easier to review alone.

use crate::metrics::Metrics;
use crate::sources::SourceError;
use std::os::fd::AsRawFd;
use tokio::net::UdpSocket;

/// Asks for a receive buffer of `bytes`: with `SO_RCVBUFFORCE` where the daemon may (root
/// or CAP_NET_ADMIN), else `SO_RCVBUF`, which the kernel caps at `net.core.rmem_max`. What
/// the kernel granted is logged, with a hint when it is less than asked.
pub(super) fn size_receive_buffer(
    socket: &UdpSocket,
    name: &str,
    bytes: usize,
) -> Result<(), SourceError> {
    let fd = socket.as_raw_fd();
    let wanted = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: `fd` is an open socket owned by `socket`; the option value is a c_int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&wanted as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
        return Err(SourceError::ReceiveBuffer {
            name: name.to_string(),
            bytes,
            error: std::io::Error::last_os_error(),
        });
    }
    let mut granted: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above; `granted` and `len` are valid for writes of their sizes.
    let read = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut granted as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // The kernel reports twice the usable size (it reserves half for bookkeeping).
    let usable = usize::try_from(granted).unwrap_or(0) / 2;
    if read == 0 && usable < bytes {
        tracing::warn!(source = %name, wanted = bytes, granted = usable, "udp receive buffer smaller than configured; raise net.core.rmem_max or run with CAP_NET_ADMIN");
    } else {
        tracing::info!(source = %name, bytes = usable, "udp receive buffer set");
    }
    Ok(())
}

/// Exports the kernel's drop count of this socket (`/proc/net/udp{,6}`, found by the
/// socket's inode) as `logwarden_syslog_udp_kernel_drops_total`, read at each scrape.
pub(super) fn count_kernel_drops(socket: &UdpSocket, name: &str, metrics: &Metrics) {
    // SAFETY: fstat writes a `stat` for an open descriptor; zeroed is a valid initial value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(socket.as_raw_fd(), &mut stat) } != 0 {
        tracing::warn!(source = %name, error = %std::io::Error::last_os_error(), "cannot identify the udp socket; kernel drops are not counted");
        return;
    }
    let inode = stat.st_ino;
    let counter = metrics.syslog_udp_kernel_drops.with_label_values(&[name]);
    metrics.before_scrape(Box::new(move || {
        if let Some(drops) = kernel_drops(inode) {
            // The kernel's count only grows while the socket lives.
            counter.inc_by(drops.saturating_sub(counter.get()));
        }
    }));
}

/// The `drops` column of the socket with this inode in `/proc/net/udp` or `/proc/net/udp6`.
fn kernel_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            udp_table_drops(&text, inode)
        })
}

/// In a `/proc/net/udp` table: `sl local rem st queues tr retrnsmt uid timeout inode ref
/// pointer drops`.
fn udp_table_drops(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        (fields.get(9)?.parse::<u64>().ok()? == inode)
            .then(|| fields.get(12)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drops_are_read_from_the_socket_row() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          120: 0100007F:15AA 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 4242 2 0000000000000000 0\n\
          121: 0100007F:15AB 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 77 2 0000000000000000 1234\n";
        assert_eq!(udp_table_drops(table, 77), Some(1234));
        assert_eq!(udp_table_drops(table, 4242), Some(0));
        assert_eq!(udp_table_drops(table, 5), None);
    }
}
