//! The crash-kill campaign in CI: at least 50 SIGKILLs of `runbox run` at
//! seeded random moments, and 20 faults of runners and etcd members on a
//! shared store; invariants checked after every one.

use runbox_tests::crash::{Campaign, Fault};

#[test]
fn fifty_random_sigkills_lose_nothing_and_repeat_no_mutation() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = Campaign {
        runbox: crate::util::RUNBOX.into(),
        seed: 0x5EED,
        kills: 50,
        max_delay_ms: 500,
        dir: dir.path().to_path_buf(),
        store: None,
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
    assert!(
        report.notifications >= report.incidents_resolved,
        "every resolution was a notification: {report:?}"
    );
    // Every committed attempt of every incident replays the same; in-doubt
    // attempts say they have no result to compare.
    let tools_log = std::fs::read_to_string(dir.path().join("counts.log")).unwrap_or_default();
    let out = crate::util::runbox()
        .env("RUNBOX_DATA_DIR", dir.path().join("data"))
        .args(["replay", "--all"])
        .output()
        .unwrap();
    let (code, text) = runbox_tests::code_and_text(&out);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(": same"), "{text}");
    assert!(!text.contains("DIFFERENT"), "{text}");
    if report.human_resolves + report.human_retries > 0 {
        assert!(text.contains("in doubt"), "{text}");
    }
    let after = std::fs::read_to_string(dir.path().join("counts.log")).unwrap_or_default();
    assert_eq!(after, tools_log, "replay ran no tool");
}

/// 20 faults on 3 runners sharing a 3-member etcd cluster: runners
/// SIGKILLed or paused past their lease, members (the leader among them)
/// killed and restarted; every invariant holds after each.
#[test]
fn random_faults_of_runners_and_etcd_members_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut campaign = runbox_tests::crash::SharedCampaign {
        cluster: runbox_tests::etcd::EtcdCluster::start(3),
        campaign: Campaign {
            runbox: crate::util::RUNBOX.into(),
            seed: 0x5EED,
            kills: 20,
            max_delay_ms: 1500,
            dir: dir.path().to_path_buf(),
            store: None,
        },
        runners: 3,
        incidents: 6,
        faults: Fault::ALL.to_vec(),
    };
    campaign.campaign.store = Some(campaign.cluster.url("campaign"));
    let report = campaign
        .run()
        .unwrap_or_else(|e| panic!("invariant broken: {e}"));
    println!("{report:?}");
    assert_eq!(report.faults, 20);
    assert!(report.kills >= 1, "{report:?}");
    assert!(report.runner_stops >= 1, "{report:?}");
    assert!(report.member_kills >= 1, "{report:?}");
    assert!(report.incidents_resolved >= 1, "{report:?}");
}
