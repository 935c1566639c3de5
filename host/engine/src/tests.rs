//! Engine tests on the in-memory store: the run loop, gates, human actions
//! and the commit fence, without RocksDB.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::keys;
use runbox_core::records::{Checkpoint, InFlight, Owner, RecordOutcome, Status};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store::{MemoryStore, Store, StoreError, StoreExt};

use crate::{Engine, EngineError, RunExit, RunOptions, change, verify};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/engine")
        .join(name)
}

/// Writes a runbook whose steps are `(id, fixture, extra TOML)`.
fn runbook(dir: &Path, steps: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::from("[runbook]\nname = \"t\"\ntools = \"tools.toml\"\n");
    for (id, module, extra) in steps {
        text.push_str(&format!(
            "[[steps]]\nid = \"{id}\"\nmodule = \"{}\"\n{extra}\n",
            fixture(module).display()
        ));
    }
    std::fs::write(
        dir.join("tools.toml"),
        "[tools.touch]\nmode = \"mutate\"\nargv = [\"true\"]\n",
    )
    .unwrap();
    let path = dir.join("runbook.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn engine(store: Arc<dyn Store>) -> Engine {
    Engine::new(store, Sandbox::new(SandboxConfig::default()))
}

fn run(engine: &Engine, id: &str, opts: &RunOptions) -> Result<RunExit, EngineError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(engine.run(id, opts))
}

#[test]
fn a_runbook_of_ok_steps_resolves_and_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &[("a", "ok.wat", ""), ("b", "ok.wat", "")]);
    let engine = engine(Arc::new(MemoryStore::new()));
    engine
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    assert_eq!(
        run(&engine, "INC-1", &RunOptions::default()).unwrap(),
        RunExit::Resolved
    );
    let kinds: Vec<EventKind> = engine
        .timeline("INC-1")
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Opened,
            EventKind::StepCommitted,
            EventKind::StepCommitted,
            EventKind::Resolved
        ]
    );
    let report = verify::verify(&engine, "INC-1").unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_high_impact_mutating_step_waits_for_a_human_then_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(
        dir.path(),
        &[(
            "restart",
            "mutate.wat",
            "impact = \"high\"\ngrants = { tools = [\"touch\"], kv_write = [\"touched\"] }",
        )],
    );
    let engine = engine(Arc::new(MemoryStore::new()));
    let token = engine.init_token(false).unwrap();
    engine
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let opts = RunOptions {
        token: Some(token),
        ..RunOptions::default()
    };
    let exit = run(&engine, "INC-1", &opts).unwrap();
    assert_eq!(
        exit,
        RunExit::AwaitingApproval {
            step: "restart".into(),
            attempt: 1
        }
    );
    // Asking again records nothing new.
    let events = engine.timeline("INC-1").unwrap().len();
    run(&engine, "INC-1", &opts).unwrap();
    assert_eq!(engine.timeline("INC-1").unwrap().len(), events);
    engine.approve("INC-1", "restart", "alice", true).unwrap();
    assert_eq!(run(&engine, "INC-1", &opts).unwrap(), RunExit::Resolved);
    let records = engine.step_records("INC-1").unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].approved_by.as_deref(), Some("human:alice"));
    assert_eq!(engine.kv("INC-1").unwrap().len(), 1);
    assert!(verify::verify(&engine, "INC-1").unwrap().is_clean());
}

#[test]
fn without_the_token_a_mutating_step_is_blocked_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(
        dir.path(),
        &[(
            "restart",
            "mutate.wat",
            "grants = { tools = [\"touch\"], kv_write = [\"touched\"] }",
        )],
    );
    let engine = engine(Arc::new(MemoryStore::new()));
    engine
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
    assert!(
        matches!(&exit, RunExit::Blocked { reason } if reason.contains("no mutation token")),
        "{exit:?}"
    );
    let last = engine.timeline("INC-1").unwrap().pop().unwrap();
    assert_eq!(last.kind, EventKind::Blocked);
    assert!(engine.step_records("INC-1").unwrap().is_empty());
}

#[test]
fn an_in_flight_attempt_found_after_a_crash_escalates_unless_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    for (idempotent, expect_escalated) in [(false, true), (true, false)] {
        let rb = runbook(
            dir.path(),
            &[("a", "ok.wat", &format!("idempotent = {idempotent}"))],
        );
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let engine = engine(store.clone());
        engine
            .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
            .unwrap();
        // What a crash between the in-flight marker and the commit leaves.
        let id = IncidentId::new("INC-1").unwrap();
        let cp: Checkpoint = store.get_json(&keys::checkpoint(&id)).unwrap().unwrap();
        let marker = change::Change {
            checkpoint: Some(Checkpoint {
                in_flight: Some(InFlight {
                    step: "a".into(),
                    attempt: 1,
                    started_at_ms: 1,
                    tool: "touch".into(),
                }),
                ..cp.clone()
            }),
            status: Some(Status::Running),
            ..change::Change::default()
        };
        change::commit(&*store, &id, change::Base::At(&cp), marker).unwrap();
        let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
        assert_eq!(
            matches!(exit, RunExit::Escalated { .. }),
            expect_escalated,
            "{exit:?}"
        );
        let records = engine.step_records("INC-1").unwrap();
        if expect_escalated {
            assert!(records.is_empty(), "a human settles it: {records:?}");
            assert_eq!(
                store.get_json::<Owner>(&keys::owner(&id)).unwrap(),
                Some(Owner::on_call())
            );
            let kinds: Vec<EventKind> = engine
                .timeline("INC-1")
                .unwrap()
                .iter()
                .map(|e| e.kind)
                .collect();
            assert!(
                kinds.ends_with(&[EventKind::InDoubt, EventKind::Escalated]),
                "{kinds:?}"
            );
        } else {
            assert_eq!(records[0].outcome, RecordOutcome::InDoubt);
            assert_eq!(records[1].attempt, 2, "the idempotent step ran again");
        }
        assert!(verify::verify(&engine, "INC-1").unwrap().is_clean());
    }
}

#[test]
fn a_change_decided_on_a_stale_checkpoint_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &[("a", "ok.wat", "")]);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = engine(store.clone());
    engine
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let id = IncidentId::new("INC-1").unwrap();
    let stale: Checkpoint = store.get_json(&keys::checkpoint(&id)).unwrap().unwrap();
    engine.takeover("INC-1", "alice").unwrap();
    let mut late = change::Change::default();
    late.event("agent:t", EventKind::Blocked, None, "late");
    let err = change::commit(&*store, &id, change::Base::At(&stale), late).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(engine.timeline("INC-1").unwrap().len(), 2);
    assert!(matches!(
        run(&engine, "INC-1", &RunOptions::default()).unwrap(),
        RunExit::HumanOwner { .. }
    ));
}

#[test]
fn opening_twice_and_bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &[("a", "ok.wat", "")]);
    let engine = engine(Arc::new(MemoryStore::new()));
    engine
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    assert!(matches!(
        engine.open("INC-1", &rb, &BTreeMap::new(), "agent:t"),
        Err(EngineError::Exists(_))
    ));
    assert!(matches!(
        engine.open("a:b", &rb, &BTreeMap::new(), "agent:t"),
        Err(EngineError::InvalidName { .. })
    ));
    assert!(matches!(
        engine.takeover("INC-1", "human:bob"),
        Err(EngineError::InvalidName { .. })
    ));
    let opts = RunOptions {
        agent: Some("x\nhuman:bob".into()),
        ..RunOptions::default()
    };
    assert!(matches!(
        run(&engine, "INC-1", &opts),
        Err(EngineError::InvalidName { .. })
    ));
}

#[test]
fn the_backward_search_stops_at_lookback_and_status_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &[("a", "ok.wat", "")]);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = engine(store.clone());
    engine
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    engine.takeover("INC-1", "alice").unwrap();
    let id = IncidentId::new("INC-1").unwrap();
    let noise = |n: usize| {
        let cp: Checkpoint = store.get_json(&keys::checkpoint(&id)).unwrap().unwrap();
        let mut change = change::Change::default();
        for _ in 0..n {
            change.event("human:alice", EventKind::StepCommitted, None, "noise");
        }
        change::commit(&*store, &id, change::Base::At(&cp), change).unwrap();
    };
    let explains = |kind: EventKind| kind.explains_status();
    noise(crate::LOOKBACK - 1);
    let found = engine.last_event(&id, explains).unwrap();
    assert!(
        found.is_some_and(|e| e.kind == EventKind::Takeover),
        "within reach"
    );
    noise(1);
    assert!(
        engine.last_event(&id, explains).unwrap().is_none(),
        "past LOOKBACK"
    );
    let why = engine.view("INC-1").unwrap().why;
    assert!(
        why.is_some_and(|w| w.contains("took over")),
        "`status` reads its own record, however long the timeline"
    );
}

#[test]
fn a_module_swapped_in_the_same_process_is_still_refused() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("step.wat");
    std::fs::copy(fixture("ok.wat"), &module).unwrap();
    let rb = dir.path().join("runbook.toml");
    std::fs::write(
        &rb,
        format!(
            "[runbook]\nname = \"t\"\n[[steps]]\nid = \"a\"\nmodule = \"{}\"\nimpact = \"high\"\n",
            module.display()
        ),
    )
    .unwrap();
    let engine = engine(Arc::new(MemoryStore::new()));
    engine
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    // The gates read (and cache) the module, then wait for a human.
    assert!(matches!(
        run(&engine, "INC-1", &RunOptions::default()).unwrap(),
        RunExit::AwaitingApproval { .. }
    ));
    // Same size, same second: only the content (and the change time) differ.
    let text = std::fs::read_to_string(&module).unwrap();
    std::fs::write(&module, text.replace("true", "fals")).unwrap();
    engine.approve("INC-1", "a", "alice", true).unwrap();
    let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
    assert!(
        matches!(&exit, RunExit::Blocked { reason } if reason.contains("recorded when the incident was opened")),
        "{exit:?}"
    );
}
