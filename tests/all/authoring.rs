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
        timeline.contains("output from step look: {\"class\":\"healthy\"}"),
        "{timeline}"
    );
    assert!(
        timeline.contains("log    info from step look: checking the budget"),
        "{timeline}"
    );
    assert!(
        timeline.contains("log    warn from step look: x⏎   9 2026 approved human:bob"),
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

#[test]
fn typed_params_are_checked_at_open_and_arrive_with_their_type() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rb = write_file(
        d,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"t\"\n\
             [params.pct]\ntype = \"integer\"\nmin = 0\nmax = 100\n\
             [params.dry]\ntype = \"boolean\"\ndefault = \"false\"\n\
             [params.service]\nvalues = [\"api\", \"db\"]\n\
             [[steps]]\nid = \"echo\"\nmodule = \"{}\"\ninput = {{ pct = \"{{pct}}\", dry = \"{{dry}}\", msg = \"{{service}} at {{pct}}%\" }}\n",
            fixture("authoring/echo_input.wat").display()
        ),
    );
    let rb = rb.to_str().unwrap();
    for (params, needle) in [
        (&["pct=abc", "service=api"][..], "\"abc\" is not an integer"),
        (&["pct=150", "service=api"][..], "above the maximum 100"),
        (
            &["pct=5", "service=web"][..],
            "is not one of [\"api\", \"db\"]",
        ),
    ] {
        let mut args = vec!["open", "INC-1", "--runbook", rb];
        for p in params {
            args.extend(["--param", p]);
        }
        let (code, text) = runbox(d, &args);
        assert_eq!(code, 2, "{params:?}: {text}");
        assert!(text.contains(needle), "{params:?}: {text}");
    }
    let (code, text) = runbox(
        d,
        &[
            "exec",
            "--runbook",
            rb,
            "--step",
            "echo",
            "--param",
            "pct=95",
            "--param",
            "service=db",
        ],
    );
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(
        report["output"],
        serde_json::json!({"pct": 95, "dry": false, "msg": "db at 95%"}),
        "{report:#}"
    );
}

#[test]
fn a_bad_transition_names_its_field_and_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rb = write_file(
        d,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"t\"\n[[steps]]\nid = \"a\"\nmodule = \"{}\"\nbranch = [{{ field = \"x\", equals = 1, next = \"resolv\" }}]\n",
            fixture("engine/ok.wat").display()
        ),
    );
    let (code, text) = runbox(d, &["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("step `a`") && text.contains("branch[0].next = \"resolv\" names no step"),
        "{text}"
    );
}

#[test]
fn the_committed_file_schemas_are_the_types_schemas() {
    runbox_tests::assert_committed_schemas(runbox_core::schemas(), "authoring");
}

/// Which schema a TOML document is written against, by what it holds.
fn kind_of(doc: &toml::Table) -> Option<&'static str> {
    if doc.contains_key("expect") || doc.contains_key("approve") {
        None // a `runbox test` case
    } else if doc.contains_key("runbook") {
        Some("runbook.schema.json")
    } else if doc.contains_key("tools") {
        Some("tools.schema.json")
    } else if doc.contains_key("grants") || doc.contains_key("limits") {
        Some("policy.schema.json")
    } else {
        None
    }
}

#[test]
fn every_example_toml_in_the_repo_validates_against_its_schema() {
    let root = runbox_tests::repo_root();
    let mut docs: Vec<(String, String)> = Vec::new();
    for dir in ["examples/api-outage", "tests/fixtures/review"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                docs.push((
                    path.display().to_string(),
                    std::fs::read_to_string(&path).unwrap(),
                ));
            }
        }
    }
    // And every ```toml block of the docs that is a whole file.
    for doc in ["README.md", "guest-sdk/ABI.md", "docs/runbook.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (i, block) in text.split("```toml\n").skip(1).enumerate() {
            let body = block.split("```").next().unwrap();
            docs.push((format!("{doc} block {}", i + 1), body.to_string()));
        }
    }
    let mut checked = 0;
    for (name, text) in docs {
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{name}: not TOML: {e}"));
        let Some(schema) = kind_of(&table) else {
            continue;
        };
        let schema: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("docs/schemas").join(schema)).unwrap(),
        )
        .unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let value = serde_json::to_value(&table).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        checked += 1;
    }
    assert!(checked >= 18, "only {checked} documents checked");
    // And a typo is caught by the schema, as by the parser.
    let typo: toml::Table =
        "[runbook]\nname = \"t\"\n[[steps]]\nid = \"a\"\nmodule = \"m.wasm\"\nimpct = \"high\"\n"
            .parse()
            .unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/schemas/runbook.schema.json")).unwrap(),
    )
    .unwrap();
    assert!(
        !jsonschema::validator_for(&schema)
            .unwrap()
            .is_valid(&serde_json::to_value(&typo).unwrap())
    );
}

#[test]
fn runbox_test_checks_a_case_and_fails_a_wrong_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rb = write_file(
        d,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"a\"\n[[steps]]\nid = \"look\"\nmodule = \"{}\"\ngrants = {{ kv_read = [\"budget\"] }}\nbranch = [{{ field = \"class\", equals = \"healthy\", next = \"resolve\" }}]\n",
            fixture("authoring/talks.wat").display()
        ),
    );
    let good = write_file(
        d,
        "good.toml",
        "description = \"the budget is there\"\n[kv]\nbudget = 2\n[expect]\nstatus = \"resolved\"\nsteps = [\"look\"]\nkv = { budget = \"2\" }\n",
    );
    let wrong = write_file(
        d,
        "wrong.toml",
        "[kv]\nbudget = 2\n[expect]\nstatus = \"escalated\"\n",
    );
    let (code, text) = runbox(
        d,
        &[
            "test",
            rb.to_str().unwrap(),
            "--case",
            good.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("PASS") && text.contains("1 of 1 cases pass"),
        "{text}"
    );
    let (code, text) = runbox(
        d,
        &[
            "test",
            rb.to_str().unwrap(),
            "--case",
            good.to_str().unwrap(),
            wrong.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL status: expected escalated, got resolved"),
        "{text}"
    );
    assert!(text.contains("1 of 2 cases pass"), "{text}");
    assert!(!d.join("data").exists(), "runbox test writes no store");
    let bad = write_file(d, "bad.toml", "[tools.x]\napprove = [\"y\"]\n");
    let (code, text) = runbox(
        d,
        &[
            "test",
            rb.to_str().unwrap(),
            "--case",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("unknown field `approve`"), "{text}");
}
