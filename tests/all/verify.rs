//! `runbox verify` finds damage, and says nothing of a healthy incident.

use std::collections::BTreeMap;
use std::sync::Arc;

use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::records::{Checkpoint, TimelineEvent};
use runbox_engine::verify::verify;
use runbox_engine::{Engine, RunOptions};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store::keys;
use runbox_store::{Batch, Expect, StoreExt};
use runbox_store_rocksdb::RocksStore as Store;
use runbox_tests::{fixture, write_file};

/// Commits `forge`'s writes to INC-1 through the store's one commit path,
/// as a buggy or hostile writer could: the store checks the version, not
/// whether the records make sense. That is `verify`'s job.
fn forge(engine: &Engine, forge: impl FnOnce(&IncidentId, &mut Batch)) {
    let id = IncidentId::new("INC-1").unwrap();
    let store = engine.incidents().store();
    let mut cp: Checkpoint = store.read(&keys::checkpoint(&id)).unwrap().unwrap();
    let expected = Expect::Version(cp.version);
    cp.version += 1;
    let mut batch = Batch::new(cp);
    forge(&id, &mut batch);
    store.commit(&id, expected, batch).unwrap();
}

fn resolved_incident(dir: &std::path::Path) -> Arc<Engine> {
    let runbook = write_file(
        dir,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"v\"\n[[steps]]\nid = \"a\"\nmodule = \"{}\"\n",
            fixture("engine/ok.wat").display()
        ),
    );
    let store = Arc::new(Store::open(&dir.join("data")).unwrap());
    let engine = Arc::new(Engine::new(store, Sandbox::new(SandboxConfig::default())));
    engine
        .opener()
        .open("INC-1", &runbook, &BTreeMap::new(), "agent:test")
        .unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(engine.runs().run("INC-1", &RunOptions::default()))
        .unwrap();
    engine
}

#[test]
fn healthy_incident_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let engine = resolved_incident(dir.path());
    let report = verify(engine.incidents(), "INC-1").unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.records, report.events), (1, 3));
}

#[test]
fn leaked_kv_write_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let engine = resolved_incident(dir.path());
    forge(&engine, |_, batch| {
        batch.kv("staged/but/never/committed", Some(b"x".to_vec()));
    });
    let report = verify(engine.incidents(), "INC-1").unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("staged/but/never/committed")),
        "{report:?}"
    );
}

#[test]
fn timeline_gap_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let engine = resolved_incident(dir.path());
    let stray = TimelineEvent {
        seq: 7,
        at_ms: 0,
        actor: "x".into(),
        kind: EventKind::Opened,
        step: None,
        attempt: None,
        message: String::new(),
        signed: None,
    };
    forge(&engine, |id, batch| {
        batch.put(keys::event(id, 7), &stray);
    });
    let report = verify(engine.incidents(), "INC-1").unwrap();
    assert!(
        report.violations.iter().any(|v| v.contains("timeline gap")),
        "{report:?}"
    );
}

#[test]
fn record_without_its_timeline_event_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let engine = resolved_incident(dir.path());
    let mut record = engine.incidents().step_records("INC-1").unwrap().remove(0);
    record.step = "ghost".into();
    forge(&engine, |id, batch| {
        batch.put(keys::step(id, "ghost", 1), &record);
    });
    let report = verify(engine.incidents(), "INC-1").unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("`ghost` attempt 1 has no timeline event")),
        "{report:?}"
    );
}

/// KV seeded at open is the incident's own write: an incident opened with
/// `--kv` and run verifies clean, and its `opened` event names the keys.
#[test]
fn an_incident_opened_with_a_kv_seed_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runbook = write_file(
        d,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"v\"\n[[steps]]\nid = \"a\"\nmodule = \"{}\"\n",
            fixture("engine/ok.wat").display()
        ),
    );
    let seed = write_file(d, "seed.json", r#"{"svc/limit": 3, "note": "as is"}"#);
    let runbox = |args: &[&str]| {
        runbox_tests::code_and_text(
            &crate::util::TestCommand::new()
                .env("RUNBOX_DATA_DIR", d.join("data"))
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let (code, text) = runbox(&[
        "open",
        "S-1",
        "--runbook",
        runbook.to_str().unwrap(),
        "--kv",
        seed.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(runbox(&["run", "S-1"]).0, 0);
    let (code, text) = runbox(&["verify", "S-1"]);
    assert_eq!(code, 0, "a seed is no violation: {text}");
    assert_eq!(
        text.trim_end(),
        "S-1: ok (1 step record, 3 events, 2 KV keys)",
        "{text}"
    );
    let (_, timeline) = runbox(&["timeline", "S-1"]);
    assert!(
        timeline.contains(r#"KV seeded with 2 keys ["note", "svc/limit"]"#),
        "{timeline}"
    );
    // A key neither seeded nor written by a step is still a violation.
    let store = Arc::new(Store::open(&d.join("data")).unwrap());
    let engine = Engine::new(store, Sandbox::new(SandboxConfig::default()));
    let id = IncidentId::new("S-1").unwrap();
    let mut cp: Checkpoint = engine
        .incidents()
        .store()
        .read(&keys::checkpoint(&id))
        .unwrap()
        .unwrap();
    let expected = Expect::Version(cp.version);
    cp.version += 1;
    let mut batch = Batch::new(cp);
    batch.kv("svc/leaked", Some(b"x".to_vec()));
    engine
        .incidents()
        .store()
        .commit(&id, expected, batch)
        .unwrap();
    let report = verify(engine.incidents(), "S-1").unwrap();
    assert_eq!(
        report.violations,
        ["KV key `svc/leaked` is neither seeded at open nor a write of any committed step record"]
    );
}
