//! Component steps' figures (issue 25): a Python, a JavaScript and a Rust
//! component step, each doing what a typical step does (one KV read, one
//! read-tool call, one KV write), built from `runbox new step --lang
//! python|js|rust-component` with the bench's source put in and the
//! scaffold's own `build.sh`. The references, in the same run: the Rust ABI
//! v1 probe step's attempt (one read-tool call), and the Rust component's
//! very source built on ABI v1 (`--lang rust`). Then 100 attempts of the
//! Python step at once, each waiting in its tool, and the process's
//! resident memory while they do.
//!
//! ```sh
//! scripts/bootstrap.sh --python-steps --js-steps --rust-component-steps
//! cargo build --release -p runbox -p runbox-tests
//! target/release/runbox-bench --components [--json]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runbox_core::policy::StepPolicy;
use runbox_core::tools::ToolRegistry;
use runbox_sandbox::{Capabilities, MapKv, PreparedStep, Sandbox, SandboxConfig};

/// Attempts timed per step.
const ATTEMPTS: usize = 200;

/// What the component steps cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    /// First load of the Python component: compile and check, seconds.
    pub(crate) python_compile_s: f64,
    /// A second load from the compiled artifact, seconds.
    pub(crate) python_load_cached_s: f64,
    /// Median attempt of the Python step, ms.
    pub(crate) python_attempt_ms: f64,
    /// Median attempt of the JavaScript step, ms.
    pub(crate) js_attempt_ms: f64,
    /// Median attempt of the Rust ABI v1 probe (one tool call), ms.
    pub(crate) rust_attempt_ms: f64,
    /// Median attempt of the Rust component step, µs.
    pub(crate) component_rust_attempt_us: f64,
    /// Median attempt of the same source on ABI v1, µs: its reference.
    pub(crate) abi_rust_attempt_us: f64,
    /// Peak resident memory of a `runbox run` with [`INFLIGHT`] Python
    /// attempts in flight at once, MiB.
    pub(crate) rss_mib_100_python_inflight: f64,
    /// How long that run took, s (each attempt waits a second in its tool,
    /// so about a second means they ran together).
    pub(crate) python_inflight_s: f64,
}

/// Python attempts held in flight at once for the memory figure.
const INFLIGHT: usize = 100;

const PY_APP: &str = r#"import runbox
from runbox import kv, ok, tools


class WitWorld(runbox.Step):
    def main(self, input):
        n = int(kv.get("bench/n") or "0")
        answer = tools.call("answer", {})
        kv.put("bench/n", str(n + 1))
        return ok({"rc": answer.rc, "n": n + 1})
"#;

const JS_APP: &str = r#"import { step, kv, ok, tools } from "./runbox.js";

export const run = step(() => {
  const n = Number(kv.get("bench/n") ?? "0");
  const answer = tools.call("answer", {});
  kv.put("bench/n", String(n + 1));
  return ok({ rc: answer.rc, n: n + 1 });
});
"#;

/// One source for both Rust SDKs (their APIs are the same): `SDK` is
/// `runbox_guest` (ABI v1) or `runbox_component`.
const RUST_APP: &str = r#"use SDK::{Outcome, kv, tool};

fn step(_input: serde_json::Value) -> Outcome {
    let n: u64 = match kv::get_string("bench/n") {
        Ok(v) => v.and_then(|v| v.parse().ok()).unwrap_or(0),
        Err(e) => return Outcome::Escalate(format!("kv: {e}")),
    };
    let answer = match tool::read("answer", &serde_json::json!({})) {
        Ok(a) => a,
        Err(e) => return Outcome::Escalate(format!("tool: {e}")),
    };
    if let Err(e) = kv::put("bench/n", (n + 1).to_string().as_bytes()) {
        return Outcome::Escalate(format!("kv: {e}"));
    }
    Outcome::ok(serde_json::json!({ "rc": answer.rc, "n": n + 1 }))
}

SDK::step!(step);
"#;

const WORLD: &str = "package local:bench;

world step {
    import runbox:step/input@1.0.0;
    import runbox:step/log@1.0.0;
    import runbox:step/kv-read@1.0.0;
    import runbox:step/kv-write@1.0.0;
    import runbox:step/tool-read@1.0.0;

    use runbox:step/types@1.0.0.{outcome-error};
    export run: func() -> result<string, outcome-error>;
}
";

const POLICY: &str = "[grants]\ntools = [\"answer\"]\nkv_read = [\"bench/*\"]\nkv_write = [\"bench/*\"]\n[limits]\nmemory_mib = 64\ntimeout_ms = 10000\n";

const TOOLS: &str = "[tools.answer]\nmode = \"read\"\nargv = [\"true\"]\n";

/// The same tool, answering after a second: attempts wait in it together.
const SLOW_TOOLS: &str = "[tools.answer]\nmode = \"read\"\nargv = [\"sleep\", \"1\"]\n";

/// The figures, or why they could not be taken (a component tool missing).
pub(crate) fn figures(rt: &tokio::runtime::Runtime) -> Result<Figures, String> {
    let dir = tempfile::tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
    let python = build(dir.path(), "benchpy", "python", "app.py", PY_APP)?;
    let js = build(dir.path(), "benchjs", "js", "app.js", JS_APP)?;
    let rust_app = |sdk| RUST_APP.replace("SDK", sdk);
    let rust_component = build(
        dir.path(),
        "benchrc",
        "rust-component",
        "src/lib.rs",
        &rust_app("runbox_component"),
    )?;
    let rust_abi = build(
        dir.path(),
        "benchrs",
        "rust",
        "src/main.rs",
        &rust_app("runbox_guest"),
    )?;
    let policy =
        StepPolicy::from_toml(POLICY, Path::new("bench.toml")).map_err(|e| e.to_string())?;
    let tools = registry(TOOLS)?;
    let artifacts = dir.path().join("artifacts");
    let (python_compile_s, _) = load(&python, &policy, &tools, &artifacts)?;
    let (python_load_cached_s, py_step) = load(&python, &policy, &tools, &artifacts)?;
    let (_, js_step) = load(&js, &policy, &tools, &artifacts)?;
    let (_, rc_step) = load(&rust_component, &policy, &tools, &artifacts)?;
    let (_, rs_step) = load(&rust_abi, &policy, &tools, &artifacts)?;
    let python_attempt_ms = attempt_ms(rt, &py_step)?;
    let js_attempt_ms = attempt_ms(rt, &js_step)?;
    let component_rust_attempt_us = attempt_ms(rt, &rc_step)? * 1000.0;
    let abi_rust_attempt_us = attempt_ms(rt, &rs_step)? * 1000.0;
    let (rss_mib_100_python_inflight, python_inflight_s) = python_inflight(&python)?;
    Ok(Figures {
        python_compile_s,
        python_load_cached_s,
        python_attempt_ms,
        js_attempt_ms,
        rust_attempt_ms: rust_probe_attempt_ms(rt)?,
        component_rust_attempt_us,
        abi_rust_attempt_us,
        rss_mib_100_python_inflight,
        python_inflight_s,
    })
}

fn registry(text: &str) -> Result<Arc<ToolRegistry>, String> {
    ToolRegistry::from_toml(text, Path::new("tools.toml"), "/".into())
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// [`INFLIGHT`] incidents whose one step is the Python component (its tool
/// answers after a second), run by one `runbox run --all --concurrency
/// 100`, a runner as an operator starts it: that process's peak resident
/// memory, MiB, and its seconds. An incident run first compiled the
/// component and kept its artifact, as on a runner that ran the step before.
fn python_inflight(python: &Path) -> Result<(f64, f64), String> {
    let dir = tempfile::tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
    let d = dir.path();
    std::fs::write(d.join("tools.toml"), SLOW_TOOLS).map_err(|e| e.to_string())?;
    let runbook = d.join("runbook.toml");
    let text = format!(
        "[runbook]\nname = \"py\"\ntools = \"tools.toml\"\n[[steps]]\nid = \"measure\"\nmodule = \"{}\"\nidempotent = true\ngrants = {{ tools = [\"answer\"], kv_read = [\"bench/*\"], kv_write = [\"bench/*\"] }}\nlimits = {{ memory_mib = 64, timeout_ms = 10000 }}\n",
        python.display()
    );
    std::fs::write(&runbook, text).map_err(|e| e.to_string())?;
    let data = d.join("data");
    {
        let store =
            Arc::new(runbox_store_rocksdb::RocksStore::open(&data).map_err(|e| e.to_string())?);
        let engine = runbox_engine::Engine::new(store, Sandbox::new(SandboxConfig::default()));
        let params = std::collections::BTreeMap::new();
        for id in std::iter::once("WARM".to_string()).chain((0..INFLIGHT).map(|i| format!("P-{i}")))
        {
            engine
                .opener()
                .open(&id, &runbook, &params, "agent:bench")
                .map_err(|e| e.to_string())?;
        }
    }
    let warm = runbox_tests::child::measure(&data, &["run", "WARM"]);
    if !warm.status.success() {
        return Err(format!("run WARM: {}", warm.status));
    }
    let cap = INFLIGHT.to_string();
    let run = runbox_tests::child::measure(&data, &["run", "--all", "--concurrency", &cap]);
    if !run.status.success() {
        return Err(format!("run --all: {} (not all resolved)", run.status));
    }
    Ok((run.peak_kib as f64 / 1024.0, run.secs))
}

/// `runbox new step NAME --lang LANG` with `source` put in as `file` and
/// the bench's world, built by the scaffold's `build.sh`.
fn build(dir: &Path, name: &str, lang: &str, file: &str, source: &str) -> Result<PathBuf, String> {
    let step = dir.join(name);
    let scaffold = Command::new(runbox_tests::child::runbox_bin())
        .args(["new", "step", name, "--lang", lang, "--dir"])
        .arg(&step)
        .output()
        .map_err(|e| e.to_string())?;
    if !scaffold.status.success() {
        return Err(String::from_utf8_lossy(&scaffold.stderr).into_owned());
    }
    std::fs::write(step.join(file), source).map_err(|e| e.to_string())?;
    if step.join("wit/world.wit").exists() {
        std::fs::write(step.join("wit/world.wit"), WORLD).map_err(|e| e.to_string())?;
    }
    // Rust steps build in the tests' shared wasm target dir.
    let built = Command::new(step.join("build.sh"))
        .env(
            "CARGO_TARGET_DIR",
            runbox_tests::steps_out_dir().join("bench"),
        )
        .output()
        .map_err(|e| e.to_string())?;
    if !built.status.success() {
        return Err(format!(
            "{name}/build.sh: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
    }
    Ok(step.join(format!("{name}.wasm")))
}

/// Loads `wasm` in a fresh sandbox over `artifacts`: seconds, and the step.
fn load(
    wasm: &Path,
    policy: &StepPolicy,
    tools: &Arc<ToolRegistry>,
    artifacts: &Path,
) -> Result<(f64, (Sandbox, PreparedStep)), String> {
    let bytes = std::fs::read(wasm).map_err(|e| e.to_string())?;
    let sandbox = Sandbox::new(SandboxConfig {
        artifact_dir: Some(artifacts.to_path_buf()),
        ..SandboxConfig::default()
    });
    let started = Instant::now();
    let step = sandbox
        .prepare(
            "bench",
            &bytes,
            policy,
            tools.clone(),
            Capabilities::default(),
        )
        .map_err(|e| format!("{}: {e}", wasm.display()))?;
    Ok((started.elapsed().as_secs_f64(), (sandbox, step)))
}

/// The median of [`ATTEMPTS`] attempts of a loaded step, ms; each must end ok.
fn attempt_ms(
    rt: &tokio::runtime::Runtime,
    (sandbox, step): &(Sandbox, PreparedStep),
) -> Result<f64, String> {
    let input = serde_json::json!({});
    let kv: Arc<MapKv> = Arc::new(MapKv::new());
    let mut samples = Vec::with_capacity(ATTEMPTS);
    for _ in 0..ATTEMPTS {
        let started = Instant::now();
        let report = rt.block_on(sandbox.run(step, &input, kv.clone(), None));
        samples.push(started.elapsed());
        if let Some(error) = report.error {
            return Err(format!("an attempt failed: {error:?}"));
        }
    }
    Ok(median_ms(samples))
}

/// The Rust ABI v1 probe's attempt: one read-tool call, as the components'.
fn rust_probe_attempt_ms(rt: &tokio::runtime::Runtime) -> Result<f64, String> {
    let bytes = std::fs::read(runbox_tests::rust_step("probe")).map_err(|e| e.to_string())?;
    let policy = StepPolicy::from_toml("[grants]\ntools = [\"http_probe\"]\n", Path::new("b"))
        .map_err(|e| e.to_string())?;
    let tools = Arc::new(
        ToolRegistry::from_toml(
            "[tools.http_probe]\nmode = \"read\"\nargv = [\"true\"]\n[tools.http_probe.args]\nservice = { type = \"string\" }\n",
            Path::new("t"),
            "/".into(),
        )
        .map_err(|e| e.to_string())?,
    );
    let sandbox = Sandbox::new(SandboxConfig::default());
    let step = sandbox
        .prepare("probe", &bytes, &policy, tools, Capabilities::default())
        .map_err(|e| e.to_string())?;
    let input = serde_json::json!({"service": "api"});
    let kv: Arc<MapKv> = Arc::new(MapKv::new());
    let samples = (0..ATTEMPTS)
        .map(|_| {
            let started = Instant::now();
            rt.block_on(sandbox.run(&step, &input, kv.clone(), None));
            started.elapsed()
        })
        .collect();
    Ok(median_ms(samples))
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}
