//! Every `runbox new` scaffold builds and passes as generated, and the
//! AssemblyScript SDK runs a real step (and escalates on `abort` with file
//! and line instead of importing `env.abort`).

use std::path::{Path, PathBuf};
use std::process::Command;

use runbox_tests::{code_and_text, repo_root, steps_out_dir, write_file};

use crate::util::{TestCommand, bootstrap_tool};

/// `runbox ARGS` in `dir`, where a scaffold's build script finds it.
fn runbox(dir: &Path, args: &[&str]) -> (i32, String) {
    TestCommand::new()
        .current_dir(dir)
        .env("RUNBOX", crate::util::runbox_path())
        .env("CARGO_TARGET_DIR", steps_out_dir().join("scaffolds"))
        .args(args)
        .code()
}

/// A scaffold's own program (its build script) in `dir`.
fn run(dir: &Path, program: &Path, args: &[&str]) -> (i32, String) {
    code_and_text(
        &Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("RUNBOX", crate::util::runbox_path())
            // Steps share one wasm target dir across test runs.
            .env("CARGO_TARGET_DIR", steps_out_dir().join("scaffolds"))
            .output()
            .unwrap(),
    )
}

#[test]
fn every_step_and_runbook_scaffold_builds_and_passes_as_generated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for lang in ["wat", "c", "rust", "assemblyscript"] {
        let name = format!("hello_{lang}");
        let (code, text) = runbox(d, &["new", "step", &name, "--lang", lang]);
        assert_eq!(code, 0, "{lang}: {text}");
        for file in ["step.toml", "input.json", "kv.json", "test.sh"] {
            assert!(d.join(&name).join(file).exists(), "{lang} has {file}");
        }
        let (code, text) = run(d, &d.join(&name).join("test.sh"), &[]);
        assert_eq!(code, 0, "{lang} scaffold test: {text}");
        assert!(text.contains("\"outcome\": \"ok\""), "{lang}: {text}");
        assert!(
            text.contains("restarted yesterday") || lang == "c",
            "{lang} read its KV seed: {text}"
        );
    }
    let (code, text) = runbox(d, &["new", "runbook", "ops"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(d, &d.join("ops/test.sh"), &[]);
    assert_eq!(code, 0, "runbook scaffold: {text}");
    assert!(text.contains("1 of 1 cases pass"), "{text}");
    // Never over an existing directory.
    let (code, text) = runbox(d, &["new", "step", "hello_wat", "--lang", "wat"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("exists and is not empty"), "{text}");
    let (code, _) = runbox(d, &["new", "step", "bad name", "--lang", "wat"]);
    assert_eq!(code, 2);
}

/// `steps/assemblyscript` built with the SDK, in a directory of its own
/// beside the other built steps: the path of the module built from `source`.
fn assemblyscript(source: &str, name: &str) -> PathBuf {
    let dir = steps_out_dir().join("assemblyscript");
    std::fs::create_dir_all(dir.join("assembly")).unwrap();
    let root = repo_root();
    for file in ["package.json", "asconfig.json"] {
        std::fs::copy(root.join("steps/assemblyscript").join(file), dir.join(file)).unwrap();
    }
    std::fs::copy(
        root.join("guest-sdk/assemblyscript/assembly/index.ts"),
        dir.join("assembly/runbox.ts"),
    )
    .unwrap();
    std::fs::write(dir.join("assembly").join(format!("{name}.ts")), source).unwrap();
    if !dir.join("node_modules/.bin/asc").exists() {
        let (code, text) = run(
            &dir,
            Path::new("npm"),
            &["install", "--silent", "--no-audit", "--no-fund"],
        );
        assert_eq!(code, 0, "npm install: {text}");
    }
    let out = format!("build/{name}.wasm");
    let (code, text) = run(
        &dir,
        &dir.join("node_modules/.bin/asc"),
        &[
            &format!("assembly/{name}.ts"),
            "--target",
            "release",
            "--outFile",
            &out,
        ],
    );
    assert_eq!(code, 0, "asc: {text}");
    dir.join(out)
}

#[test]
fn the_assemblyscript_probe_classifies_like_the_rust_one_and_abort_escalates() {
    let source =
        std::fs::read_to_string(repo_root().join("steps/assemblyscript/assembly/probe.ts"))
            .unwrap();
    let probe = assemblyscript(&source, "probe");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let policy = write_file(d, "p.toml", "[grants]\ntools = [\"http_probe\"]\n");
    for (status, class) in [("200", "healthy"), ("503", "degraded")] {
        write_file(
            d,
            "tools.toml",
            &format!(
                "[tools.http_probe]\nmode = \"read\"\nargv = [\"echo\", \"{status}\"]\n[tools.http_probe.args]\nservice = {{ type = \"string\" }}\n"
            ),
        );
        let (code, text) = runbox(
            d,
            &[
                "exec",
                probe.to_str().unwrap(),
                "--policy",
                policy.to_str().unwrap(),
                "--tools",
                "tools.toml",
                "--input",
                "{\"service\":\"api\"}",
            ],
        );
        assert_eq!(code, 0, "{text}");
        let report: serde_json::Value =
            serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
        assert_eq!(report["output"]["class"], class, "{report:#}");
        assert_eq!(
            report["logs"][0]["message"],
            format!("api answered {status}: {class}")
        );
    }
    let aborts = assemblyscript(
        "import { ok } from \"./runbox\";\nassert(false, \"boom\");\nok();\n",
        "aborts",
    );
    let (code, text) = runbox(d, &["exec", aborts.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(report["outcome"], "escalate", "{report:#}");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("boom at assembly/aborts.ts:2"),
        "{reason}"
    );
}

#[test]
fn the_assemblyscript_sdk_reads_a_long_tool_answer_back_and_the_tool_runs_once() {
    // An answer past the SDK's first 16 KiB buffer (3000 NUL bytes are
    // 18,000 bytes of JSON escapes): read back through `last_tool_answer`,
    // never by calling the tool again. Small, since the stub runtime's
    // string building never frees.
    let step = assemblyscript(
        "import { ok, fail, tool } from \"./runbox\";\n\
         const a = tool.read(\"dump\");\n\
         if (a.code != 0) fail(\"code \" + a.code.toString());\n\
         ok(\"{\\\"bytes\\\":\" + a.stdout.length.toString() + \"}\");\n",
        "long_answer",
    );
    assert_long_answer_read_once(&step, "{}");
}

/// Runs `step` (which calls the read tool `dump`, 3000 NUL bytes on stdout,
/// and reports `{"bytes": N}`) with `input`: the whole answer arrives, and
/// the tool ran once.
fn assert_long_answer_read_once(step: &Path, input: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let policy = write_file(d, "p.toml", "[grants]\ntools = [\"dump\"]\n");
    write_file(
        d,
        "tools.toml",
        "[tools.dump]\nmode = \"read\"\nargv = [\"head\", \"-c\", \"3000\", \"/dev/zero\"]\n",
    );
    let (code, text) = runbox(
        d,
        &[
            "exec",
            step.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--tools",
            "tools.toml",
            "--input",
            input,
        ],
    );
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(report["output"]["bytes"], 3000, "{report:#}");
    assert_eq!(
        report["tool_calls"].as_array().unwrap().len(),
        1,
        "{report:#}"
    );
}

/// `runbox new step --lang LANG` as generated: `test.sh` builds the step
/// with the bootstrap's tools, runs it once through `runbox exec` (reading
/// its KV seed) and passes `runbox test` on its runbook.
fn scaffold_with_runbook_passes(lang: &str, tool_env: &str, tool: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = format!("hello_{lang}");
    let (code, text) = runbox(d, &["new", "step", &name, "--lang", lang]);
    assert_eq!(code, 0, "{lang}: {text}");
    for file in ["README.md", "build.sh", "runbook.toml"] {
        assert!(d.join(&name).join(file).exists(), "{lang} has {file}");
    }
    let world = d.join(&name).join("wit/world.wit");
    let has_world = !["rust-component", "zig"].contains(&lang);
    assert_eq!(world.exists(), has_world, "{lang}: its world");
    let out = Command::new(d.join(&name).join("test.sh"))
        .env("RUNBOX", crate::util::runbox_path())
        .env(tool_env, tool)
        .env("RUNBOX_DATA_DIR", d.join("data"))
        .output()
        .unwrap();
    let (code, text) = code_and_text(&out);
    assert_eq!(code, 0, "{lang} scaffold test: {text}");
    assert!(text.contains("\"outcome\": \"ok\""), "{lang}: {text}");
    assert!(
        text.contains("restarted yesterday"),
        "{lang} read its KV seed: {text}"
    );
    assert!(text.contains("1 of 1 cases pass"), "{lang}: {text}");
}

/// Rust on WIT: the scaffold's crate over `runbox-component` builds for
/// `wasm32-wasip2` (into the tests' shared wasm target dir) and imports only
/// the interfaces it calls, so its KV-read grant is enough.
#[test]
fn the_rust_component_scaffold_builds_a_component_that_runs_and_passes_runbox_test() {
    let target = steps_out_dir().join("scaffolds");
    scaffold_with_runbook_passes("rust-component", "CARGO_TARGET_DIR", &target);
}

#[test]
fn the_python_scaffold_builds_a_component_that_runs_and_passes_runbox_test() {
    let cpy = bootstrap_tool("-py-steps/bin/componentize-py", "--python-steps");
    scaffold_with_runbook_passes("python", "RUNBOX_COMPONENTIZE_PY", &cpy);
}

#[test]
fn the_javascript_scaffold_builds_a_component_that_runs_and_passes_runbox_test() {
    let prefix = bootstrap_tool("-js-steps", "--js-steps");
    scaffold_with_runbook_passes("js", "RUNBOX_JS_STEPS", &prefix);
}

#[test]
fn the_typescript_scaffold_builds_a_component_that_runs_and_passes_runbox_test() {
    let prefix = bootstrap_tool("-js-steps", "--js-steps");
    scaffold_with_runbook_passes("ts", "RUNBOX_JS_STEPS", &prefix);
}

/// Zig on ABI v1: the scaffold builds with the pinned Zig and passes.
#[test]
fn the_zig_scaffold_builds_a_module_that_runs_and_passes_runbox_test() {
    let venv = bootstrap_tool("-zig-steps", "--zig-steps");
    scaffold_with_runbook_passes("zig", "RUNBOX_ZIG_STEPS", &venv);
}

/// The Zig SDK never calls a tool twice: an answer past its first buffer,
/// even a 1-byte one, is read back whole, and the tool runs once.
#[test]
fn the_zig_sdk_reads_a_long_tool_answer_back_and_the_tool_runs_once() {
    let venv = bootstrap_tool("-zig-steps", "--zig-steps");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, text) = runbox(d, &["new", "step", "long_answer", "--lang", "zig"]);
    assert_eq!(code, 0, "{text}");
    let step = d.join("long_answer");
    let source = repo_root().join("guest-sdk/zig/examples/long_answer.zig");
    std::fs::copy(source, step.join("main.zig")).unwrap();
    let out = Command::new(step.join("build.sh"))
        .env("RUNBOX_ZIG_STEPS", &venv)
        .output()
        .unwrap();
    let (code, text) = code_and_text(&out);
    assert_eq!(code, 0, "{text}");
    let wasm = step.join("long_answer.wasm");
    for input in ["{}", "{\"first_buffer\": 1}"] {
        assert_long_answer_read_once(&wasm, input);
    }
}

/// The same step source on both Rust SDKs, built by their scaffolds'
/// `build.sh` as a newcomer would: a step that calls a read tool imports
/// the read-tool capability and not the mutating one (or a policy granting
/// only the read tool would refuse it), and both runs end `ok` with the
/// tool's answer.
#[test]
fn a_rust_step_calling_a_read_tool_imports_only_that_on_either_sdk() {
    const SOURCE: &str = r#"use SDK::{Outcome, tool};

fn step(_input: serde_json::Value) -> Outcome {
    match tool::read("answer", &serde_json::json!({})) {
        Ok(a) => Outcome::ok(serde_json::json!({ "said": a.stdout.trim() })),
        Err(e) => Outcome::Escalate(format!("answer: {e}")),
    }
}

SDK::step!(step);
"#;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let policy = write_file(d, "p.toml", "[grants]\ntools = [\"answer\"]\n");
    write_file(
        d,
        "tools.toml",
        "[tools.answer]\nmode = \"read\"\nargv = [\"echo\", \"forty-two\"]\n",
    );
    for (lang, sdk, file, import) in [
        ("rust", "runbox_guest", "src/main.rs", "runbox:tool-read/v1"),
        (
            "rust-component",
            "runbox_component",
            "src/lib.rs",
            "runbox:step/tool-read@1.0.0",
        ),
    ] {
        let name = format!("reads_{}", lang.replace('-', "_"));
        let (code, text) = runbox(d, &["new", "step", &name, "--lang", lang]);
        assert_eq!(code, 0, "{lang}: {text}");
        let step = d.join(&name);
        std::fs::write(step.join(file), SOURCE.replace("SDK", sdk)).unwrap();
        let (code, text) = run(&step, &step.join("build.sh"), &[]);
        assert_eq!(code, 0, "{lang} build: {text}");
        let wasm = step.join(format!("{name}.wasm"));
        let (code, caps) = runbox(d, &["caps", wasm.to_str().unwrap()]);
        assert_eq!(code, 0, "{caps}");
        assert!(caps.contains(import), "{lang}: {caps}");
        assert!(!caps.contains("mutate"), "{lang}: {caps}");
        let (code, text) = runbox(
            d,
            &[
                "exec",
                wasm.to_str().unwrap(),
                "--policy",
                policy.to_str().unwrap(),
                "--tools",
                "tools.toml",
            ],
        );
        assert_eq!(code, 0, "{lang}: {text}");
        assert!(text.contains("\"said\": \"forty-two\""), "{lang}: {text}");
    }
}
