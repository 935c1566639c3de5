//! Dry runs and plans: the steps run for real, every mutating tool call is
//! intercepted where it would happen (the test's tool counts its calls), and
//! `plan` shows the gates without running anything.

use std::path::Path;

use runbox_tests::{fixture, write_file};

use crate::util::Dir;

/// A runbook of one mutating step whose tool appends to `calls.log`.
fn setup(dir: &Path, reply: &str) -> String {
    write_file(
        dir,
        "tools.toml",
        &format!(
            "[tools.touch]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"echo call >> calls.log\"]\n{reply}"
        ),
    );
    let rb = write_file(
        dir,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"d\"\ntools = \"tools.toml\"\n[[steps]]\nid = \"m\"\nmodule = \"{}\"\ngrants = {{ tools = [\"touch\"], kv_write = [\"touched\"] }}\n",
            fixture("engine/mutate.wat").display()
        ),
    );
    rb.display().to_string()
}

#[test]
fn a_dry_run_never_calls_a_mutating_tool_and_records_what_it_would_have_done() {
    let dir = Dir::new();
    let d = dir.path();
    let rb = setup(d, "dry_run = { rc = 0, stdout = \"would restart\" }\n");
    dir.command().args(["open", "INC-1", "--runbook", &rb]).ok();
    let (code, text) = dir.command().args(["run", "INC-1", "--dry-run"]).code();
    assert_eq!(code, 0, "no token needed: nothing mutates: {text}");
    assert!(!d.join("calls.log").exists(), "the mutating tool never ran");
    let (_, timeline) = dir.command().args(["timeline", "INC-1"]).code();
    assert!(
        timeline.contains("dry-run") && timeline.contains("intercepted: dry run, not run"),
        "{timeline}"
    );
    let (_, status) = dir.command().args(["status", "INC-1"]).code();
    assert!(status.contains("(dry run"), "{status}");
    let (_, json) = dir
        .command()
        .args(["export", "INC-1", "--format", "json"])
        .code();
    let export: serde_json::Value = serde_json::from_str(&json).unwrap();
    let call = &export["steps"][0]["tool_calls"][0];
    assert_eq!(call["dry_run"], true, "{export:#}");
    assert!(
        call["error"]
            .as_str()
            .unwrap()
            .contains("dry run: would call `touch` with {}"),
        "{call}"
    );
    // A dry-run incident never runs live.
    let (code, text) = dir.command().args(["run", "INC-1"]).code();
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("dry-run incident"), "{text}");
    assert!(!d.join("calls.log").exists());
}

#[test]
fn without_a_declared_reply_the_step_sees_a_failure_and_live_incidents_stay_live() {
    let dir = Dir::new();
    let d = dir.path();
    let rb = setup(d, "");
    dir.command().args(["open", "INC-1", "--runbook", &rb]).ok();
    let (code, text) = dir.command().args(["run", "INC-1", "--dry-run"]).code();
    assert_eq!(
        code, 4,
        "the step traps on the failed call and escalates: {text}"
    );
    let (_, json) = dir
        .command()
        .args(["export", "INC-1", "--format", "json"])
        .code();
    assert!(json.contains("declares no `dry_run` reply"), "{json}");
    assert!(!d.join("calls.log").exists());
    // A live incident that ran steps never turns into a dry run.
    dir.command().args(["open", "INC-2", "--runbook", &rb]).ok();
    let (code, text) = dir.command().args(["run", "INC-2", "--read-only"]).code();
    assert_ne!(code, 0, "{text}");
    let (_, token) = dir.command().args(["token", "init"]).code();
    let token = token
        .lines()
        .find(|l| l.starts_with("rbx_"))
        .unwrap()
        .to_string();
    dir.command()
        .env("RUNBOX_MUTATION_TOKEN", &token)
        .args(["run", "INC-2"])
        .ok();
    assert!(d.join("calls.log").exists(), "the live run called the tool");
    let (code, text) = dir.command().args(["run", "INC-2", "--dry-run"]).code();
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("ran live already"), "{text}");
}

#[test]
fn plan_shows_each_steps_gates_tools_and_paths_without_running_anything() {
    let dir = Dir::new();
    let d = dir.path();
    write_file(
        d,
        "tools.toml",
        "[tools.touch]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"echo call >> calls.log\"]\n[tools.look]\nmode = \"read\"\nargv = [\"true\"]\n",
    );
    let rb = write_file(
        d,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"p\"\ntools = \"tools.toml\"\n[params.svc]\ndefault = \"api\"\n\
             [[steps]]\nid = \"look\"\nmodule = \"{ok}\"\ngrants = {{ tools = [\"look\"] }}\nbranch = [{{ field = \"class\", equals = \"healthy\", next = \"resolve\" }}]\n\
             [[steps]]\nid = \"fix\"\nmodule = \"{m}\"\nimpact = \"high\"\napprovers = [\"alice\"]\ncooldown_ms = 60000\nmax_retries = 0\ngrants = {{ tools = [\"touch\"], kv_write = [\"touched\"] }}\n",
            ok = fixture("engine/ok.wat").display(),
            m = fixture("engine/mutate.wat").display()
        ),
    );
    let (code, text) = dir
        .command()
        .args(["plan", rb.to_str().unwrap(), "--param", "svc=db"])
        .code();
    assert_eq!(code, 0, "{text}");
    for needle in [
        "1. step look",
        "tools  look (read)",
        "if output.class == \"healthy\": resolve (known only once the step runs)",
        "2. step fix",
        "holds  approval: 1 signed approval(s) by alice",
        "holds  cooldown: 60000 ms",
        "holds  the mutation token",
        "tools  touch (mutate)",
    ] {
        assert!(text.contains(needle), "plan lacks {needle:?}:\n{text}");
    }
    assert!(
        !d.join("calls.log").exists() && !d.join("data").exists(),
        "nothing ran, nothing written"
    );
}
