//! # runbox-sandbox: one step attempt, sandboxed
//!
//! Runs one step attempt, a core WASM module (ABI v1) or a component (the
//! WIT package `runbox:step@1.0.0`), under its policy, and the tools it
//! calls ([`runner`]).
//!
//! One [`Sandbox`] per process. It owns the wasmtime engines (one per distinct
//! stack limit, since `max_wasm_stack` is an engine setting), a cache of
//! compiled modules keyed by sha256, and a timer thread that ticks the
//! engines' epochs.
//!
//! Each attempt gets a fresh `Store` with its own limits, a `Linker` that
//! defines only the capabilities the policy grants (ABI v1 modules, see
//! [`abi`]; or WIT interfaces, see [`component`]), and an empty WASI context
//! (preview 1, or 0.2 for a component) whose stdout and stderr are captured.
//!
//! ```text
//! prepare(bytes, policy, caps) ── compile (cached) ── check imports ──► PreparedStep
//! run(prepared, input, kv)     ── fresh Store ── instantiate ── _start ──► StepReport
//! ```

#![deny(missing_docs)]

mod abi;
mod calls;
mod component;
mod hooks;
mod hostfns;
mod output;
mod report;
pub mod runner;
mod state;
mod tape;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{Instrument, debug, info_span, warn};
use wasmtime::component::Component;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolConcurrencyLimitError, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::I32Exit;

use abi::Linked;
use component::ComponentPre;
pub use hooks::{KvSource, MapKv, MutationGuard, Refusal};
pub use report::StepReport;
pub use runbox_core::attempt::{
    ErrorCategory, KvWrite, LogLine, Outcome, StepError, ToolCall, Violation,
};
use runbox_core::policy::{KeyPatterns, Limits, StepPolicy, params_from_input};
use runbox_core::sync::lock;
use runbox_core::tools::ToolRegistry;
use state::StepCtx;
pub use tape::{Tape, ToolAnswer, ToolScript};

/// Process-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// How often the epoch timer ticks; bounds how late a timeout fires.
    /// Default: 10 ms.
    pub epoch_tick: Duration,
    /// Compiled modules kept in memory; past this an arbitrary entry is
    /// evicted (and recompiled if needed again). Default: 256.
    pub module_cache_entries: usize,
    /// Directory where compiled modules are kept across processes, named by
    /// module sha256, stack limit and the engine's compatibility hash. Only
    /// files this sandbox wrote are ever loaded from it: it must not be
    /// writable by anyone the host does not trust (the CLI uses
    /// `DATA_DIR/modules`, as trusted as the store beside it).
    /// Default: none (compile once per process).
    pub artifact_dir: Option<PathBuf>,
    /// Whether modules compiled here are written to `artifact_dir`. `false`
    /// loads the artifacts other processes kept there and writes none (what
    /// `runbox replay`, which writes nothing, wants). Default: true.
    pub keep_new_artifacts: bool,
    /// Attempts that can run at once in each pooled engine (one per
    /// distinct stack limit and memory class). Instances, memories, tables
    /// and fiber stacks come from a pool of this many slots, reused rather
    /// than mapped and unmapped per attempt; an attempt past it stops with
    /// error category `host`, naming this setting. Default: 256.
    pub pool_slots: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            epoch_tick: Duration::from_millis(10),
            module_cache_entries: 256,
            artifact_dir: None,
            keep_new_artifacts: true,
            pool_slots: 256,
        }
    }
}

/// What the caller lets a step do beyond its policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The mutation token was presented: mutating tools may be linked.
    /// Default: false.
    pub allow_mutate: bool,
    /// Diagnosis mode: neither `kv-write` nor `tool-mutate` is linked.
    /// Default: false.
    pub read_only: bool,
}

/// Errors that stop a step before it runs because of the host's own inputs
/// (not the guest): an unknown tool in a grant, an unreadable file.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The policy grants a tool the registry does not have.
    #[error("step `{step}`: policy grants tool `{tool}`, which is not in the tool registry")]
    UnknownTool {
        /// The step.
        step: String,
        /// The tool.
        tool: String,
    },
    /// The module file could not be read.
    #[error("cannot read module {path}: {source}")]
    ReadModule {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// wasmtime refused the engine configuration.
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
}

/// Why a step could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The host's own inputs are wrong: a grant of an unknown tool, an
    /// unreadable module file, an engine that cannot be configured.
    #[error(transparent)]
    Host(#[from] SandboxError),
    /// The module is not fit to run: invalid, not a WASI command, or
    /// importing what its policy does not grant.
    #[error(transparent)]
    Module(#[from] StepError),
}

/// A step compiled and checked against its policy, ready to run any number
/// of attempts.
#[derive(Clone)]
pub struct PreparedStep {
    name: String,
    pre: Pre,
    sha256: String,
    linked: Linked,
    policy: StepPolicy,
    tools: Arc<ToolRegistry>,
    caps: Capabilities,
}

impl PreparedStep {
    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hex sha256 of the module bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The capabilities it was prepared with.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Whether the step can reach a mutating tool at all.
    pub fn can_mutate(&self) -> bool {
        self.linked.tool_mutate
    }

    /// Whether the step is a component (WIT), not a core module (ABI v1).
    pub fn is_component(&self) -> bool {
        matches!(self.pre, Pre::Component(_))
    }
}

/// A step resolved against its linker: a core module or a component.
#[derive(Clone)]
enum Pre {
    Module(InstancePre<StepCtx>),
    Component(ComponentPre),
}

impl Pre {
    fn engine(&self) -> &Engine {
        match self {
            Pre::Module(pre) => pre.module().engine(),
            Pre::Component(pre) => pre.engine(),
        }
    }
}

/// Compiled code: a core module or a component.
#[derive(Clone)]
enum Compiled {
    Module(Module),
    Component(Component),
}

impl Compiled {
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Compiled::Module(m) => m.serialize(),
            Compiled::Component(c) => c.serialize(),
        }
    }
}

/// The process's sandbox. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: SandboxConfig,
    /// One engine per stack limit and memory class.
    engines: Mutex<HashMap<EngineKey, Engine>>,
    /// Compiled modules and components by (engine, sha256).
    modules: Mutex<HashMap<(EngineKey, [u8; 32]), Compiled>>,
    /// Linkers by (engine, linked capabilities): building one defines
    /// every WASI function, so it is done once, not per step.
    linkers: Mutex<HashMap<(EngineKey, Linked), Linker<StepCtx>>>,
    /// The same for components (WASI 0.2 and the WIT interfaces).
    component_linkers: Mutex<HashMap<(EngineKey, Linked), wasmtime::component::Linker<StepCtx>>>,
    /// Modules that passed the import check, resolved against their linker,
    /// by (stack KiB, sha256, linked capabilities): a step prepared again
    /// (every attempt) skips the check and the import resolution.
    checked: Mutex<HashMap<CheckedKey, Pre>>,
    /// Modules compiled, and loaded from the artifact dir, by this sandbox.
    compiled: AtomicU64,
    loaded: AtomicU64,
}

/// A checked module's key: engine, module sha256, linked capabilities.
type CheckedKey = (EngineKey, [u8; 32], Linked);

/// The engine settings a step's limits decide. `max_wasm_stack` is an
/// engine setting, and a pooled engine's memory slots have one size: a
/// step runs in the engine of its stack limit and of the smallest power of
/// two (at least [`MIN_MEMORY_CLASS_MIB`]) that holds its memory limit, so
/// no slot reserves more address space than the steps in it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct EngineKey {
    stack_kib: u32,
    memory_class_mib: u32,
    /// Components run in engines of their own: the component model on, and
    /// pool slots sized for several core instances per attempt. Engines of
    /// core modules stay as they were, and so do their artifacts.
    component: bool,
}

/// Table slots hold the largest table any policy may allow
/// (`limits.table_elements` ceiling); the pool commits table pages only as
/// they are used.
const TABLE_ELEMENTS_CEILING: usize = 1_000_000;

/// Bytes of each pooled memory, table and stack kept mapped (and zeroed)
/// between attempts.
const KEEP_RESIDENT: usize = 1024 * 1024;

/// The smallest memory slot of a pooled engine.
const MIN_MEMORY_CLASS_MIB: u32 = 32;

impl EngineKey {
    fn of(limits: &Limits, component: bool) -> Self {
        EngineKey {
            stack_kib: limits.stack_kib,
            memory_class_mib: limits
                .memory_mib
                .next_power_of_two()
                .max(MIN_MEMORY_CLASS_MIB),
            component,
        }
    }
}

/// How the sandbox got its modules, for benchmarks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules compiled from wasm.
    pub compiled: u64,
    /// Modules loaded from the artifact directory.
    pub loaded: u64,
}

impl Sandbox {
    /// Creates the sandbox and starts its epoch timer thread, which ends when
    /// the last clone of the sandbox is dropped.
    pub fn new(config: SandboxConfig) -> Self {
        let inner = Arc::new(Inner {
            config,
            engines: Mutex::default(),
            modules: Mutex::default(),
            linkers: Mutex::default(),
            component_linkers: Mutex::default(),
            checked: Mutex::default(),
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
        });
        spawn_epoch_ticker(Arc::downgrade(&inner), inner.config.epoch_tick);
        Sandbox { inner }
    }

    fn engine(&self, key: EngineKey) -> Result<Engine, SandboxError> {
        let mut engines = lock(&self.inner.engines);
        if let Some(engine) = engines.get(&key) {
            return Ok(engine.clone());
        }
        let stack = key.stack_kib as usize * 1024;
        let memory = key.memory_class_mib as usize * 1024 * 1024;
        let slots = self.inner.config.pool_slots.max(1);
        let mut pool = PoolingAllocationConfig::default();
        let counts = if key.component {
            state::StoreCounts::COMPONENT
        } else {
            state::StoreCounts::MODULE
        };
        let per = |n: usize| slots.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        pool.total_core_instances(per(counts.instances))
            .total_memories(per(counts.memories))
            .total_stacks(slots)
            // The step limiter admits at most this many tables and memories.
            .max_tables_per_module(4)
            .total_tables(per(counts.tables))
            .table_elements(TABLE_ELEMENTS_CEILING)
            .max_memories_per_module(1)
            .max_memory_size(memory)
            // A slot is reset for its next attempt by zeroing its first
            // pages in place and decommitting the rest: most steps touch
            // little, and a memset is cheaper than the page-table churn.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT)
            // Where the kernel can say which pages a step dirtied (Linux
            // 6.7+), only those are zeroed: otherwise every slot ever used
            // keeps its whole first MiB resident (10,000 attempts at once
            // left 600 MiB of zeroed one-page memories behind).
            .pagemap_scan(Enabled::Auto);
        if key.component {
            pool.total_component_instances(slots)
                .max_core_instances_per_component(counts.instances as u32)
                .max_memories_per_component(counts.memories as u32)
                .max_tables_per_component(counts.tables as u32);
        }
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .max_wasm_stack(stack)
            // Host functions run on the fiber stack too: give them room above the guest's.
            .async_stack_size(stack + 2 * 1024 * 1024)
            .wasm_component_model(key.component)
            // Every step ends by unwinding out of `finish`; capturing a wasm
            // backtrace for each would cost more than the attempt. Trap
            // messages still name the trap.
            .wasm_backtrace_max_frames(None)
            // Reserve only the memory class, not wasmtime's 4 GiB default:
            // the pool reserves every slot up front.
            .memory_reservation(memory as u64)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| SandboxError::Engine(e.to_string()))?;
        engines.insert(key, engine.clone());
        Ok(engine)
    }

    /// Compiles (or fetches from cache) a module or component for the
    /// given limits.
    fn compile(
        &self,
        bytes: &[u8],
        digest: [u8; 32],
        limits: &Limits,
    ) -> Result<Compiled, StepError> {
        let engine_key = EngineKey::of(limits, is_component(bytes));
        let key = (engine_key, digest);
        if let Some(compiled) = lock(&self.inner.modules).get(&key) {
            runbox_telemetry::module("cache");
            return Ok(compiled.clone());
        }
        let engine = self
            .engine(engine_key)
            .map_err(|e| StepError::new(ErrorCategory::Host, e.to_string()))?;
        let artifact = self.artifact_path(&engine, &hex::encode(digest), engine_key);
        let compiled = match artifact
            .as_deref()
            .and_then(|p| self.load_artifact(&engine, p, &digest, engine_key.component))
        {
            Some(compiled) => {
                runbox_telemetry::module("artifact");
                compiled
            }
            None => {
                let compiled = compile_fresh(&engine, bytes, engine_key.component)?;
                self.inner.compiled.fetch_add(1, Ordering::Relaxed);
                runbox_telemetry::module("compiled");
                if let Some(path) = artifact.filter(|_| self.inner.config.keep_new_artifacts) {
                    store_artifact(&compiled, &path, &digest);
                }
                compiled
            }
        };
        let cap = self.inner.config.module_cache_entries;
        insert_bounded(&mut lock(&self.inner.modules), cap, key, compiled.clone());
        Ok(compiled)
    }

    /// Where the artifact of a module compiled by `engine` lives, if the
    /// sandbox keeps artifacts. The engine's compatibility hash in the name
    /// keeps artifacts of another wasmtime build or configuration apart.
    fn artifact_path(&self, engine: &Engine, sha: &str, key: EngineKey) -> Option<PathBuf> {
        let dir = self.inner.config.artifact_dir.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let (stack, memory) = (key.stack_kib, key.memory_class_mib);
        let kind = if key.component { "-component" } else { "" };
        Some(dir.join(format!(
            "{sha}-{stack}k-{memory}m{kind}-{:016x}.cwasm",
            hasher.finish()
        )))
    }

    fn load_artifact(
        &self,
        engine: &Engine,
        path: &Path,
        module: &[u8; 32],
        component: bool,
    ) -> Option<Compiled> {
        // Read into memory rather than `deserialize_file`: a memory-mapped
        // artifact truncated or rewritten in place would crash this process
        // with SIGBUS the next time the module's code is touched.
        let bytes = std::fs::read(path).ok()?;
        let recorded = std::fs::read_to_string(seal_path(path)).unwrap_or_default();
        if recorded.trim() != artifact_seal(module, &bytes) {
            // Another module's artifact copied over this one's (or one
            // runbox never wrote) would run other code under this pin.
            warn!(
                path = %path.display(),
                "ignoring a module artifact that does not match the digest recorded when runbox wrote it; recompiling"
            );
            return None;
        }
        // SAFETY: the artifact is one `store_artifact` wrote (atomically,
        // via rename) from this module compiled by this engine
        // configuration: its seal binds the module's sha256 to these exact
        // bytes, the name carries the engine's compatibility hash, and
        // wasmtime checks compatibility again.
        let loaded = if component {
            // SAFETY: as above: a sealed artifact this engine configuration wrote.
            unsafe { Component::deserialize(engine, &bytes) }.map(Compiled::Component)
        } else {
            // SAFETY: as above: a sealed artifact this engine configuration wrote.
            unsafe { Module::deserialize(engine, &bytes) }.map(Compiled::Module)
        };
        match loaded {
            Ok(compiled) => {
                self.inner.loaded.fetch_add(1, Ordering::Relaxed);
                Some(compiled)
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "ignoring an unusable module artifact");
                None
            }
        }
    }

    /// How many modules were compiled and loaded from artifacts.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.inner.compiled.load(Ordering::Relaxed),
            loaded: self.inner.loaded.load(Ordering::Relaxed),
        }
    }

    /// The linker for one engine and capability set, built on first use.
    fn linker(
        &self,
        engine: &Engine,
        key: EngineKey,
        linked: Linked,
    ) -> Result<Linker<StepCtx>, StepError> {
        let mut linkers = lock(&self.inner.linkers);
        if let Some(linker) = linkers.get(&(key, linked)) {
            return Ok(linker.clone());
        }
        let mut linker = Linker::new(engine);
        hostfns::link(&mut linker, &linked)
            .map_err(|e| StepError::new(ErrorCategory::Host, root_message(&e)))?;
        linkers.insert((key, linked), linker.clone());
        Ok(linker)
    }

    /// [`Sandbox::linker`] for components.
    fn component_linker(
        &self,
        engine: &Engine,
        key: EngineKey,
        linked: Linked,
    ) -> Result<wasmtime::component::Linker<StepCtx>, StepError> {
        let mut linkers = lock(&self.inner.component_linkers);
        if let Some(linker) = linkers.get(&(key, linked)) {
            return Ok(linker.clone());
        }
        let mut linker = wasmtime::component::Linker::new(engine);
        component::link(&mut linker, &linked)
            .map_err(|e| StepError::new(ErrorCategory::Host, root_message(&e)))?;
        linkers.insert((key, linked), linker.clone());
        Ok(linker)
    }

    /// The imports of a module, as `module.name`, for review.
    pub fn imports(&self, bytes: &[u8], limits: &Limits) -> Result<Vec<String>, StepError> {
        Ok(match self.compile(bytes, module_digest(bytes), limits)? {
            Compiled::Module(module) => module
                .imports()
                .map(|i| format!("{}.{}", i.module(), i.name()))
                .collect(),
            Compiled::Component(component) => {
                let ty = component.component_type();
                let engine = component.engine();
                ty.imports(engine)
                    .map(|(name, _)| name.to_string())
                    .collect()
            }
        })
    }

    /// Compiles `bytes` (binary wasm or WAT) and checks its imports and
    /// exports against `policy` and `caps`.
    ///
    /// [`PrepareError::Host`] is a problem with the host's own files (a
    /// grant of an unknown tool); [`PrepareError::Module`] is the module's
    /// fault: invalid, or importing what it was not granted.
    pub fn prepare(
        &self,
        name: &str,
        bytes: &[u8],
        policy: &StepPolicy,
        tools: Arc<ToolRegistry>,
        caps: Capabilities,
    ) -> Result<PreparedStep, PrepareError> {
        self.prepare_digested(name, bytes, module_digest(bytes), policy, tools, caps)
    }

    /// [`Sandbox::prepare`] for a caller that has hashed the bytes already
    /// (`digest` must be [`module_digest`] of `bytes`: it keys the caches).
    pub fn prepare_digested(
        &self,
        name: &str,
        bytes: &[u8],
        digest: [u8; 32],
        policy: &StepPolicy,
        tools: Arc<ToolRegistry>,
        caps: Capabilities,
    ) -> Result<PreparedStep, PrepareError> {
        for tool in &policy.grants.tools {
            if tools.get(tool).is_none() {
                return Err(PrepareError::Host(SandboxError::UnknownTool {
                    step: name.to_string(),
                    tool: tool.clone(),
                }));
            }
        }
        let linked = Linked::from_policy(policy, &tools, caps);
        let pre = self.checked(name, bytes, digest, &policy.limits, linked)?;
        Ok(PreparedStep {
            name: name.to_string(),
            pre,
            sha256: hex::encode(digest),
            linked,
            policy: policy.clone(),
            tools,
            caps,
        })
    }

    /// The module compiled, import-checked for `linked` and resolved against
    /// its linker; cached, since the check depends on nothing else.
    fn checked(
        &self,
        name: &str,
        bytes: &[u8],
        digest: [u8; 32],
        limits: &Limits,
        linked: Linked,
    ) -> Result<Pre, StepError> {
        let key = (EngineKey::of(limits, is_component(bytes)), digest, linked);
        if let Some(pre) = lock(&self.inner.checked).get(&key) {
            runbox_telemetry::module("cache");
            return Ok(pre.clone());
        }
        let pre = match self.compile(bytes, digest, limits)? {
            Compiled::Module(module) => {
                let linker = self.linker(module.engine(), key.0, linked)?;
                Pre::Module(abi::check_module(name, &module, &linked, &linker)?)
            }
            Compiled::Component(c) => {
                let linker = self.component_linker(c.engine(), key.0, linked)?;
                Pre::Component(component::check(name, &c, &linked, &linker)?)
            }
        };
        let cap = self.inner.config.module_cache_entries;
        insert_bounded(&mut lock(&self.inner.checked), cap, key, pre.clone());
        Ok(pre)
    }

    /// Reads a module file and prepares it; see [`Sandbox::prepare`].
    pub fn prepare_file(
        &self,
        name: &str,
        path: &Path,
        policy: &StepPolicy,
        tools: Arc<ToolRegistry>,
        caps: Capabilities,
    ) -> Result<PreparedStep, PrepareError> {
        let bytes = std::fs::read(path).map_err(|source| SandboxError::ReadModule {
            path: path.to_path_buf(),
            source,
        })?;
        self.prepare(name, &bytes, policy, tools, caps)
    }

    /// Runs one attempt of a prepared step.
    ///
    /// Never panics and never returns an error for anything the guest does:
    /// every way a guest can stop is a [`StepReport`] with an error category.
    pub async fn run(
        &self,
        step: &PreparedStep,
        input: &serde_json::Value,
        kv: Arc<dyn KvSource>,
        guard: Option<Box<dyn MutationGuard>>,
    ) -> StepReport {
        self.run_on_tape(step, input, kv, guard, Tape::off()).await
    }

    /// [`Sandbox::run`] with every nondeterministic input (committed KV
    /// reads, tool answers, clock readings, random bytes) recorded on
    /// `tape` ([`Tape::record`], the recording lands in
    /// [`StepReport::recording`]) or answered from it ([`Tape::replay`]:
    /// no tool runs, `kv` is not read, and [`StepReport::divergence`] names
    /// the first input the recording does not have).
    pub async fn run_on_tape(
        &self,
        step: &PreparedStep,
        input: &serde_json::Value,
        kv: Arc<dyn KvSource>,
        guard: Option<Box<dyn MutationGuard>>,
        tape: Tape,
    ) -> StepReport {
        let span = info_span!("sandbox", step = %step.name, sha256 = %&step.sha256[..12]);
        let started = Instant::now();
        let mut report = self
            .run_inner(step, input, kv, guard, tape)
            .instrument(span)
            .await;
        report.duration_ms = started.elapsed().as_millis() as u64;
        report
    }

    async fn run_inner(
        &self,
        step: &PreparedStep,
        input: &serde_json::Value,
        kv: Arc<dyn KvSource>,
        guard: Option<Box<dyn MutationGuard>>,
        tape: Tape,
    ) -> StepReport {
        let _in_use = runbox_telemetry::sandbox_in_use();
        let limits = step.policy.limits;
        let params = params_from_input(input);
        let patterns = KeyPatterns::compile(&step.policy.grants.kv_read, &params).and_then(|r| {
            Ok((
                r,
                KeyPatterns::compile(&step.policy.grants.kv_write, &params)?,
            ))
        });
        let (read_patterns, write_patterns) = match patterns {
            Ok(p) => p,
            Err(e) => {
                return StepReport::stopped(StepError::new(
                    ErrorCategory::DeniedKey,
                    e.to_string(),
                ));
            }
        };
        let engine = step.pre.engine().clone();
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        let ctx = StepCtx::new(state::StepSetup {
            step: step.name.clone(),
            input: serde_json::to_vec(input).expect("a Value always serializes"),
            limits,
            read_patterns,
            write_patterns,
            granted_tools: step.policy.grants.tools.clone(),
            tools: step.tools.clone(),
            kv,
            guard,
            tape,
            component: step.is_component(),
        });
        let mut store = Store::new(&engine, ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            // Yield to the executor every tick so one busy guest never starves
            // other incidents; interrupt once the wall clock passes the deadline.
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        // Host calls are not interrupted by epochs: bound the whole attempt
        // by wall clock too, with a little grace for the epoch path to win.
        let budget = Duration::from_millis(limits.timeout_ms) + Duration::from_millis(250);
        let outcome = tokio::time::timeout(budget, run_guest(&step.pre, &mut store)).await;
        let timed_out = outcome.is_err();
        let result = outcome.unwrap_or(Ok(()));
        let ctx = store.into_data();
        let stop = if timed_out {
            Some(StepError::new(
                ErrorCategory::Timeout,
                format!("step exceeded its timeout of {} ms", limits.timeout_ms),
            ))
        } else {
            classify(result.err(), &ctx, &limits)
        };
        debug!(stopped = stop.is_some(), "attempt finished");
        ctx.into_report(stop)
    }
}

/// Instantiates the step and runs it: a module's `_start` (which ends in
/// `finish`), or a component's `run` (whose result is the outcome).
async fn run_guest(pre: &Pre, store: &mut Store<StepCtx>) -> wasmtime::Result<()> {
    match pre {
        Pre::Module(pre) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            start.call_async(&mut *store, ()).await
        }
        Pre::Component(pre) => component::run(pre, store).await,
    }
}

/// Why the guest stopped, if it did not end with an outcome.
fn classify(err: Option<wasmtime::Error>, ctx: &StepCtx, limits: &Limits) -> Option<StepError> {
    let Some(err) = err else {
        // A component's `run` returns its outcome; a module's `_start` must
        // not return at all.
        if ctx.stop_reason().is_some() {
            return None;
        }
        return Some(StepError::new(
            ErrorCategory::NoOutcome,
            "step returned from `_start` without calling `finish`",
        ));
    };
    if let Some(stop) = ctx.stop_reason() {
        return stop;
    }
    if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return Some(StepError::new(
            ErrorCategory::Host,
            format!(
                "the sandbox pool is full (pool_slots attempts already run in this engine): {}",
                root_message(&err)
            ),
        ));
    }
    if let Some(limit) = ctx.limiter.hit() {
        return Some(limit);
    }
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Some(StepError::new(
            ErrorCategory::NoOutcome,
            format!("step exited with code {} without calling `finish`", exit.0),
        ));
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return Some(match trap {
            Trap::Interrupt => StepError::new(
                ErrorCategory::Timeout,
                format!("step exceeded its timeout of {} ms", limits.timeout_ms),
            ),
            Trap::StackOverflow => StepError::new(
                ErrorCategory::Limit,
                format!(
                    "wasm stack exhausted (limits.stack_kib = {})",
                    limits.stack_kib
                ),
            ),
            // A trap's own text already starts with "wasm trap".
            other => StepError::new(ErrorCategory::Trap, other.to_string()),
        });
    }
    if ctx.output_overflowed() {
        return Some(StepError::new(
            ErrorCategory::Limit,
            format!(
                "output limit exceeded (limits.output_bytes = {})",
                limits.output_bytes
            ),
        ));
    }
    // Imports were resolved when the step was prepared (`InstancePre`), so
    // instantiation cannot fail on one: whatever is left is a trap.
    Some(StepError::new(ErrorCategory::Trap, root_message(&err)))
}

/// The error chain as one line, outermost first.
pub(crate) fn root_message(err: &wasmtime::Error) -> String {
    runbox_core::errors::one_line(err.chain().map(ToString::to_string))
}

/// The seal of an artifact: sha256 over the module's sha256 and the
/// artifact's bytes, so an artifact counts only for the module it was
/// compiled from.
fn artifact_seal(module: &[u8; 32], artifact: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(module);
    h.update(artifact);
    hex::encode(h.finalize())
}

/// Where an artifact's seal is kept: beside it.
fn seal_path(artifact: &Path) -> PathBuf {
    artifact.with_extension("cwasm.sha256")
}

/// Writes a compiled module to `path` atomically (temp file, then rename),
/// its seal first. Best effort: a read-only or full disk only costs a
/// recompile next time.
fn store_artifact(module: &Compiled, path: &Path, digest: &[u8; 32]) {
    let write = || -> std::io::Result<()> {
        let bytes = module.serialize().map_err(std::io::Error::other)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        runbox_core::files::create_private_dir(dir)?;
        let mut seal = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut seal, artifact_seal(digest, &bytes).as_bytes())?;
        seal.persist(seal_path(path)).map_err(|e| e.error)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, &bytes)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        warn!(path = %path.display(), error = %e, "cannot keep a compiled module artifact");
    }
}

/// Inserts into a cache of at most `cap` entries (at least one), evicting
/// an arbitrary entry when full.
fn insert_bounded<K: Eq + Hash + Copy, V>(map: &mut HashMap<K, V>, cap: usize, key: K, value: V) {
    if map.len() >= cap.max(1)
        && let Some(evict) = map.keys().next().copied()
    {
        map.remove(&evict);
    }
    map.insert(key, value);
}

fn spawn_epoch_ticker(inner: Weak<Inner>, tick: Duration) {
    std::thread::Builder::new()
        .name("runbox-epoch".into())
        .spawn(move || {
            while let Some(inner) = inner.upgrade() {
                for engine in lock(&inner.engines).values() {
                    engine.increment_epoch();
                }
                drop(inner);
                std::thread::sleep(tick);
            }
        })
        .expect("spawning the epoch thread at startup");
}

/// Whether `bytes` (binary wasm or WAT text) are a component rather than a
/// core module: the binary header's layer field (1 for components), or a
/// text that begins, after comments, with `(component`.
pub fn is_component(bytes: &[u8]) -> bool {
    if let Some(header) = bytes.strip_prefix(b"\0asm") {
        // version (2 bytes) then layer (2 bytes), little-endian
        return header.get(2..4) == Some(&[1, 0]);
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
    let mut rest = text.trim_start();
    loop {
        if let Some(line) = rest.strip_prefix(";;") {
            rest = line.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(block) = rest.strip_prefix("(;") {
            rest = block.split_once(";)").map_or("", |(_, r)| r).trim_start();
        } else {
            return rest.starts_with("(component");
        }
    }
}

/// Compiles binary wasm or WAT text as a module or a component.
fn compile_fresh(engine: &Engine, bytes: &[u8], component: bool) -> Result<Compiled, StepError> {
    let compiled = if component {
        Component::new(engine, bytes).map(Compiled::Component)
    } else {
        Module::new(engine, bytes).map(Compiled::Module)
    };
    compiled.map_err(|e| {
        let what = if component { "component" } else { "module" };
        StepError::new(
            ErrorCategory::InvalidModule,
            format!("not a valid wasm {what}: {}", root_message(&e)),
        )
    })
}

/// Hex sha256 of module bytes: the identity runbooks pin and incidents record.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(module_digest(bytes))
}

/// The sha256 of module bytes, as the sandbox keys its caches by it.
pub fn module_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
