//! `runbox exec` as a step author uses it: a process, JSON on stdout.

use runbox_tests::{fixture, rust_step, write_file};
use serde_json::Value;

use crate::util::TestCommand;

fn exec_json(args: &[&str]) -> (i32, Value) {
    let out = TestCommand::new()
        .arg("exec")
        .args(args)
        .output()
        .expect("runbox runs");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn exec_prints_the_report_of_a_rust_step_with_seeded_kv() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(
        dir.path(),
        "restart.toml",
        "[grants]\nkv_read = [\"svc/{service}/*\"]\nkv_write = [\"svc/{service}/restarts\"]\ntools = [\"restart_service\", \"http_probe\"]\n",
    );
    let tools = write_file(
        dir.path(),
        "tools.toml",
        "[tools.restart_service]\nmode = \"mutate\"\nargv = [\"true\", \"{service}\"]\n[tools.restart_service.args]\nservice = { type = \"string\" }\n\
         [tools.http_probe]\nmode = \"read\"\nargv = [\"echo\", \"200\", \"{service}\"]\n[tools.http_probe.args]\nservice = { type = \"string\" }\n",
    );
    let seed = write_file(dir.path(), "seed.json", r#"{"svc/api/restarts": "4"}"#);
    let module = rust_step("restart");
    let (code, report) = exec_json(&[
        module.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--tools",
        tools.to_str().unwrap(),
        "--kv",
        seed.to_str().unwrap(),
        "--allow-mutate",
        "--input",
        r#"{"service":"api"}"#,
    ]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["outcome"], "ok");
    assert_eq!(report["kv_writes"][0]["key"], "svc/api/restarts");
    assert_eq!(report["kv_writes"][0]["value"], "5");
    assert_eq!(report["tool_calls"][0]["mode"], "mutate");
    assert!(report["duration_ms"].is_u64());
}

#[test]
fn exec_reports_the_stop_category_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(
        dir.path(),
        "p.toml",
        "[grants]\nkv_write = [\"svc/{service}/*\"]\n",
    );
    let (code, report) = exec_json(&[
        fixture("writes_then_traps.wat").to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--input",
        r#"{"service":"api"}"#,
    ]);
    assert_eq!(code, 1);
    assert_eq!(report["error"]["category"], "trap");
    assert_eq!(report["kv_writes"], Value::Array(vec![]));
    assert_eq!(report["discarded_kv_writes"][0]["key"], "svc/api/restarts");
}

#[test]
fn exec_names_the_file_and_field_of_a_broken_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(
        dir.path(),
        "broken.toml",
        "[grants]\nkv_read = \"not a list\"\n",
    );
    let out = TestCommand::new()
        .args([
            "exec",
            fixture("no_finish.wat").to_str().unwrap(),
            "--policy",
        ])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.toml") && stderr.contains("kv_read"),
        "{stderr}"
    );
}

#[test]
fn exec_names_a_missing_module() {
    let out = TestCommand::new()
        .args(["exec", "/nonexistent/step.wasm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/step.wasm"), "{stderr}");
}

#[test]
fn exec_refuses_a_grant_of_an_unknown_tool() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(dir.path(), "p.toml", "[grants]\ntools = [\"rm_rf\"]\n");
    let out = TestCommand::new()
        .args([
            "exec",
            fixture("no_finish.wat").to_str().unwrap(),
            "--policy",
        ])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`rm_rf`"));
}

#[test]
fn review_shows_each_steps_imports_grants_and_tool_modes_and_flags_overreach() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "tools.toml",
        "[tools.restart]\nmode = \"mutate\"\nargv = [\"true\"]\n[tools.look]\nmode = \"read\"\nargv = [\"true\"]\n",
    );
    let runbook = write_file(
        dir.path(),
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"r\"\ntools = \"tools.toml\"\n\
             [[steps]]\nid = \"fine\"\nmodule = \"{}\"\ngrants = {{ tools = [\"look\", \"restart\"] }}\nimpact = \"high\"\n\
             [[steps]]\nid = \"overreach\"\nmodule = \"{}\"\n",
            fixture("engine/ok.wat").display(),
            fixture("imports_ungranted_module.wat").display()
        ),
    );
    let out = TestCommand::new()
        .args(["review", "--json"])
        .arg(&runbook)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refused step fails the review"
    );
    let review: Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = &review["steps"];
    assert_eq!(steps[0]["verdict"], "ok");
    assert_eq!(
        steps[0]["tools"],
        serde_json::json!([{"name": "look", "mode": "read"}, {"name": "restart", "mode": "mutate"}])
    );
    assert_eq!(steps[0]["mutates"], true);
    assert_eq!(steps[0]["impact"], "high");
    assert_eq!(
        steps[1]["imports"],
        serde_json::json!(["runbox:kv-write/v1.put"])
    );
    assert_eq!(steps[1]["loads"], false);
    let verdict = steps[1]["verdict"].as_str().unwrap();
    assert!(
        verdict.contains("denied-import") && verdict.contains("no `kv_write` patterns"),
        "{verdict}"
    );
}
