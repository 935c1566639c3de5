//! Engine tests on the in-memory store: the run loop, gates, human actions
//! and the commit fence, without RocksDB.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::records::{Checkpoint, InFlight, Owner, RecordOutcome, Status};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store::keys;
use runbox_store::{MemoryStore, Page, Shared, Store, StoreError, StoreExt, Versioned};

use runbox_trust::Action;
use runbox_trust::testing::TestHumans;

use crate::decision::{DEFAULT_TTL, Request};
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

/// The humans of these tests, with keys in process.
fn humans() -> &'static TestHumans {
    static HUMANS: std::sync::OnceLock<TestHumans> = std::sync::OnceLock::new();
    HUMANS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("runbox-engine-tests-{}", std::process::id()));
        TestHumans::new(dir.join("allowed_signers"))
    })
}

fn engine(store: Arc<dyn Store>) -> Engine {
    Engine::new(store, Sandbox::new(SandboxConfig::default())).with_allowed_signers(humans().path())
}

/// The admin's signed `rotate-token` statement for the engine's token as it
/// stands.
fn rotation(engine: &Engine) -> runbox_trust::Decision {
    let mut statement = runbox_trust::Statement::new(
        Action::RotateToken,
        "admin",
        DEFAULT_TTL,
        &engine.deployment_id().unwrap(),
    )
    .unwrap();
    statement.subject_sha256 = Some(engine.fleet().token_subject().unwrap());
    humans().sign("admin", &statement.to_text())
}

/// A mutation token, created with a human's signature (humans exist).
fn token(engine: &Engine) -> String {
    engine
        .fleet()
        .init_token(false, crate::TokenAuth::Human(&rotation(engine)))
        .unwrap()
}

/// `name` signs `action` as the engine states it, and hands it in.
fn decide(
    engine: &Engine,
    action: Action,
    id: &str,
    step: Option<&str>,
    name: &str,
) -> Result<Action, EngineError> {
    let statement = engine.humans().statement(&Request {
        action,
        incident: id,
        step,
        outcome: None,
        signer: name,
        ttl: DEFAULT_TTL,
    })?;
    engine
        .humans()
        .decide(&humans().sign(name, &statement.to_text()))
}

fn run(engine: &Engine, id: &str, opts: &RunOptions) -> Result<RunExit, EngineError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(engine.runs().run(id, opts))
}

#[test]
fn a_runbook_of_ok_steps_resolves_and_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &[("a", "ok.wat", ""), ("b", "ok.wat", "")]);
    let engine = engine(Arc::new(MemoryStore::new()));
    engine
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    assert_eq!(
        run(&engine, "INC-1", &RunOptions::default()).unwrap(),
        RunExit::Resolved
    );
    let kinds: Vec<EventKind> = engine
        .incidents()
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
    let report = verify::verify(engine.incidents(), "INC-1").unwrap();
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
    let token = token(&engine);
    engine
        .opener()
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
    let events = engine.incidents().timeline("INC-1").unwrap().len();
    run(&engine, "INC-1", &opts).unwrap();
    assert_eq!(engine.incidents().timeline("INC-1").unwrap().len(), events);
    decide(&engine, Action::Approve, "INC-1", Some("restart"), "alice").unwrap();
    assert_eq!(run(&engine, "INC-1", &opts).unwrap(), RunExit::Resolved);
    let records = engine.incidents().step_records("INC-1").unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].approved_by.as_deref(), Some("human:alice"));
    assert_eq!(engine.incidents().kv("INC-1").unwrap().len(), 1);
    assert!(
        verify::verify(engine.incidents(), "INC-1")
            .unwrap()
            .is_clean()
    );
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
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
    assert!(
        matches!(&exit, RunExit::Blocked { reason } if reason.contains("no mutation token")),
        "{exit:?}"
    );
    let last = engine.incidents().timeline("INC-1").unwrap().pop().unwrap();
    assert_eq!(last.kind, EventKind::Blocked);
    assert!(engine.incidents().step_records("INC-1").unwrap().is_empty());
}

/// A step stopped at its timeout while its mutating tool still runs: its
/// record shows the call, its outcome unknown, so no one reads the attempt
/// as one that never mutated (a shared-store campaign found a human
/// retrying such a step as if nothing had run).
#[test]
fn a_step_stopped_during_its_mutating_call_records_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(
        dir.path(),
        &[(
            "restart",
            "mutate.wat",
            "limits = { timeout_ms = 300 }\ngrants = { tools = [\"touch\"], kv_write = [\"touched\"] }",
        )],
    );
    std::fs::write(
        dir.path().join("tools.toml"),
        "[tools.touch]\nmode = \"mutate\"\nargv = [\"sleep\", \"5\"]\n",
    )
    .unwrap();
    let engine = engine(Arc::new(MemoryStore::new()));
    let opts = RunOptions {
        token: Some(token(&engine)),
        ..RunOptions::default()
    };
    engine
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let exit = run(&engine, "INC-1", &opts).unwrap();
    assert!(matches!(exit, RunExit::Escalated { .. }), "{exit:?}");
    let records = engine.incidents().step_records("INC-1").unwrap();
    assert_eq!(records.len(), 1);
    let call = records[0].tool_calls.first().expect("the call is recorded");
    assert_eq!(call.name, "touch");
    assert_eq!(call.mode, runbox_core::tools::ToolMode::Mutate);
    let error = call.error.as_deref().unwrap_or_default();
    assert!(error.contains("unknown"), "{error}");
    // Nothing to replay the call with: the recording says so, and the
    // incident verifies clean.
    let recording = records[0].recording.as_ref().expect("a recording");
    assert!(!recording.complete);
    assert!(
        verify::verify(engine.incidents(), "INC-1")
            .unwrap()
            .is_clean()
    );
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
            .opener()
            .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
            .unwrap();
        // What a crash between the in-flight marker and the commit leaves.
        let id = IncidentId::new("INC-1").unwrap();
        let cp: Checkpoint = store.read(&keys::checkpoint(&id)).unwrap().unwrap();
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
        change::commit(
            &*store,
            &Default::default(),
            &id,
            change::Base::At(&cp),
            marker,
        )
        .unwrap();
        let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
        assert_eq!(
            matches!(exit, RunExit::Escalated { .. }),
            expect_escalated,
            "{exit:?}"
        );
        let records = engine.incidents().step_records("INC-1").unwrap();
        if expect_escalated {
            assert!(records.is_empty(), "a human settles it: {records:?}");
            assert_eq!(
                store.read(&keys::owner(&id)).unwrap(),
                Some(Owner::on_call())
            );
            let kinds: Vec<EventKind> = engine
                .incidents()
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
        assert!(
            verify::verify(engine.incidents(), "INC-1")
                .unwrap()
                .is_clean()
        );
    }
}

#[test]
fn a_change_decided_on_a_stale_checkpoint_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &[("a", "ok.wat", "")]);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = engine(store.clone());
    engine
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let id = IncidentId::new("INC-1").unwrap();
    let stale: Checkpoint = store.read(&keys::checkpoint(&id)).unwrap().unwrap();
    decide(&engine, Action::Takeover, "INC-1", None, "alice").unwrap();
    let mut late = change::Change::default();
    late.event("agent:t", EventKind::Blocked, None, "late");
    let err = change::commit(
        &*store,
        &Default::default(),
        &id,
        change::Base::At(&stale),
        late,
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(engine.incidents().timeline("INC-1").unwrap().len(), 2);
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
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    assert!(matches!(
        engine
            .opener()
            .open("INC-1", &rb, &BTreeMap::new(), "agent:t"),
        Err(EngineError::Exists(_))
    ));
    assert!(matches!(
        engine
            .opener()
            .open("a:b", &rb, &BTreeMap::new(), "agent:t"),
        Err(EngineError::InvalidName { .. })
    ));
    assert!(matches!(
        decide(&engine, Action::Takeover, "INC-1", None, "human:bob"),
        Err(EngineError::Trust(_))
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
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    decide(&engine, Action::Takeover, "INC-1", None, "alice").unwrap();
    let id = IncidentId::new("INC-1").unwrap();
    let noise = |n: usize| {
        let cp: Checkpoint = store.read(&keys::checkpoint(&id)).unwrap().unwrap();
        let mut change = change::Change::default();
        for _ in 0..n {
            change.event("human:alice", EventKind::StepCommitted, None, "noise");
        }
        change::commit(
            &*store,
            &Default::default(),
            &id,
            change::Base::At(&cp),
            change,
        )
        .unwrap();
    };
    let explains = |kind: EventKind| kind.explains_status();
    noise(crate::LOOKBACK - 1);
    let found = engine.incidents().last_event(&id, explains).unwrap();
    assert!(
        found.is_some_and(|e| e.kind == EventKind::Takeover),
        "within reach"
    );
    noise(1);
    assert!(
        engine
            .incidents()
            .last_event(&id, explains)
            .unwrap()
            .is_none(),
        "past LOOKBACK"
    );
    let why = engine.incidents().view("INC-1").unwrap().why;
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
        .opener()
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
    decide(&engine, Action::Approve, "INC-1", Some("a"), "alice").unwrap();
    let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
    assert!(
        matches!(&exit, RunExit::Blocked { reason } if reason.contains("recorded when the incident was opened")),
        "{exit:?}"
    );
}

// ---------------------------------------------------------------------------
// Signed human decisions
// ---------------------------------------------------------------------------

/// An incident whose one high-impact step `a` awaits approval.
fn awaiting(extra: &str) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let step = format!("impact = \"high\"\n{extra}");
    let rb = runbook(dir.path(), &[("a", "ok.wat", &step), ("b", "ok.wat", "")]);
    let engine = engine(Arc::new(MemoryStore::new()));
    engine
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
    assert!(matches!(exit, RunExit::AwaitingApproval { .. }), "{exit:?}");
    (dir, engine)
}

fn refusal(result: Result<Action, EngineError>) -> String {
    match result {
        Err(e) => e.to_string(),
        Ok(a) => panic!("`{a}` was accepted"),
    }
}

/// A statement approving `a` of INC-1 by `name`, valid for `ttl`.
fn approval(engine: &Engine, name: &str, ttl: std::time::Duration) -> runbox_trust::Statement {
    let request = Request {
        action: Action::Approve,
        incident: "INC-1",
        step: Some("a"),
        outcome: None,
        signer: name,
        ttl,
    };
    engine.humans().statement(&request).unwrap()
}

/// [`approval`] altered by `edit`, as text.
fn altered(engine: &Engine, name: &str, edit: impl FnOnce(&mut runbox_trust::Statement)) -> String {
    let mut statement = approval(engine, name, DEFAULT_TTL);
    edit(&mut statement);
    statement.to_text()
}

#[test]
fn an_approval_binds_its_incident_step_attempt_module_and_subject() {
    let (_dir, engine) = awaiting("");
    let events = engine.incidents().timeline("INC-1").unwrap().len();
    type Edit = Box<dyn FnOnce(&mut runbox_trust::Statement)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("attempt 2", Box::new(|s| s.attempt = Some(2))),
        ("step b", Box::new(|s| s.step = Some("b".into()))),
        (
            "module",
            Box::new(|s| s.module_sha256 = Some("0".repeat(64))),
        ),
        (
            "subject",
            Box::new(|s| s.subject_sha256 = Some("1".repeat(64))),
        ),
    ];
    for (what, edit) in edits {
        let text = altered(&engine, "alice", edit);
        let err = refusal(engine.humans().decide(&humans().sign("alice", &text)));
        assert!(
            err.contains("bound to") || err.contains("not awaiting"),
            "{what}: {err}"
        );
    }
    let other = altered(&engine, "alice", |s| s.incident = Some("INC-2".into()));
    assert!(refusal(engine.humans().decide(&humans().sign("alice", &other))).contains("INC-2"));
    // The agent's own signing key is not a human's; nor is a forged signer.
    let by_bob_for_alice = humans().sign("bob", &altered(&engine, "alice", |_| {}));
    assert!(refusal(engine.humans().decide(&by_bob_for_alice)).contains("not alice's"));
    let stranger = altered(&engine, "mallory", |_| {});
    let unknown = runbox_trust::sign_with_key(
        &ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .unwrap(),
        &stranger,
    )
    .unwrap();
    assert!(refusal(engine.humans().decide(&unknown)).contains("not in allowed_signers"));
    assert_eq!(
        engine.incidents().timeline("INC-1").unwrap().len(),
        events,
        "nothing written"
    );
    // The right one counts once.
    let good = humans().sign("alice", &altered(&engine, "alice", |_| {}));
    engine.humans().decide(&good).unwrap();
    assert!(refusal(engine.humans().decide(&good)).contains("used already"));
}

#[test]
fn two_person_rule_and_named_approvers() {
    let (_dir, engine) = awaiting("approvals = 2\napprovers = [\"alice\", \"bob\", \"carol\"]");
    let approve = |name| decide(&engine, Action::Approve, "INC-1", Some("a"), name);
    assert!(refusal(approve("dave")).contains("only alice, bob, carol may approve"));
    approve("alice").unwrap();
    assert!(refusal(approve("alice")).contains("already"));
    let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
    assert!(
        matches!(exit, RunExit::AwaitingApproval { .. }),
        "one of two: {exit:?}"
    );
    approve("bob").unwrap();
    assert_eq!(
        run(&engine, "INC-1", &RunOptions::default()).unwrap(),
        RunExit::Resolved
    );
    let record = &engine.incidents().step_records("INC-1").unwrap()[0];
    assert_eq!(
        record.approved_by.as_deref(),
        Some("human:alice, human:bob")
    );
    assert_eq!(record.decisions.len(), 2);
    assert!(
        verify::verify(engine.incidents(), "INC-1")
            .unwrap()
            .is_clean()
    );
}

#[test]
fn the_agent_that_asked_cannot_approve_as_a_human() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &[("a", "ok.wat", "impact = \"high\"")]);
    let engine = engine(Arc::new(MemoryStore::new()));
    engine
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    let opts = RunOptions {
        agent: Some("erin".into()),
        ..RunOptions::default()
    };
    run(&engine, "INC-1", &opts).unwrap();
    let err = refusal(decide(&engine, Action::Approve, "INC-1", Some("a"), "erin"));
    assert!(
        err.contains("asked for this attempt as agent:erin"),
        "{err}"
    );
}

#[test]
fn an_expired_approval_never_runs_the_step_and_the_timeline_says_why() {
    let (_dir, engine) = awaiting("");
    let statement = approval(&engine, "alice", std::time::Duration::from_millis(400));
    engine
        .humans()
        .decide(&humans().sign("alice", &statement.to_text()))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    // After a restart (a new engine over the same store) the check happens again.
    let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
    assert!(matches!(exit, RunExit::AwaitingApproval { .. }), "{exit:?}");
    assert!(
        engine.incidents().step_records("INC-1").unwrap().is_empty(),
        "the step never ran"
    );
    let voided = engine.incidents().timeline("INC-1").unwrap();
    let last = voided.last().unwrap();
    assert_eq!(last.kind, EventKind::ApprovalVoided);
    assert!(last.message.contains("expired"), "{}", last.message);
    // A fresh approval runs it; the voided one stays on record.
    decide(&engine, Action::Approve, "INC-1", Some("a"), "alice").unwrap();
    assert_eq!(
        run(&engine, "INC-1", &RunOptions::default()).unwrap(),
        RunExit::Resolved
    );
    assert!(
        verify::verify(engine.incidents(), "INC-1")
            .unwrap()
            .is_clean()
    );
}

#[test]
fn a_removed_human_s_approval_stops_counting_before_the_step_runs() {
    let dir = tempfile::tempdir().unwrap();
    let signers = dir.path().join("allowed_signers");
    let local = TestHumans::new(&signers);
    let rb = runbook(dir.path(), &[("a", "ok.wat", "impact = \"high\"")]);
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        Sandbox::new(SandboxConfig::default()),
    )
    .with_allowed_signers(&signers);
    engine
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    run(&engine, "INC-1", &RunOptions::default()).unwrap();
    let statement = approval(&engine, "gus", DEFAULT_TTL);
    engine
        .humans()
        .decide(&local.sign("gus", &statement.to_text()))
        .unwrap();
    runbox_trust::AllowedSigners::remove(&signers, "gus").unwrap();
    let exit = run(&engine, "INC-1", &RunOptions::default()).unwrap();
    assert!(matches!(exit, RunExit::AwaitingApproval { .. }), "{exit:?}");
    assert_violation(&engine, "does not verify");
}

/// `verify` reports a violation mentioning `needle`.
fn assert_violation(engine: &Engine, needle: &str) {
    let report = verify::verify(engine.incidents(), "INC-1").unwrap();
    assert!(
        report.violations.iter().any(|v| v.contains(needle)),
        "{report:?}"
    );
}

#[test]
fn verify_catches_a_signature_altered_in_the_store() {
    let (_dir, engine) = awaiting("");
    decide(&engine, Action::Approve, "INC-1", Some("a"), "alice").unwrap();
    assert!(
        verify::verify(engine.incidents(), "INC-1")
            .unwrap()
            .is_clean()
    );
    let id = IncidentId::new("INC-1").unwrap();
    let store = engine.incidents().store().clone();
    let mut event = engine.incidents().timeline("INC-1").unwrap().pop().unwrap();
    let signed = event.signed.as_mut().unwrap();
    signed.statement = signed.statement.replace("\"alice\"", "\"bob\"");
    event.actor = "human:bob".into();
    let mut cp: Checkpoint = store.read(&keys::checkpoint(&id)).unwrap().unwrap();
    let expected = runbox_store::Expect::Version(cp.version);
    cp.version += 1;
    let mut batch = runbox_store::Batch::new(cp);
    batch.put(keys::event(&id, event.seq), &event);
    store.commit(&id, expected, batch).unwrap();
    assert_violation(&engine, "does not verify");
}

#[test]
fn the_token_cannot_be_rotated_without_the_current_one_or_a_human() {
    let engine = engine(Arc::new(MemoryStore::new()));
    humans().key("admin");
    let first = token(&engine);
    use crate::TokenAuth;
    assert!(engine.fleet().init_token(true, TokenAuth::None).is_err());
    assert!(
        engine
            .fleet()
            .init_token(true, TokenAuth::Current("rbx_wrong"))
            .is_err()
    );
    let second = engine
        .fleet()
        .init_token(true, TokenAuth::Current(&first))
        .unwrap();
    assert!(
        engine
            .fleet()
            .init_token(false, TokenAuth::Current(&second))
            .is_err(),
        "no silent replace"
    );
    // A human's statement for something else does not rotate it.
    let takeover = runbox_trust::Statement::new(
        Action::Takeover,
        "admin",
        DEFAULT_TTL,
        &engine.deployment_id().unwrap(),
    )
    .unwrap();
    let wrong = humans().sign("admin", &takeover.to_text());
    assert!(
        engine
            .fleet()
            .init_token(true, TokenAuth::Human(&wrong))
            .is_err()
    );
}

/// Rotations racing with one signed statement: the nonce is spent and the
/// hash replaced in one conditional write, so exactly one lands, and the
/// token that stands is the winner's.
#[test]
fn rotations_racing_with_one_statement_have_one_winner() {
    let engine = engine(Arc::new(MemoryStore::new()));
    token(&engine);
    let signed = rotation(&engine);
    let racers = 8;
    let barrier = std::sync::Barrier::new(racers);
    let winners: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..racers)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    engine
                        .fleet()
                        .init_token(true, crate::TokenAuth::Human(&signed))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap().ok())
            .collect()
    });
    assert_eq!(winners.len(), 1, "one rotation per statement");
    assert!(engine.token_valid(&winners[0]).unwrap());
}

#[test]
fn a_statement_counts_only_while_the_incident_has_not_moved() {
    let (_dir, engine) = awaiting("");
    let request = |action, signer| Request {
        action,
        incident: "INC-1",
        step: None,
        outcome: None,
        signer,
        ttl: DEFAULT_TTL,
    };
    // Alice signs a takeover; before it is handed in, bob takes over.
    let alices = engine
        .humans()
        .statement(&request(Action::Takeover, "alice"))
        .unwrap();
    decide(&engine, Action::Takeover, "INC-1", None, "bob").unwrap();
    let err = refusal(
        engine
            .humans()
            .decide(&humans().sign("alice", &alices.to_text())),
    );
    assert!(err.contains("bound to status"), "{err}");
}

#[test]
fn a_token_statement_counts_for_one_rotation_only() {
    let engine = engine(Arc::new(MemoryStore::new()));
    let first = token(&engine);
    let signed = rotation(&engine);
    // Refused for another reason first (no --rotate): the statement is
    // checked before that, and stays unspent but bound to this token.
    assert!(
        engine
            .fleet()
            .init_token(false, crate::TokenAuth::Human(&signed))
            .is_err()
    );
    engine
        .fleet()
        .init_token(true, crate::TokenAuth::Current(&first))
        .unwrap();
    let err = engine
        .fleet()
        .init_token(true, crate::TokenAuth::Human(&signed))
        .unwrap_err()
        .to_string();
    assert!(err.contains("another token"), "{err}");
}

/// The fleet's configuration in the store: who consents to a change, and
/// the fence that makes a decision checked against signers that moved
/// since be checked again.
/// A commit made from an async path that calls the store synchronously (a
/// note here) must not hold its worker while the store waits: the hook
/// below waits on a task it queues on that very worker, the runtime's only
/// one, which runs only if the commit moved off it (`blocking::OffWorker`).
#[test]
fn a_commit_from_an_async_path_leaves_its_workers_other_tasks_running() {
    let inner = Arc::new(MemoryStore::new());
    let store = Arc::new(MovesFirst {
        inner,
        before_commit: Mutex::default(),
    });
    let engine = Arc::new(engine(store.clone()));
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &[("a", "ok.wat", "")]);
    engine
        .opener()
        .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
        .unwrap();
    *store.before_commit.lock().unwrap() = Some(Box::new(|| {
        let (ran, other_task_ran) = std::sync::mpsc::channel();
        tokio::spawn(async move { ran.send(()).unwrap() });
        other_task_ran
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a task queued on the committing worker ran while the commit waited");
    }));
    let one_worker = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let note = one_worker.spawn(async move {
        engine
            .runs()
            .note("INC-1", "agent:t", "checked the dashboards")
            .await
    });
    let noted = one_worker.block_on(note);
    noted.unwrap().unwrap();
}

mod fleet_config {
    use runbox_core::fleet_config::{ConfigChange, ConfigKind};
    use runbox_trust::AllowedSigners;

    use super::*;
    use crate::config::{ConfigAuth, Proposal};

    fn public(name: &str) -> String {
        humans().key(name).public_key().to_openssh().unwrap()
    }

    fn store_engine(store: Arc<dyn Store>) -> Engine {
        Engine::new(store, Sandbox::new(SandboxConfig::default())).with_config_in_store()
    }

    /// The proposal that lists `name`'s SSH key among the signers as they
    /// stand.
    fn adding(engine: &Engine, name: &str) -> Result<Proposal, EngineError> {
        let current = engine.fleet().config_text(ConfigKind::Signers)?;
        let (text, _) =
            AllowedSigners::added(&current, Path::new("signers"), name, &public(name)).unwrap();
        engine.fleet().config_proposal(ConfigKind::Signers, text)
    }

    /// Adds `name`, with `by`'s signature (none: the token's consent).
    fn add(
        engine: &Engine,
        token: &str,
        name: &str,
        by: Option<&str>,
    ) -> Result<ConfigChange, EngineError> {
        apply(engine, token, adding(engine, name)?, by)
    }

    fn change(
        engine: &Engine,
        token: &str,
        kind: ConfigKind,
        text: String,
        by: Option<&str>,
    ) -> Result<ConfigChange, EngineError> {
        let proposal = engine.fleet().config_proposal(kind, text)?;
        apply(engine, token, proposal, by)
    }

    /// Makes `proposal` with `by`'s signature (none: the token's consent).
    fn apply(
        engine: &Engine,
        token: &str,
        proposal: Proposal,
        by: Option<&str>,
    ) -> Result<ConfigChange, EngineError> {
        let Some(by) = by else {
            return engine.fleet().configure(proposal, ConfigAuth::Token(token));
        };
        let statement = engine
            .fleet()
            .config_statement(&proposal, by, DEFAULT_TTL)?;
        let decision = humans().sign(by, &statement.to_text());
        engine
            .fleet()
            .configure(proposal, ConfigAuth::Human(&decision))
    }

    fn passkeys_listed(engine: &Engine) -> usize {
        let signers = engine.incidents().signers().unwrap();
        signers.passkeys().entries().len()
    }

    fn fleet_token(engine: &Engine) -> String {
        engine
            .fleet()
            .init_token(false, crate::TokenAuth::None)
            .unwrap()
    }

    #[test]
    fn the_token_enrolls_only_the_first_human_and_a_statement_counts_for_one_change() {
        let engine = store_engine(Arc::new(MemoryStore::new()));
        let token = fleet_token(&engine);
        let wrong = add(&engine, "rbx_wrong", "alice", None).unwrap_err();
        assert!(
            wrong
                .to_string()
                .contains("needs the current mutation token"),
            "{wrong}"
        );
        assert_eq!(add(&engine, &token, "alice", None).unwrap().seq, 1);
        let second = add(&engine, &token, "bob", None).unwrap_err();
        assert!(
            second.to_string().contains("needs one's signature"),
            "{second}"
        );
        // The token cannot be made anew without a human any more.
        assert!(
            engine
                .fleet()
                .init_token(true, crate::TokenAuth::None)
                .is_err()
        );

        // Alice signs bob's enrollment; the same statement cannot make a
        // second change, nor the same change twice.
        let proposal = adding(&engine, "bob").unwrap();
        let statement = engine
            .fleet()
            .config_statement(&proposal, "alice", DEFAULT_TTL)
            .unwrap();
        assert!(
            statement
                .change
                .as_deref()
                .unwrap()
                .starts_with("signers: add human:bob key ssh-ed25519"),
            "{statement:?}"
        );
        let decision = humans().sign("alice", &statement.to_text());
        let again = proposal.clone();
        engine
            .fleet()
            .configure(proposal, ConfigAuth::Human(&decision))
            .unwrap();
        let twice = engine
            .fleet()
            .configure(again, ConfigAuth::Human(&decision))
            .unwrap_err();
        assert!(
            twice
                .to_string()
                .contains("changed while this change was checked"),
            "{twice}"
        );
        let other = adding(&engine, "carol").unwrap();
        let reused = engine
            .fleet()
            .configure(other, ConfigAuth::Human(&decision))
            .unwrap_err();
        assert!(
            reused.to_string().contains("made for another change"),
            "{reused}"
        );

        let report = engine.incidents().verify_fleet().unwrap();
        assert_eq!(
            (report.changes, report.violations.clone()),
            (2, vec![]),
            "{report:?}"
        );
    }

    #[test]
    fn limits_outside_the_rules_and_an_empty_registry_are_refused_before_signing() {
        let engine = store_engine(Arc::new(MemoryStore::new()));
        let token = fleet_token(&engine);
        add(&engine, &token, "alice", None).unwrap();
        let bad = engine
            .fleet()
            .config_proposal(ConfigKind::Limits, "[[rate_limits]]\nmax = 0\n".into())
            .unwrap_err();
        assert!(
            bad.to_string().contains("the fleet's limits (store)"),
            "{bad}"
        );
        let huge = "#".repeat(runbox_core::fleet_config::MAX_CONFIG_BYTES + 1);
        let big = engine
            .fleet()
            .config_proposal(ConfigKind::Limits, huge)
            .unwrap_err();
        assert!(big.to_string().contains("at most 262144"), "{big}");
        let empty = engine
            .fleet()
            .config_proposal(ConfigKind::Signers, String::new())
            .unwrap_err();
        assert!(
            empty.to_string().contains("last human cannot be removed"),
            "{empty}"
        );
        // On the embedded default the configuration is the data dir's files.
        let files = engine_on_files();
        let refused = files.fleet().config_text(ConfigKind::Limits).unwrap_err();
        assert!(
            refused.to_string().contains("data dir's limits.toml"),
            "{refused}"
        );
    }

    fn engine_on_files() -> Engine {
        engine(Arc::new(MemoryStore::new()))
    }

    #[test]
    fn a_decision_checked_against_signers_that_moved_before_its_commit_is_checked_again() {
        let inner = Arc::new(MemoryStore::new());
        let store = Arc::new(MovesFirst {
            inner: inner.clone(),
            before_commit: Mutex::default(),
        });
        let engine = store_engine(store.clone());
        let token = fleet_token(&engine);
        add(&engine, &token, "alice", None).unwrap();
        add(&engine, &token, "bob", Some("alice")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rb = runbook(dir.path(), &[("a", "ok.wat", "impact = \"high\"")]);
        engine
            .opener()
            .open("INC-1", &rb, &BTreeMap::new(), "agent:t")
            .unwrap();
        run(&engine, "INC-1", &RunOptions::default()).unwrap();
        // Between alice's approval being verified and its commit, bob
        // removes her (through another runner: the store underneath).
        let other = store_engine(inner);
        *store.before_commit.lock().unwrap() = Some(Box::new(move || {
            let current = other.fleet().config_text(ConfigKind::Signers).unwrap();
            let (text, _) = AllowedSigners::removed(&current, Path::new("s"), "alice").unwrap();
            change(&other, "", ConfigKind::Signers, text, Some("bob")).unwrap();
        }));
        let refused = decide(&engine, Action::Approve, "INC-1", Some("a"), "alice").unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("`alice` is not in allowed_signers"),
            "{refused}"
        );
        let id: IncidentId = "INC-1".parse().unwrap();
        assert!(engine.approvals(&id, "a", 1).unwrap().is_empty());
        decide(&engine, Action::Approve, "INC-1", Some("a"), "bob").unwrap();
        assert_eq!(engine.incidents().verify_fleet().unwrap().changes, 3);
    }

    #[test]
    fn a_passkey_made_at_the_console_counts_once_a_human_lists_it_and_verify_replays_it() {
        use runbox_trust::testing::TestPasskey;
        let engine = store_engine(Arc::new(MemoryStore::new()));
        let token = fleet_token(&engine);
        add(&engine, &token, "alice", None).unwrap();
        let mut carol = TestPasskey::enroll("carol", "laptop", "http://localhost:8080");
        let fingerprint = carol.entry.fingerprint();
        engine.fleet().pend_passkey(carol.entry.clone()).unwrap();
        // Waiting, it decides nothing.
        assert_eq!(passkeys_listed(&engine), 0);
        let again = engine
            .fleet()
            .pend_passkey(carol.entry.clone())
            .unwrap_err();
        assert!(
            again.to_string().contains("waits to be listed already"),
            "{again}"
        );
        // Only a human lists it; the token does not, once humans exist.
        let proposal = engine.fleet().passkey_proposal(&fingerprint).unwrap();
        assert!(
            proposal
                .summary
                .starts_with("passkeys: add human:carol passkey \"laptop\" passkey:"),
            "{}",
            proposal.summary
        );
        let by_token = engine
            .fleet()
            .configure(proposal.clone(), ConfigAuth::Token(&token))
            .unwrap_err();
        assert!(
            by_token.to_string().contains("needs one's signature"),
            "{by_token}"
        );
        let statement = engine
            .fleet()
            .config_statement(&proposal, "alice", DEFAULT_TTL)
            .unwrap();
        let decision = humans().sign("alice", &statement.to_text());
        engine
            .fleet()
            .configure(proposal, ConfigAuth::Human(&decision))
            .unwrap();
        assert_eq!(passkeys_listed(&engine), 1);
        assert!(
            engine.fleet().passkey_proposal(&fingerprint).is_err(),
            "no longer waiting"
        );

        // Carol, by passkey, lists bob's SSH key: verify replays it with
        // the passkeys that stood before.
        let proposal = adding(&engine, "bob").unwrap();
        let statement = engine
            .fleet()
            .config_statement(&proposal, "carol", DEFAULT_TTL)
            .unwrap();
        let decision = carol.sign(&statement.to_text());
        engine
            .fleet()
            .configure(proposal, ConfigAuth::Human(&decision))
            .unwrap();
        let report = engine.incidents().verify_fleet().unwrap();
        assert_eq!(
            (report.changes, report.violations.clone()),
            (3, vec![]),
            "{report:?}"
        );
        // Removing carol's passkey leaves alice and bob.
        let current = engine.fleet().config_text(ConfigKind::Passkeys).unwrap();
        let origin = Path::new("p");
        let (text, n) = runbox_trust::Passkeys::removed(&current, origin, "carol").unwrap();
        assert_eq!(n, 1);
        change(&engine, "", ConfigKind::Passkeys, text, Some("bob")).unwrap();
        assert_eq!(passkeys_listed(&engine), 0);
    }

    #[test]
    fn enrollment_links_work_once_and_links_and_waiting_passkeys_are_bounded() {
        use crate::config::MAX_PENDING_PASSKEYS;
        use runbox_core::fleet_config::MAX_ENROLLMENTS;
        use runbox_trust::testing::TestPasskey;
        let engine = store_engine(Arc::new(MemoryStore::new()));
        let token = engine.fleet().enrollment_link("carol", "laptop").unwrap();
        let link = engine
            .fleet()
            .take_enrollment_link(&token)
            .unwrap()
            .unwrap();
        assert_eq!(
            (link.human.as_str(), link.label.as_str()),
            ("carol", "laptop")
        );
        assert!(
            engine
                .fleet()
                .take_enrollment_link(&token)
                .unwrap()
                .is_none(),
            "once"
        );
        assert!(
            engine
                .fleet()
                .take_enrollment_link("forged")
                .unwrap()
                .is_none()
        );
        assert!(
            engine
                .fleet()
                .enrollment_link("carol\nx", "laptop")
                .is_err()
        );
        for _ in 0..MAX_ENROLLMENTS {
            engine.fleet().enrollment_link("carol", "laptop").unwrap();
        }
        let full = engine
            .fleet()
            .enrollment_link("carol", "laptop")
            .unwrap_err();
        assert!(
            full.to_string().contains("links are live already"),
            "{full}"
        );
        for i in 0..MAX_PENDING_PASSKEYS {
            let key = TestPasskey::enroll(&format!("h{i}"), "laptop", "http://localhost:8080");
            engine.fleet().pend_passkey(key.entry).unwrap();
        }
        let one_more = TestPasskey::enroll("late", "laptop", "http://localhost:8080");
        let full = engine.fleet().pend_passkey(one_more.entry).unwrap_err();
        assert!(
            full.to_string().contains("wait to be listed already"),
            "{full}"
        );
    }
}

/// A store that runs a hook once, right before its next incident commit.
struct MovesFirst {
    inner: Arc<MemoryStore>,
    before_commit: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Store for MovesFirst {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        self.inner.scan(prefix, after, limit)
    }
    fn scan_back(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.inner.scan_back(prefix, before, limit)
    }
    fn kv_get(&self, id: &IncidentId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.kv_get(id, key)
    }
    fn kv_scan(&self, id: &IncidentId) -> Result<Page, StoreError> {
        self.inner.kv_scan(id)
    }
    fn commit(
        &self,
        id: &IncidentId,
        expected: runbox_store::Expect,
        batch: runbox_store::Batch,
    ) -> Result<(), StoreError> {
        let hook = self.before_commit.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.inner.commit(id, expected, batch)
    }
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta_get(key)
    }
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.put_meta(key, value)
    }
    fn meta_swap(&self, swap: &runbox_store::MetaSwap) -> Result<(), StoreError> {
        self.inner.meta_swap(swap)
    }
    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.shared_get(key)
    }
    fn shared_scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.shared_scan(prefix, after, limit)
    }
    fn commit_shared(&self, shared: Shared) -> Result<(), StoreError> {
        self.inner.commit_shared(shared)
    }
    fn meta_scan(&self) -> Result<Page, StoreError> {
        self.inner.meta_scan()
    }
    fn restore(&self, id: &IncidentId, records: Page, kv: Page) -> Result<(), StoreError> {
        self.inner.restore(id, records, kv)
    }
}
