//! A runner partitioned from its etcd cluster, in network namespaces this
//! test builds: what it does while it runs on, awake, and nobody hears it.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use runbox_tests::etcd::EtcdCluster;
use runbox_tests::netns::Net;
use runbox_tests::{code_and_text, fixture, write_file};

const LEASE: Duration = Duration::from_secs(3);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// When each `tick` started, ns since the epoch (the tool's own log).
fn ticks(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("ticks.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A runner cut off in the middle of a step that calls a mutating tool 60
/// times (no rate limit, so only the first call commits before it runs)
/// stops calling at the cut: each call first reads the fleet's brakes from
/// the cluster, which does not answer. One call may have passed that read
/// as the link went down; none starts past the lease's TTL, the line its
/// own clock holds (docs/ha.md). Heard again, the runner finds its claim
/// gone (the cut outlasted the lease) and drops the incident, which
/// verifies clean.
#[test]
fn a_runner_cut_off_mid_step_starts_no_mutating_call() {
    if let Some(why) = Net::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let net = Arc::new(Net::create(&["m0", "r0"]).unwrap());
    let cluster = EtcdCluster::start_in(net.clone(), 1);
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "tools.toml",
        "[tools.tick]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"date +%s%N >> ticks.log; sleep 0.05\"]\ntimeout_ms = 5000\n",
    );
    let runbook = write_file(
        dir.path(),
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"ticks\"\ntools = \"tools.toml\"\n[[steps]]\nid = \"tick\"\nmodule = \"{}\"\nidempotent = false\ngrants = {{ tools = [\"tick\"] }}\n",
            fixture("engine/tick.wat").display()
        ),
    );
    let runbox = |token: &str| {
        let mut c = crate::util::TestCommand::new();
        c.env("RUNBOX_DATA_DIR", dir.path().join("data"))
            .env("RUNBOX_STORE", cluster.url("cut"))
            .env("RUNBOX_MUTATION_TOKEN", token)
            .current_dir(dir.path())
            .stdin(Stdio::null());
        net.enter_hub(c.cmd());
        c
    };
    let (code, text) = code_and_text(&runbox("").args(["token", "init"]).output().unwrap());
    assert_eq!(code, 0, "{text}");
    let token = text.lines().find(|l| l.starts_with("rbx_")).unwrap();
    let opened = runbox(token)
        .args(["open", "INC-1", "--runbook", runbook.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(opened.status.success(), "{opened:?}");
    let mut runner = runbox(token);
    net.enter("r0", runner.cmd());
    let log = std::fs::File::create(dir.path().join("r0.log")).unwrap();
    let mut runner = runner
        .args(["--runner", "r0", "--lease-ttl", "3s", "run", "INC-1"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while ticks(dir.path()).len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "no ticks");
        std::thread::sleep(Duration::from_millis(20));
    }
    net.cut("r0").unwrap();
    // After the link is down, not before: on a loaded machine `ip` takes a
    // while, and the runner's calls meanwhile were not cut off.
    let cut = now_ns();
    std::thread::sleep(LEASE * 2);
    let healed = now_ns();
    net.heal("r0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while runner.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = runner.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = runner.wait();
    let runner_log = std::fs::read_to_string(dir.path().join("r0.log")).unwrap();
    let while_cut: Vec<u64> = ticks(dir.path())
        .into_iter()
        .filter(|t| (cut..healed).contains(t))
        .collect();
    let latest_ms = while_cut.iter().max().map(|t| (t - cut) / 1_000_000);
    println!(
        "{} calls while cut off, the latest {latest_ms:?} ms after the cut (lease {} ms)",
        while_cut.len(),
        LEASE.as_millis()
    );
    assert!(
        while_cut.len() <= 1,
        "each call needs the cluster first: {runner_log}"
    );
    assert!(
        latest_ms.is_none_or(|ms| u128::from(ms) <= LEASE.as_millis()),
        "a call {latest_ms:?} ms after the cut: {runner_log}"
    );
    assert!(runner_log.contains("lost its claim"), "{runner_log}");
    let (code, text) = code_and_text(&runbox("").args(["verify", "INC-1"]).output().unwrap());
    assert_eq!(code, 0, "{text}");
}
