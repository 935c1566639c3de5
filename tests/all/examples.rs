//! The README's main command, run as a newcomer would: the api-outage example
//! end to end (a real service on loopback, real tools, the approval gate).

use std::process::Command;

use runbox_tests::{repo_root, rust_step};

#[test]
fn api_outage_example_recovers_the_service_through_the_approval_gate() {
    let data = tempfile::tempdir().unwrap();
    let steps_dir = rust_step("probe").parent().unwrap().to_path_buf();
    let out = Command::new(repo_root().join("examples/api-outage/run.sh"))
        .env("RUNBOX_BIN", env!("CARGO_BIN_EXE_runbox-under-test"))
        .env("RUNBOX_STEPS_DIR", &steps_dir)
        .env("RUNBOX_DATA_DIR", data.path().join("store"))
        .env_remove("RUNBOX_MUTATION_TOKEN")
        .output()
        .expect("run.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "run.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("DIFFERENT"),
        "every attempt replays the same:\n{stdout}"
    );
    for needle in [
        "GET /health -> 503",
        "awaiting approval of `restart`",
        "approved `restart` as human:alice",
        ": resolved",
        "api now answers: 200",
        "attempt-started",
        "| restart | restart the service | 1 |",
        "5 of 5 cases pass",
        "diagnose#1: same",
        "restart#1: same",
        "verify#1: same",
    ] {
        assert!(
            stdout.contains(needle),
            "output lacks {needle:?}:\n{stdout}"
        );
    }
}
