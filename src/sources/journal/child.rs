//! The journalctl child process: dying with the daemon, its stderr logged, and whether its
//! output has more to read right now.
//!
//! Apart from the reader because these are the process-level details (`prctl`, `poll`,
//! process groups) that have nothing to do with journal entries.

use super::export;
use std::io::{BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Longest stderr line logged, so a child printing without newlines cannot grow the
/// daemon's memory or flood its log.
const MAX_STDERR_LINE: usize = 1024;

/// Whether reading `fd` would return at once (data waiting, or its end).
pub(super) fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut poll, 1, 0) > 0 }
}

/// Logs the child's stderr as warnings, keeping its last line for the restart message.
pub(super) fn spawn_stderr_logger(
    source: Arc<str>,
    stderr: impl Read + Send + 'static,
    last: Arc<Mutex<String>>,
) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("journalctl-stderr".into())
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match export::read_bounded(&mut reader, b"\n", MAX_STDERR_LINE, &mut line) {
                    Ok(Some(_)) => {}
                    Ok(None) if !line.is_empty() => {}
                    _ => return,
                }
                line.truncate(MAX_STDERR_LINE);
                let text = String::from_utf8_lossy(&line).trim().to_string();
                if !text.is_empty() {
                    tracing::warn!(source = %source, "journalctl: {text}");
                    *last.lock().expect("stderr") = text;
                }
            }
        })
        .ok()
}

/// Makes the child end with the daemon, and only through it: a SIGKILLed daemon must not
/// leave a journalctl behind waiting for entries, and a Ctrl-C in a terminal goes to the
/// daemon alone, which then stops its children after the entries already read.
pub(super) fn die_with_parent(cmd: &mut Command) {
    cmd.process_group(0);
    let parent = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid) are made.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn stderr_is_logged_line_by_line_keeping_the_last_and_bounded() {
        let last = Arc::new(Mutex::new(String::new()));
        let long = "x".repeat(MAX_STDERR_LINE * 3);
        let text = format!("first problem\n{long}\nFailed to seek to cursor\n");
        let logger = spawn_stderr_logger("j".into(), std::io::Cursor::new(text), last.clone());
        logger.unwrap().join().unwrap();
        assert_eq!(*last.lock().unwrap(), "Failed to seek to cursor");
    }

    #[test]
    fn a_pipe_is_readable_once_written_or_closed() {
        let mut child = Command::new("sh")
            .args(["-c", "read x; echo $x"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        assert!(!readable(stdout.as_raw_fd()));
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(readable(stdout.as_raw_fd()));
    }
}
