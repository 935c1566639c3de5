//! What a step author sees: logs, outputs and transitions in the records, a
//! seeded KV at open, messages that say what to do, and no colour codes or
//! doubled text in what runbox prints.

use runbox_tests::{code_and_text, fixture, write_file};

use crate::util::TestCommand;

fn runbox(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    TestCommand::in_dir(dir)
        .env("RUNBOX_LOG", "info")
        .args(args)
        .code()
}

/// What `runbox ARGS` prints on stdout alone, to compare line by line.
fn stdout_of(dir: &std::path::Path, args: &[&str]) -> String {
    let out = TestCommand::new()
        .env("RUNBOX_DATA_DIR", dir.join("data"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
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
        crate::util::runbox_path(),
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
        Some("case.schema.json")
    } else if doc.contains_key("routes") {
        Some("routes.schema.json")
    } else if doc.contains_key("runbook") {
        Some("runbook.schema.json")
    } else if doc.contains_key("tools") {
        Some("tools.schema.json")
    } else if doc.contains_key("grants") || doc.contains_key("limits") {
        Some("policy.schema.json")
    } else if doc.contains_key("sinks") {
        Some("notify.schema.json")
    } else {
        None
    }
}

/// Every command's `--help`, by command (`open`, `brake engage`), read
/// from the binary as a user would: the `Commands:` of each help leads to
/// the next.
fn every_help() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(command) = queue.pop() {
        let output = TestCommand::new()
            .args(&command)
            .arg("--help")
            .output()
            .unwrap();
        assert!(output.status.success(), "runbox {command:?} --help fails");
        let text = String::from_utf8(output.stdout).unwrap();
        let subcommands = text
            .lines()
            .skip_while(|l| *l != "Commands:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
            .filter(|name| *name != "help");
        for name in subcommands {
            let mut next = command.clone();
            next.push(name.to_string());
            queue.push(next);
        }
        out.push((command.join(" "), text));
    }
    assert!(out.len() > 30, "only {} commands found", out.len());
    out
}

/// The `Example … (TOML):` and `Example … (JSON):` blocks of a help text
/// (the lines under the heading indented by two spaces), by format.
fn help_examples(help: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut lines = help.lines();
    while let Some(line) = lines.next() {
        let format = match line.trim_end() {
            l if l.starts_with("Example ") && l.ends_with("(TOML):") => "toml",
            l if l.starts_with("Example ") && l.ends_with("(JSON):") => "json",
            _ => continue,
        };
        let body: Vec<&str> = lines.clone().map_while(|l| l.strip_prefix("  ")).collect();
        assert!(!body.is_empty(), "an empty example under {line:?}");
        out.push((format, body.join("\n") + "\n"));
    }
    out
}

/// A JSON Schema of `docs/schemas/`, compiled.
fn schema(name: &str) -> jsonschema::Validator {
    let root = runbox_tests::repo_root();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/schemas").join(name)).unwrap(),
    )
    .unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn errors_of(validator: &jsonschema::Validator, value: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

#[test]
fn every_example_toml_in_the_repo_validates_against_its_schema() {
    let root = runbox_tests::repo_root();
    let mut docs: Vec<(String, String)> = Vec::new();
    for dir in [
        "examples/api-outage",
        "examples/api-outage/cases",
        "tests/fixtures/review",
    ] {
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
    // And every ```toml block of the docs that is a whole file; the ```json
    // blocks of docs/testing.md are KV seeds.
    let mut seeds: Vec<(String, String)> = Vec::new();
    for doc in [
        "README.md",
        "guest-sdk/ABI.md",
        "docs/runbook.md",
        "docs/testing.md",
        "docs/oncall.md",
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (i, block) in text.split("```toml\n").skip(1).enumerate() {
            let body = block.split("```").next().unwrap();
            docs.push((format!("{doc} block {}", i + 1), body.to_string()));
        }
        if doc == "docs/testing.md" {
            for (i, block) in text.split("```json\n").skip(1).enumerate() {
                let body = block.split("```").next().unwrap();
                seeds.push((format!("{doc} json block {}", i + 1), body.to_string()));
            }
        }
    }
    // And every example of a file in every command's help, parsed as the
    // docs' are: a help text is documentation too.
    let mut from_help = 0;
    for (command, help) in every_help() {
        for (i, (format, body)) in help_examples(&help).into_iter().enumerate() {
            let name = format!("`runbox {command} --help` example {}", i + 1);
            from_help += 1;
            match format {
                "toml" => docs.push((name, body)),
                _ => seeds.push((name, body)),
            }
        }
    }
    assert!(
        from_help >= 2,
        "the case file (`runbox test`) and the KV seed (`runbox open`) examples"
    );
    let seed_schema = schema("kv-seed.schema.json");
    for (name, text) in &seeds {
        let value: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        let errors = errors_of(&seed_schema, &value);
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
    let mut checked = 0;
    for (name, text) in docs {
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{name}: not TOML: {e}"));
        let Some(kind) = kind_of(&table) else {
            continue;
        };
        let errors = errors_of(&schema(kind), &serde_json::to_value(&table).unwrap());
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        if kind == "case.schema.json" {
            // And as `runbox test` reads it.
            let case: runbox_core::case::Case =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                case.tools.values().all(|t| t.conflict().is_none()),
                "{name}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 27, "only {checked} documents checked");
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

/// The command lines under `Examples:` in every help: each one's flags and
/// values parse (clap reads every argument before it acts on `--help`, so
/// an unknown flag or a bad value fails while nothing runs).
#[test]
fn every_command_line_example_in_help_parses() {
    let mut checked = 0;
    for (command, help) in every_help() {
        let examples = help
            .lines()
            .skip_while(|l| *l != "Examples:")
            .skip(1)
            .map_while(|l| l.strip_prefix("  "));
        for example in examples {
            let line = example.split(" #").next().unwrap().trim();
            let args: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(args[0], "runbox", "`runbox {command} --help`: {example}");
            let out = TestCommand::new()
                .args(&args[1..])
                .arg("--help")
                .output()
                .unwrap();
            let (code, text) = code_and_text(&out);
            assert_eq!(code, 0, "`runbox {command} --help`: {line}: {text}");
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} command lines checked");
}

/// Each file a user writes has its reference in the docs and a JSON Schema
/// generated from the type that reads it, named where the formats are listed.
#[test]
fn every_file_format_a_user_writes_has_a_reference_and_a_schema() {
    let root = runbox_tests::repo_root();
    let read = |doc: &str| std::fs::read_to_string(root.join(doc)).unwrap();
    let runbook_md = read("docs/runbook.md");
    let formats = runbook_md
        .split("## Files you write")
        .nth(1)
        .expect("docs/runbook.md lists the files a user writes")
        .split("\n## ")
        .next()
        .unwrap();
    for (schema, _) in runbox_core::schemas() {
        assert!(
            formats.contains(&format!("schemas/{schema}")),
            "docs/runbook.md's list of files lacks {schema}"
        );
    }
    let testing = read("docs/testing.md");
    for needle in [
        // Every [expect] field, and each status a case can expect.
        "`expect.status`",
        "`expect.steps`",
        "`expect.kv`",
        "\"awaiting-approval\"",
        // Tool answers per call, and the seed rule.
        "`answers`",
        "the last repeats",
        "strings as they are, anything else as its JSON text",
        "schemas/case.schema.json",
        "schemas/kv-seed.schema.json",
    ] {
        assert!(testing.contains(needle), "docs/testing.md lacks {needle:?}");
    }
    // Every field of a case is in the reference's tables.
    let case = schema_fields(&read("docs/schemas/case.schema.json"));
    for field in case {
        assert!(
            testing.contains(&format!("`{field}")) || testing.contains(&format!(".{field}`")),
            "docs/testing.md does not name case field `{field}`"
        );
    }
}

/// The property names of a schema and of its definitions.
fn schema_fields(schema: &str) -> Vec<String> {
    let schema: serde_json::Value = serde_json::from_str(schema).unwrap();
    let mut out = Vec::new();
    let mut add = |v: &serde_json::Value| {
        if let Some(p) = v["properties"].as_object() {
            out.extend(p.keys().cloned());
        }
    };
    add(&schema);
    for def in schema["$defs"]
        .as_object()
        .into_iter()
        .flat_map(|d| d.values())
    {
        add(def);
    }
    out
}

/// `runbox test` says how each case ended in words, and scripts each call
/// of a tool in turn.
#[test]
fn runbox_test_says_how_a_case_ended_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rb = write_file(
        d,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"a\"\n[[steps]]\nid = \"give_up\"\nmodule = \"{}\"\n",
            write_file(d, "escalate.wat", ESCALATES).display()
        ),
    );
    let case = write_file(
        d,
        "case.toml",
        "description = \"the step hands over\"\n[expect]\nstatus = \"escalated\"\nsteps = [\"give_up\"]\n",
    );
    let out = TestCommand::new()
        .args(["test", rb.to_str().unwrap(), "--case"])
        .arg(&case)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            format!("case {} the step hands over", case.display()).as_str(),
            "  give_up#1 escalate \"budget spent\" -> escalate",
            "  status escalated: step `give_up` escalated: budget spent",
            "  PASS",
            "1 of 1 cases pass",
        ],
        "{text}"
    );
    // Both an answer list and one answer for the same tool: refused, not
    // silently half-read.
    let both = write_file(
        d,
        "both.toml",
        "[tools.probe]\nrc = 1\nanswers = [{ stdout = \"200\" }]\n",
    );
    let (code, text) = runbox(
        d,
        &[
            "test",
            rb.to_str().unwrap(),
            "--case",
            both.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("either `answers` or one answer"), "{text}");
}

/// A step that logs one line and escalates with "budget spent".
const ESCALATES: &str = r#"(module
  (import "runbox:step/v1" "log" (func $log (param i32 i32 i32)))
  (import "runbox:step/v1" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "budget spent")
  (func (export "_start")
    (call $log (i32.const 2) (i32.const 0) (i32.const 12))
    (call $finish (i32.const 2) (i32.const 0) (i32.const 12))))"#;

/// `open`, `status`, `verify` and the postmortem page of a seeded,
/// resolved incident read as sentences: counts agree with their nouns and
/// a resolved incident has no step left, not `step -`.
#[test]
fn a_resolved_incident_is_described_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, text) = opened(d, Some(r#"{"budget": 3}"#));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.starts_with("opened INC-1 with runbook `a` (2 steps), step KV seeded with 1 key\n"),
        "{text}"
    );
    assert_eq!(runbox(d, &["run", "INC-1"]).0, 0);
    let status = stdout_of(d, &["status", "INC-1"]);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "incident   INC-1",
            "runbook    a",
            "status     resolved",
            "owner      agent:runbox",
            "checkpoint no step left: the incident is resolved (version 1)",
        ],
        "{status}"
    );
    assert_eq!(
        stdout_of(d, &["verify", "INC-1"]),
        "INC-1: ok (1 step record, 3 events, 1 KV key)\n"
    );
    let (_, html) = runbox(d, &["export", "INC-1", "--format", "html"]);
    assert!(html.contains(">2 log lines<"), "two lines, counted");
    // A step that logs one line: `1 log line`.
    let rb = write_file(
        d,
        "one.toml",
        &format!(
            "[runbook]\nname = \"one\"\n[[steps]]\nid = \"give_up\"\nmodule = \"{}\"\n",
            write_file(d, "escalate.wat", ESCALATES).display()
        ),
    );
    assert_eq!(
        runbox(d, &["open", "INC-2", "--runbook", rb.to_str().unwrap()]).0,
        0
    );
    assert_eq!(runbox(d, &["run", "INC-2"]).0, 4);
    let (_, html) = runbox(d, &["export", "INC-2", "--format", "html"]);
    assert!(
        html.contains(">1 log line<") && !html.contains("1 log lines"),
        "one line, counted"
    );
}

/// Read-only mode never writes, not even the incident's own step KV; a step
/// granted `kv_write` is refused with what to do instead, by `run`, `exec`
/// and the README where read-only mode is described.
#[test]
fn read_only_says_why_a_kv_writing_step_does_not_run_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let module = fixture("writes_then_fails.wat");
    let rb = write_file(
        d,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"w\"\n[[steps]]\nid = \"note\"\nmodule = \"{}\"\ngrants = {{ kv_write = [\"svc/api/restarts\"] }}\n",
            module.display()
        ),
    );
    assert_eq!(
        runbox(d, &["open", "INC-1", "--runbook", rb.to_str().unwrap()]).0,
        0
    );
    let hint = runbox_core::policy::READ_ONLY_KV_HINT;
    let (code, text) = runbox(d, &["run", "INC-1", "--read-only"]);
    assert_eq!(code, 7, "{text}");
    assert!(text.contains(hint), "{text}");
    let policy = write_file(d, "p.toml", "[grants]\nkv_write = [\"svc/api/restarts\"]\n");
    let (code, text) = runbox(
        d,
        &[
            "exec",
            module.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--read-only",
        ],
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("denied-import") && text.contains(hint),
        "{text}"
    );
    let readme = std::fs::read_to_string(runbox_tests::repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains("not even the incident's step KV"),
        "the README says what read-only mode means for step KV"
    );
}
