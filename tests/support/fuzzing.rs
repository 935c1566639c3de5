//! The fuzz targets' logic, shared by the cargo-fuzz targets in `fuzz/` and
//! the stable-Rust smoke test (`tests/fuzz_smoke.rs`), which runs each over
//! a seeded, deterministic set of inputs.
//!
//! Each target returns `Err` when an invariant breaks; a host panic is a
//! finding by itself.
//!
//! 1. [`smith_module`]: a wasm-smith module whose imports come from the
//!    runbox ABI, made to terminate, run under small limits.
//! 2. [`abi_driver`]: the driver guest (`tests/fixtures/fuzz/abi_driver.wat`)
//!    interpreting the bytes as raw ABI calls with arbitrary pointers,
//!    lengths, keys, values and tool args.
//! 3. [`parsers`]: the step policy, tool registry and runbook parsers and
//!    the review import reader on arbitrary bytes.
//! 4. [`decisions`]: the parsers behind human decisions.
//! 5. [`requests`]: request decoding through the service layer.
//! 6. [`component_driver`]: the component driver guest
//!    (`tests/fixtures/fuzz/component_driver.wat`) calling every
//!    `runbox:step` interface with hostile strings, lists and pointers.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use runbox_core::policy::{Limits, StepPolicy};
use runbox_core::runbook::LoadedRunbook;
use runbox_core::tools::{ToolMode, ToolRegistry};
use runbox_sandbox::{
    Capabilities, ErrorCategory, MapKv, Outcome, PrepareError, PreparedStep, Sandbox,
    SandboxConfig, StepReport,
};

use crate::fixture;

/// The policy every fuzzed guest runs under: some grants, small limits.
const POLICY: &str = r#"
[grants]
kv_read = ["fz/**"]
kv_write = ["fz/*"]
tools = ["echo", "touch"]
[limits]
timeout_ms = 500
memory_mib = 2
stack_kib = 128
output_bytes = 4096
kv_key_bytes = 64
kv_value_bytes = 1024
kv_ops = 64
kv_write_bytes = 8192
tool_calls = 2
tool_output_bytes = 256
"#;

const TOOLS: &str = r#"
[tools.echo]
mode = "read"
argv = ["echo", "hi"]
[tools.touch]
mode = "mutate"
argv = ["true"]
"#;

struct Harness {
    runtime: tokio::runtime::Runtime,
    sandbox: Sandbox,
    policy: StepPolicy,
    tools: Arc<ToolRegistry>,
    driver: PreparedStep,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let sandbox = Sandbox::new(SandboxConfig::default());
    let policy = StepPolicy::from_toml(POLICY, Path::new("fuzz-policy.toml"))
        .expect("the fuzz policy parses");
    let tools = Arc::new(
        ToolRegistry::from_toml(TOOLS, Path::new("fuzz-tools.toml"), "/".into())
            .expect("the fuzz tools parse"),
    );
    let driver = std::fs::read(fixture("fuzz/abi_driver.wat")).expect("the driver fixture exists");
    let driver = sandbox
        .prepare("driver", &driver, &policy, tools.clone(), caps())
        .expect("the driver links");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    Harness {
        runtime,
        sandbox,
        policy,
        tools,
        driver,
    }
});

fn caps() -> Capabilities {
    Capabilities {
        allow_mutate: true,
        read_only: false,
    }
}

/// Checks the invariants every report must satisfy under [`POLICY`].
pub fn check_report(report: &StepReport, limits: &Limits) -> Result<(), String> {
    let fail = |m: String| Err(format!("{m}\nreport: {report:#?}"));
    let stopped = report.step_outcome.is_none();
    if stopped && report.error.is_none() {
        return fail("a step without an outcome must carry an error".into());
    }
    if stopped && !report.kv_writes.is_empty() {
        return fail("a stopped step kept staged writes".into());
    }
    if !stopped && !report.discarded_kv_writes.is_empty() {
        return fail("a finished step discarded writes".into());
    }
    if report.error.is_some() && report.outcome != Outcome::Escalate {
        return fail("an error must escalate".into());
    }
    if report.tool_calls.len() > limits.tool_calls as usize {
        return fail(format!(
            "{} tool calls, limit {}",
            report.tool_calls.len(),
            limits.tool_calls
        ));
    }
    for call in &report.tool_calls {
        let expected = match call.name.as_str() {
            "echo" => ToolMode::Read,
            "touch" => ToolMode::Mutate,
            other => return fail(format!("ungranted tool `{other}` ran")),
        };
        if call.mode != expected {
            return fail(format!("tool `{}` ran through the wrong mode", call.name));
        }
    }
    let staged: usize = report
        .kv_writes
        .iter()
        .chain(&report.discarded_kv_writes)
        .map(|w| w.key.len() + w.value.as_ref().map_or(0, Vec::len))
        .sum();
    if staged > limits.kv_write_bytes as usize {
        return fail(format!(
            "{staged} staged bytes, limit {}",
            limits.kv_write_bytes
        ));
    }
    for w in report.kv_writes.iter().chain(&report.discarded_kv_writes) {
        let granted = w
            .key
            .strip_prefix("fz/")
            .is_some_and(|rest| !rest.contains('/'));
        if !granted {
            return fail(format!("write to ungranted key `{}` was staged", w.key));
        }
        if w.value
            .as_ref()
            .is_some_and(|v| v.len() > limits.kv_value_bytes as usize)
        {
            return fail(format!("value over the limit staged for `{}`", w.key));
        }
    }
    if report.logs.len() * 32 > limits.output_bytes as usize {
        return fail(format!(
            "{} log lines exceed the output budget",
            report.logs.len()
        ));
    }
    if report.violations.len() > 32 {
        return fail("more than 32 violations kept".into());
    }
    Ok(())
}

/// Target 2: the driver guest runs `data` as a program of raw ABI calls.
pub fn abi_driver(data: &[u8]) -> Result<(), String> {
    check_report(&abi_driver_report(data), &HARNESS.policy.limits)
}

/// The driver's report for `data`, for coverage statistics.
pub fn abi_driver_report(data: &[u8]) -> StepReport {
    driver_report(&HARNESS.driver, data)
}

/// `driver` (a driver guest) run on `data`, its first 16 KiB, as the hex
/// input it decodes, with one KV key seeded.
fn driver_report(driver: &PreparedStep, data: &[u8]) -> StepReport {
    let h = &*HARNESS;
    let data = &data[..data.len().min(16 * 1024)];
    let input = serde_json::Value::String(hex::encode(data));
    let mut kv = MapKv::new();
    kv.insert("fz/a".into(), b"seed".to_vec());
    h.runtime
        .block_on(h.sandbox.run(driver, &input, Arc::new(kv), None))
}

/// The component driver (`tests/fixtures/fuzz/component_driver.wat`),
/// prepared once under [`POLICY`] in the harness's sandbox.
static COMPONENT_DRIVER: LazyLock<PreparedStep> = LazyLock::new(|| {
    let h = &*HARNESS;
    let driver = std::fs::read(fixture("fuzz/component_driver.wat"))
        .expect("the component driver fixture exists");
    h.sandbox
        .prepare(
            "component-driver",
            &driver,
            &h.policy,
            h.tools.clone(),
            caps(),
        )
        .expect("the component driver links")
});

/// Target 6: the component driver runs `data` as a program of calls
/// through every `runbox:step` interface, with strings and lists the
/// canonical ABI lowers from hostile pointers, lengths and bytes.
pub fn component_driver(data: &[u8]) -> Result<(), String> {
    check_report(&component_driver_report(data), &HARNESS.policy.limits)
}

/// The component driver's report for `data`, for coverage statistics.
pub fn component_driver_report(data: &[u8]) -> StepReport {
    driver_report(&COMPONENT_DRIVER, data)
}

/// The imports a wasm-smith module may use: the whole runbox ABI plus a little WASI.
const SMITH_IMPORTS: &str = r#"(module
  (import "runbox:step/v1" "input_len" (func (result i32)))
  (import "runbox:step/v1" "input_read" (func (param i32 i32) (result i32)))
  (import "runbox:step/v1" "log" (func (param i32 i32 i32)))
  (import "runbox:step/v1" "finish" (func (param i32 i32 i32)))
  (import "runbox:kv-read/v1" "get" (func (param i32 i32 i32 i32) (result i64)))
  (import "runbox:kv-write/v1" "put" (func (param i32 i32 i32 i32) (result i32)))
  (import "runbox:kv-write/v1" "delete" (func (param i32 i32) (result i32)))
  (import "runbox:tool-read/v1" "call" (func (param i32 i32 i32 i32 i32 i32) (result i64)))
  (import "runbox:tool-mutate/v1" "call" (func (param i32 i32 i32 i32 i32 i32) (result i64)))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))))"#;

const SMITH_EXPORTS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")))"#;

static SMITH_SHAPE: LazyLock<(Vec<u8>, Vec<u8>)> = LazyLock::new(|| {
    (
        wat::parse_str(SMITH_IMPORTS).expect("the import shape parses"),
        wat::parse_str(SMITH_EXPORTS).expect("the export shape parses"),
    )
});

fn smith_config() -> wasm_smith::Config {
    let (imports, exports) = SMITH_SHAPE.clone();
    wasm_smith::Config {
        available_imports: Some(imports),
        exports: Some(exports),
        max_memory32_bytes: 4 << 20,
        // The exports shape brings the one memory runbox allows.
        max_memories: 0,
        max_tables: 2,
        max_table_elements: 20_000,
        max_funcs: 20,
        max_instructions: 300,
        max_data_segments: 8,
        memory64_enabled: false,
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        gc_enabled: false,
        exceptions_enabled: false,
        relaxed_simd_enabled: false,
        wide_arithmetic_enabled: false,
        custom_page_sizes_enabled: false,
        custom_descriptors_enabled: false,
        // wasmtime 48 does not parse the compact imports encoding yet.
        compact_imports_enabled: false,
        // runbox builds wasmtime without its GC, which externref needs.
        reference_types_enabled: false,
        ..wasm_smith::Config::default()
    }
}

/// Target 1: a wasm-smith module over the runbox ABI, made to terminate, in the sandbox.
pub fn smith_module(data: &[u8]) -> Result<(), String> {
    match smith_module_report(data)? {
        Some(report) => check_report(&report, &HARNESS.policy.limits),
        None => Ok(()),
    }
}

/// The report of the wasm-smith module built from `data`, if one could be built.
pub fn smith_module_report(data: &[u8]) -> Result<Option<StepReport>, String> {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(mut module) = wasm_smith::Module::new(smith_config(), &mut u) else {
        return Ok(None); // not enough bytes for a module
    };
    if module.ensure_termination(5_000).is_err() {
        return Ok(None);
    }
    let bytes = module.to_bytes();
    let h = &*HARNESS;
    let prepared = h
        .sandbox
        .prepare("smith", &bytes, &h.policy, h.tools.clone(), caps());
    let report = match prepared {
        Ok(step) => h.runtime.block_on(h.sandbox.run(
            &step,
            &serde_json::json!({"n": 1}),
            Arc::new(MapKv::new()),
            None,
        )),
        Err(PrepareError::Host(e)) => return Err(format!("host input refused: {e}")),
        Err(PrepareError::Module(error)) => {
            // Only the module's own fault may refuse it.
            if !matches!(
                error.category,
                ErrorCategory::InvalidModule
                    | ErrorCategory::DeniedImport
                    | ErrorCategory::Memory
                    | ErrorCategory::Limit
            ) {
                return Err(format!("unexpected refusal category: {error}"));
            }
            StepReport::stopped(error)
        }
    };
    Ok(Some(report))
}

/// Target 3: every parser on arbitrary bytes. Besides not panicking, a policy
/// that parses must survive a round trip through TOML unchanged.
pub fn parsers(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    if let Ok(policy) = StepPolicy::from_toml(&text, Path::new("fuzz.toml")) {
        let again = toml::to_string(&policy)
            .map_err(|e| format!("a parsed policy does not serialize: {e}"))?;
        let back = StepPolicy::from_toml(&again, Path::new("again.toml"))
            .map_err(|e| format!("round trip failed: {e}\n{again}"))?;
        if back != policy {
            return Err(format!("round trip changed the policy:\n{again}"));
        }
    }
    let _ = ToolRegistry::from_toml(&text, Path::new("fuzz-tools.toml"), "/".into()).map(|r| {
        for (name, _) in r.iter() {
            let _ = r.argv(name, &serde_json::json!({}));
        }
    });
    if let Ok(rb) =
        LoadedRunbook::parse(&text, Path::new("fuzz-runbook.toml"), "/nonexistent".into())
    {
        for step in &rb.runbook.steps {
            let _ = rb.next_after_ok(step, None);
            let _ = runbox_core::runbook::step_input(step, &Default::default());
        }
    }
    // The review import reader: any bytes as a module.
    let h = &*HARNESS;
    let _ = h.sandbox.imports(data, &Limits::default());
    Ok(())
}

/// The separator between the parts of a `decisions` input.
pub const DECISION_PARTS: char = '\u{1e}';

/// Target 4: the parsers behind human decisions, on arbitrary bytes split
/// into a statement, an SSH signature and an allowed_signers file. Besides
/// not panicking: a statement that parses survives a round trip, and a
/// decision that verifies names a signer the file lists.
pub fn decisions(data: &[u8]) -> Result<(), String> {
    use runbox_trust::{AllowedSigners, Decision, Statement};
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, DECISION_PARTS);
    let statement = parts.next().unwrap_or_default().to_string();
    let signature = parts.next().unwrap_or_default().to_string();
    let signers = parts.next().unwrap_or_default();
    if let Ok(s) = Statement::parse(&statement) {
        let back = Statement::parse(&s.to_text())
            .map_err(|e| format!("a parsed statement does not parse again: {e}"))?;
        if back != s {
            return Err(format!("round trip changed the statement: {statement:?}"));
        }
    }
    if let Ok(list) = AllowedSigners::parse(signers, Path::new("fuzz_allowed_signers")) {
        let decision = Decision {
            statement,
            signature,
        };
        if let Ok(v) = list.verify(&decision)
            && list.keys_of(&v.statement.signer).next().is_none()
        {
            return Err(format!(
                "verified for unlisted signer {}",
                v.statement.signer
            ));
        }
    }
    Ok(())
}

/// The routes target 5 sends requests to: the first input byte picks one.
pub const REQUEST_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/incidents"),
    ("POST", "/v1/incidents/INC-1/steps:run"),
    ("POST", "/v1/incidents/INC-1/decisions"),
    ("POST", "/v1/incidents/INC-1/statements"),
    ("POST", "/v1/incidents/INC-1/notes"),
    ("POST", "/v1/incidents/INC-1/escalate"),
    ("GET", "/v1/incidents/INC-1/timeline"),
    ("POST", "/mcp"),
];

/// One service over an in-memory store with a served runbook (`ok`: one
/// step that finishes ok), its router, and a `run` agent's token.
struct RequestWorld {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    engine: Arc<runbox_engine::Engine>,
    token: String,
    _dir: tempfile::TempDir,
}

static REQUEST_WORLD: LazyLock<RequestWorld> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(
        dir.path().join("ok.toml"),
        format!(
            "[runbook]\nname = \"ok\"\n[[steps]]\nid = \"one\"\nmodule = \"{}\"\n",
            fixture("engine/ok.wat").display()
        ),
    )
    .expect("a runbook");
    let store = Arc::new(runbox_store::MemoryStore::new());
    let engine = Arc::new(runbox_engine::Engine::new(
        store,
        Sandbox::new(SandboxConfig::default()),
    ));
    let service = Arc::new(runbox_server::Service::new(
        engine.clone(),
        runbox_server::ServiceConfig {
            runbooks: vec![dir.path().to_path_buf()],
            run_step_wait: std::time::Duration::from_secs(5),
            ..runbox_server::ServiceConfig::default()
        },
    ));
    let token = service
        .agents()
        .add("fuzz", runbox_server::Power::Run)
        .expect("an agent");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    RequestWorld {
        router: runbox_server::http::router(service),
        rt,
        engine,
        token,
        _dir: dir,
    }
});

/// What the store holds, to tell whether a request wrote anything.
fn request_world_state(engine: &runbox_engine::Engine) -> Vec<(String, u64)> {
    engine
        .incidents()
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            let v = engine
                .incidents()
                .version_of(i.id.as_str())
                .unwrap_or(u64::MAX);
            (i.id.to_string(), v)
        })
        .collect()
}

/// Target 5: request decoding through the service layer. The first byte
/// picks a route (HTTP JSON bodies, or JSON-RPC at `/mcp`); the rest is the
/// body. Besides not panicking: the server never answers 5xx except 503,
/// every error is JSON `{"error": {"code", "message"}}` with a status that
/// matches its code, and a refused request writes nothing.
pub fn requests(data: &[u8]) -> Result<(), String> {
    use tower::ServiceExt;
    let w = &*REQUEST_WORLD;
    let Some((&pick, body)) = data.split_first() else {
        return Ok(());
    };
    let (method, path) = REQUEST_ROUTES[usize::from(pick) % REQUEST_ROUTES.len()];
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", w.token))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("host", "localhost")
        .body(axum::body::Body::from(body.to_vec()))
        .map_err(|e| e.to_string())?;
    let before = request_world_state(&w.engine);
    let (status, bytes) = w.rt.block_on(async {
        let response = w.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, bytes)
    });
    if status >= 500 && status != 503 {
        return Err(format!("{method} {path} answered {status}"));
    }
    if status >= 400 && !path.starts_with("/mcp") {
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| format!("{status} without a JSON body on {path}"))?;
        let code = v["error"]["code"].as_str().unwrap_or_default();
        let message = v["error"]["message"].as_str().unwrap_or_default();
        if code.is_empty() || message.is_empty() {
            return Err(format!(
                "{status} on {path} without error code and message: {v}"
            ));
        }
        if request_world_state(&w.engine) != before {
            return Err(format!(
                "a refused {method} {path} ({status}) wrote to the store"
            ));
        }
    }
    Ok(())
}
