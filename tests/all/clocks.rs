//! A runner host's wall clock stepped while the runner runs, with
//! libfaketime (Debian `faketime`) stepping it for that process alone.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use runbox_tests::etcd::EtcdCluster;
use runbox_tests::{code_and_text, fixture, write_file};
use serde_json::Value;

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn tool_runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("counts.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// Waits until `done` holds of the incident's `status --json`.
fn wait_for(
    runbox: &dyn Fn() -> crate::util::TestCommand,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, text) =
            code_and_text(&runbox().args(["status", id, "--json"]).output().unwrap());
        if code == 0 {
            let status: Value = serde_json::from_str(&text).unwrap();
            if done(&status) {
                return status;
            }
        }
        assert!(Instant::now() < deadline, "{id}: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fleet-wide limit of 2 calls an hour; a runner makes the first call,
/// then its host's wall clock jumps two days ahead. The second call is
/// let through and the third held, as without the step: the runner's clock
/// did not move, so the first use is still in the window and still in the
/// count. (Reading the wall clock each time, it saw the first use as two
/// days old, pruned it from the count it wrote back, and let the third
/// call through: three calls in an hour.)
#[test]
fn a_wall_clock_step_on_a_running_runner_keeps_the_fleet_limit() {
    if !Path::new(FAKETIME).exists() {
        eprintln!("skipped: no {FAKETIME} (Debian: faketime)");
        return;
    }
    let cluster = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "tools.toml",
        "[tools.count]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"echo \\\"$0\\\" >> counts.log\", \"{step}\"]\n[tools.count.args]\nstep = { type = \"string\" }\n",
    );
    let runbook = write_file(
        dir.path(),
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"clock\"\ntools = \"tools.toml\"\n[[steps]]\nid = \"act\"\nmodule = \"{}\"\nidempotent = true\ninput = {{ step = \"act\" }}\ngrants = {{ tools = [\"count\"], kv_write = [\"last\"] }}\n[[rate_limits]]\ntool = \"count\"\nmax = 2\nwindow = \"1h\"\n",
            fixture("engine/count.wat").display()
        ),
    );
    let token = std::cell::RefCell::new(String::new());
    let runbox = || {
        let mut c = crate::util::TestCommand::new();
        c.env("RUNBOX_DATA_DIR", dir.path().join("data"))
            .env("RUNBOX_STORE", cluster.url("clock"))
            .env("RUNBOX_MUTATION_TOKEN", token.borrow().as_str())
            .current_dir(dir.path())
            .stdin(Stdio::null());
        c
    };
    let (code, text) = code_and_text(&runbox().args(["token", "init"]).output().unwrap());
    assert_eq!(code, 0, "{text}");
    *token.borrow_mut() = text.lines().find(|l| l.starts_with("rbx_")).unwrap().into();
    let open = |id: &str| {
        let out = runbox()
            .args(["open", id, "--runbook", runbook.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let log = std::fs::File::create(dir.path().join("runner.log")).unwrap();
    let mut runner = runbox()
        .env("LD_PRELOAD", FAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .args(["run", "--all", "--follow", "--poll", "100ms"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let resolved = |s: &Value| s["status"] == "resolved";
    open("INC-1");
    wait_for(&runbox, "INC-1", resolved);
    std::fs::write(&offset, "+2d\n").unwrap();
    open("INC-2");
    wait_for(&runbox, "INC-2", resolved);
    open("INC-3");
    let limited = |id: &str| {
        let (_, text) = code_and_text(&runbox().args(["timeline", id]).output().unwrap());
        text.contains("rate limit full")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !limited("INC-3") && tool_runs(dir.path()) < 3 {
        assert!(Instant::now() < deadline, "INC-3 neither ran nor waited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = runner.kill();
    let _ = runner.wait();
    let runner_log = std::fs::read_to_string(dir.path().join("runner.log")).unwrap();
    assert_eq!(tool_runs(dir.path()), 2, "two calls an hour: {runner_log}");
    let (_, counts) = code_and_text(&runbox().args(["limits", "--json"]).output().unwrap());
    for id in ["INC-1", "INC-2"] {
        assert!(counts.contains(id), "{id}'s use stays counted: {counts}");
    }
}
