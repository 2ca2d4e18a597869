//! Command output on stdout, for every subcommand: one writer, so a reader that goes away
//! (`logwarden … | head -1`) ends every command the same quiet way.

/// Writes to stdout. A reader that went away (`logwarden … | head -1`) is a normal end of
/// output, not an error: the process exits 0 at once. Any other write error exits 2.
pub fn print(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        exit_on_write_error(&e);
    }
}

/// Ends the process after a failed write to stdout: 0 for a closed pipe, 2 otherwise.
pub fn exit_on_write_error(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("logwarden: cannot write output: {e}");
    std::process::exit(2);
}

/// `println!` for command output, through [`print`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::base::output::print("\n")
    };
    ($($arg:tt)*) => {
        $crate::base::output::print(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output, through [`print`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::base::output::print(&format!($($arg)*))
    };
}
