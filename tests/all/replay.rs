//! Replay: every attempt records what it saw, and re-runs against it bit for
//! bit, with no real tool and no write; a changed module is caught at its
//! first divergence.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use runbox_engine::replay::{Selection, Verdict, replay};
use runbox_engine::{Engine, RecordingLimits, RunOptions};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::{code_and_text, fixture, write_file};

/// A runbook of one step `s` running `module` with `grants`, opened and run
/// once as INC-1 on a RocksDB store in `dir`.
fn ran(dir: &Path, module: &str, grants: &str, limits: RecordingLimits) -> Engine {
    write_file(
        dir,
        "tools.toml",
        "[tools.probe]\nmode = \"read\"\nargv = [\"sh\", \"-c\", \"echo probe >> calls.log; echo 200\"]\n",
    );
    let rb = write_file(
        dir,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"r\"\ntools = \"tools.toml\"\n[[steps]]\nid = \"s\"\nmodule = \"{}\"\ngrants = {grants}\n",
            fixture(module).display()
        ),
    );
    let store = Arc::new(RocksStore::open(&dir.join("data")).unwrap());
    let engine =
        Engine::new(store, Sandbox::new(SandboxConfig::default())).with_recording_limits(limits);
    engine
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(engine.runs().run("INC-1", &RunOptions::default()))
        .unwrap();
    engine
}

fn replayed(engine: &Engine, module: Option<&Path>) -> runbox_engine::replay::ReplayReport {
    let selection = Selection {
        module,
        ..Selection::default()
    };
    let sandbox = Sandbox::new(SandboxConfig::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut reports = rt
        .block_on(replay(engine.incidents(), &sandbox, "INC-1", &selection))
        .unwrap();
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

#[test]
fn clock_and_random_bytes_replay_identically() {
    let dir = tempfile::tempdir().unwrap();
    let engine = ran(
        dir.path(),
        "replay/entropy.wat",
        "{ kv_write = [\"seen\"] }",
        RecordingLimits::default(),
    );
    let record = &engine.incidents().step_records("INC-1").unwrap()[0];
    let recording = record.recording.as_ref().unwrap();
    let kinds: Vec<String> = recording
        .events
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["random", "wall-clock"], "{recording:?}");
    assert_eq!(recording.kv_writes[0].value.as_ref().unwrap().len(), 24);
    let report = replayed(&engine, None);
    assert_eq!(report.verdict, Verdict::Same, "{report:?}");
}

#[test]
fn a_module_that_asks_in_another_order_differs_at_its_first_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let grants = "{ tools = [\"probe\"], kv_read = [\"k\"] }";
    let engine = ran(
        dir.path(),
        "replay/tool_then_read.wat",
        grants,
        RecordingLimits::default(),
    );
    assert_eq!(replayed(&engine, None).verdict, Verdict::Same);
    let new = fixture("replay/read_then_tool.wat");
    let report = replayed(&engine, Some(&new));
    assert_eq!(report.verdict, Verdict::Different, "{report:?}");
    let divergence = report.divergence.unwrap();
    assert!(
        divergence.contains("at input #1: the recording has call of tool `probe`")
            && divergence.contains("asked for KV read of `k`"),
        "{divergence}"
    );
    assert_ne!(report.replayed_module, report.recorded_module);
}

#[test]
fn a_recording_past_its_limit_is_marked_not_replayable() {
    let dir = tempfile::tempdir().unwrap();
    let small = RecordingLimits {
        per_attempt: 40,
        ..RecordingLimits::default()
    };
    let engine = ran(
        dir.path(),
        "replay/entropy.wat",
        "{ kv_write = [\"seen\"] }",
        small,
    );
    let recording = engine.incidents().step_records("INC-1").unwrap()[0]
        .recording
        .clone()
        .unwrap();
    assert!(!recording.complete);
    assert!(
        recording
            .incomplete
            .unwrap()
            .contains("recording limit of 40 bytes")
    );
    let report = replayed(&engine, None);
    assert_eq!(report.verdict, Verdict::NotReplayable, "{report:?}");
    // The incident's budget counts across attempts, too.
    let dir = tempfile::tempdir().unwrap();
    let tight = RecordingLimits {
        per_incident: 0,
        ..RecordingLimits::default()
    };
    let engine = ran(
        dir.path(),
        "replay/entropy.wat",
        "{ kv_write = [\"seen\"] }",
        tight,
    );
    assert_eq!(replayed(&engine, None).verdict, Verdict::NotReplayable);
}

#[test]
fn replay_runs_no_tool_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let grants = "{ tools = [\"probe\"], kv_read = [\"k\"] }";
    drop(ran(
        dir.path(),
        "replay/tool_then_read.wat",
        grants,
        RecordingLimits::default(),
    ));
    let calls = || std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
    assert_eq!(calls(), "probe\n");
    let runbox = |args: &[&str]| {
        code_and_text(
            &crate::util::TestCommand::new()
                .env("RUNBOX_DATA_DIR", dir.path().join("data"))
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let before = runbox(&["export", "INC-1", "--format", "json"]).1;
    let (code, text) = runbox(&["replay", "INC-1"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("INC-1 s#1: same"), "{text}");
    let (code, text) = runbox(&[
        "replay",
        "INC-1",
        "s",
        "--module",
        fixture("replay/read_then_tool.wat").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "a different module: {text}");
    assert!(
        text.contains("DIFFERENT") && text.contains("first divergence"),
        "{text}"
    );
    let (code, json) = runbox(&["replay", "--all", "--step", "s", "--format", "json"]);
    assert_eq!(code, 0, "{json}");
    let all: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(all[0]["verdict"], "same");
    assert_eq!(calls(), "probe\n", "no tool ran during replays");
    assert_eq!(
        runbox(&["export", "INC-1", "--format", "json"]).1,
        before,
        "nothing was written"
    );
    assert!(
        !before.contains("\"recording\""),
        "exports leave recordings out unless asked"
    );
    let with = runbox(&["export", "INC-1", "--format", "json", "--with-recordings"]).1;
    assert!(with.contains("runbox.recording/v1"), "{with}");
}

#[test]
fn verify_flags_a_recording_that_misses_a_tool_call() {
    use runbox_core::ident::IncidentId;
    use runbox_core::records::Checkpoint;
    use runbox_store::keys;
    use runbox_store::{Batch, Expect, StoreExt};
    let dir = tempfile::tempdir().unwrap();
    let grants = "{ tools = [\"probe\"], kv_read = [\"k\"] }";
    let engine = ran(
        dir.path(),
        "replay/tool_then_read.wat",
        grants,
        RecordingLimits::default(),
    );
    assert!(
        runbox_engine::verify::verify(engine.incidents(), "INC-1")
            .unwrap()
            .is_clean()
    );
    let id = IncidentId::new("INC-1").unwrap();
    let mut record = engine.incidents().step_records("INC-1").unwrap().remove(0);
    let recording = record.recording.as_mut().unwrap();
    recording
        .events
        .retain(|e| !matches!(e, runbox_core::recording::Seen::Tool { .. }));
    let store = engine.incidents().store();
    let mut cp: Checkpoint = store.read(&keys::checkpoint(&id)).unwrap().unwrap();
    let expected = Expect::Version(cp.version);
    cp.version += 1;
    let mut batch = Batch::new(cp);
    batch.put(keys::step(&id, "s", 1), &record);
    store.commit(&id, expected, batch).unwrap();
    let report = runbox_engine::verify::verify(engine.incidents(), "INC-1").unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("holds 0 tool calls but the record 1")),
        "{report:?}"
    );
}

/// `replay` says what differs in words: the replayed outcome with its
/// reason, and for KV writes to the same keys, which values differ.
#[test]
fn replay_names_the_replayed_reason_and_the_values_that_differ() {
    use runbox_core::ident::IncidentId;
    use runbox_core::records::Checkpoint;
    use runbox_store::keys;
    use runbox_store::{Batch, Expect, StoreExt};
    let dir = tempfile::tempdir().unwrap();
    let engine = ran(
        dir.path(),
        "replay/entropy.wat",
        "{ kv_write = [\"seen\"] }",
        RecordingLimits::default(),
    );
    // The recording says the step wrote "tampered": the replay writes the
    // random bytes and clock it saw, to the same key.
    let id = IncidentId::new("INC-1").unwrap();
    let mut record = engine.incidents().step_records("INC-1").unwrap().remove(0);
    record.recording.as_mut().unwrap().kv_writes[0].value = Some(b"tampered".to_vec());
    let store = engine.incidents().store();
    let mut cp: Checkpoint = store.read(&keys::checkpoint(&id)).unwrap().unwrap();
    let expected = Expect::Version(cp.version);
    cp.version += 1;
    let mut batch = Batch::new(cp);
    batch.put(keys::step(&id, "s", 1), &record);
    store.commit(&id, expected, batch).unwrap();
    drop(engine);
    let runbox = |args: &[&str]| {
        code_and_text(
            &crate::util::TestCommand::new()
                .env("RUNBOX_DATA_DIR", dir.path().join("data"))
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let (code, text) = runbox(&["replay", "INC-1"]);
    assert_eq!(code, 1, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], "INC-1 s#1: DIFFERENT");
    assert!(
        lines[1].starts_with("  KV write `seen`: recorded \"tampered\", replayed \""),
        "{text}"
    );
    // A new version that fails: the replayed reason is said.
    let fails = write_file(
        dir.path(),
        "fails.wat",
        r#"(module
  (import "runbox:step/v1" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "disk full")
  (func (export "_start") (call $finish (i32.const 3) (i32.const 0) (i32.const 9))))"#,
    );
    let (code, text) = runbox(&["replay", "INC-1", "s", "--module", fails.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "INC-1 s#1: DIFFERENT",
            "  first divergence at input #1: the recording has 64 random bytes, but the step asked for nothing more",
            "  outcome: recorded ok, replayed fail (\"disk full\")",
            "  KV writes: recorded keys [\"seen\"], replayed keys []",
        ],
        "{text}"
    );
}
