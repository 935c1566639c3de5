//! The README's main command, run as a newcomer would: the api-outage example
//! end to end (a real service on loopback, real tools, the approval gate).

use std::process::Command;

use runbox_tests::{repo_root, rust_step};

/// `examples/api-outage/run.sh` with the test's runbox and steps, on a
/// data dir under `data`.
fn run_example(data: &std::path::Path) -> Command {
    let mut c = Command::new(repo_root().join("examples/api-outage/run.sh"));
    example_env(&mut c, data);
    c
}

/// The environment `run.sh` runs in under the tests: their runbox and
/// steps, a data dir under `data`.
pub(crate) fn example_env(c: &mut Command, data: &std::path::Path) {
    let steps_dir = rust_step("probe").parent().unwrap().to_path_buf();
    c.env("RUNBOX_BIN", crate::util::runbox_path())
        .env("RUNBOX_STEPS_DIR", &steps_dir)
        .env("RUNBOX_DATA_DIR", data.join("store"))
        // The example keeps its work dir: under the test's, removed with it.
        .env("TMPDIR", data)
        .env_remove("RUNBOX_MUTATION_TOKEN");
}

/// Runs `cmd` (a [`run_example`]), which must succeed; its stdout.
fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "run.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

#[test]
fn api_outage_example_recovers_the_service_through_the_approval_gate() {
    let data = tempfile::tempdir().unwrap();
    let stdout = succeeds(&mut run_example(data.path()));
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
    postmortem_of_the_example(data.path(), &stdout);
}

/// The example's incident exports a postmortem that validates against its
/// schema, and the page run.sh wrote, in the work dir it names, has its chart.
fn postmortem_of_the_example(data: &std::path::Path, stdout: &str) {
    let page = stdout
        .lines()
        .find_map(|l| l.strip_prefix("open "))
        .expect("run.sh names its postmortem page");
    let work = stdout
        .lines()
        .find_map(|l| l.strip_prefix("== staging the example in "))
        .expect("run.sh names its work dir");
    assert_eq!(
        std::path::Path::new(page).parent(),
        Some(std::path::Path::new(work)),
        "the page is in the work dir the example says it works in"
    );
    let html = std::fs::read_to_string(page).expect("the page");
    assert!(html.contains("data-lane=\"human:alice\""), "alice's lane");
    let id = std::path::Path::new(page)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".html"))
        .expect("ID.html");
    let out = crate::util::TestCommand::new()
        .env("RUNBOX_DATA_DIR", data.join("store"))
        .args(["export", id, "--format", "json"])
        .output()
        .unwrap();
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("docs/schemas/postmortem.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&export), "the export breaks its schema");
    let attempts = export["steps"].as_array().unwrap().len();
    assert_eq!(
        html.matches("class=\"attempt ").count(),
        attempts,
        "a bar per attempt"
    );
    let f = &export["figures"];
    assert_eq!(f["attempts"].as_u64(), Some(attempts as u64));
    assert_eq!(f["approvals"].as_u64(), Some(1));
    assert_eq!(export["decisions"][0]["verified"], true);
    assert!(f["approval_wait_ms"].as_u64().unwrap() > 0, "{f}");
}

/// The example agent: a scripted assistant drives the api-outage incident
/// through `runbox mcp` with the official Python `mcp` client, while alice
/// approves from the CLI through the MCP server's control socket.
#[test]
fn api_outage_agent_recovers_the_service_over_mcp_while_a_human_approves() {
    let data = tempfile::tempdir().unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let python = std::path::PathBuf::from(format!("{}-py/bin/python3", target.display()));
    assert!(
        python.exists(),
        "{} is missing: scripts/bootstrap.sh --python-mcp makes it",
        python.display()
    );
    let stdout = succeeds(
        run_example(data.path())
            .arg("--agent")
            .env("RUNBOX_PYTHON", &python),
    );
    for needle in [
        "agent: connected to runbox over MCP",
        "agent: waiting: a human must approve the step; you cannot approve it",
        "approved `restart` as human:alice (signed)",
        "agent: ran restart#1: ok",
        "is resolved",
        "api now answers: 200",
        "agent:assistant",
    ] {
        assert!(
            stdout.contains(needle),
            "output lacks {needle:?}:\n{stdout}"
        );
    }
}

/// The on-call loop (`run.sh --oncall`): an alert posted to a real
/// Alertmanager opens the incident through `runbox serve`'s routes.toml,
/// and the approval request reaches the example's webhook receiver, which
/// verifies its signature and prints it.
#[test]
fn api_outage_oncall_loop_opens_from_an_alert_and_pages_the_receiver() {
    let data = tempfile::tempdir().unwrap();
    let stdout = succeeds(run_example(data.path()).arg("--oncall"));
    for needle in [
        "(opened by the alert)",
        "runbook    api-outage",
        "[receiver] approval-required on ALERT-",
        "[receiver]   $ runbox approve ALERT-",
        "[receiver] resolved on ALERT-",
        "api now answers: 200",
    ] {
        assert!(
            stdout.contains(needle),
            "output lacks {needle:?}:\n{stdout}"
        );
    }
}

/// The second example (`examples/disk-pressure/run.sh`): steps in Python
/// (measure) and TypeScript (prune), built from the scaffolds of `runbox
/// new step` with the bootstrap's componentize-py and componentize-js; its
/// `runbox test` cases pass; a real incident measures a real volume,
/// waits for alice's signed approval, prunes, measures again and resolves;
/// every attempt replays the same and `verify` is clean.
#[test]
fn disk_pressure_example_prunes_through_python_and_typescript_steps_after_approval() {
    let data = tempfile::tempdir().unwrap();
    let mut c = Command::new(repo_root().join("examples/disk-pressure/run.sh"));
    c.env("RUNBOX_BIN", crate::util::runbox_path())
        .env("RUNBOX_DATA_DIR", data.path().join("store"))
        .env("TMPDIR", data.path())
        // Where `scripts/bootstrap.sh --tests` put the component tools.
        .env("CARGO_TARGET_DIR", runbox_tests::target_dir())
        .env_remove("RUNBOX_MUTATION_TOKEN");
    let stdout = succeeds(&mut c);
    for needle in [
        "built measure.wasm",
        "built prune.wasm",
        "\"percent\": 97",
        "5 of 5 cases pass",
        "passes (--deny warnings)",
        "awaiting approval of `prune`",
        "approved `prune` as human:alice (signed)",
        ": resolved",
        "the volume now: {\"used_mib\": 5.0, \"quota_mib\": 32, \"percent\": 16}",
        "measure#1: same",
        "prune#1: same",
        "verify#1: same",
        "ok (3 step records",
    ] {
        assert!(
            stdout.contains(needle),
            "output lacks {needle:?}:\n{stdout}"
        );
    }
}
