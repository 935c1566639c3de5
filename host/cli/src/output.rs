//! Writing to stdout: a reader that closed the pipe (`runbox timeline ID |
//! head -1`) ends the command quietly instead of panicking.

use std::io::Write;

/// Writes formatted text to stdout; a failed write is an error the command
/// returns (a closed pipe then ends it quietly, see [`is_closed_pipe`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))?
    };
}

/// [`out!`] with a newline.
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n"))? };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

pub(crate) use {out, outln};

/// Writes to stdout.
pub(crate) fn write(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    std::io::stdout().lock().write_fmt(args)
}

/// Whether `err` is (caused by) writing to a pipe nobody reads any more.
pub(crate) fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
