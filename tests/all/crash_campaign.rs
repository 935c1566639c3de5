//! The crash-kill campaign in CI: at least 50 SIGKILLs of `runbox run` at
//! seeded random moments, invariants checked after every one.

use runbox_tests::crash::Campaign;

#[test]
fn fifty_random_sigkills_lose_nothing_and_repeat_no_mutation() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = Campaign {
        runbox: env!("CARGO_BIN_EXE_runbox-under-test").into(),
        seed: 0x5EED,
        kills: 50,
        max_delay_ms: 500,
        dir: dir.path().to_path_buf(),
    };
    let report = campaign
        .run()
        .unwrap_or_else(|e| panic!("invariant broken: {e}"));
    println!("{report:?}");
    assert!(report.kills >= 50);
    assert!(
        report.incidents_resolved >= 1,
        "the campaign also finishes incidents: {report:?}"
    );
}
