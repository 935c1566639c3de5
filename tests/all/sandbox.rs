//! The sandbox against hostile guests and policy edges, through the library.
//!
//! Every test shares one `Sandbox` (one process, one set of engines), so the
//! suite as a whole also shows the host stays healthy across all of them.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use runbox_core::policy::StepPolicy;
use runbox_core::tools::ToolRegistry;
use runbox_sandbox::{
    Capabilities, ErrorCategory, MapKv, MutationGuard, Outcome, PrepareError, Refusal, Sandbox,
    SandboxConfig, StepReport,
};
use runbox_tests::{c_fixture, c_step, fixture, rust_step};
use serde_json::json;

static SANDBOX: LazyLock<Sandbox> = LazyLock::new(|| Sandbox::new(SandboxConfig::default()));

const TOOLS: &str = r#"
[tools.noop]
mode = "read"
argv = ["true"]

[tools.http_probe]
mode = "read"
argv = ["sh", "-c", "echo $0", "{service}"]
[tools.http_probe.args]
service = { type = "string" }

[tools.restart]
mode = "mutate"
argv = ["true"]

[tools.restart_service]
mode = "mutate"
argv = ["sh", "-c", "echo restarted $0", "{service}"]
[tools.restart_service.args]
service = { type = "string" }
"#;

fn tools() -> Arc<ToolRegistry> {
    Arc::new(ToolRegistry::from_toml(TOOLS, Path::new("tools.toml"), "/".into()).unwrap())
}

fn policy(text: &str) -> StepPolicy {
    StepPolicy::from_toml(text, Path::new("policy.toml")).unwrap()
}

async fn run_with(
    module: &Path,
    policy_text: &str,
    caps: Capabilities,
    input: serde_json::Value,
    kv: MapKv,
    guard: Option<Box<dyn MutationGuard>>,
) -> StepReport {
    let policy = policy(policy_text);
    match SANDBOX.prepare_file("step", module, &policy, tools(), caps) {
        Ok(step) => SANDBOX.run(&step, &input, Arc::new(kv), guard).await,
        Err(PrepareError::Module(e)) => StepReport::stopped(e),
        Err(PrepareError::Host(e)) => panic!("host inputs are valid: {e}"),
    }
}

async fn run(module: &Path, policy_text: &str) -> StepReport {
    run_with(
        module,
        policy_text,
        Capabilities::default(),
        json!({"service": "api"}),
        MapKv::new(),
        None,
    )
    .await
}

fn category(report: &StepReport) -> Option<ErrorCategory> {
    report.error.as_ref().map(|e| e.category)
}

/// Asserts `report` stopped with `expected` and a message holding `needle`
/// (modules here, components in `components.rs`).
pub(crate) fn assert_stopped(report: &StepReport, expected: ErrorCategory, needle: &str) {
    let error = report
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("expected {expected}, got {report:#?}"));
    assert_eq!(error.category, expected, "{report:#?}");
    assert!(
        error.message.contains(needle),
        "message {:?} lacks {needle:?}",
        error.message
    );
    assert_eq!(
        report.outcome,
        Outcome::Escalate,
        "a stopped step escalates"
    );
}

// --- limits -----------------------------------------------------------------

#[tokio::test]
async fn infinite_loop_is_stopped_promptly_after_the_timeout() {
    let started = Instant::now();
    let report = run(&fixture("loop_forever.wat"), "[limits]\ntimeout_ms = 200\n").await;
    assert_stopped(&report, ErrorCategory::Timeout, "200 ms");
    // Generous bound: the point is "promptly", not a benchmark.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn memory_growth_bomb_hits_the_memory_limit() {
    let report = run(
        &fixture("memory_growth_bomb.wat"),
        "[limits]\nmemory_mib = 4\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Memory, "memory limit exceeded");
}

#[tokio::test]
async fn table_growth_bomb_hits_the_table_limit() {
    let report = run(
        &fixture("table_growth_bomb.wat"),
        "[limits]\ntable_elements = 5000\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Limit, "table limit exceeded");
}

#[tokio::test]
async fn deep_recursion_exhausts_the_wasm_stack() {
    let report = run(&fixture("deep_recursion.wat"), "[limits]\nstack_kib = 64\n").await;
    assert_stopped(&report, ErrorCategory::Limit, "stack");
}

#[tokio::test]
async fn stdout_flood_hits_the_output_limit() {
    let report = run(
        &fixture("stdout_flood.wat"),
        "[limits]\noutput_bytes = 10000\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Limit, "output");
    assert!(
        report.stdout.len() <= 10_000,
        "captured {} bytes",
        report.stdout.len()
    );
}

#[tokio::test]
async fn empty_log_flood_still_hits_the_output_limit() {
    let report = run(
        &fixture("empty_log_flood.wat"),
        "[limits]\noutput_bytes = 3200\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Limit, "output");
    assert_eq!(report.logs.len(), 100, "3200 bytes at 32 per empty line");
}

#[tokio::test]
async fn kv_flood_is_refused_then_stopped() {
    let report = run(
        &fixture("kv_flood.wat"),
        "[grants]\nkv_write = [\"flood/*\"]\n[limits]\nkv_ops = 50\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Limit, "kv_ops");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.message.contains("more than 50 KV calls"))
    );
    assert!(
        report.kv_writes.is_empty(),
        "a stopped step keeps no writes"
    );
    assert_eq!(report.discarded_kv_writes.len(), 1, "one key, rewritten");
}

#[tokio::test]
async fn huge_value_is_refused_and_the_attempt_escalates() {
    let report = run(
        &fixture("huge_value.wat"),
        "[grants]\nkv_write = [\"big/*\"]\n[limits]\nkv_value_bytes = 1024\n",
    )
    .await;
    // The step handled -3 and said ok; the violation still escalates it.
    assert_eq!(report.step_outcome, Some(Outcome::Ok));
    assert_eq!(report.outcome, Outcome::Escalate);
    assert_eq!(category(&report), Some(ErrorCategory::Limit));
    assert!(report.violations[0].message.contains("kv_value_bytes"));
    assert!(
        report.kv_writes.is_empty(),
        "the refused value was never staged"
    );
}

#[tokio::test]
async fn oversized_key_is_refused_and_the_attempt_escalates() {
    let report = run(
        &fixture("huge_value.wat"),
        "[grants]\nkv_write = [\"big/*\"]\n[limits]\nkv_key_bytes = 4\n",
    )
    .await;
    assert_eq!(report.outcome, Outcome::Escalate);
    assert_eq!(category(&report), Some(ErrorCategory::Limit));
    assert!(
        report.violations[0].message.contains("kv_key_bytes"),
        "{report:#?}"
    );
}

#[tokio::test]
async fn staged_bytes_budget_is_refused_then_stopped() {
    let report = run(
        &fixture("kv_flood.wat"),
        "[grants]\nkv_write = [\"flood/*\"]\n[limits]\nkv_write_bytes = 100\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Limit, "limits.kv_write_bytes");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.message.contains("kv_write_bytes (100)")),
        "{report:#?}"
    );
}

#[tokio::test]
async fn delete_flood_counts_against_the_staged_bytes_budget() {
    let report = run(
        &fixture("delete_flood.wat"),
        "[grants]\nkv_write = [\"flood/*\"]\n[limits]\nkv_write_bytes = 100\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Limit, "limits.kv_write_bytes");
    assert!(
        report.kv_writes.is_empty(),
        "a stopped step keeps no deletes"
    );
}

#[tokio::test]
async fn tool_call_flood_is_refused_then_stopped() {
    let report = run(
        &fixture("tool_call_flood.wat"),
        "[grants]\ntools = [\"noop\"]\n[limits]\ntool_calls = 3\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Limit, "tool_calls");
    assert_eq!(report.tool_calls.len(), 3, "exactly the budget ran");
}

#[tokio::test]
async fn one_byte_buffer_reads_the_answer_back_and_the_tool_runs_once() {
    let report = run(
        &fixture("tool_answer_once.wat"),
        "[grants]\ntools = [\"http_probe\"]\n",
    )
    .await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(report.tool_calls.len(), 1, "the tool ran once");
    let answer = report.output.expect("the answer read back");
    assert_eq!(answer["rc"], 0);
    assert_eq!(answer["stdout"], "api\n");
}

#[tokio::test]
async fn c_sdk_reads_a_long_answer_back_and_the_tool_runs_once() {
    let report = run(
        &c_fixture("tool_answer_once"),
        "[grants]\ntools = [\"http_probe\"]\n",
    )
    .await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(report.tool_calls.len(), 1, "the tool ran once");
    assert_eq!(report.output.unwrap()["stdout"], "api\n");
}

#[tokio::test]
async fn a_refused_tool_call_leaves_no_last_answer() {
    let report = run(
        &fixture("tool_answer_after_refusal.wat"),
        "[grants]\ntools = [\"noop\"]\n",
    )
    .await;
    assert_eq!(report.tool_calls.len(), 1, "{report:#?}");
    assert_eq!(report.step_outcome, Some(Outcome::Ok), "{report:#?}");
    assert_eq!(category(&report), Some(ErrorCategory::DeniedTool));
}

#[tokio::test]
async fn tool_output_is_capped_by_the_step_limit() {
    // The probe tool echoes its argument; a 2-byte cap cuts a longer one.
    let module = rust_step("probe");
    let report = run_with(
        &module,
        "[grants]\ntools = [\"http_probe\"]\n[limits]\ntool_output_bytes = 2\n",
        Capabilities::default(),
        json!({"service": "2000"}),
        MapKv::new(),
        None,
    )
    .await;
    // "2000\n" cut to "20": the step sees status 20 and classifies it.
    assert_eq!(
        report.output,
        Some(json!({"class": "degraded", "status": 20})),
        "{report:#?}"
    );
}

// --- guest memory and strings ---------------------------------------------------

#[tokio::test]
async fn out_of_bounds_pointers_get_invalid_then_finish_traps() {
    let report = run(
        &fixture("out_of_bounds_pointer.wat"),
        "[grants]\nkv_read = [\"**\"]\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Trap, "outside guest memory");
}

#[tokio::test]
async fn bad_utf8_key_is_invalid_and_bad_utf8_reason_traps() {
    let report = run(&fixture("bad_utf8.wat"), "[grants]\nkv_read = [\"**\"]\n").await;
    assert_stopped(&report, ErrorCategory::Trap, "not UTF-8");
}

// --- imports ------------------------------------------------------------------------

#[tokio::test]
async fn import_of_an_ungranted_module_is_refused_before_running() {
    let report = run(&fixture("imports_ungranted_module.wat"), "").await;
    assert_stopped(&report, ErrorCategory::DeniedImport, "runbox:kv-write/v1");
    assert!(
        report
            .error
            .unwrap()
            .message
            .contains("no `kv_write` patterns")
    );
}

#[tokio::test]
async fn import_of_an_unknown_function_is_refused() {
    let report = run(&fixture("imports_unknown_function.wat"), "").await;
    assert_stopped(&report, ErrorCategory::DeniedImport, "teleport");
}

#[tokio::test]
async fn import_of_a_module_outside_the_abi_is_refused() {
    let report = run(&fixture("imports_unknown_module.wat"), "").await;
    assert_stopped(&report, ErrorCategory::DeniedImport, "`env`");
}

#[tokio::test]
async fn import_of_an_unknown_wasi_function_is_refused() {
    let report = run(&fixture("imports_unknown_wasi_function.wat"), "").await;
    assert_stopped(&report, ErrorCategory::DeniedImport, "sock_open_everything");
}

#[tokio::test]
async fn import_with_a_wrong_signature_is_refused() {
    let report = run(&fixture("wrong_signature.wat"), "").await;
    assert_stopped(
        &report,
        ErrorCategory::DeniedImport,
        "(i32, i32, i32) -> ()",
    );
}

#[tokio::test]
async fn mutating_import_needs_the_token_and_is_never_linked_read_only() {
    let module = rust_step("restart");
    let grants = "[grants]\ntools = [\"restart_service\", \"http_probe\"]\nkv_read = [\"svc/{service}/*\"]\nkv_write = [\"svc/{service}/*\"]\n";
    let input = || json!({"service": "api"});
    let no_token = run_with(
        &module,
        grants,
        Capabilities::default(),
        input(),
        MapKv::new(),
        None,
    )
    .await;
    assert_stopped(&no_token, ErrorCategory::DeniedImport, "mutation token");
    let read_only = Capabilities {
        allow_mutate: true,
        read_only: true,
    };
    let report = run_with(&module, grants, read_only, input(), MapKv::new(), None).await;
    assert_stopped(&report, ErrorCategory::DeniedImport, "read-only");
    let allowed = Capabilities {
        allow_mutate: true,
        read_only: false,
    };
    let report = run_with(&module, grants, allowed, input(), MapKv::new(), None).await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
}

#[tokio::test]
async fn module_that_is_not_wasm_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let path = runbox_tests::write_file(dir.path(), "junk.wasm", "\0asm\x01\0\0\0garbage");
    let report = run(&path, "").await;
    assert_stopped(
        &report,
        ErrorCategory::InvalidModule,
        "not a valid wasm module",
    );
}

#[tokio::test]
async fn library_module_without_start_is_invalid() {
    let report = run(&fixture("not_a_command.wat"), "").await;
    assert_stopped(&report, ErrorCategory::InvalidModule, "_start");
}

// --- outcomes and denials -------------------------------------------------------------

#[tokio::test]
async fn step_without_finish_has_no_outcome() {
    let report = run(&fixture("no_finish.wat"), "").await;
    assert_stopped(
        &report,
        ErrorCategory::NoOutcome,
        "without calling `finish`",
    );
}

#[tokio::test]
async fn key_outside_the_patterns_is_denied_and_escalates() {
    let report = run(
        &fixture("denied_key.wat"),
        "[grants]\nkv_read = [\"svc/{service}/*\"]\n",
    )
    .await;
    assert_eq!(report.step_outcome, Some(Outcome::Ok));
    assert_eq!(report.outcome, Outcome::Escalate);
    assert_eq!(category(&report), Some(ErrorCategory::DeniedKey));
    assert!(
        report.violations[0].message.contains("svc/db/secret"),
        "{report:#?}"
    );
    assert!(
        report.violations[0].message.contains("svc/api/*"),
        "names the granted pattern"
    );
}

#[tokio::test]
async fn mutating_tool_through_the_read_module_is_denied() {
    let report = run(
        &fixture("denied_tool_mode.wat"),
        "[grants]\ntools = [\"noop\", \"restart\"]\n",
    )
    .await;
    assert_eq!(report.outcome, Outcome::Escalate);
    assert_eq!(category(&report), Some(ErrorCategory::DeniedTool));
    assert!(
        report.violations[0]
            .message
            .contains("declares it `mutate`"),
        "{report:#?}"
    );
    assert!(report.tool_calls.is_empty(), "the tool never ran");
}

#[tokio::test]
async fn wasi_context_is_empty() {
    let report = run(&fixture("wasi_sees_nothing.wat"), "").await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(report.output, Some(json!({"clean": true})));
}

// --- KV writes belong to the outcome -----------------------------------------------------

#[tokio::test]
async fn writes_of_a_trapped_step_are_discarded() {
    let report = run(
        &fixture("writes_then_traps.wat"),
        "[grants]\nkv_write = [\"svc/{service}/*\"]\n",
    )
    .await;
    assert_stopped(&report, ErrorCategory::Trap, "unreachable");
    assert!(report.kv_writes.is_empty());
    assert_eq!(report.discarded_kv_writes[0].key, "svc/api/restarts");
}

#[tokio::test]
async fn writes_of_a_step_that_finishes_fail_are_kept() {
    let report = run(
        &fixture("writes_then_fails.wat"),
        "[grants]\nkv_write = [\"svc/{service}/*\"]\n",
    )
    .await;
    assert_eq!(report.outcome, Outcome::Fail, "{report:#?}");
    assert_eq!(report.reason.as_deref(), Some("gave up"));
    assert_eq!(report.kv_writes[0].key, "svc/api/restarts");
    assert_eq!(report.kv_writes[0].value.as_deref(), Some(&b"1"[..]));
    assert!(report.discarded_kv_writes.is_empty());
}

#[tokio::test]
async fn unsafe_parameter_cannot_widen_a_key_grant() {
    let report = run_with(
        &fixture("denied_key.wat"),
        "[grants]\nkv_read = [\"svc/{service}/*\"]\n",
        Capabilities::default(),
        json!({"service": "*"}),
        MapKv::new(),
        None,
    )
    .await;
    assert_stopped(
        &report,
        ErrorCategory::DeniedKey,
        "cannot be used in a key pattern",
    );
}

// --- the example steps, one per language ----------------------------------------------------

#[tokio::test]
async fn rust_probe_step_classifies_through_a_read_tool() {
    let report = run_with(
        &rust_step("probe"),
        "[grants]\ntools = [\"http_probe\"]\n",
        Capabilities::default(),
        json!({"service": "503"}),
        MapKv::new(),
        None,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(
        report.output,
        Some(json!({"class": "degraded", "status": 503}))
    );
    assert_eq!(report.tool_calls[0].name, "http_probe");
}

#[tokio::test]
async fn rust_restart_step_announces_its_mutation_first() {
    struct Recorder(Arc<std::sync::Mutex<Vec<String>>>);
    impl MutationGuard for Recorder {
        fn before_mutation(
            &mut self,
            tool: &str,
            first: bool,
            staged: &std::collections::BTreeMap<String, Option<Vec<u8>>>,
        ) -> Result<(), Refusal> {
            // The guard sees what the step staged before its mutation
            // (this step writes its count after the restart).
            let note = format!("{tool} first={first} staged={}", staged.len());
            self.0.lock().unwrap().push(note);
            Ok(())
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut kv = MapKv::new();
    kv.insert("svc/api/restarts".into(), b"2".to_vec());
    let report = run_with(
        &rust_step("restart"),
        "[grants]\ntools = [\"restart_service\", \"http_probe\"]\nkv_read = [\"svc/{service}/*\"]\nkv_write = [\"svc/{service}/*\"]\n",
        Capabilities { allow_mutate: true, read_only: false },
        json!({"service": "api"}),
        kv,
        Some(Box::new(Recorder(seen.clone()))),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(report.kv_writes[0].value.as_deref(), Some(&b"3"[..]));
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["restart_service first=true staged=0".to_string()]
    );
}

#[tokio::test]
async fn failing_mutation_guard_stops_the_step_before_the_tool_runs() {
    struct Refuse(Refusal);
    impl MutationGuard for Refuse {
        fn before_mutation(
            &mut self,
            _: &str,
            _: bool,
            _: &std::collections::BTreeMap<String, Option<Vec<u8>>>,
        ) -> Result<(), Refusal> {
            Err(self.0.clone())
        }
    }
    for (refusal, category, says) in [
        (
            Refusal::Host("disk full".into()),
            ErrorCategory::Host,
            "disk full",
        ),
        (
            Refusal::Held("brake `all` engaged".into()),
            ErrorCategory::Held,
            "held, not called: brake",
        ),
    ] {
        let report = run_with(
        &rust_step("restart"),
        "[grants]\ntools = [\"restart_service\", \"http_probe\"]\nkv_read = [\"svc/{service}/*\"]\nkv_write = [\"svc/{service}/*\"]\n",
        Capabilities { allow_mutate: true, read_only: false },
        json!({"service": "api"}),
        MapKv::new(),
        Some(Box::new(Refuse(refusal))),
    )
    .await;
        assert_stopped(&report, category, says);
        assert!(report.tool_calls.is_empty(), "the mutation never ran");
    }
}

#[tokio::test]
async fn c_step_reads_kv_and_escalates_over_budget() {
    let module = c_step("restart_budget");
    let grants = "[grants]\nkv_read = [\"svc/{service}/restarts\"]\n";
    let mut kv = MapKv::new();
    kv.insert("svc/api/restarts".into(), b"1".to_vec());
    let report = run_with(
        &module,
        grants,
        Capabilities::default(),
        json!({"service": "api"}),
        kv.clone(),
        None,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(report.output, Some(json!({"restarts": 1, "budget": 3})));
    let report = run_with(
        &module,
        grants,
        Capabilities::default(),
        json!({"service": "api", "max": 1}),
        kv,
        None,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Escalate);
    assert!(report.reason.unwrap().contains("restarted 1 times"));
}

#[tokio::test]
async fn wat_escalate_step_hands_over_with_its_input() {
    let module = runbox_tests::repo_root().join("steps/wat/escalate.wat");
    let input = json!({"message": "verification failed"});
    let report = run_with(
        &module,
        "",
        Capabilities::default(),
        input.clone(),
        MapKv::new(),
        None,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Escalate);
    assert!(
        report.error.is_none(),
        "a chosen escalation is not an error"
    );
    assert_eq!(report.reason.as_deref(), Some(input.to_string().as_str()));
}

// --- compiled module artifacts ---------------------------------------------------------------

#[tokio::test]
async fn compiled_modules_are_reused_across_sandboxes_and_damaged_artifacts_are_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = || SandboxConfig {
        artifact_dir: Some(dir.path().join("modules")),
        ..SandboxConfig::default()
    };
    let wasm = std::fs::read(fixture("wasi_sees_nothing.wat")).unwrap();
    let prepare = |sandbox: &Sandbox, bytes: &[u8]| {
        sandbox
            .prepare(
                "s",
                bytes,
                &StepPolicy::default(),
                tools(),
                Capabilities::default(),
            )
            .unwrap()
    };
    let first = Sandbox::new(config());
    prepare(&first, &wasm);
    assert_eq!(first.cache_stats().compiled, 1);
    let cwasm = || -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(dir.path().join("modules"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect();
        found.sort();
        found
    };
    let artifacts = cwasm();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");

    // A new process (sandbox) loads the artifact instead of compiling, and it runs.
    let second = Sandbox::new(config());
    let step = prepare(&second, &wasm);
    assert_eq!(
        (second.cache_stats().compiled, second.cache_stats().loaded),
        (0, 1)
    );
    let report = second
        .run(&step, &json!({}), Arc::new(MapKv::new()), None)
        .await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");

    // A sandbox that keeps no new artifacts (replay) loads the kept one,
    // and compiles a module it has none for without writing it.
    let reader = Sandbox::new(SandboxConfig {
        keep_new_artifacts: false,
        ..config()
    });
    prepare(&reader, &wasm);
    let unseen = std::fs::read(fixture("no_finish.wat")).unwrap();
    prepare(&reader, &unseen);
    assert_eq!(
        (reader.cache_stats().compiled, reader.cache_stats().loaded),
        (1, 1)
    );
    assert_eq!(cwasm(), artifacts, "nothing written");

    // A damaged artifact is not trusted: the module is compiled again.
    std::fs::write(&artifacts[0], b"not an artifact").unwrap();
    let third = Sandbox::new(config());
    let step = prepare(&third, &wasm);
    assert_eq!(
        (third.cache_stats().compiled, third.cache_stats().loaded),
        (1, 0)
    );
    assert_eq!(
        third
            .run(&step, &json!({}), Arc::new(MapKv::new()), None)
            .await
            .outcome,
        Outcome::Ok
    );

    // A different module never matches another module's artifact.
    let other = std::fs::read(fixture("no_finish.wat")).unwrap();
    let fourth = Sandbox::new(config());
    prepare(&fourth, &other);
    assert_eq!(fourth.cache_stats().compiled, 1);

    // Another module's artifact (and its seal) copied over this one's is
    // ignored: the pinned module is compiled again and runs as itself.
    let own = runbox_sandbox::sha256_hex(&wasm);
    let (mine, theirs): (Vec<_>, Vec<_>) = cwasm()
        .into_iter()
        .partition(|p| p.file_name().unwrap().to_string_lossy().starts_with(&own));
    let seal = |p: &std::path::Path| p.with_extension("cwasm.sha256");
    std::fs::copy(&theirs[0], &mine[0]).unwrap();
    std::fs::copy(seal(&theirs[0]), seal(&mine[0])).unwrap();
    let fifth = Sandbox::new(config());
    let step = prepare(&fifth, &wasm);
    assert_eq!(
        (fifth.cache_stats().compiled, fifth.cache_stats().loaded),
        (1, 0),
        "a swapped artifact never loads"
    );
    let report = fifth
        .run(&step, &json!({}), Arc::new(MapKv::new()), None)
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Ok,
        "the pinned module ran: {report:#?}"
    );
}

// --- the host survives everything -------------------------------------------------------------

#[tokio::test]
async fn host_stays_healthy_after_every_hostile_fixture() {
    let hostile = [
        ("loop_forever.wat", "[limits]\ntimeout_ms = 100\n"),
        ("memory_growth_bomb.wat", "[limits]\nmemory_mib = 2\n"),
        ("deep_recursion.wat", "[limits]\nstack_kib = 64\n"),
        ("stdout_flood.wat", "[limits]\noutput_bytes = 1000\n"),
        (
            "kv_flood.wat",
            "[grants]\nkv_write = [\"flood/*\"]\n[limits]\nkv_ops = 10\n",
        ),
        (
            "tool_call_flood.wat",
            "[grants]\ntools = [\"noop\"]\n[limits]\ntool_calls = 2\n",
        ),
        (
            "out_of_bounds_pointer.wat",
            "[grants]\nkv_read = [\"**\"]\n",
        ),
        ("bad_utf8.wat", "[grants]\nkv_read = [\"**\"]\n"),
        ("imports_ungranted_module.wat", ""),
        ("wrong_signature.wat", ""),
        ("no_finish.wat", ""),
    ];
    for (name, policy_text) in hostile {
        let report = run(&fixture(name), policy_text).await;
        assert!(
            report.error.is_some(),
            "{name} was not stopped: {report:#?}"
        );
    }
    let report = run(&fixture("wasi_sees_nothing.wat"), "").await;
    assert_eq!(
        report.outcome,
        Outcome::Ok,
        "the next step runs normally: {report:#?}"
    );
}

// --- the instance pool ------------------------------------------------------------------------

/// `pool_slots` bounds the attempts one pooled engine runs at once: with one
/// slot busy, a second attempt stops with category `host`, naming the pool;
/// once the slot is free again, attempts run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_stops_the_extra_attempt_with_a_host_error() {
    let sandbox = Sandbox::new(SandboxConfig {
        pool_slots: 1,
        ..SandboxConfig::default()
    });
    let prepare = |name: &str, limits: &str| {
        let bytes = std::fs::read(fixture(name)).unwrap();
        sandbox
            .prepare(
                name,
                &bytes,
                &policy(limits),
                tools(),
                Capabilities::default(),
            )
            .unwrap()
    };
    let busy = prepare("loop_forever.wat", "[limits]\ntimeout_ms = 600\n");
    let quick = prepare("no_finish.wat", "");
    let first = {
        let (sandbox, busy) = (sandbox.clone(), busy.clone());
        tokio::spawn(async move {
            sandbox
                .run(&busy, &json!({}), Arc::new(MapKv::new()), None)
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let refused = sandbox
        .run(&quick, &json!({}), Arc::new(MapKv::new()), None)
        .await;
    let error = refused.error.expect("the pool is full");
    assert_eq!(error.category, ErrorCategory::Host, "{error}");
    assert!(error.message.contains("pool is full"), "{error}");
    let first = first.await.unwrap();
    assert_eq!(first.error.unwrap().category, ErrorCategory::Timeout);
    let again = sandbox
        .run(&quick, &json!({}), Arc::new(MapKv::new()), None)
        .await;
    assert_eq!(again.error.unwrap().category, ErrorCategory::NoOutcome);
}
