//! Components (WIT `runbox:step@1.0.0`) run beside core modules, under the
//! same rules: a happy path committed and replayed like a module's step, and
//! the hostile twins of the core-module fixtures, each stopped with the same
//! category. The components are written by hand in component text (the
//! canonical ABI spelled out), so these tests need no guest toolchain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crate::sandbox::assert_stopped;
use runbox_core::policy::StepPolicy;
use runbox_core::tools::ToolRegistry;
use runbox_engine::replay::{Selection, Verdict, replay};
use runbox_engine::{Engine, RunOptions};
use runbox_sandbox::{
    Capabilities, ErrorCategory, MapKv, Outcome, PrepareError, Sandbox, SandboxConfig, StepReport,
};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::{fixture, write_file};
use serde_json::json;

static SANDBOX: LazyLock<Sandbox> = LazyLock::new(|| Sandbox::new(SandboxConfig::default()));

const TOOLS: &str = r#"
[tools.http_probe]
mode = "read"
argv = ["sh", "-c", "echo $0", "{service}"]
[tools.http_probe.args]
service = { type = "string" }
"#;

const GRANTS: &str =
    "[grants]\nkv_read = [\"svc/**\"]\nkv_write = [\"svc/**\"]\ntools = [\"http_probe\"]\n";

fn tools() -> Arc<ToolRegistry> {
    Arc::new(ToolRegistry::from_toml(TOOLS, Path::new("tools.toml"), "/".into()).unwrap())
}

async fn run(bytes: &[u8], policy_text: &str, kv: MapKv) -> StepReport {
    let policy = StepPolicy::from_toml(policy_text, Path::new("policy.toml")).unwrap();
    let caps = Capabilities::default();
    match SANDBOX.prepare("step", bytes, &policy, tools(), caps) {
        Ok(step) => {
            assert!(step.is_component());
            SANDBOX
                .run(&step, &json!({"service": "api"}), Arc::new(kv), None)
                .await
        }
        Err(PrepareError::Module(e)) => StepReport::stopped(e),
        Err(PrepareError::Host(e)) => panic!("host inputs are valid: {e}"),
    }
}

fn happy() -> Vec<u8> {
    std::fs::read(fixture("components/happy.wat")).unwrap()
}

/// A component with the log interface imported, whose core `run` is
/// `body` (returning the address of its result) over a memory of `pages`.
fn component(pages: u32, data: &str, body: &str) -> Vec<u8> {
    format!(
        r#"(component
  (import "runbox:step/log@1.0.0" (instance $log
    (type $l (enum "trace" "debug" "info" "warn" "error"))
    (export "level" (type $level (eq $l)))
    (export "log" (func (param "level" $level) (param "message" string)))))
  (core module $libc
    (memory (export "memory") {pages})
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 60000)))
  (core instance $libc (instantiate $libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))
  (core func $log (canon lower (func $log "log") (memory $mem)))
  (core instance $host (export "log" (func $log)))
  (core module $step
    (import "env" "memory" (memory {pages}))
    (import "host" "log" (func $log (param i32 i32 i32)))
    {data}
    (func (export "run") (result i32) {body}))
  (core instance $main (instantiate $step
    (with "env" (instance $libc))
    (with "host" (instance $host))))
  (type $oe (variant (case "retry" string) (case "escalate" string) (case "fail" string)))
  (export $outcome-error "outcome-error" (type $oe))
  (func $run (result (result string (error $outcome-error)))
    (canon lift (core func $main "run") (memory $mem) (realloc $realloc)))
  (export "run" (func $run)))"#
    )
    .into_bytes()
}

/// `run` ending `ok` with the `len` bytes at 128 as its output.
fn ok_with(len: u32) -> String {
    format!(
        "(i32.store8 (i32.const 0) (i32.const 0))
         (i32.store (i32.const 4) (i32.const 128))
         (i32.store (i32.const 8) (i32.const {len}))
         (i32.const 0)"
    )
}

// --- the happy path -----------------------------------------------------------------

#[tokio::test]
async fn a_component_reads_input_kv_and_a_tool_and_ends_ok() {
    let mut kv = MapKv::new();
    kv.insert("svc/api/note".into(), b"flaky".to_vec());
    let report = run(&happy(), GRANTS, kv).await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(report.output, Some(json!({"done": true})));
    assert_eq!(report.logs[0].message, "hello from a component");
    assert_eq!(report.logs[0].level, "info");
    assert_eq!(report.kv_writes.len(), 1);
    assert_eq!(report.kv_writes[0].key, "svc/api/seen");
    assert_eq!(report.tool_calls.len(), 1);
    assert_eq!(report.tool_calls[0].rc, 0);
}

/// A one-step runbook in `dir` (with its tools.toml) whose step is the
/// happy component, with `policy` (its grants and limits lines).
fn happy_runbook(dir: &Path, policy: &str) -> PathBuf {
    write_file(dir, "tools.toml", TOOLS);
    write_file(
        dir,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"r\"\ntools = \"tools.toml\"\n[[steps]]\nid = \"s\"\nmodule = \"{}\"\n{policy}\n",
            fixture("components/happy.wat").display()
        ),
    )
}

#[test]
fn a_component_step_commits_like_a_module_and_replays_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rb = happy_runbook(
        d,
        "grants = { kv_read = [\"svc/**\"], kv_write = [\"svc/**\"], tools = [\"http_probe\"] }",
    );
    let store = Arc::new(RocksStore::open(&d.join("data")).unwrap());
    let engine = Engine::new(store, Sandbox::new(SandboxConfig::default()));
    engine
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(engine.runs().run("INC-1", &RunOptions::default()))
        .unwrap();
    let records = engine.incidents().step_records("INC-1").unwrap();
    let record = &records[0];
    let as_json = serde_json::to_value(record).unwrap();
    assert_eq!(as_json["outcome"], "ok", "{as_json:#}");
    assert!(record.recording.as_ref().unwrap().complete, "{as_json:#}");
    let sandbox = Sandbox::new(SandboxConfig::default());
    let reports = rt
        .block_on(replay(
            engine.incidents(),
            &sandbox,
            "INC-1",
            &Selection::default(),
        ))
        .unwrap();
    assert_eq!(reports[0].verdict, Verdict::Same, "{:?}", reports[0]);
}

// --- refused before running -------------------------------------------------------

#[tokio::test]
async fn a_component_importing_an_ungranted_interface_is_refused_before_running() {
    let grants = "[grants]\nkv_read = [\"svc/**\"]\ntools = [\"http_probe\"]\n";
    let report = run(&happy(), grants, MapKv::new()).await;
    assert_stopped(
        &report,
        ErrorCategory::DeniedImport,
        "imports `runbox:step/kv-write@1.0.0`, which is not linked: its policy grants no `kv_write` patterns",
    );
    assert!(report.tool_calls.is_empty() && report.logs.is_empty());
}

#[tokio::test]
async fn a_component_importing_outside_runbox_and_wasi_is_refused() {
    let text = String::from_utf8(component(1, "", &ok_with(0)))
        .unwrap()
        .replacen(
            "(component",
            "(component (import \"acme:secrets/vault\" (instance))",
            1,
        );
    let report = run(text.as_bytes(), "", MapKv::new()).await;
    assert_stopped(
        &report,
        ErrorCategory::DeniedImport,
        "imports `acme:secrets/vault`, which is neither an interface of `runbox:step@1.0.0` nor WASI 0.2",
    );
}

// --- stopped at its limits -----------------------------------------------------------

#[tokio::test]
async fn a_component_looping_forever_is_stopped_at_its_timeout() {
    let started = Instant::now();
    let bytes = component(1, "", "(loop $l (br $l)) (unreachable)");
    let report = run(&bytes, "[limits]\ntimeout_ms = 200\n", MapKv::new()).await;
    assert_stopped(&report, ErrorCategory::Timeout, "200 ms");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_component_growing_memory_past_the_limit_is_stopped() {
    let body = "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (unreachable)";
    let report = run(
        &component(1, "", body),
        "[limits]\nmemory_mib = 4\n",
        MapKv::new(),
    )
    .await;
    assert_stopped(&report, ErrorCategory::Memory, "memory limit exceeded");
}

#[tokio::test]
async fn a_component_flooding_its_log_hits_the_output_limit() {
    let data = "(data (i32.const 128) \"a line of forty bytes, give or take.....\")";
    let body =
        "(loop $l (call $log (i32.const 2) (i32.const 128) (i32.const 40)) (br $l)) (unreachable)";
    let report = run(
        &component(1, data, body),
        "[limits]\noutput_bytes = 1000\n",
        MapKv::new(),
    )
    .await;
    assert_stopped(&report, ErrorCategory::Limit, "output limit exceeded");
}

#[tokio::test]
async fn a_component_returning_more_than_the_output_cap_is_stopped() {
    // 2,000 bytes of a JSON string: "xxx…"
    let data = format!("(data (i32.const 128) \"\\\"{}\\\"\")", "x".repeat(1998));
    let report = run(
        &component(1, &data, &ok_with(2000)),
        "[limits]\noutput_bytes = 1000\n",
        MapKv::new(),
    )
    .await;
    assert_stopped(&report, ErrorCategory::Limit, "limits.output_bytes");
}

// --- WASI: linked, and refusing -------------------------------------------------------

#[tokio::test]
async fn a_component_sees_no_files_and_cannot_open_a_socket() {
    let bytes = std::fs::read(fixture("components/wasi_sees_nothing.wat")).unwrap();
    let report = run(&bytes, "", MapKv::new()).await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(report.output, Some(json!({"clean": true})));
}

#[tokio::test]
async fn a_component_calling_wasi_http_is_stopped() {
    let bytes = std::fs::read(fixture("components/wasi_http.wat")).unwrap();
    let report = run(&bytes, "", MapKv::new()).await;
    assert_stopped(&report, ErrorCategory::Trap, "a step has no network");
}

// --- caps and review -------------------------------------------------------------------

/// `runbox caps --format json` of a fixture: (capability, interface) pairs.
fn caps_groups(name: &str) -> Vec<(String, String)> {
    let out = crate::util::TestCommand::new()
        .args(["caps", fixture(name).to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(caps["kind"], "component", "{caps:#}");
    caps["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["capability"].as_str().unwrap().to_string(),
                g["module"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn caps_shows_a_components_interfaces_by_capability_and_wasi_as_denied() {
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        caps_groups("components/happy.wat"),
        pairs(&[
            ("step", "runbox:step/input@1.0.0"),
            ("step", "runbox:step/log@1.0.0"),
            ("kv-read", "runbox:step/kv-read@1.0.0"),
            ("kv-write", "runbox:step/kv-write@1.0.0"),
            ("tool-read", "runbox:step/tool-read@1.0.0"),
        ])
    );
    let wasi = caps_groups("components/wasi_sees_nothing.wat");
    assert!(
        wasi.iter()
            .all(|(cap, name)| cap == "wasi-denied" && name.starts_with("wasi:")),
        "{wasi:?}"
    );
}

#[test]
fn review_reads_a_components_capabilities_and_finds_an_ungranted_interface() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rb = happy_runbook(
        d,
        "grants = { kv_read = [\"svc/**\"], tools = [\"http_probe\"] }\nlimits = { timeout_ms = 1000 }",
    );
    let out = crate::util::TestCommand::new()
        .args(["review", rb.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = &report["steps"][0];
    assert_eq!(
        step["capabilities"],
        json!(["step", "step", "kv-read", "kv-write", "tool-read"]),
        "{report:#}"
    );
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "ungranted-import")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        finding["message"]
            .as_str()
            .unwrap()
            .contains("runbox:step/kv-write@1.0.0"),
        "{finding:#}"
    );
    assert_eq!(out.status.code(), Some(1));
}
