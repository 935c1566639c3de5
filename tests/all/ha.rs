//! Runners sharing a store on a real 3-member etcd cluster: a runner killed
//! or paused in the middle of a mutating step, another taking over within a
//! lease, and the in-doubt rule holding across them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runbox_tests::etcd::EtcdCluster;
use runbox_tests::{code_and_text, fixture, write_file};
use serde_json::Value;

/// Two runners' worth of setup around one cluster.
struct Fleet {
    dir: tempfile::TempDir,
    cluster: EtcdCluster,
    token: String,
    runners: Vec<(String, Child)>,
}

impl Fleet {
    fn new(idempotent: bool) -> Self {
        let cluster = EtcdCluster::start(3);
        let dir = tempfile::tempdir().unwrap();
        write_file(
            dir.path(),
            "tools.toml",
            "[tools.count]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"echo \\\"$0\\\" >> calls.log; sleep 3\", \"{step}\"]\ntimeout_ms = 20000\n[tools.count.args]\nstep = { type = \"string\" }\n",
        );
        write_file(
            dir.path(),
            "runbook.toml",
            &format!(
                "[runbook]\nname = \"ha\"\ntools = \"tools.toml\"\n[[steps]]\nid = \"act\"\nmodule = \"{}\"\nidempotent = {idempotent}\ninput = {{ step = \"act\" }}\ngrants = {{ tools = [\"count\"], kv_write = [\"last\"] }}\n",
                fixture("engine/count.wat").display()
            ),
        );
        let mut fleet = Fleet {
            dir,
            cluster,
            token: String::new(),
            runners: Vec::new(),
        };
        let (code, text) = fleet.runbox(&["token", "init"]);
        assert_eq!(code, 0, "{text}");
        fleet.token = text.lines().find(|l| l.starts_with("rbx_")).unwrap().into();
        fleet
    }

    fn cmd(&self) -> crate::util::TestCommand {
        let mut c = crate::util::TestCommand::new();
        c.env("RUNBOX_DATA_DIR", self.dir.path().join("data"))
            .env("RUNBOX_STORE", self.cluster.url("ha"))
            .env("RUNBOX_MUTATION_TOKEN", &self.token)
            .current_dir(self.dir.path());
        c
    }

    fn runbox(&self, args: &[&str]) -> (i32, String) {
        code_and_text(&self.cmd().args(args).output().unwrap())
    }

    /// A runner that keeps taking up incidents, with a 2 s lease.
    fn start_runner(&mut self, name: &str) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = self
            .cmd()
            .args([
                "--runner",
                name,
                "--lease-ttl",
                "2s",
                "run",
                "--all",
                "--follow",
                "--poll",
                "200ms",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.runners.push((name.to_string(), child));
    }

    fn runner_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Who holds `id` now, per its owner key.
    fn holder(&self, id: &str) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints={}",
                self.cluster.endpoints().join(",")
            ))
            .args(["get", &format!("ha/o/{id}"), "--print-value-only"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then_some(text)
    }

    fn status(&self, id: &str) -> Value {
        let (code, text) = self.runbox(&["status", id, "--json"]);
        assert_eq!(code, 0, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    fn pid(&self, name: &str) -> i32 {
        self.runners.iter().find(|(n, _)| n == name).unwrap().1.id() as i32
    }

    fn signal(&self, name: &str, signal: libc::c_int) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe {
            libc::kill(self.pid(name), signal);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, child) in &mut self.runners {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts two runners and an incident; returns the runner that took it,
/// once its mutating tool call is under way, and the other.
fn mid_call(fleet: &mut Fleet) -> (String, String) {
    fleet.start_runner("a");
    fleet.start_runner("b");
    let rb: PathBuf = fleet.dir.path().join("runbook.toml");
    let (code, text) = fleet.runbox(&["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    wait_for("the tool call starts", Duration::from_secs(30), || {
        fleet.calls() == 1
    });
    let holder = fleet.holder("INC-1").expect("a runner holds it");
    let other = if holder == "a" { "b" } else { "a" };
    (holder, other.to_string())
}

fn kill_runner(fleet: &mut Fleet, name: &str) {
    let (_, child) = fleet.runners.iter_mut().find(|(n, _)| n == name).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

fn verify(fleet: &Fleet, dir: &Path) {
    let (code, text) = fleet.runbox(&["verify", "INC-1"]);
    assert_eq!(code, 0, "{text} (runner logs in {})", dir.display());
}

#[test]
fn a_killed_runners_mutating_step_is_taken_over_and_escalated_in_doubt() {
    let mut fleet = Fleet::new(false);
    let (holder, other) = mid_call(&mut fleet);
    let killed = Instant::now();
    kill_runner(&mut fleet, &holder);
    wait_for(
        "the other runner escalates it",
        Duration::from_secs(30),
        || fleet.status("INC-1")["status"] == "escalated",
    );
    println!(
        "taken over and escalated {:?} after the kill",
        killed.elapsed()
    );
    let status = fleet.status("INC-1");
    assert_eq!(status["in_doubt"]["step"], "act", "{status}");
    assert_eq!(fleet.calls(), 1, "the non-idempotent call was not repeated");
    let (_, timeline) = fleet.runbox(&["timeline", "INC-1"]);
    assert!(timeline.contains("in-doubt"), "{timeline}");
    verify(&fleet, fleet.dir.path());
    assert!(
        fleet.runner_log(&other).contains("INC-1: escalated"),
        "{}",
        fleet.runner_log(&other)
    );
}

#[test]
fn a_killed_runners_idempotent_step_is_retried_by_the_next_owner() {
    let mut fleet = Fleet::new(true);
    let (holder, _) = mid_call(&mut fleet);
    kill_runner(&mut fleet, &holder);
    wait_for(
        "the other runner resolves it",
        Duration::from_secs(40),
        || fleet.status("INC-1")["status"] == "resolved",
    );
    assert_eq!(fleet.calls(), 2, "retried once, as the step is idempotent");
    verify(&fleet, fleet.dir.path());
}

#[test]
fn a_paused_runner_past_its_lease_is_fenced_out_when_it_wakes() {
    let mut fleet = Fleet::new(false);
    let (holder, other) = mid_call(&mut fleet);
    fleet.signal(&holder, libc::SIGSTOP);
    wait_for(
        "the other runner takes it over",
        Duration::from_secs(30),
        || fleet.status("INC-1")["status"] == "escalated",
    );
    assert_eq!(fleet.holder("INC-1").as_deref().unwrap_or(&other), other);
    let before = fleet.runbox(&["timeline", "INC-1"]).1;
    fleet.signal(&holder, libc::SIGCONT);
    // The paused runner's tool call ends and it tries to commit: refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleet
        .runner_log(&holder)
        .contains("is not this runner's any more")
    {
        assert!(
            Instant::now() < deadline,
            "the woken runner was not refused; its log:\n{}",
            fleet.runner_log(&holder)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = fleet.runbox(&["timeline", "INC-1"]).1;
    assert_eq!(before, after, "nothing the woken runner did landed");
    assert_eq!(fleet.status("INC-1")["status"], "escalated");
    assert_eq!(fleet.calls(), 1);
    verify(&fleet, fleet.dir.path());
}

#[test]
fn a_runner_goes_on_when_the_etcd_leader_dies_mid_incident() {
    let mut fleet = Fleet::new(true);
    // 30 idempotent steps, each a 0.2 s mutating call: long enough to
    // lose the leader in the middle.
    write_file(
        fleet.dir.path(),
        "slow.toml",
        "[tools.count]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"sleep 0.2\", \"{step}\"]\n[tools.count.args]\nstep = { type = \"string\" }\n",
    );
    let steps: String = (0..30)
        .map(|i| {
            format!(
                "[[steps]]\nid = \"s{i}\"\nmodule = \"{}\"\nidempotent = true\ninput = {{ step = \"s{i}\" }}\ngrants = {{ tools = [\"count\"], kv_write = [\"last\"] }}\n",
                fixture("engine/count.wat").display()
            )
        })
        .collect();
    let rb = write_file(
        fleet.dir.path(),
        "long.toml",
        &format!("[runbook]\nname = \"long\"\ntools = \"slow.toml\"\n{steps}"),
    );
    fleet.start_runner("a");
    let (code, text) = fleet.runbox(&["open", "INC-L", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    wait_for("the runner starts it", Duration::from_secs(30), || {
        fleet.status("INC-L")["checkpoint"]["version"].as_u64() >= Some(3)
    });
    let leader = fleet.cluster.leader().expect("a leader");
    fleet.cluster.kill(leader);
    let deadline = Instant::now() + Duration::from_secs(90);
    while fleet.status("INC-L")["status"] != "resolved" {
        assert!(
            Instant::now() < deadline,
            "not finished: {}\nrunner log:\n{}",
            fleet.status("INC-L"),
            fleet.runner_log("a")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, json) = fleet.runbox(&["export", "INC-L", "--format", "json"]);
    let export: Value = serde_json::from_str(&json).unwrap();
    let steps = export["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 30, "each step committed exactly once");
    let (code, text) = fleet.runbox(&["verify", "INC-L"]);
    assert_eq!(code, 0, "{text}");
}
