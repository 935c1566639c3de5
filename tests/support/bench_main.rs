//! `runbox-bench`: the hot path's figures, recorded in BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release -p runbox     # the scale figure runs the release CLI
//! cargo run --release -p runbox-tests --bin runbox-bench
//! ```
//!
//! Each figure is a median (and p99) over repeated runs on this machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::policy::StepPolicy;
use runbox_core::records::{Checkpoint, TimelineEvent};
use runbox_core::tools::ToolRegistry;
use runbox_engine::{Engine, RunExit, RunOptions};
use runbox_sandbox::{Capabilities, MapKv, Sandbox, SandboxConfig};
use runbox_store::keys;
use runbox_store::{Batch, Expect, Store as _, StoreExt};
use runbox_store_rocksdb::RocksStore as Store;
use runbox_tests::bench::run_all_resolved;
use runbox_tests::{fixture, ok_runbook, rust_step};

#[path = "bench_components.rs"]
mod components;

/// Set by `--json`: the table goes to stderr, one JSON object to stdout.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

macro_rules! say {
    ($($arg:tt)*) => {
        if JSON.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    (median, p99)
}

/// Prints a figure's median and p99; returns the median.
fn report(name: &str, samples: Vec<Duration>) -> Duration {
    let n = samples.len();
    let (median, p99) = stats(samples);
    say!(
        "{name:<52} median {:>10.3} ms   p99 {:>10.3} ms   (n={n})",
        ms(median),
        ms(p99)
    );
    median
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A step that makes `n` KV gets of a granted key, then finishes.
fn kv_loop_wat(n: u32) -> String {
    format!(
        r#"(module
  (import "runbox:kv-read/v1" "get" (func $get (param i32 i32 i32 i32) (result i64)))
  (import "runbox:step/v1" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "bench/key")
  (func (export "_start") (local $i i32)
    (loop $l
      (drop (call $get (i32.const 0) (i32.const 9) (i32.const 64) (i32.const 64)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {n}))))
    (call $finish (i32.const 0) (i32.const 0) (i32.const 0))))"#
    )
}

fn main() {
    JSON.store(
        std::env::args().any(|a| a == "--json"),
        std::sync::atomic::Ordering::Relaxed,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tools = Arc::new(ToolRegistry::empty());
    let caps = Capabilities::default();
    let no_grants = StepPolicy::default();
    if std::env::args().any(|a| a == "--in-memory") {
        // Only the engine on the in-memory store (for profiling it).
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(runbox_store::MemoryStore::new());
        let in_memory = engine_steps_per_s_on(&rt, memory, dir.path(), 64, 200);
        say!("in memory {in_memory:.0} steps/s");
        return;
    }
    if let Some(mode) = flag_value("--metrics-probe") {
        metrics_probe(&rt, &mode);
        return;
    }
    if std::env::args().any(|a| a == "--metrics") {
        let m = metrics_overhead();
        say!(
            "metrics on / off, 64 incidents: in memory {:.0} / {:.0} steps/s = {:.3}, RocksDB {:.0} / {:.0} steps/s = {:.3}",
            m.on.memory,
            m.off.memory,
            m.memory_ratio(),
            m.on.durable,
            m.off.durable,
            m.durable_ratio()
        );
        say!(
            "traces on / off (to a local OTLP receiver, {} spans): in memory {:.0} steps/s = {:.3}, RocksDB {:.0} steps/s = {:.3}",
            m.spans,
            m.traces.memory,
            m.traces_memory_ratio(),
            m.traces.durable,
            m.traces_durable_ratio()
        );
        return;
    }
    if std::env::args().any(|a| a == "--components") {
        let figures = component_figures(&rt);
        if JSON.load(std::sync::atomic::Ordering::Relaxed) {
            println!("{}", serde_json::Value::Object(figures));
        }
        return;
    }
    if std::env::args().any(|a| a == "--history") {
        history(&rt);
        return;
    }
    if std::env::args().any(|a| a == "--durable") {
        // Only the engine on RocksDB, 64 incidents (for profiling it).
        say!("durable {:.0} steps/s", engine_steps_per_s(&rt, 64, 200));
        return;
    }
    if std::env::args().any(|a| a == "--inflight") {
        let (mib, secs) = inflight(INFLIGHT);
        say!("{INFLIGHT} attempts in flight at once: peak RSS {mib:.1} MiB, {secs:.2} s");
        return;
    }
    if std::env::args().any(|a| a == "--replay") {
        say!("replay {:.0} attempts/s", replay_per_s(&rt, 10_000));
        return;
    }
    if std::env::args().any(|a| a == "--throughput") {
        // Only the 64-incident comparison (for profiling it).
        let ceiling = raw_synced_batches_per_s(64, 100);
        let steps_per_s = engine_steps_per_s(&rt, 64, 20);
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(runbox_store::MemoryStore::new());
        let in_memory = engine_steps_per_s_on(&rt, memory, dir.path(), 64, 20);
        say!(
            "ceiling {ceiling:.0} commits/s, engine {steps_per_s:.0} steps/s, in memory {in_memory:.0} steps/s"
        );
        return;
    }
    say!(
        "runbox-bench ({} build)\n",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    // 1. Cold compile: a fresh sandbox each time, so nothing is cached.
    let probe = std::fs::read(rust_step("probe")).unwrap();
    let probe_policy =
        StepPolicy::from_toml("[grants]\ntools = [\"http_probe\"]\n", Path::new("b")).unwrap();
    let probe_tools = Arc::new(
        ToolRegistry::from_toml(
            "[tools.http_probe]\nmode = \"read\"\nargv = [\"true\"]\n[tools.http_probe.args]\nservice = { type = \"string\" }\n",
            Path::new("t"),
            "/".into(),
        )
        .unwrap(),
    );
    let samples = (0..10)
        .map(|_| {
            let sandbox = Sandbox::new(SandboxConfig::default());
            let t = Instant::now();
            sandbox
                .prepare("probe", &probe, &probe_policy, probe_tools.clone(), caps)
                .unwrap();
            t.elapsed()
        })
        .collect();
    report(
        &format!(
            "compile + check Rust step ({} KiB), cold",
            probe.len() / 1024
        ),
        samples,
    );

    // 1b. A new process with the artifact directory: load instead of compile.
    let artifacts = tempfile::tempdir().unwrap();
    let with_artifacts = || {
        Sandbox::new(SandboxConfig {
            artifact_dir: Some(artifacts.path().to_path_buf()),
            ..SandboxConfig::default()
        })
    };
    with_artifacts()
        .prepare("probe", &probe, &probe_policy, probe_tools.clone(), caps)
        .unwrap();
    let samples = (0..10)
        .map(|_| {
            let sandbox = with_artifacts();
            let t = Instant::now();
            sandbox
                .prepare("probe", &probe, &probe_policy, probe_tools.clone(), caps)
                .unwrap();
            assert_eq!(sandbox.cache_stats().loaded, 1);
            t.elapsed()
        })
        .collect();
    report("load + check the same step from its artifact", samples);

    // 2. Warm attempt: cached module, fresh store, instantiate, run, report.
    let sandbox = Sandbox::new(SandboxConfig::default());
    let ok = std::fs::read(fixture("engine/ok.wat")).unwrap();
    let step = sandbox
        .prepare("ok", &ok, &no_grants, tools.clone(), caps)
        .unwrap();
    let input = serde_json::json!({});
    let kv: Arc<MapKv> = Arc::new(MapKv::new());
    let samples: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            let r = rt.block_on(sandbox.run(&step, &input, kv.clone(), None));
            assert!(r.error.is_none());
            t.elapsed()
        })
        .collect();
    let attempt_median = stats(samples.clone()).0;
    report("attempt of a trivial WAT step (warm)", samples);

    let wasi_step = sandbox
        .prepare(
            "wasi",
            &std::fs::read(fixture("wasi_sees_nothing.wat")).unwrap(),
            &no_grants,
            tools.clone(),
            caps,
        )
        .unwrap();
    let samples = (0..2000)
        .map(|_| {
            let t = Instant::now();
            rt.block_on(sandbox.run(&wasi_step, &input, kv.clone(), None));
            t.elapsed()
        })
        .collect();
    report("attempt of a WAT step making 3 WASI calls (warm)", samples);

    // 3. Host call cost: 10 000 KV gets versus 1, per call.
    let kv_policy = StepPolicy::from_toml(
        "[grants]\nkv_read = [\"bench/*\"]\n[limits]\nkv_ops = 20000\n",
        Path::new("b"),
    )
    .unwrap();
    let mut seeded = MapKv::new();
    seeded.insert("bench/key".into(), vec![7u8; 32]);
    let seeded = Arc::new(seeded);
    let mut per_call = Vec::new();
    let one = sandbox
        .prepare(
            "kv1",
            kv_loop_wat(1).as_bytes(),
            &kv_policy,
            tools.clone(),
            caps,
        )
        .unwrap();
    let many = sandbox
        .prepare(
            "kv10k",
            kv_loop_wat(10_000).as_bytes(),
            &kv_policy,
            tools.clone(),
            caps,
        )
        .unwrap();
    for _ in 0..30 {
        let t = Instant::now();
        rt.block_on(sandbox.run(&one, &input, seeded.clone(), None));
        let base = t.elapsed();
        let t = Instant::now();
        let r = rt.block_on(sandbox.run(&many, &input, seeded.clone(), None));
        assert!(r.error.is_none(), "{:?}", r.error);
        per_call.push(t.elapsed().saturating_sub(base) / 9_999);
    }
    let (median, p99) = stats(per_call);
    say!(
        "{:<52} median {:>10.3} µs   p99 {:>10.3} µs   (n=30)",
        "KV get host call (pattern check + copy)",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );

    // 4. Durable commit and engine throughput.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("data")).unwrap());
    let bench = IncidentId::new("bench").unwrap();
    let samples = (0..300u64)
        .map(|i| {
            let expected = if i == 0 {
                Expect::Absent
            } else {
                Expect::Version(i - 1)
            };
            let mut batch = Batch::new(Checkpoint {
                version: i,
                ..Checkpoint::first("s")
            });
            // A record of a step's size, not a real one: the floor is the
            // store's write, whatever it holds.
            batch.put_unchecked(
                keys::step(&bench, "s", i as u32),
                serde_json::to_vec(&serde_json::json!({"outcome": "ok", "n": i})).unwrap(),
            );
            batch.kv("k", Some(b"v".to_vec()));
            let t = Instant::now();
            store.commit(&bench, expected, batch).unwrap();
            t.elapsed()
        })
        .collect();
    let commit = report(
        "store commit (checkpoint + record + KV write, synced)",
        samples,
    );

    let runbook = ok_runbook(dir.path(), 20);
    let engine = Arc::new(Engine::new(store, Sandbox::new(SandboxConfig::default())));
    let mut per_step = Vec::new();
    for i in 0..20 {
        let id = format!("B-{i}");
        engine
            .opener()
            .open(&id, &runbook, &BTreeMap::new(), "agent:bench")
            .unwrap();
        let t = Instant::now();
        assert_eq!(
            rt.block_on(engine.runs().run(&id, &RunOptions::default()))
                .unwrap(),
            RunExit::Resolved
        );
        per_step.push(t.elapsed() / 20);
    }
    let engine_step = report(
        "engine: one committed step (gates + attempt + commit)",
        per_step,
    );

    // 5. Concurrency and memory: 50 incidents of 20 steps in one process.
    for i in 0..50 {
        engine
            .opener()
            .open(&format!("C-{i}"), &runbook, &BTreeMap::new(), "agent:bench")
            .unwrap();
    }
    let before = rss_kib();
    let elapsed = run_all_resolved(&rt, &engine);
    say!(
        "{:<52} {:>10.0} steps/s   RSS {} MiB -> {} MiB",
        "run_all: 50 incidents x 20 steps, concurrently",
        1000.0 / elapsed.as_secs_f64(),
        before / 1024,
        rss_kib() / 1024
    );
    drop(engine);

    // 6. Durable throughput at 64 concurrent incidents against the ceiling:
    // raw synced WriteBatches from 64 threads, on the same disk, same run.
    let ceiling = raw_synced_batches_per_s(64, 100);
    let steps_per_s = engine_steps_per_s(&rt, 64, 20);
    let memory_dir = tempfile::tempdir().unwrap();
    let in_memory = engine_steps_per_s_on(
        &rt,
        Arc::new(runbox_store::MemoryStore::new()),
        memory_dir.path(),
        64,
        20,
    );
    say!(
        "{:<52} {:>10.0} commits/s",
        "raw synced WriteBatch (2 puts), 64 threads",
        ceiling
    );
    say!(
        "{:<52} {:>10.0} steps/s",
        "engine: 64 incidents x 20 steps, in-memory store",
        in_memory
    );
    say!(
        "{:<52} {:>10.0} steps/s   ({:.0}% of the ceiling)",
        "engine: 64 incidents x 20 steps, run_all",
        steps_per_s,
        100.0 * steps_per_s / ceiling
    );

    // 7. Staying fast as incidents grow.
    history(&rt);

    // 8. Replay: recorded attempts re-run against their recordings.
    let replays = replay_per_s(&rt, 10_000);
    say!(
        "{:<52} {:>10.0} attempts/s",
        "replay of 10,000 recorded attempts (tool + KV read)",
        replays
    );

    // 9. The references: raw wasmtime, and a process per step.
    let floor = raw_wasmtime_floor(&rt);
    let process = process_per_step();
    say!(
        "{:<52} median {:>10.3} ms (attempt / floor: {:.1}x)",
        "raw wasmtime floor (async, pooling, one import)",
        ms(floor),
        attempt_median.as_secs_f64() / floor.as_secs_f64()
    );
    say!(
        "{:<52} median {:>10.3} ms (process / attempt: {:.0}x)",
        "a process per step (/bin/sh -c true)",
        ms(process),
        process.as_secs_f64() / attempt_median.as_secs_f64()
    );

    // 10. Scale: 10,000 attempts in flight at once in one runner.
    let (inflight_mib, inflight_secs) = inflight(INFLIGHT);
    say!(
        "{:<52} {:>10.1} MiB peak RSS ({inflight_secs:.2} s)",
        format!("{INFLIGHT} incidents, each step in flight at once"),
        inflight_mib
    );
    // 11. What metrics cost: child processes with the Prometheus recorder
    // installed and scraped, against children without, alternating.
    let metrics = metrics_overhead();
    say!(
        "{:<52} {:>10.3} (in memory {:.3})",
        "64 incidents, metrics on / off, RocksDB",
        metrics.durable_ratio(),
        metrics.memory_ratio()
    );
    say!(
        "{:<52} {:>10.3} (in memory {:.3})",
        "64 incidents, traces on / off, RocksDB",
        metrics.traces_durable_ratio(),
        metrics.traces_memory_ratio()
    );
    // 12. Component steps (Python, JavaScript) beside the Rust one.
    let component = component_figures(&rt);
    if JSON.load(std::sync::atomic::Ordering::Relaxed) {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mut figures = serde_json::json!({
            "floor_us": us(floor),
            "attempt_us": us(attempt_median),
            "process_us": us(process),
            "ceiling_commits_per_s_64": ceiling,
            "steps_per_s_64": steps_per_s,
            "steps_per_s_64_in_memory": in_memory,
            "engine_step_ms_1": ms(engine_step),
            "commit_ms_1": ms(commit),
            "replay_attempts_per_s": replays,
            "rss_mib_10000_inflight": inflight_mib,
            "secs_10000_inflight": inflight_secs,
            "steps_per_s_64_metrics_off": metrics.off.durable,
            "steps_per_s_64_metrics_on": metrics.on.durable,
            "metrics_on_off_ratio": metrics.durable_ratio(),
            "steps_per_s_64_in_memory_metrics_off": metrics.off.memory,
            "steps_per_s_64_in_memory_metrics_on": metrics.on.memory,
            "metrics_on_off_ratio_in_memory": metrics.memory_ratio(),
            "steps_per_s_64_traces_on": metrics.traces.durable,
            "traces_on_off_ratio": metrics.traces_durable_ratio(),
            "steps_per_s_64_in_memory_traces_on": metrics.traces.memory,
            "traces_on_off_ratio_in_memory": metrics.traces_memory_ratio(),
            "spans_received": metrics.spans,
        });
        if let Some(all) = figures.as_object_mut() {
            all.extend(component);
        }
        println!("{figures}");
    }
}

/// The component steps' figures, said and as JSON keys (each `null`, with
/// the reason said, when a component tool is missing).
fn component_figures(rt: &tokio::runtime::Runtime) -> serde_json::Map<String, serde_json::Value> {
    let keys = [
        "python_compile_s",
        "python_load_cached_s",
        "python_attempt_ms",
        "js_attempt_ms",
        "rust_probe_attempt_ms",
        "component_rust_attempt_us",
        "abi_rust_attempt_us",
        "rss_mib_100_python_inflight",
        "python_inflight_s",
    ];
    let f = match components::figures(rt) {
        Ok(f) => f,
        Err(why) => {
            say!("component steps: not measured: {why}");
            return keys
                .iter()
                .map(|k| ((*k).to_owned(), serde_json::Value::Null))
                .collect();
        }
    };
    say!(
        "{:<52} {:>10.2} s (cached: {:.3} s, {:.0}x faster)",
        "Python component: first load",
        f.python_compile_s,
        f.python_load_cached_s,
        f.python_compile_s / f.python_load_cached_s
    );
    say!(
        "{:<52} median {:>10.3} ms",
        "Python step attempt (KV read, tool, KV write)",
        f.python_attempt_ms
    );
    say!(
        "{:<52} median {:>10.3} ms",
        "JavaScript step attempt (KV read, tool, KV write)",
        f.js_attempt_ms
    );
    say!(
        "{:<52} median {:>10.3} ms",
        "Rust ABI v1 probe attempt (tool), the reference",
        f.rust_attempt_ms
    );
    say!(
        "{:<52} median {:>10.1} µs ({:.2}x its ABI v1 twin's {:.1} µs)",
        "Rust component step attempt (KV read, tool, KV write)",
        f.component_rust_attempt_us,
        f.component_rust_attempt_us / f.abi_rust_attempt_us,
        f.abi_rust_attempt_us
    );
    say!(
        "{:<52} {:>10.0} MiB peak resident ({:.2} s)",
        "runbox run: 100 Python attempts in flight at once",
        f.rss_mib_100_python_inflight,
        f.python_inflight_s
    );
    let values = [
        f.python_compile_s,
        f.python_load_cached_s,
        f.python_attempt_ms,
        f.js_attempt_ms,
        f.rust_attempt_ms,
        f.component_rust_attempt_us,
        f.abi_rust_attempt_us,
        f.rss_mib_100_python_inflight,
        f.python_inflight_s,
    ];
    keys.iter()
        .zip(values)
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
        .collect()
}

/// Incidents held in flight at once by [`inflight`].
const INFLIGHT: usize = 10_000;

/// `n` incidents whose one step waits 2 s in WASI `poll_oneoff`, run by the
/// release `runbox run --all --concurrency N`: every attempt in flight at
/// once, each holding a pooled instance, memory and fiber stack. Returns
/// the runner's peak RSS in MiB and its wall time in seconds.
fn inflight(n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let data = dir.path().join("data");
    runbox_tests::open_waiting_incidents(dir.path(), &data, n);
    if std::env::var_os("RUNBOX_BENCH_KEEP").is_some() {
        // A copy to profile by hand, before the run resolves them.
        let copy = dir.path().with_extension("kept");
        let status = std::process::Command::new("cp")
            .args(["-a".as_ref(), dir.path().as_os_str(), copy.as_os_str()])
            .status()
            .unwrap();
        assert!(status.success());
        say!("kept {}", copy.display());
    }
    let cap = n.to_string();
    let run = runbox_tests::child::measure(&data, &["run", "--all", "--concurrency", &cap]);
    assert!(
        run.status.success(),
        "run --all: {} (not all resolved)",
        run.status
    );
    let together = most_in_flight(&data, n);
    assert_eq!(together, n, "every attempt was in flight at one moment");
    (run.peak_kib as f64 / 1024.0, run.secs)
}

/// The most attempts of `W-0`…`W-{n-1}` in flight at one moment, from
/// their records' start and end times.
fn most_in_flight(data: &Path, n: usize) -> usize {
    let store = Arc::new(Store::open_read_only(data).unwrap());
    let incidents = runbox_engine::Incidents::new(store);
    let mut edges = Vec::with_capacity(2 * n);
    for i in 0..n {
        for record in incidents.attempts(&format!("W-{i}"), "wait").unwrap() {
            let record = record.unwrap();
            edges.push((record.started_at_ms, 1i64));
            edges.push((record.ended_at_ms, -1));
        }
    }
    // Ends sort before starts at the same millisecond: no false overlap.
    edges.sort();
    let mut running = 0i64;
    let mut most = 0i64;
    for (_, step) in edges {
        running += step;
        most = most.max(running);
    }
    most as usize
}

/// Records one attempt that calls a tool and reads KV, then replays it `n`
/// times, 64 at a time: replayed attempts per second.
fn replay_per_s(rt: &tokio::runtime::Runtime, n: usize) -> f64 {
    use runbox_sandbox::Tape;
    let dir = tempfile::tempdir().unwrap();
    let tools = Arc::new(
        ToolRegistry::from_toml(
            "[tools.probe]\nmode = \"read\"\nargv = [\"true\"]\n",
            Path::new("tools.toml"),
            dir.path().to_path_buf(),
        )
        .unwrap(),
    );
    let policy = StepPolicy::from_toml(
        "[grants]\ntools = [\"probe\"]\nkv_read = [\"k\"]\n",
        Path::new("p.toml"),
    )
    .unwrap();
    let wat = std::fs::read(fixture("replay/tool_then_read.wat")).unwrap();
    let sandbox = Sandbox::new(SandboxConfig::default());
    let step = sandbox
        .prepare("s", &wat, &policy, tools, Capabilities::default())
        .unwrap();
    let input = serde_json::json!({});
    let kv: MapKv = [("k".to_string(), b"v".to_vec())].into();
    let recorded = rt.block_on(sandbox.run_on_tape(
        &step,
        &input,
        Arc::new(kv),
        None,
        Tape::record(&input, 1 << 20),
    ));
    let recording = recorded.recording.expect("recorded");
    let started = std::time::Instant::now();
    rt.block_on(async {
        let mut left = n;
        while left > 0 {
            let batch = left.min(64);
            let mut replays = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let (sandbox, step, input) = (sandbox.clone(), step.clone(), input.clone());
                let tape = Tape::replay(recording.clone());
                replays.spawn(async move {
                    sandbox
                        .run_on_tape(&step, &input, Arc::new(MapKv::new()), None, tape)
                        .await
                });
            }
            while let Some(report) = replays.join_next().await {
                let report = report.unwrap();
                assert!(report.divergence.is_none(), "{report:?}");
            }
            left -= batch;
        }
    });
    n as f64 / started.elapsed().as_secs_f64()
}

/// The floor an attempt is measured against: a fresh `Store` with an empty
/// WASI preview 1 context, `InstancePre::instantiate_async`, and `_start`
/// calling one host import, on an async pooling engine configured as the
/// sandbox's.
fn raw_wasmtime_floor(rt: &tokio::runtime::Runtime) -> Duration {
    use wasmtime::{
        Config, Engine as WasmEngine, InstanceAllocationStrategy, Linker, Module,
        PoolingAllocationConfig, Store as WasmStore,
    };
    use wasmtime_wasi::WasiCtxBuilder;
    use wasmtime_wasi::p1::WasiP1Ctx;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(16)
        .total_memories(16)
        .total_tables(64)
        .total_stacks(16)
        .max_memory_size(32 << 20);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .max_wasm_stack(512 << 10)
        .async_stack_size((512 << 10) + (2 << 20))
        .wasm_backtrace_max_frames(None)
        .memory_reservation(32 << 20)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = WasmEngine::new(&config).unwrap();
    let module = Module::new(
        &engine,
        r#"(module
  (import "bench" "finish" (func $finish))
  (memory (export "memory") 1)
  (func (export "_start") (call $finish)))"#,
    )
    .unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |ctx| ctx).unwrap();
    linker.func_wrap("bench", "finish", || {}).unwrap();
    let pre = linker.instantiate_pre(&module).unwrap();
    let mut samples = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        rt.block_on(async {
            let mut store = WasmStore::new(&engine, WasiCtxBuilder::new().build_p1());
            store.set_epoch_deadline(1);
            let instance = pre.instantiate_async(&mut store).await.unwrap();
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .unwrap();
            start.call_async(&mut store, ()).await.unwrap();
        });
        samples.push(t.elapsed());
    }
    stats(samples).0
}

/// What script-based runbook runners pay per step: a process.
fn process_per_step() -> Duration {
    let samples = (0..200)
        .map(|_| {
            let t = Instant::now();
            let status = std::process::Command::new("/bin/sh")
                .args(["-c", "true"])
                .status()
                .unwrap();
            assert!(status.success());
            t.elapsed()
        })
        .collect();
    stats(samples).0
}

/// `status` of a fresh incident against one with 100,000 timeline events,
/// and a step's cost at step 10 against step 10,000 of one incident.
fn history(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("data")).unwrap());
    let engine = Engine::new(store.clone(), Sandbox::new(SandboxConfig::default()));
    let small = ok_runbook(dir.path(), 2);
    for id in ["H-fresh", "H-long"] {
        engine
            .opener()
            .open(id, &small, &BTreeMap::new(), "agent:bench")
            .unwrap();
    }
    let long = IncidentId::new("H-long").unwrap();
    for _ in 0..100 {
        let mut cp: Checkpoint = store.read(&keys::checkpoint(&long)).unwrap().unwrap();
        let expected = Expect::Version(cp.version);
        let first = cp.next_seq;
        cp.version += 1;
        cp.next_seq += 1000;
        let mut batch = Batch::new(cp);
        for seq in first..first + 1000 {
            let event = TimelineEvent {
                seq,
                at_ms: 0,
                actor: "agent:bench".into(),
                kind: EventKind::StepCommitted,
                step: Some("s0".into()),
                attempt: Some(1),
                message: "outcome ok".into(),
                signed: None,
            };
            batch.put(keys::event(&long, seq), &event);
        }
        store.commit(&long, expected, batch).unwrap();
    }
    let time_status = |id: &str| {
        let samples: Vec<Duration> = (0..200)
            .map(|_| {
                let t = Instant::now();
                engine.incidents().view(id).unwrap();
                t.elapsed()
            })
            .collect();
        stats(samples).0
    };
    let (fresh, grown) = (time_status("H-fresh"), time_status("H-long"));
    say!(
        "{:<52} {:>10.3} ms vs {:.3} ms ({:.2}x)",
        "status: 100,000 events vs a fresh incident",
        ms(grown),
        ms(fresh),
        grown.as_secs_f64() / fresh.as_secs_f64()
    );

    let steps = 10_000;
    let big = ok_runbook(dir.path(), steps);
    engine
        .opener()
        .open("H-steps", &big, &BTreeMap::new(), "agent:bench")
        .unwrap();
    let marks = Arc::new(std::sync::Mutex::new(Vec::with_capacity(steps)));
    let opts = RunOptions {
        progress: Some({
            let marks = marks.clone();
            Arc::new(move |_: &str| marks.lock().unwrap().push(Instant::now()))
        }),
        ..RunOptions::default()
    };
    assert_eq!(
        rt.block_on(engine.runs().run("H-steps", &opts)).unwrap(),
        RunExit::Resolved
    );
    let marks = marks.lock().unwrap();
    let intervals =
        |range: std::ops::Range<usize>| stats(range.map(|i| marks[i + 1] - marks[i]).collect()).0;
    let (early, late) = (intervals(1..11), intervals(steps - 11..steps - 1));
    say!(
        "{:<52} {:>10.3} ms vs {:.3} ms ({:.2}x)",
        "engine step 10,000 vs step 10 of one incident",
        ms(late),
        ms(early),
        late.as_secs_f64() / early.as_secs_f64()
    );
}

/// Commits/s of raw synced two-put `WriteBatch`es (a checkpoint and a
/// record of step-record size) from `threads` threads, `each` per thread.
fn raw_synced_batches_per_s(threads: usize, each: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = rocksdb::DB::open_default(dir.path()).unwrap();
    let record = vec![b'x'; 600];
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            let (db, record) = (&db, &record);
            s.spawn(move || {
                let mut opts = rocksdb::WriteOptions::default();
                opts.set_sync(true);
                for i in 0..each {
                    let mut batch = rocksdb::WriteBatch::default();
                    batch.put(format!("incident:T{th}:checkpoint"), b"{\"version\":1}");
                    batch.put(format!("incident:T{th}:steps:s:{i:06}"), record);
                    db.write_opt(batch, &opts).unwrap();
                }
            });
        }
    });
    (threads * each) as f64 / t.elapsed().as_secs_f64()
}

/// Steps/s of `incidents` incidents of `steps` ok steps each, run at once.
fn engine_steps_per_s(rt: &tokio::runtime::Runtime, incidents: usize, steps: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("data")).unwrap());
    engine_steps_per_s_on(rt, store, dir.path(), incidents, steps)
}

/// [`engine_steps_per_s`] on any store.
fn engine_steps_per_s_on(
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn runbox_store::Store>,
    dir: &Path,
    incidents: usize,
    steps: usize,
) -> f64 {
    runbox_tests::bench::ok_steps_per_s(rt, store, dir, (incidents, steps), "T")
}

/// The value after `name` on the command line (`--metrics-probe on`).
fn flag_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

/// Steps per second at 64 incidents, in memory and on RocksDB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Probe {
    memory: f64,
    durable: f64,
}

/// Medians of [`Probe`]s with metrics off, on, and on with traces.
struct Overhead {
    off: Probe,
    on: Probe,
    traces: Probe,
    /// Spans the OTLP receiver took from the traced children.
    spans: usize,
}

impl Overhead {
    fn traces_memory_ratio(&self) -> f64 {
        self.traces.memory / self.off.memory
    }

    fn traces_durable_ratio(&self) -> f64 {
        self.traces.durable / self.off.durable
    }

    fn memory_ratio(&self) -> f64 {
        self.on.memory / self.off.memory
    }

    fn durable_ratio(&self) -> f64 {
        self.on.durable / self.off.durable
    }
}

/// Runs `--metrics-probe off`, `on` and `traces` in child processes,
/// alternating, five of each (a process's recorder cannot be taken out
/// again), and takes the medians. The traced children send their spans to
/// an OTLP receiver in this process, as to a collector beside the runner.
fn metrics_overhead() -> Overhead {
    let exe = std::env::current_exe().unwrap();
    let collector = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = collector.block_on(runbox_tests::otlp::OtlpReceiver::spawn());
    let mut runs: [Vec<Probe>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (i, mode) in ["off", "on", "traces"].iter().enumerate() {
            let mut child = std::process::Command::new(&exe);
            child.args(["--metrics-probe", mode]);
            if *mode == "traces" {
                // A queue that holds a second's spans: none dropped.
                child
                    .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
                    .env("OTEL_BSP_MAX_QUEUE_SIZE", "65536")
                    .env("OTEL_BSP_SCHEDULE_DELAY", "1000");
            }
            let out = child.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            runs[i].push(serde_json::from_slice(&out.stdout).unwrap());
        }
    }
    let median = |probes: &mut Vec<Probe>| {
        let mid = probes.len() / 2;
        probes.sort_by(|a, b| a.memory.total_cmp(&b.memory));
        let memory = probes[mid].memory;
        probes.sort_by(|a, b| a.durable.total_cmp(&b.durable));
        Probe {
            memory,
            durable: probes[mid].durable,
        }
    };
    let [mut off, mut on, mut traces] = runs;
    Overhead {
        off: median(&mut off),
        on: median(&mut on),
        traces: median(&mut traces),
        spans: receiver.spans().len(),
    }
}

/// One child of [`metrics_overhead`]: with `on`, installs the Prometheus
/// recorder and renders the exposition every 250 ms while the steps run
/// (sixty times Prometheus's default scrape rate); with `traces`, exports
/// spans too, as the `OTEL_` variables say; prints a [`Probe`].
fn metrics_probe(rt: &tokio::runtime::Runtime, mode: &str) {
    let on = mode != "off";
    let traces = (mode == "traces").then(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let (layer, traces) = runbox_server::traces::from_env(rt.handle().clone())
            .expect("OTEL_ variables that parse")
            .expect("OTEL_EXPORTER_OTLP_ENDPOINT, set by the parent");
        tracing_subscriber::registry().with(layer).init();
        traces
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = on.then(|| {
        let handle = runbox_server::metrics::install().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::black_box(handle.render());
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    });
    // Runbooks of 20 steps, as runbooks are: the step label takes 20
    // values, not thousands. Five passes each, harmonic mean.
    let passes = |store: Arc<dyn runbox_store::Store>| {
        let dir = tempfile::tempdir().unwrap();
        let secs: f64 = (0..5)
            .map(|pass| {
                let tag = format!("P{pass}");
                let per_s = runbox_tests::bench::ok_steps_per_s(
                    rt,
                    store.clone(),
                    dir.path(),
                    (64, 20),
                    &tag,
                );
                1.0 / per_s
            })
            .sum();
        5.0 / secs
    };
    let durable_dir = tempfile::tempdir().unwrap();
    let probe = Probe {
        memory: passes(Arc::new(runbox_store::MemoryStore::new())),
        durable: passes(Arc::new(
            Store::open(&durable_dir.path().join("data")).unwrap(),
        )),
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(scraper) = scraper {
        scraper.join().unwrap();
    }
    if let Some(traces) = traces {
        traces.shutdown().expect("the last spans sent");
    }
    println!("{}", serde_json::to_string(&probe).unwrap());
}
