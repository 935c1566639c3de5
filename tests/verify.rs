//! `runbox verify` finds damage, and says nothing of a healthy incident.

use std::collections::BTreeMap;
use std::sync::Arc;

use runbox::engine::{Engine, RunOptions};
use runbox::incident::{TimelineEvent, keys};
use runbox::sandbox::{Sandbox, SandboxConfig};
use runbox::store::Store;
use runbox::verify::verify;
use runbox_tests::{fixture, write_file};

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
        .open("INC-1", &runbook, &BTreeMap::new(), "agent:test")
        .unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(engine.run("INC-1", &RunOptions::default()))
        .unwrap();
    engine
}

#[test]
fn healthy_incident_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let engine = resolved_incident(dir.path());
    let report = verify(&engine, "INC-1").unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.records, report.events), (1, 3));
}

#[test]
fn leaked_kv_write_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let engine = resolved_incident(dir.path());
    let mut batch = engine.store().batch();
    batch.kv("INC-1", "staged/but/never/committed", Some(b"x"));
    batch.commit().unwrap();
    let report = verify(&engine, "INC-1").unwrap();
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
        kind: "forged".into(),
        step: None,
        attempt: None,
        message: String::new(),
    };
    let mut batch = engine.store().batch();
    batch.put(&keys::event("INC-1", 7), &stray);
    batch.commit().unwrap();
    let report = verify(&engine, "INC-1").unwrap();
    assert!(
        report.violations.iter().any(|v| v.contains("timeline gap")),
        "{report:?}"
    );
}

#[test]
fn record_without_its_timeline_event_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let engine = resolved_incident(dir.path());
    let mut record = engine.step_records("INC-1").unwrap().remove(0);
    record.step = "ghost".into();
    let mut batch = engine.store().batch();
    batch.put(&keys::step("INC-1", "ghost", 1), &record);
    batch.commit().unwrap();
    let report = verify(&engine, "INC-1").unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("`ghost` attempt 1 has no timeline event")),
        "{report:?}"
    );
}
