//! Component steps' figures (issue 25): a Python and a JavaScript step, each
//! doing what a typical step does (one KV read, one read-tool call, one KV
//! write), built from `runbox new step --lang python|js` with the example's
//! source put in and the scaffold's own `build.sh`. The reference, in the
//! same run: the Rust ABI v1 probe step's attempt (one read-tool call).
//!
//! ```sh
//! scripts/bootstrap.sh --python-steps --js-steps   # or set RUNBOX_COMPONENTIZE_PY / RUNBOX_JS_STEPS
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
}

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

/// The figures, or why they could not be taken (a component tool missing).
pub(crate) fn figures(rt: &tokio::runtime::Runtime) -> Result<Figures, String> {
    let dir = tempfile::tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
    let python = build(dir.path(), "benchpy", "python", "app.py", PY_APP)?;
    let js = build(dir.path(), "benchjs", "js", "app.js", JS_APP)?;
    let policy =
        StepPolicy::from_toml(POLICY, Path::new("bench.toml")).map_err(|e| e.to_string())?;
    let tools = Arc::new(
        ToolRegistry::from_toml(TOOLS, Path::new("tools.toml"), "/".into())
            .map_err(|e| e.to_string())?,
    );
    let artifacts = dir.path().join("artifacts");
    let (python_compile_s, _) = load(&python, &policy, &tools, &artifacts)?;
    let (python_load_cached_s, py_step) = load(&python, &policy, &tools, &artifacts)?;
    let (_, js_step) = load(&js, &policy, &tools, &artifacts)?;
    Ok(Figures {
        python_compile_s,
        python_load_cached_s,
        python_attempt_ms: attempt_ms(rt, &py_step)?,
        js_attempt_ms: attempt_ms(rt, &js_step)?,
        rust_attempt_ms: rust_probe_attempt_ms(rt)?,
    })
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
    std::fs::write(step.join("wit/world.wit"), WORLD).map_err(|e| e.to_string())?;
    let built = Command::new(step.join("build.sh"))
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
