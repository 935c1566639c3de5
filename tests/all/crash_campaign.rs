//! The crash-kill campaign in CI: at least 50 SIGKILLs of `runbox run` at
//! seeded random moments, and 20 faults of runners, etcd members and their
//! links on a shared store; invariants checked after every one.

use runbox_tests::crash::{Campaign, Fault, SharedCampaign};
use runbox_tests::history::{Event, History};

#[test]
fn fifty_random_sigkills_lose_nothing_and_repeat_no_mutation() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = Campaign {
        runbox: crate::util::runbox_path().into(),
        seed: 0x5EED,
        kills: 50,
        max_delay_ms: 500,
        dir: dir.path().to_path_buf(),
        store: None,
        net: None,
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
    let out = crate::util::TestCommand::new()
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
    // The history judges the same read again; with a non-idempotent step's
    // tool run once more, it is refused, naming the line.
    let file = dir.path().join("history.jsonl");
    let history = History::replay(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(history.events, report.history_events);
    let text = std::fs::read_to_string(&file).unwrap();
    let once = text
        .lines()
        .find(|l| l.contains(r#""event":"tool-call""#) && l.contains(":s1\""))
        .expect("s1 ran");
    std::fs::write(&file, format!("{text}{once}\n")).unwrap();
    let e = History::replay(&file)
        .err()
        .expect("a second run is refused");
    let last = text.lines().count() + 1;
    assert!(
        e.contains(&format!("history.jsonl:{last}: incident")),
        "{e}"
    );
    assert!(e.contains("non-idempotent `s1` ran"), "{e}");
}

/// 20 faults on 3 runners sharing a 3-member etcd cluster, each in a
/// network namespace of its own: runners SIGKILLed, paused past their
/// lease or cut off from the cluster, members (the leader among them)
/// killed and restarted, the leader cut off, runner links slowed and made
/// lossy; every invariant holds after each, and the history file the
/// checker wrote judges the same when read again.
#[test]
fn random_faults_of_runners_members_and_links_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut faults = Fault::ALL.to_vec();
    let missing = runbox_tests::netns::Net::missing();
    if let Some(why) = &missing {
        eprintln!("skipped: partitions and link faults ({why})");
        faults.retain(|f| !f.needs_net());
    }
    let campaign = Campaign {
        runbox: crate::util::runbox_path().into(),
        seed: 0x5EED,
        kills: 20,
        max_delay_ms: 1500,
        dir: dir.path().to_path_buf(),
        store: None,
        net: None,
    };
    let mut shared = SharedCampaign::start(campaign, 3, 6, faults)
        .unwrap_or_else(|e| panic!("the campaign starts: {e}"));
    let report = shared
        .run()
        .unwrap_or_else(|e| panic!("invariant broken: {e}"));
    println!("{report:?}");
    assert_eq!(report.faults, 20);
    assert!(report.kills >= 1, "{report:?}");
    assert!(report.runner_stops >= 1, "{report:?}");
    assert!(report.member_kills >= 1, "{report:?}");
    if missing.is_none() {
        assert!(report.runner_partitions >= 1, "{report:?}");
        assert!(report.leader_partitions >= 1, "{report:?}");
        assert!(report.slow_links >= 1, "{report:?}");
    }
    assert!(report.incidents_resolved >= 1, "{report:?}");
    let history = History::replay(&dir.path().join("history.jsonl"))
        .unwrap_or_else(|e| panic!("the history judges the same: {e}"));
    assert_eq!(history.events, report.history_events);
    assert_eq!(history.tool_calls(), report.tool_calls);
}

fn judge(events: &[Event]) -> Result<History, String> {
    let mut history = History::default();
    for e in events {
        history.apply(e.clone())?;
    }
    Ok(history)
}

fn began() -> Event {
    Event::Began {
        once: vec!["s1".into()],
        lease_ms: 3000,
    }
}

fn call(tag: &str, pid: u32, at_ms: u64) -> Event {
    Event::ToolCall {
        tag: tag.into(),
        pid,
        at_ns: at_ms * 1_000_000,
    }
}

fn records(list: &[(&str, u64, &str)]) -> Event {
    Event::Records {
        incident: 1,
        records: list
            .iter()
            .map(|(s, a, d)| ((*s).to_string(), *a, (*d).to_string()))
            .collect(),
    }
}

/// The history's checker refuses each broken invariant, named, and holds
/// for the same events without the break.
#[test]
fn the_history_checker_refuses_each_broken_invariant() {
    // A non-idempotent step's tool run twice: refused, unless retried.
    let twice = [began(), call("1:s1", 7, 1), call("1:s1", 7, 2)];
    let e = judge(&twice).err().unwrap();
    assert!(e.contains("`s1` ran 2 times, 1 authorized"), "{e}");
    let retried = Event::Retried {
        incident: 1,
        step: "s1".into(),
    };
    judge(&[began(), call("1:s1", 7, 1), retried, call("1:s1", 7, 2)]).unwrap();
    judge(&[began(), call("1:s2", 7, 1), call("1:s2", 7, 2)]).unwrap();
    // A record changed, a record lost.
    let kept = records(&[("s1", 1, "aa"), ("s2", 1, "bb")]);
    let changed = records(&[("s1", 1, "ab"), ("s2", 1, "bb")]);
    let e = judge(&[began(), kept.clone(), changed]).err().unwrap();
    assert!(e.contains("s1#1 changed"), "{e}");
    let lost = records(&[("s1", 1, "aa")]);
    let e = judge(&[began(), kept.clone(), lost]).err().unwrap();
    assert!(e.contains("s2#1 was lost"), "{e}");
    let grown = records(&[("s1", 1, "aa"), ("s2", 1, "bb"), ("s3", 1, "cc")]);
    judge(&[began(), kept, grown]).unwrap();
    // A fence that went down.
    let fence = |revision| Event::Fence {
        key: "campaign/o/CRASH-1".into(),
        revision,
    };
    let e = judge(&[began(), fence(9), fence(8)]).err().unwrap();
    assert!(e.contains("went down: 9 -> 8"), "{e}");
    // A cut-off runner's call past its lease, judged whichever of the two
    // the history holds first; another runner's call is no break.
    let cut = Event::Cut {
        runner: "r0".into(),
        pid: 7,
        from_ns: 10_000 * 1_000_000,
        to_ns: 20_000 * 1_000_000,
    };
    let late = call("1:s2", 7, 13_500);
    for events in [
        [began(), cut.clone(), late.clone()],
        [began(), late.clone(), cut.clone()],
    ] {
        let e = judge(&events).err().unwrap();
        assert!(e.contains("3500 ms after it was cut off"), "{e}");
    }
    let h = judge(&[
        began(),
        cut.clone(),
        call("1:s2", 7, 12_000),
        call("1:s2", 8, 13_500),
    ])
    .unwrap();
    assert_eq!(h.latest_call_after_cut_ms, Some(2000));
    // After the link is back, the runner acts again.
    judge(&[began(), cut, call("1:s2", 7, 20_001)]).unwrap();
}
