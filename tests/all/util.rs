//! The one way these tests start the `runbox` binary (wasmtime's
//! `get_wasmtime_command`): the real binary cargo built for this package.

use std::path::Path;
use std::process::Command;

/// The `runbox` binary under test.
pub(crate) const RUNBOX: &str = env!("CARGO_BIN_EXE_runbox");

/// A command running `runbox`, with no arguments yet.
pub(crate) fn runbox() -> Command {
    Command::new(RUNBOX)
}

/// Where the `runbox` binary is (for scripts and harnesses that take a path).
pub(crate) fn runbox_path() -> &'static Path {
    Path::new(RUNBOX)
}
