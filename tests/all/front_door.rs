//! The front door: what a newcomer meets before anything compiles, and the
//! manners of the CLI at the end of a pipe.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runbox_tests::{fixture, repo_root};

fn fake_tool(dir: &Path, name: &str, script: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Without root, sudo or a way to install, `scripts/bootstrap.sh` stops at
/// once and names the exact command, instead of a build dying 7 minutes in.
#[test]
fn bootstrap_without_root_names_the_command_to_run_and_installs_nothing() {
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    fake_tool(bin.path(), "cargo", "exit 0");
    fake_tool(bin.path(), "rustup", "echo wasm32-wasip1");
    // Every package reads as missing; apt-get must not be reached.
    fake_tool(bin.path(), "dpkg-query", "exit 1");
    let marker = bin.path().join("apt-get-ran");
    fake_tool(
        bin.path(),
        "apt-get",
        &format!("touch {}", marker.display()),
    );
    let script = repo_root().join("scripts/bootstrap.sh");
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
        c
    } else {
        Command::new("bash")
    };
    cmd.arg(&script)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
        .env("HOME", bin.path());
    let started = Instant::now();
    let out = cmd.output().expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr.contains("run: sudo apt-get update && sudo apt-get install -y clang lld wasi-libc"),
        "{stderr}"
    );
    assert!(!marker.exists(), "nothing was installed");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `runbox exec … | head -5` and `runbox list | head -1`: a reader that
/// closes the pipe ends the command quietly, exit 0, no panic.
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let data = tempfile::tempdir().unwrap();
    let module = fixture("no_finish.wat").to_string_lossy().into_owned();
    let cases: [&[&str]; 2] = [&["exec", &module], &["list"]];
    for args in cases {
        let mut child = crate::util::TestCommand::new()
            .args(args)
            .env("RUNBOX_DATA_DIR", data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
