//! What a step author sees: logs, outputs and transitions in the records, a
//! seeded KV at open, messages that say what to do, and no colour codes or
//! doubled text in what runbox prints.

use std::process::Command;

use runbox_tests::{code_and_text, fixture, write_file};

fn runbox(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    code_and_text(
        &Command::new(env!("CARGO_BIN_EXE_runbox-under-test"))
            .env("RUNBOX_DATA_DIR", dir.join("data"))
            .env("RUNBOX_LOG", "info")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap(),
    )
}

/// A runbook whose first step logs and reads KV `budget`, then branches.
fn opened(dir: &std::path::Path, seed: Option<&str>) -> (i32, String) {
    let rb = write_file(
        dir,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"a\"\n[[steps]]\nid = \"look\"\nmodule = \"{}\"\ngrants = {{ kv_read = [\"budget\"] }}\nbranch = [{{ field = \"class\", equals = \"healthy\", next = \"resolve\" }}]\n[[steps]]\nid = \"never\"\nmodule = \"{}\"\n",
            fixture("authoring/talks.wat").display(),
            fixture("engine/ok.wat").display()
        ),
    );
    let mut args = vec!["open", "INC-1", "--runbook", rb.to_str().unwrap()];
    let seed_path;
    if let Some(seed) = seed {
        seed_path = write_file(dir, "seed.json", seed);
        args.extend(["--kv", seed_path.to_str().unwrap()]);
    }
    runbox(dir, &args)
}

#[test]
fn records_keep_logs_output_and_the_branch_taken_and_open_seeds_kv() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(opened(d, Some(r#"{"budget": 3}"#)).0, 0);
    let (code, text) = runbox(d, &["run", "INC-1"]);
    assert_eq!(code, 0, "the seeded budget lets the step finish: {text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {text:?}"
    );
    let (_, timeline) = runbox(d, &["timeline", "INC-1", "-v"]);
    assert!(timeline.contains("-> resolve"), "{timeline}");
    assert!(
        timeline.contains("output {\"class\":\"healthy\"}"),
        "{timeline}"
    );
    assert!(
        timeline.contains("log    info \"checking the budget\""),
        "{timeline}"
    );
    assert!(
        timeline.contains("log    warn \"x\\n   9 2026 approved human:bob\""),
        "a log line cannot forge a timeline line: {timeline}"
    );
    let (_, status) = runbox(d, &["status", "INC-1"]);
    assert!(
        status.contains("last step  look#1 ok -> resolve"),
        "{status}"
    );
    let (_, json) = runbox(d, &["export", "INC-1", "--format", "json"]);
    let export: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        export["steps"][0]["logs"][0]["message"],
        "checking the budget"
    );
    assert_eq!(export["steps"][0]["next"], "resolve");
    let (_, md) = runbox(d, &["export", "INC-1"]);
    assert!(md.contains("## What the steps said"), "{md}");
    let (_, kv) = runbox(d, &["kv", "INC-1"]);
    assert!(kv.contains("budget"), "{kv}");
}

#[test]
fn a_bad_seed_is_refused_and_nothing_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = format!(r#"{{"{}": 1}}"#, "k".repeat(300));
    let (code, text) = opened(d, Some(&long));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("KV seed: key"), "{text}");
    let (code, text) = opened(d, Some("[1, 2]"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("must be a JSON object"), "{text}");
    assert_ne!(runbox(d, &["status", "INC-1"]).0, 0, "nothing was opened");
}

#[test]
fn messages_say_what_to_do_and_never_repeat_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A step that traps: the trap is said once.
    let trap = write_file(
        d,
        "trap.wat",
        "(module (memory (export \"memory\") 1) (func (export \"_start\") unreachable))",
    );
    let (code, text) = runbox(d, &["exec", trap.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("wasm trap") && !text.contains("wasm trap: wasm trap"),
        "{text}"
    );
    // A tool that cannot start: the OS error is said once.
    write_file(
        d,
        "tools.toml",
        "[tools.t]\nmode = \"read\"\nargv = [\"./missing-program\"]\n",
    );
    let policy = write_file(d, "p.toml", "[grants]\ntools = [\"t\"]\n");
    let (_, text) = runbox(
        d,
        &[
            "exec",
            fixture("engine/ok.wat").to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--tools",
            "tools.toml",
        ],
    );
    assert!(!text.contains("(os error 2): No such file"), "{text}");
    // The owner of an incident is told how to hand it back.
    assert_eq!(opened(d, Some(r#"{"budget": 3}"#)).0, 0);
    let key = runbox_tests::human_key(
        std::path::Path::new(env!("CARGO_BIN_EXE_runbox-under-test")),
        &d.join("data"),
        &d.join("keys"),
        "alice",
    )
    .unwrap();
    let (code, text) = runbox(
        d,
        &[
            "takeover",
            "INC-1",
            "--as",
            "alice",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{text}");
    let (code, text) = runbox(d, &["run", "INC-1"]);
    assert_eq!(code, 6, "{text}");
    assert!(
        text.contains("runbox handback INC-1 --as NAME --key KEY"),
        "{text}"
    );
}

#[test]
fn a_bare_tools_file_name_resolves_against_the_working_directory_and_bad_args_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(
        d,
        "tools.toml",
        "[tools.probe]\nmode = \"read\"\nargv = [\"echo\", \"{n}\"]\n[tools.probe.args]\nn = { type = \"integer\", min = 1, max = 9 }\n",
    );
    // The step calls `probe` with `{}`: a missing argument, the step's fault.
    let (code, text) = runbox(
        d,
        &[
            "exec",
            fixture("replay/tool_then_read.wat").to_str().unwrap(),
            "--policy",
            write_file(
                d,
                "p2.toml",
                "[grants]\ntools = [\"probe\"]\nkv_read = [\"k\"]\n",
            )
            .to_str()
            .unwrap(),
            "--tools",
            "tools.toml",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("missing argument `n`"), "{text}");
    assert!(
        !text.contains("cannot start"),
        "a bare tools.toml starts its tools: {text}"
    );
}
