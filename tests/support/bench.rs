//! What the benches share: running incidents of ok-steps and timing them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runbox_engine::{Engine, RunExit, RunOptions};
use runbox_sandbox::{Sandbox, SandboxConfig};

use crate::ok_runbook;

/// Runs every incident of `engine` at once; all must resolve. Returns the
/// wall time.
pub fn run_all_resolved(rt: &tokio::runtime::Runtime, engine: &Arc<Engine>) -> Duration {
    let t = Instant::now();
    let results = rt
        .block_on(engine.runs().run_all(&RunOptions::default()))
        .unwrap();
    let elapsed = t.elapsed();
    assert!(
        results
            .iter()
            .all(|(_, r)| matches!(r, Ok(RunExit::Resolved))),
        "{results:?}"
    );
    elapsed
}

/// Opens `incidents` incidents `{tag}-{i}` of `steps` ok-steps (runbook
/// written in `dir`) on `store` and runs them all at once: steps per
/// second.
pub fn ok_steps_per_s(
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn runbox_store::Store>,
    dir: &Path,
    shape: (usize, usize),
    tag: &str,
) -> f64 {
    let engine = Engine::new(store, Sandbox::new(SandboxConfig::default()));
    engine_ok_steps_per_s(rt, engine, dir, shape, tag)
}

/// [`ok_steps_per_s`] on `engine` (a runner on a shared store keeps the
/// fleet's configuration in it: `Engine::with_config_in_store`).
pub fn engine_ok_steps_per_s(
    rt: &tokio::runtime::Runtime,
    engine: Engine,
    dir: &Path,
    (incidents, steps): (usize, usize),
    tag: &str,
) -> f64 {
    let engine = Arc::new(engine);
    let runbook = ok_runbook(dir, steps);
    for i in 0..incidents {
        engine
            .opener()
            .open(
                &format!("{tag}-{i}"),
                &runbook,
                &BTreeMap::new(),
                "agent:bench",
            )
            .unwrap();
    }
    let elapsed = run_all_resolved(rt, &engine);
    (incidents * steps) as f64 / elapsed.as_secs_f64()
}
