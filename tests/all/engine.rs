//! The engine through the `runbox` CLI, as an operator or an agent drives it:
//! separate processes, a real data dir, SIGKILL between attempt start and commit.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use runbox_tests::{fixture, write_file};
use serde_json::Value;

use crate::util::{Dir, TestCommand};

/// A scratch world: a data dir, a runbook dir with a tool registry, a token.
struct World {
    dir: Dir,
    token: Option<String>,
}

/// Tools whose effects are lines in `calls.log` beside the registry.
const TOOLS: &str = r#"
[tools.touch]
mode = "mutate"
argv = ["sh", "-c", "echo call >> calls.log"]
"#;

/// A `touch` whose first call hangs (the process gets killed there); later
/// calls return at once.
const SLOW_TOOLS: &str = r#"
[tools.touch]
mode = "mutate"
argv = ["sh", "-c", "if [ -f calls.log ]; then echo again >> calls.log; else echo first >> calls.log; sleep 30; fi"]
timeout_ms = 120000
"#;

impl World {
    fn new(tools: &str) -> Self {
        let dir = Dir::new();
        write_file(dir.path(), "tools.toml", tools);
        World { dir, token: None }
    }

    fn data(&self) -> PathBuf {
        self.dir.data()
    }

    fn command(&self) -> TestCommand {
        let mut c = TestCommand::on(&self.data());
        if let Some(t) = &self.token {
            c.env("RUNBOX_MUTATION_TOKEN", t);
        }
        c
    }

    /// Runs `runbox ARGS`; a human's decision is signed with their key.
    fn runbox(&self, args: &[&str]) -> Output {
        let args = runbox_tests::with_human_key(
            crate::util::runbox_path(),
            &self.data(),
            &self.dir.path().join("keys"),
            args,
        );
        self.command().args(&args).output().expect("runbox runs")
    }

    /// Runs and returns (exit code, stdout + stderr).
    fn code(&self, args: &[&str]) -> (i32, String) {
        let out = self.runbox(args);
        runbox_tests::code_and_text(&out)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, text) = self.code(args);
        assert_eq!(code, 0, "runbox {args:?} failed: {text}");
        text
    }

    fn init_token(&mut self) {
        let out = self.runbox(&["token", "init"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.token = Some(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }

    /// Writes a runbook whose steps are given as TOML `[[steps]]` blocks.
    fn runbook(&self, steps: &str) -> PathBuf {
        let text = format!("[runbook]\nname = \"test\"\ntools = \"tools.toml\"\n\n{steps}");
        write_file(self.dir.path(), "runbook.toml", &text)
    }

    fn open(&self, id: &str, steps: &str) {
        let rb = self.runbook(steps);
        self.ok(&["open", id, "--runbook", rb.to_str().unwrap()]);
    }

    fn status(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["status", id, "--json"])).unwrap()
    }

    fn export(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["export", id, "--format", "json"])).unwrap()
    }

    fn timeline_len(&self, id: &str) -> usize {
        self.ok(&["timeline", id]).lines().count()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .map(|s| s.lines().map(String::from).collect())
            .unwrap_or_default()
    }
}

fn module(name: &str) -> String {
    fixture(&format!("engine/{name}")).display().to_string()
}

fn step(id: &str, module_name: &str, extra: &str) -> String {
    format!(
        "[[steps]]\nid = \"{id}\"\nmodule = \"{}\"\n{extra}\n",
        module(module_name)
    )
}

const MUTATE_GRANTS: &str = "grants = { tools = [\"touch\"], kv_write = [\"touched\"] }";

fn wait_for(path: &Path, timeout: Duration) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < timeout,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(mut child: Child) {
    // SIGKILL: no destructors, no flush, exactly a crash.
    child.kill().unwrap();
    child.wait().unwrap();
}

// --- happy path and approval ---------------------------------------------------------

#[test]
fn approval_gate_stops_the_run_until_a_named_human_approves() {
    let w = World::new(TOOLS);
    w.open(
        "INC-1",
        &format!(
            "{}{}",
            step("check", "ok.wat", ""),
            step("fix", "ok.wat", "impact = \"high\"")
        ),
    );
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 3, "{text}");
    assert_eq!(w.status("INC-1")["status"], "awaiting-approval");
    assert_eq!(w.status("INC-1")["pending_approval"], "fix");
    w.ok(&["approve", "INC-1", "fix", "--as", "alice"]);
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 0, "{text}");
    let export = w.export("INC-1");
    let fix = export["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["step"] == "fix")
        .unwrap();
    assert_eq!(fix["approved_by"], "human:alice");
    assert_eq!(export["incident"]["status"], "resolved");
}

#[test]
fn denial_escalates_to_the_denying_human() {
    let w = World::new(TOOLS);
    w.open("INC-1", &step("fix", "ok.wat", "impact = \"high\""));
    assert_eq!(w.code(&["run", "INC-1"]).0, 3);
    w.ok(&["deny", "INC-1", "fix", "--as", "bob"]);
    let status = w.status("INC-1");
    assert_eq!(status["status"], "escalated");
    assert_eq!(status["owner"], "human:bob");
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("denied"), "{text}");
    assert!(
        w.export("INC-1")["steps"].as_array().unwrap().is_empty(),
        "the step never ran"
    );
}

#[test]
fn takeover_stops_the_agent_and_handback_resumes_from_the_checkpoint() {
    let w = World::new(TOOLS);
    w.open(
        "INC-1",
        &format!(
            "{}{}",
            step("a", "ok.wat", ""),
            step("b", "ok.wat", "impact = \"high\"")
        ),
    );
    assert_eq!(
        w.code(&["run", "INC-1"]).0,
        3,
        "a ran, b waits for approval"
    );
    w.ok(&["takeover", "INC-1", "--as", "carol"]);
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(
        code, 6,
        "the agent does not act while a human owns it: {text}"
    );
    w.ok(&["approve", "INC-1", "b", "--as", "carol"]);
    assert_eq!(
        w.code(&["run", "INC-1"]).0,
        6,
        "approval alone does not give it back"
    );
    w.ok(&["handback", "INC-1", "--as", "carol"]);
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 0, "{text}");
    let export = w.export("INC-1");
    let steps: Vec<&str> = export["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["a", "b"],
        "a ran once, b once: resumed, not restarted"
    );
    let kinds: Vec<&str> = export["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"takeover") && kinds.contains(&"handback"),
        "{kinds:?}"
    );
}

// --- retries ---------------------------------------------------------------------------------

#[test]
fn retries_exhausted_then_the_incident_escalates() {
    let w = World::new(TOOLS);
    w.open(
        "INC-1",
        &step(
            "wait",
            "retry.wat",
            "max_retries = 2\nbackoff = { initial_ms = 20, factor = 2.0, max_ms = 100 }",
        ),
    );
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("after 3 attempts (max_retries 2)"), "{text}");
    let export = w.export("INC-1");
    let attempts: Vec<u64> = export["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(export["incident"]["owner"], "human:on-call");
}

#[test]
fn no_wait_returns_during_backoff_instead_of_sleeping() {
    let w = World::new(TOOLS);
    w.open(
        "INC-1",
        &step(
            "wait",
            "retry.wat",
            "max_retries = 1\nbackoff = { initial_ms = 60000 }",
        ),
    );
    let started = Instant::now();
    let (code, text) = w.code(&["run", "INC-1", "--no-wait"]);
    assert_eq!(code, 8, "{text}");
    assert!(text.contains("backoff"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

// --- safety rules -------------------------------------------------------------------------------

#[test]
fn mutating_step_needs_the_token_and_never_runs_in_read_only_mode() {
    let mut w = World::new(TOOLS);
    w.init_token();
    w.open("INC-1", &step("m", "mutate.wat", MUTATE_GRANTS));
    let token = w.token.take();
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 7, "{text}");
    assert!(text.contains("no mutation token"), "{text}");
    w.token = Some("rbx_wrong".into());
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 7, "{text}");
    assert!(text.contains("does not match"), "{text}");
    w.token = token;
    let (code, text) = w.code(&["run", "INC-1", "--read-only"]);
    assert_eq!(code, 7, "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert!(w.calls().is_empty(), "the tool never ran");
    let timeline = w.ok(&["timeline", "INC-1"]);
    assert_eq!(
        timeline.matches("blocked").count(),
        3,
        "every block is recorded: {timeline}"
    );
    assert_eq!(w.code(&["run", "INC-1"]).0, 0);
    assert_eq!(w.calls(), ["call"]);
}

#[test]
fn token_file_works_and_the_token_is_never_logged() {
    let mut w = World::new(TOOLS);
    w.init_token();
    let token = w.token.take().unwrap();
    let file = write_file(w.dir.path(), "token", &format!("{token}\n"));
    w.open("INC-1", &step("m", "mutate.wat", MUTATE_GRANTS));
    // A token file others can read is refused, as ssh refuses such a key.
    use std::os::unix::fs::PermissionsExt;
    for mode in [0o644, 0o666, 0o640] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, text) = w.code(&["run", "INC-1", "--token-file", file.to_str().unwrap()]);
        assert_eq!(code, 2, "mode {mode:o}: {text}");
        assert!(text.contains("chmod 600"), "{text}");
    }
    assert!(w.calls().is_empty(), "nothing ran");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = w
        .command()
        .args(["run", "INC-1", "--token-file"])
        .arg(&file)
        .env("RUNBOX_LOG", "trace")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(&token), "the token leaked into the output");
    assert!(
        !w.ok(&["export", "INC-1", "--format", "json"])
            .contains(&token)
    );
    let (code, text) = w.code(&["token", "init"]);
    assert_eq!(
        code, 2,
        "an existing token is not replaced silently: {text}"
    );
}

#[test]
fn cooldown_blocks_a_second_destructive_step_even_after_a_restart() {
    let mut w = World::new(TOOLS);
    w.init_token();
    let steps = format!(
        "{}{}",
        step("first", "mutate.wat", MUTATE_GRANTS),
        step(
            "second",
            "mutate.wat",
            &format!("{MUTATE_GRANTS}\ncooldown_ms = 600000")
        )
    );
    w.open("INC-1", &steps);
    let (code, text) = w.code(&["run", "INC-1", "--no-wait"]);
    assert_eq!(code, 8, "{text}");
    assert!(text.contains("cooldown of `second`"), "{text}");
    // A new process: the cooldown is durable, measured from the committed step.
    let (code, text) = w.code(&["run", "INC-1", "--no-wait"]);
    assert_eq!(code, 8, "{text}");
    assert_eq!(w.calls(), ["call"], "only the first destructive step ran");
    let timeline = w.ok(&["timeline", "INC-1"]);
    let holds = timeline
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("cooldown"))
        .count();
    assert_eq!(holds, 1, "the hold is recorded once: {timeline}");
}

#[test]
fn changed_module_is_refused_at_open_by_pin_and_at_run_by_recorded_hash() {
    let w = World::new(TOOLS);
    let rb = w.runbook(&step(
        "a",
        "ok.wat",
        &format!("sha256 = \"{}\"", "0".repeat(64)),
    ));
    let (code, text) = w.code(&["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(text.contains("sha256") && text.contains("pin"), "{text}");
    assert!(
        w.ok(&["list", "--json"]).trim() == "[]",
        "nothing was written"
    );

    let copy = w.dir.path().join("step.wat");
    std::fs::copy(fixture("engine/ok.wat"), &copy).unwrap();
    let rb = write_file(
        w.dir.path(),
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"t\"\n[[steps]]\nid = \"a\"\nmodule = \"{}\"\n",
            copy.display()
        ),
    );
    w.ok(&["open", "INC-2", "--runbook", rb.to_str().unwrap()]);
    std::fs::copy(fixture("engine/retry.wat"), &copy).unwrap();
    let (code, text) = w.code(&["run", "INC-2"]);
    assert_eq!(code, 7, "{text}");
    assert!(
        text.contains("recorded when the incident was opened"),
        "{text}"
    );
}

#[test]
fn runbook_preconditions_escalate_when_they_do_not_hold() {
    let w = World::new(TOOLS);
    let steps = format!(
        "{}{}",
        step("a", "ok.wat", ""),
        step(
            "b",
            "ok.wat",
            "preconditions = [{ step = \"a\", outcome = \"ok\" }, { kv = \"ready\", exists = true }]"
        )
    );
    w.open("INC-1", &steps);
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("KV `ready` is absent"), "{text}");
}

// --- crashes --------------------------------------------------------------------------------------

fn crash_inside_the_mutation(w: &World, id: &str, extra: &str) {
    w.open(
        id,
        &step("m", "mutate.wat", &format!("{MUTATE_GRANTS}\n{extra}")),
    );
    let child = w
        .command()
        .args(["run", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&w.dir.path().join("calls.log"), Duration::from_secs(60));
    kill(child);
}

#[test]
fn sigkill_mid_mutation_escalates_a_non_idempotent_step_without_rerunning_it() {
    let mut w = World::new(SLOW_TOOLS);
    w.init_token();
    crash_inside_the_mutation(&w, "INC-1", "");
    let status = w.status("INC-1");
    assert_eq!(status["status"], "running");
    assert_eq!(status["in_doubt"]["step"], "m");
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 4, "{text}");
    assert!(
        text.contains("never committed") && text.contains("not idempotent"),
        "{text}"
    );
    assert_eq!(w.calls(), ["first"], "the mutation was not run again");
    assert_eq!(
        w.ok(&["kv", "INC-1"]).trim(),
        "{}",
        "the staged write of the dead attempt never appears"
    );
    // Run again: still escalated, still not re-run.
    assert_eq!(w.code(&["run", "INC-1"]).0, 4);
    assert_eq!(w.calls(), ["first"]);
    // A human settles it: the restart did happen.
    w.ok(&[
        "resolve",
        "INC-1",
        "--step",
        "m",
        "--outcome",
        "ok",
        "--as",
        "dana",
    ]);
    assert_eq!(w.status("INC-1")["status"], "resolved");
    let record = &w.export("INC-1")["steps"][0];
    assert_eq!(record["human_override"], true);
    assert_eq!(record["actor"], "human:dana");
    assert_eq!(record["outcome"], "ok");
    assert_eq!(w.calls(), ["first"]);
}

#[test]
fn sigkill_mid_mutation_retries_an_idempotent_step() {
    let mut w = World::new(SLOW_TOOLS);
    w.init_token();
    crash_inside_the_mutation(&w, "INC-1", "idempotent = true");
    let (code, text) = w.code(&["run", "INC-1"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(w.calls(), ["first", "again"]);
    let export = w.export("INC-1");
    let outcomes: Vec<&str> = export["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["in-doubt", "ok"]);
    assert!(
        w.ok(&["kv", "INC-1"]).contains("\"touched\": \"1\""),
        "the committed attempt's write stands"
    );
}

#[test]
fn human_retry_of_an_in_doubt_step_runs_it_again() {
    let mut w = World::new(SLOW_TOOLS);
    w.init_token();
    crash_inside_the_mutation(&w, "INC-1", "");
    assert_eq!(w.code(&["run", "INC-1"]).0, 4);
    let (code, text) = w.code(&["handback", "INC-1", "--as", "erin"]);
    assert_eq!(
        code, 2,
        "handback refuses while a step is unsettled: {text}"
    );
    w.ok(&["retry", "INC-1", "--step", "m", "--as", "erin"]);
    w.ok(&["handback", "INC-1", "--as", "erin"]);
    assert_eq!(w.code(&["run", "INC-1"]).0, 0);
    assert_eq!(
        w.calls(),
        ["first", "again"],
        "run again only after a human decided"
    );
}

#[test]
fn second_process_on_the_same_data_dir_is_refused_clearly_but_a_human_gets_through() {
    let mut w = World::new(SLOW_TOOLS);
    w.init_token();
    w.open("INC-1", &step("m", "mutate.wat", MUTATE_GRANTS));
    let child = w
        .command()
        .args(["run", "INC-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&w.dir.path().join("calls.log"), Duration::from_secs(60));
    let rb = w.runbook(&step("m", "mutate.wat", MUTATE_GRANTS));
    let (code, text) = w.code(&["open", "INC-2", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(text.contains("in use by another runbox process"), "{text}");
    // Reading beside the writer works: status opens the store read-only.
    let status = w.status("INC-1");
    assert_eq!(
        status["status"], "running",
        "the reader sees the in-flight attempt"
    );
    // A human's decision reaches the runner through its control socket.
    let (code, text) = w.code(&["takeover", "INC-1", "--as", "fay"]);
    kill(child);
    assert_eq!(code, 0, "{text}");
    assert_eq!(w.status("INC-1")["owner"], "human:fay");
}

// --- bad input ------------------------------------------------------------------------------------

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let w = World::new(TOOLS);
    w.open(
        "INC-1",
        &format!(
            "{}{}",
            step("a", "ok.wat", ""),
            step("b", "ok.wat", "impact = \"high\"")
        ),
    );
    assert_eq!(w.code(&["run", "INC-1"]).0, 3);
    let before = w.timeline_len("INC-1");
    let cases: &[(&[&str], &str)] = &[
        (&["status", "NOPE"], "unknown incident `NOPE`"),
        (
            &["approve", "INC-1", "zzz", "--as", "alice"],
            "`zzz` is not awaiting approval",
        ),
        (
            &["approve", "INC-1", "a", "--as", "alice"],
            "`a` is not awaiting approval",
        ),
        (
            &[
                "resolve",
                "INC-1",
                "--step",
                "b",
                "--outcome",
                "ok",
                "--as",
                "alice",
            ],
            "nothing to settle",
        ),
        (
            &["skip", "INC-1", "--step", "zzz", "--as", "alice"],
            "not the current step",
        ),
        (
            &["approve", "INC-1", "b", "--as", "not a name"],
            "invalid human name",
        ),
        (
            &["open", "INC-1", "--runbook", "/nonexistent.toml"],
            "already exists",
        ),
        (
            &["handback", "INC-1", "--as", "alice"],
            "an agent owns it already",
        ),
    ];
    for (args, needle) in cases {
        let (code, text) = w.code(args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text:?} lacks {needle:?}");
    }
    w.ok(&["approve", "INC-1", "b", "--as", "alice"]);
    let (code, text) = w.code(&["approve", "INC-1", "b", "--as", "alice"]);
    assert_eq!(code, 2, "double approval: {text}");
    assert_eq!(
        w.timeline_len("INC-1"),
        before + 1,
        "only the one approval was written"
    );
}

#[test]
fn malformed_runbook_missing_module_and_bad_data_dir_are_named() {
    let w = World::new(TOOLS);
    let broken = write_file(
        w.dir.path(),
        "broken.toml",
        "[runbook]\nname = \"x\"\n[[steps]]\nid = \"a\"\nmodule = \"a.wasm\"\nretries = 3\n",
    );
    let (code, text) = w.code(&["open", "INC-1", "--runbook", broken.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        text.contains("broken.toml") && text.contains("retries"),
        "{text}"
    );
    let missing = w.runbook("[[steps]]\nid = \"a\"\nmodule = \"nowhere.wasm\"\n");
    let (code, text) = w.code(&["open", "INC-1", "--runbook", missing.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(text.contains("nowhere.wasm"), "{text}");
    let ungranted = w.runbook(&step("a", "mutate.wat", ""));
    let (code, text) = w.code(&["open", "INC-1", "--runbook", ungranted.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        text.contains("runbox:kv-write/v1") && text.contains("step `a`"),
        "{text}"
    );
    assert_eq!(w.ok(&["list", "--json"]).trim(), "[]", "nothing was opened");
    let file = write_file(w.dir.path(), "not-a-dir", "x");
    let out = TestCommand::new()
        .args(["list", "--data-dir"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-dir"));
}

#[test]
fn list_shows_incidents_with_status_and_owner() {
    let w = World::new(TOOLS);
    w.open("INC-A", &step("a", "ok.wat", ""));
    w.open("INC-B", &step("b", "ok.wat", "impact = \"high\""));
    let (code, text) = w.code(&["run", "--all"]);
    assert_eq!(code, 3, "the worst exit of all runs: {text}");
    assert!(
        text.contains("INC-A: resolved") && text.contains("INC-B: awaiting approval"),
        "{text}"
    );
    let list: Value = serde_json::from_str(&w.ok(&["list", "--json"])).unwrap();
    assert_eq!(list[0]["id"], "INC-A");
    assert_eq!(list[0]["status"], "resolved");
    assert_eq!(list[1]["status"], "awaiting-approval");
    assert_eq!(list[1]["owner"], "agent:runbox");
}
