//! Several incidents in one process, and one incident never running two steps
//! at once, through the library.

use std::collections::BTreeMap;
use std::sync::Arc;

use runbox_engine::{Engine, RunExit, RunOptions};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store_rocksdb::RocksStore as Store;
use runbox_tests::{fixture, write_file};

/// A step that calls the read tool `pause` once, then finishes ok.
fn pause_step(dir: &std::path::Path) -> std::path::PathBuf {
    write_file(
        dir,
        "pause.wat",
        r#"(module
  (import "runbox:tool-read/v1" "call" (func $call (param i32 i32 i32 i32 i32 i32) (result i64)))
  (import "runbox:step/v1" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "pause")
  (data (i32.const 16) "{}")
  (func (export "_start")
    (drop (call $call (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 2) (i32.const 64) (i32.const 1024)))
    (call $finish (i32.const 0) (i32.const 0) (i32.const 0))))"#,
    )
}

fn engine_with_runbook(dir: &std::path::Path) -> (Arc<Engine>, std::path::PathBuf) {
    write_file(
        dir,
        "tools.toml",
        "[tools.pause]\nmode = \"read\"\nargv = [\"sleep\", \"0.2\"]\n",
    );
    let pause = pause_step(dir);
    let ok = fixture("engine/ok.wat");
    let runbook = write_file(
        dir,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"c\"\ntools = \"tools.toml\"\n\
             [[steps]]\nid = \"one\"\nmodule = \"{}\"\ngrants = {{ tools = [\"pause\"] }}\n\
             [[steps]]\nid = \"two\"\nmodule = \"{}\"\ngrants = {{ tools = [\"pause\"] }}\n\
             [[steps]]\nid = \"three\"\nmodule = \"{}\"\n",
            pause.display(),
            pause.display(),
            ok.display()
        ),
    );
    let store = Arc::new(Store::open(&dir.join("data")).unwrap());
    (
        Arc::new(Engine::new(store, Sandbox::new(SandboxConfig::default()))),
        runbook,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_incidents_run_concurrently_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, runbook) = engine_with_runbook(dir.path());
    for i in 0..4 {
        engine
            .opener()
            .open(
                &format!("INC-{i}"),
                &runbook,
                &BTreeMap::new(),
                "agent:test",
            )
            .unwrap();
    }
    let results = engine.runs().run_all(&RunOptions::default()).await.unwrap();
    assert_eq!(results.len(), 4);
    for (id, exit) in results {
        assert_eq!(exit.unwrap(), RunExit::Resolved, "{id}");
        assert_eq!(
            engine.incidents().step_records(&id).unwrap().len(),
            3,
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_incident_never_runs_two_steps_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, runbook) = engine_with_runbook(dir.path());
    engine
        .opener()
        .open("INC-1", &runbook, &BTreeMap::new(), "agent:test")
        .unwrap();
    let opts = RunOptions::default();
    let (a, b) = tokio::join!(
        engine.runs().run("INC-1", &opts),
        engine.runs().run("INC-1", &opts)
    );
    assert_eq!(a.unwrap(), RunExit::Resolved);
    assert_eq!(b.unwrap(), RunExit::Resolved);
    let records = engine.incidents().step_records("INC-1").unwrap();
    let steps: Vec<&str> = records.iter().map(|r| r.step.as_str()).collect();
    assert_eq!(steps, ["one", "two", "three"], "each step ran exactly once");
    for pair in records.windows(2) {
        assert!(
            pair[0].ended_at_ms <= pair[1].started_at_ms,
            "attempts never overlap"
        );
    }
}

/// `run_all` over 6 incidents with at most 2 attempts at once: never more
/// than 2 tools run together, and 2 do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_cap_bounds_tools_running_at_once_across_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.log");
    write_file(
        dir.path(),
        "tools.toml",
        &format!(
            "[tools.pause]\nmode = \"read\"\nargv = [\"sh\", \"-c\", \"echo start >> {0}; sleep 0.3; echo end >> {0}\"]\n",
            log.display()
        ),
    );
    let pause = pause_step(dir.path());
    let runbook = write_file(
        dir.path(),
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"cap\"\ntools = \"tools.toml\"\n\
             [[steps]]\nid = \"one\"\nmodule = \"{}\"\ngrants = {{ tools = [\"pause\"] }}\n",
            pause.display()
        ),
    );
    let store = Arc::new(Store::open(&dir.path().join("data")).unwrap());
    let engine = Arc::new(
        Engine::new(store, Sandbox::new(SandboxConfig::default())).with_max_concurrent_attempts(2),
    );
    for i in 0..6 {
        engine
            .opener()
            .open(
                &format!("INC-{i}"),
                &runbook,
                &BTreeMap::new(),
                "agent:test",
            )
            .unwrap();
    }
    let results = engine.runs().run_all(&RunOptions::default()).await.unwrap();
    assert!(
        results
            .iter()
            .all(|(_, r)| matches!(r, Ok(RunExit::Resolved))),
        "{results:?}"
    );
    let (mut running, mut most) = (0i32, 0i32);
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        running += if line == "start" { 1 } else { -1 };
        most = most.max(running);
    }
    assert_eq!(text.lines().count(), 12, "{text}");
    assert_eq!(
        most, 2,
        "at most 2 at once, and 2 did run together:\n{text}"
    );
}

/// `runbox run --all --concurrency N` sizes the sandbox pool for N attempts
/// at once: 300 incidents whose step waits 2 s in WASI `poll_oneoff` all
/// hold a pool slot together and all resolve (with the default pool of 256
/// slots, 44 would stop with "the sandbox pool is full"). Out-of-range caps
/// are refused by name.
#[test]
fn run_all_with_a_wide_cap_holds_every_attempt_in_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    runbox_tests::open_waiting_incidents(dir.path(), &data, 300);
    let runbox = |args: &[&str]| {
        runbox_tests::code_and_text(
            &crate::util::TestCommand::new()
                .env("RUNBOX_DATA_DIR", &data)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    for bad in ["0", "65537", "many"] {
        let (code, text) = runbox(&["run", "--all", "--concurrency", bad]);
        assert_eq!(code, 2, "{text}");
        assert!(
            text.contains("--concurrency") && text.contains("65536"),
            "{text}"
        );
    }
    let (code, text) = runbox(&["run", "--all", "--concurrency", "300"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.matches(": resolved").count(), 300, "{text}");
    assert!(!text.contains("pool is full"), "{text}");
}
