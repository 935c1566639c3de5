//! A data dir written by release 0.1 (the single-crate `runbox`) opens with
//! today's crates, reads the same, verifies clean, and takes new commits.
//! `tests/fixtures/datadir-v0.1/README.md` says how it was made.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use runbox_core::event::EventKind;
use runbox_core::records::{RecordOutcome, Status};
use runbox_engine::verify::verify;
use runbox_engine::{Engine, Incidents};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::fixture;

/// A writable copy of the fixture.
fn copy_of_v0_1(to: &Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(fixture("datadir-v0.1/data"))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_release_0_1_data_dir_opens_reads_and_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_of_v0_1(&data);
    let incidents = Incidents::new(Arc::new(RocksStore::open(&data).unwrap()));
    let ids: Vec<String> = incidents
        .ids()
        .unwrap()
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(ids, ["OLD-1", "OLD-2"]);
    for id in &ids {
        let report = verify(&incidents, id).unwrap();
        assert!(report.is_clean(), "{report:?}");
    }
    let resolved = incidents.view("OLD-1").unwrap();
    assert_eq!(resolved.status, Status::Resolved);
    let records = incidents.step_records("OLD-1").unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].step, "restart");
    assert_eq!(records[1].outcome, RecordOutcome::Ok);
    assert_eq!(records[1].approved_by.as_deref(), Some("human:alice"));
    assert_eq!(incidents.kv("OLD-1").unwrap().len(), 1);
    let kinds: Vec<EventKind> = incidents
        .timeline("OLD-1")
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventKind::AttemptStarted), "{kinds:?}");
    assert!(kinds.contains(&EventKind::Approved), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&EventKind::Resolved));
    let held = incidents.view("OLD-2").unwrap();
    assert_eq!(held.owner.to_string(), "human:bob");
}

#[test]
fn a_release_0_1_incident_takes_new_commits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_of_v0_1(&data);
    let humans = runbox_trust::testing::TestHumans::new(dir.path().join("allowed_signers"));
    let engine = Engine::new(
        Arc::new(RocksStore::open(&data).unwrap()),
        Sandbox::new(SandboxConfig::default()),
    )
    .with_allowed_signers(humans.path());
    let before = engine.incidents().timeline("OLD-2").unwrap().len();
    let statement = engine
        .humans()
        .statement(&runbox_engine::decision::Request {
            action: runbox_trust::Action::Handback,
            incident: "OLD-2",
            step: None,
            outcome: None,
            signer: "bob",
            ttl: runbox_engine::decision::DEFAULT_TTL,
        })
        .unwrap();
    engine
        .humans()
        .decide(&humans.sign("bob", &statement.to_text()))
        .unwrap();
    let events = engine.incidents().timeline("OLD-2").unwrap();
    assert_eq!(events.len(), before + 1);
    assert_eq!(events.last().unwrap().kind, EventKind::Handback);
    assert!(verify(engine.incidents(), "OLD-2").unwrap().is_clean());
}
