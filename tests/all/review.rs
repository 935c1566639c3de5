//! Security review as a reviewer and a CI pipeline use it: a fixture runbook
//! per finding kind with its exit status, the JSON schemas, `caps`, capability
//! diffs between two files and two git revisions, and pins.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use runbox_review::{Code, RunbookFiles, Severity, Source};
use runbox_tests::{fixture, repo_root, write_file};
use serde_json::Value;

fn run(args: &[&str], dir: Option<&Path>) -> Output {
    let mut cmd = crate::util::TestCommand::new();
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.output().expect("runbox runs")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn review_fixture(name: &str) -> PathBuf {
    fixture("review").join(name)
}

/// Findings at warning level and above, as `(severity, code)`.
fn serious(report: &Value) -> Vec<(String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .map(|f| {
            (
                f["severity"].as_str().unwrap().into(),
                f["code"].as_str().unwrap().into(),
            )
        })
        .collect()
}

const ERRORS: &[&str] = &[
    "ungranted-import",
    "invalid-module",
    "module-unreadable",
    "pin-mismatch",
    "unknown-tool",
    "mutating-without-approval",
    "bare-kv-write",
    "shell-script-param",
    "memory-over-limit",
];
const WARNINGS: &[&str] = &[
    "over-grant",
    "unpinned",
    "retried-mutation",
    "no-timeout",
    "unbounded-tool-arg",
];

#[test]
fn each_finding_kind_has_a_fixture_that_finds_it_and_only_it() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixture("review"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".toml").map(str::to_string)
        })
        .filter(|n| n != "tools" && n != "clean")
        .collect();
    let expected: BTreeSet<String> = ERRORS
        .iter()
        .chain(WARNINGS)
        .map(ToString::to_string)
        .collect();
    assert_eq!(on_disk, expected, "one fixture per error and warning kind");
    for (codes, severity, plain_exit) in [(ERRORS, "error", 1), (WARNINGS, "warning", 0)] {
        for code in codes {
            let path = review_fixture(&format!("{code}.toml"));
            let path = path.to_str().unwrap();
            let out = run(&["review", path, "--format", "json"], None);
            let report = json(&out);
            assert_eq!(
                serious(&report),
                vec![(severity.to_string(), code.to_string())],
                "{code}: {report:#}"
            );
            assert_eq!(report["summary"]["errors"], u64::from(severity == "error"));
            assert_eq!(out.status.code(), Some(plain_exit), "{code} without --deny");
            let denied = run(&["review", path, "--deny", "warnings"], None);
            assert_eq!(denied.status.code(), Some(1), "{code} with --deny warnings");
        }
    }
}

#[test]
fn initial_memory_over_the_limit_is_an_error_naming_both_numbers() {
    let path = review_fixture("memory-over-limit.toml");
    let out = run(
        &["review", path.to_str().unwrap(), "--format", "json"],
        None,
    );
    let report = json(&out);
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "memory-over-limit")
        .unwrap_or_else(|| panic!("{report:#}"));
    let message = finding["message"].as_str().unwrap();
    assert!(message.contains("1572864 bytes"), "{message}");
    assert!(message.contains("limits.memory_mib is 1 "), "{message}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_clean_runbook_passes_deny_warnings_and_says_so() {
    let path = review_fixture("clean.toml");
    let out = run(
        &["review", path.to_str().unwrap(), "--deny", "warnings"],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("0 errors, 0 warnings"), "{text}");
    assert!(text.contains("passes (--deny warnings)"), "{text}");
    assert!(
        text.contains("impact high"),
        "enums print as users write them: {text}"
    );
    assert!(text.contains("info     cooldown"), "{text}");
}

#[test]
fn findings_name_the_step_the_tool_and_the_fix() {
    let report = json(&run(
        &[
            "review",
            review_fixture("shell-script-param.toml").to_str().unwrap(),
            "--format",
            "json",
        ],
        None,
    ));
    let f = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "shell-script-param")
        .unwrap();
    assert_eq!(f["tool"], "shell_restart");
    let message = f["message"].as_str().unwrap();
    assert!(
        message.contains("`{service}`") && message.contains("separate argv entry"),
        "{message}"
    );
    let report = json(&run(
        &[
            "review",
            review_fixture("pin-mismatch.toml").to_str().unwrap(),
            "--format",
            "json",
        ],
        None,
    ));
    let f = &report["findings"][0];
    assert_eq!(
        (f["code"].as_str(), f["step"].as_str()),
        (Some("pin-mismatch"), Some("s"))
    );
    assert_eq!(f["old"], "0".repeat(64));
    assert_eq!(f["new"], report["steps"][0]["sha256"]);
}

fn schema(name: &str) -> Value {
    let path = repo_root().join("docs/schemas").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn assert_valid(schema_name: &str, doc: &Value) {
    let validator = jsonschema::validator_for(&schema(schema_name)).expect("a valid JSON Schema");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema_name}: {errors:#?}\n{doc:#}");
}

#[test]
fn the_committed_schemas_are_the_types_schemas() {
    runbox_tests::assert_committed_schemas(runbox_review::schemas(), "review");
}

#[test]
fn review_diff_and_caps_json_validate_against_their_schemas() {
    for name in [
        "clean.toml",
        "shell-script-param.toml",
        "module-unreadable.toml",
        "pin-mismatch.toml",
    ] {
        let out = run(
            &[
                "review",
                review_fixture(name).to_str().unwrap(),
                "--format",
                "json",
            ],
            None,
        );
        let doc = json(&out);
        assert_eq!(doc["schema"], "runbox.review/v1");
        assert_valid("review.schema.json", &doc);
    }
    let dir = staged_clean();
    edit(
        &dir,
        "runbook.toml",
        "impact = \"high\"",
        "impact = \"low\"",
    );
    let old = review_fixture("clean.toml");
    let new = dir.path().join("runbook.toml");
    let out = run(
        &[
            "review",
            "--diff",
            old.to_str().unwrap(),
            new.to_str().unwrap(),
            "--format",
            "json",
        ],
        None,
    );
    let doc = json(&out);
    assert_eq!(doc["schema"], "runbox.review-diff/v1");
    assert_valid("review-diff.schema.json", &doc);
    let out = run(
        &[
            "caps",
            review_fixture("modules/kv.wat").to_str().unwrap(),
            "--format",
            "json",
        ],
        None,
    );
    let doc = json(&out);
    assert_eq!(doc["schema"], "runbox.caps/v1");
    assert_valid("caps.schema.json", &doc);
}

#[test]
fn caps_groups_imports_by_capability_and_lists_what_the_module_declares() {
    let dir = tempfile::tempdir().unwrap();
    let module = write_file(
        dir.path(),
        "odd.wat",
        r#"(module
          (import "runbox:kv-write/v1" "put" (func (param i32 i32 i32 i32) (result i32)))
          (import "env" "abort" (func (param i32)))
          (import "runbox:step/v1" "finish" (func (param i32 i32 i32)))
          (memory (export "memory") 2 16)
          (table 4 funcref)
          (func (export "_start") (drop (i32x4.splat (i32.const 1)))))"#,
    );
    let caps = json(&run(
        &["caps", module.to_str().unwrap(), "--format", "json"],
        None,
    ));
    let groups: Vec<(&str, &str)> = caps["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["capability"].as_str().unwrap(),
                g["module"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("step", "runbox:step/v1"),
            ("kv-write", "runbox:kv-write/v1"),
            ("outside-abi", "env")
        ]
    );
    assert_eq!(
        caps["imports"][1]["items"][0]["kind"],
        "func (i32, i32, i32, i32) -> (i32)"
    );
    assert_eq!(caps["memories"][0]["initial_pages"], 2);
    assert_eq!(caps["memories"][0]["maximum_pages"], 16);
    assert_eq!(caps["tables"][0]["element"], "funcref");
    assert_eq!(caps["tables"][0]["initial"], 4);
    let features: Vec<&str> = caps["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(features.contains(&"simd"), "{features:?}");
    let bytes = std::fs::read(&module).unwrap();
    assert_eq!(caps["sha256"], runbox_sandbox::sha256_hex(&bytes));
    let exports: Vec<&str> = caps["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(exports, ["memory", "_start"]);
    // Not a module at all: a clear error, exit 2.
    let out = run(
        &["caps", review_fixture("clean.toml").to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clean.toml") && err.contains("neither a wasm binary"),
        "{err}"
    );
}

/// The clean fixture staged into a temporary directory, to be edited.
fn staged_clean() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("modules")).unwrap();
    for entry in std::fs::read_dir(review_fixture("modules")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.path().join("modules").join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::copy(review_fixture("tools.toml"), dir.path().join("tools.toml")).unwrap();
    std::fs::copy(
        review_fixture("clean.toml"),
        dir.path().join("runbook.toml"),
    )
    .unwrap();
    dir
}

fn edit(dir: &tempfile::TempDir, file: &str, from: &str, to: &str) {
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no `{from}`");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn diff_codes(dir: &tempfile::TempDir) -> Vec<(Severity, Code)> {
    let old = RunbookFiles::load(&Source::Disk, &review_fixture("clean.toml")).unwrap();
    let new = RunbookFiles::load(&Source::Disk, &dir.path().join("runbook.toml")).unwrap();
    runbox_review::diff(&old, &new)
        .findings
        .iter()
        .map(|f| (f.severity, f.code))
        .collect()
}

#[test]
fn each_widening_is_a_warning_in_the_diff() {
    let pin_of = |module: &str| {
        runbox_sandbox::sha256_hex(&std::fs::read(review_fixture("modules").join(module)).unwrap())
    };
    /// (the widening, the file edited, the text replaced, its replacement)
    type Case<'a> = (Code, &'a str, String, String);
    let cases: Vec<Case<'_>> = vec![
        (Code::StepAdded,
            "runbook.toml",
            "[[steps]]\nid = \"done\"".into(),
            "[[steps]]\nid = \"extra\"\nmodule = \"modules/step_only.wat\"\n\n[[steps]]\nid = \"done\"".into(),
        ),
        (Code::CapabilityAdded,
            "runbook.toml",
            "grants = { tools = [\"probe\"] }".into(),
            "grants = { tools = [\"probe\"], kv_read = [\"svc/{service}/x\"] }".into(),
        ),
        (Code::KvPatternWidened,
            "runbook.toml",
            "kv_write = [\"svc/{service}/restarts\"]".into(),
            "kv_write = [\"svc/*/restarts\"]".into(),
        ),
        (Code::ToolAdded,
            "runbook.toml",
            "grants = { tools = [\"probe\"] }".into(),
            "grants = { tools = [\"probe\", \"lookup\"] }".into(),
        ),
        (Code::ToolNowMutates,
            "tools.toml",
            "[tools.probe]\nmode = \"read\"".into(),
            "[tools.probe]\nmode = \"mutate\"".into(),
        ),
        (Code::ToolCommandChanged,
            "tools.toml",
            "argv = [\"true\", \"{service}\"]\n[tools.restart.args]".into(),
            "argv = [\"/usr/bin/reboot\", \"{service}\"]\n[tools.restart.args]".into(),
        ),
        (Code::ApprovalLowered, "runbook.toml", "impact = \"high\"".into(), "impact = \"low\"".into()),
        (Code::RetriesRaised, "runbook.toml", "max_retries = 2".into(), "max_retries = 9".into()),
        (Code::CooldownShortened, "runbook.toml", "cooldown_ms = 60000".into(), "cooldown_ms = 1".into()),
        (Code::IdempotentDeclared,
            "runbook.toml",
            "cooldown_ms = 60000".into(),
            "cooldown_ms = 60000\nidempotent = true".into(),
        ),
        (Code::ModuleChanged,
            "runbook.toml",
            format!("module = \"modules/step_only.wat\"\nsha256 = \"{}\"", pin_of("step_only.wat")),
            format!("module = \"modules/read_tool.wat\"\nsha256 = \"{}\"", pin_of("read_tool.wat")),
        ),
        (Code::PinRemoved,
            "runbook.toml",
            format!("sha256 = \"{}\"\n", pin_of("step_only.wat")),
            String::new(),
        ),
    ];
    for (code, file, from, to) in cases {
        let dir = staged_clean();
        edit(&dir, file, &from, &to);
        let found = diff_codes(&dir);
        assert!(
            found.contains(&(Severity::Warning, code)),
            "{code:?}: {found:?}"
        );
    }
}

#[test]
fn a_diff_without_changes_is_empty_and_narrowing_is_only_info() {
    let dir = staged_clean();
    assert_eq!(diff_codes(&dir), [], "the same runbook");
    // A narrower KV pattern, a dropped tool, a longer cooldown, fewer retries.
    edit(
        &dir,
        "runbook.toml",
        "kv_read = [\"svc/{service}/*\"]",
        "kv_read = [\"svc/{service}/restarts\"]",
    );
    edit(
        &dir,
        "runbook.toml",
        "cooldown_ms = 60000",
        "cooldown_ms = 120000",
    );
    edit(&dir, "runbook.toml", "max_retries = 2", "max_retries = 1");
    let found = diff_codes(&dir);
    assert!(!found.is_empty());
    assert!(found.iter().all(|(s, _)| *s == Severity::Info), "{found:?}");
    assert!(
        found.contains(&(Severity::Info, Code::KvPatternRemoved)),
        "{found:?}"
    );
}

#[test]
fn module_changes_show_both_digests_and_the_import_diff() {
    let dir = staged_clean();
    let pin = runbox_sandbox::sha256_hex(
        &std::fs::read(review_fixture("modules/step_only.wat")).unwrap(),
    );
    edit(&dir, "runbook.toml", &format!("sha256 = \"{pin}\"\n"), "");
    std::fs::copy(
        review_fixture("modules/mutate_tool.wat"),
        dir.path().join("modules/step_only.wat"),
    )
    .unwrap();
    let old = RunbookFiles::load(&Source::Disk, &review_fixture("clean.toml")).unwrap();
    let new = RunbookFiles::load(&Source::Disk, &dir.path().join("runbook.toml")).unwrap();
    let d = runbox_review::diff(&old, &new);
    let f = d
        .findings
        .iter()
        .find(|f| f.code == Code::ModuleChanged)
        .unwrap();
    assert_eq!(f.step.as_deref(), Some("done"));
    assert_eq!(f.old.as_deref(), Some(pin.as_str()));
    assert_ne!(f.new, f.old);
    assert!(
        f.message
            .contains("imports added: runbox:tool-mutate/v1.call"),
        "{}",
        f.message
    );
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn review_diff_reads_two_git_revisions_and_gates_with_deny_warnings() {
    let dir = staged_clean();
    let root = dir.path();
    git(root, &["init", "-q"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "reviewed"]);
    edit(
        &dir,
        "runbook.toml",
        "impact = \"high\"",
        "impact = \"low\"",
    );
    git(root, &["commit", "-q", "-am", "lower the approval"]);
    let out = run(
        &["review", "--git", "HEAD~1..HEAD", "runbook.toml"],
        Some(root),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("approval-lowered"), "{text}");
    assert!(
        text.contains("revision HEAD~1") && text.contains("revision HEAD"),
        "{text}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "a widening is a warning: {text}"
    );
    let gated = run(
        &[
            "review",
            "--git",
            "HEAD~1..HEAD",
            "runbook.toml",
            "--deny",
            "warnings",
        ],
        Some(root),
    );
    assert_eq!(gated.status.code(), Some(1));
    // One revision against the working tree, with a module edited but not committed.
    std::fs::copy(
        review_fixture("modules/kv.wat"),
        root.join("modules/step_only.wat"),
    )
    .unwrap();
    let out = run(
        &[
            "review",
            "--git",
            "HEAD",
            "runbook.toml",
            "--format",
            "json",
        ],
        Some(root),
    );
    let doc = json(&out);
    assert_eq!(doc["new"]["source"], "working tree");
    assert!(
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "module-changed"),
        "{doc:#}"
    );
    // A revision that is not there, or one that is a flag: exit 2, nothing else.
    for bad in ["nope..HEAD", "--output=x"] {
        let out = run(
            &["review", &format!("--git={bad}"), "runbook.toml"],
            Some(root),
        );
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("revision") || err.contains("no commit"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn pin_writes_digests_keeping_comments_and_open_refuses_a_changed_module() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("modules")).unwrap();
    for m in ["step_only.wat", "read_tool.wat"] {
        std::fs::copy(
            review_fixture("modules").join(m),
            dir.path().join("modules").join(m),
        )
        .unwrap();
    }
    std::fs::copy(review_fixture("tools.toml"), dir.path().join("tools.toml")).unwrap();
    let runbook = write_file(
        dir.path(),
        "runbook.toml",
        "# keep this comment\n[runbook]\nname = \"p\"\ntools = \"tools.toml\"\n\n\
         [[steps]]\nid = \"look\"\nmodule = \"modules/read_tool.wat\" # the probe\ngrants = { tools = [\"probe\"] }\n\n\
         [[steps]]\nid = \"done\"\nmodule = \"modules/step_only.wat\"\n",
    );
    let rb = runbook.to_str().unwrap();
    let check = run(&["pin", rb, "--check"], None);
    assert_eq!(check.status.code(), Some(1), "unpinned steps fail --check");
    assert!(String::from_utf8_lossy(&check.stdout).contains("unpinned"));
    let out = run(&["pin", rb], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&runbook).unwrap();
    let sha = |m: &str| {
        runbox_sandbox::sha256_hex(&std::fs::read(dir.path().join("modules").join(m)).unwrap())
    };
    assert!(text.starts_with("# keep this comment\n"), "{text}");
    assert!(
        text.contains(&format!(
            "module = \"modules/read_tool.wat\" # the probe\nsha256 = \"{}\"\ngrants",
            sha("read_tool.wat")
        )),
        "the pin sits after `module`: {text}"
    );
    assert!(
        text.contains(&format!("sha256 = \"{}\"", sha("step_only.wat"))),
        "{text}"
    );
    assert_eq!(run(&["pin", rb, "--check"], None).status.code(), Some(0));
    // The module changes after review: --check and review flag it, open refuses it.
    let old = sha("step_only.wat");
    std::fs::copy(
        review_fixture("modules/kv.wat"),
        dir.path().join("modules/step_only.wat"),
    )
    .unwrap();
    let new = sha("step_only.wat");
    let check = run(&["pin", rb, "--check"], None);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("stale pin"));
    let data = dir.path().join("data");
    let out = run(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "open",
            "INC-1",
            "--runbook",
            rb,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`done`") && err.contains(&old) && err.contains(&new),
        "{err}"
    );
    let out = run(
        &["--data-dir", data.to_str().unwrap(), "status", "INC-1"],
        None,
    );
    assert_ne!(out.status.code(), Some(0), "nothing was opened");
}
