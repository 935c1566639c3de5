//! The release `runbox` run as a child process by the benches, with its
//! wall time and peak resident memory.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

/// The release `runbox` beside the running bench binary (`cargo build
/// --release -p runbox`).
pub fn runbox_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("this binary's path");
    let bin = exe.with_file_name("runbox");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p runbox",
        bin.display()
    );
    bin
}

/// How a child run went.
#[derive(Debug)]
pub struct Measured {
    /// Wall time, seconds.
    pub secs: f64,
    /// Peak resident memory (`VmHWM`), KiB.
    pub peak_kib: u64,
    /// How it exited.
    pub status: ExitStatus,
}

/// Runs `runbox ARGS` on the data dir `data` with stdout to /dev/null.
///
/// The peak is the child's `VmHWM`, polled from /proc while it runs once it
/// is `runbox` (after exec): `ru_maxrss` would count the pages it shared
/// with the (large) bench process between fork and exec.
pub fn measure(data: &Path, args: &[&str]) -> Measured {
    let started = Instant::now();
    let mut child = Command::new(runbox_bin())
        .env("RUNBOX_DATA_DIR", data)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runbox starts");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            if field("Name:") == Some("runbox") {
                let hwm = field("VmHWM:")
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                peak_kib = peak_kib.max(hwm);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    Measured {
        secs: started.elapsed().as_secs_f64(),
        peak_kib,
        status,
    }
}
