//! ABI v1: the host functions a step imports, one import module per capability.
//!
//! Every pointer, length, string and JSON document that crosses from the guest
//! is hostile until checked here: lengths and offsets are bounds-checked
//! against the guest's exported `memory` before any copy, strings must be
//! UTF-8, and every byte the host keeps on the guest's behalf (staged writes,
//! logs, tool output) is counted against a limit, because `StoreLimits` only
//! sees guest memory.
//!
//! Return codes follow `guest-sdk/ABI.md`: non-negative is success, and
//! [`AbiCode`] lists the errors. Calls with nothing to return (`log`,
//! `finish`) trap on bad arguments instead.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use wasmtime::{
    AsContextMut, Caller, Extern, ExternType, InstancePre, Linker, Module, ResourceLimiter, ValType,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

use super::Capabilities;
use super::output::{CapturedStream, OutputBudget};
use super::report::{ErrorCategory, KvWrite, LogLine, Outcome, StepError, StepReport, ToolCall};
use crate::policy::{KeyPatterns, Limits, StepPolicy};
use crate::tools::{ToolMode, ToolRegistry};

/// Module names of ABI v1.
pub const STEP: &str = "runbox:step/v1";
/// KV read capability.
pub const KV_READ: &str = "runbox:kv-read/v1";
/// KV write capability.
pub const KV_WRITE: &str = "runbox:kv-write/v1";
/// Read-only tool capability.
pub const TOOL_READ: &str = "runbox:tool-read/v1";
/// Mutating tool capability.
pub const TOOL_MUTATE: &str = "runbox:tool-mutate/v1";
/// WASI preview 1, always linked with an empty context.
pub const WASI: &str = "wasi_snapshot_preview1";

/// Negative return codes of ABI v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum AbiCode {
    /// Key absent.
    NotFound = -1,
    /// Refused by policy; recorded as a violation, and the attempt escalates.
    Denied = -2,
    /// A key or value over its size limit.
    TooLarge = -3,
    /// A bad pointer, length, UTF-8 string or JSON document.
    Invalid = -4,
    /// A per-attempt budget (KV calls, staged bytes, tool calls) is used up.
    /// Calling the same capability again after this traps.
    Budget = -5,
    /// The tool could not be started.
    ToolFailure = -6,
}

/// Where a step's KV reads come from (the engine's committed store, or a
/// seed map for `runbox exec`).
pub trait KvSource: Send + Sync {
    /// The committed value of `key` in the step KV namespace.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
}

/// An in-memory [`KvSource`].
pub type MapKv = BTreeMap<String, Vec<u8>>;

impl KvSource for MapKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(BTreeMap::get(self, key).cloned())
    }
}

/// Called once, before the first mutating tool call of an attempt runs, so
/// the engine can make `attempt started` durable. An error stops the step
/// before the mutation happens.
pub trait MutationGuard: Send {
    /// Records that a mutation is about to begin.
    fn before_first_mutation(&mut self, tool: &str) -> Result<(), String>;
}

/// Which capability modules a step's linker defines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Linked {
    pub kv_read: bool,
    pub kv_write: bool,
    pub tool_read: bool,
    pub tool_mutate: bool,
    /// Why `tool-mutate` is absent although a mutating tool is granted.
    pub mutate_withheld: Option<&'static str>,
    pub kv_write_withheld: bool,
}

impl Linked {
    pub(crate) fn from_policy(
        policy: &StepPolicy,
        tools: &ToolRegistry,
        caps: Capabilities,
    ) -> Self {
        let (read, mutate) = super::granted_modes(policy, tools);
        let mutate_withheld = match (mutate, caps.read_only, caps.allow_mutate) {
            (false, _, _) => None,
            (true, true, _) => Some("read-only mode links no mutating capability"),
            (true, false, false) => Some("mutating tools need the mutation token"),
            (true, false, true) => None,
        };
        let wants_write = !policy.grants.kv_write.is_empty();
        Linked {
            kv_read: !policy.grants.kv_read.is_empty(),
            kv_write: wants_write && !caps.read_only,
            tool_read: read,
            tool_mutate: mutate && mutate_withheld.is_none(),
            mutate_withheld,
            kv_write_withheld: wants_write && caps.read_only,
        }
    }
}

/// Arguments for a fresh attempt's state.
pub(crate) struct StepSetup {
    pub step: String,
    pub input: Vec<u8>,
    pub limits: Limits,
    pub read_patterns: KeyPatterns,
    pub write_patterns: KeyPatterns,
    pub granted_tools: Vec<String>,
    pub tools: Arc<ToolRegistry>,
    pub kv: Arc<dyn KvSource>,
    pub guard: Option<Box<dyn MutationGuard>>,
}

/// Guest memory and table ceilings; remembers which one stopped the guest.
pub(crate) struct StepLimiter {
    memory_max: usize,
    table_max: usize,
    hit: Option<StepError>,
}

impl StepLimiter {
    pub(crate) fn hit(&self) -> Option<StepError> {
        self.hit.clone()
    }
}

impl ResourceLimiter for StepLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_max {
            let message = format!(
                "memory limit exceeded: wanted {desired} bytes, limits.memory_mib allows {}",
                self.memory_max
            );
            self.hit = Some(StepError::new(ErrorCategory::Memory, message.clone()));
            wasmtime::bail!(message);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_max {
            let message = format!(
                "table limit exceeded: wanted {desired} elements, limits.table_elements allows {}",
                self.table_max
            );
            self.hit = Some(StepError::new(ErrorCategory::Limit, message.clone()));
            wasmtime::bail!(message);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

/// Most violations kept per attempt; past this they are only counted.
const MAX_VIOLATIONS: usize = 32;

/// Per-attempt host state: the `T` of the wasmtime `Store`.
pub(crate) struct StepCtx {
    wasi: WasiP1Ctx,
    pub(crate) limiter: StepLimiter,
    setup: StepSetup,
    stdout: CapturedStream,
    stderr: CapturedStream,
    output: Arc<OutputBudget>,
    logs: Vec<LogLine>,
    staged: BTreeMap<String, Option<Vec<u8>>>,
    staged_bytes: usize,
    kv_ops: u32,
    kv_exhausted: bool,
    tool_calls: Vec<ToolCall>,
    tools_exhausted: bool,
    mutation_announced: bool,
    violations: Vec<StepError>,
    violation_count: usize,
    finished: Option<(Outcome, Option<serde_json::Value>, Option<String>)>,
    stop: Option<StepError>,
}

impl StepCtx {
    pub(crate) fn new(setup: StepSetup) -> Self {
        let output = OutputBudget::new(setup.limits.output_bytes as usize);
        let stdout = CapturedStream::new(output.clone());
        let stderr = CapturedStream::new(output.clone());
        // Empty WASI context: no preopens, no env, no network; argv is just
        // the step name; stdout and stderr are captured, stdin is empty.
        let wasi = WasiCtxBuilder::new()
            .arg(&setup.step)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build_p1();
        StepCtx {
            wasi,
            limiter: StepLimiter {
                memory_max: setup.limits.memory_bytes(),
                table_max: setup.limits.table_elements as usize,
                hit: None,
            },
            stdout,
            stderr,
            output,
            setup,
            logs: Vec::new(),
            staged: BTreeMap::new(),
            staged_bytes: 0,
            kv_ops: 0,
            kv_exhausted: false,
            tool_calls: Vec::new(),
            tools_exhausted: false,
            mutation_announced: false,
            violations: Vec::new(),
            violation_count: 0,
            finished: None,
            stop: None,
        }
    }

    /// The intentional stop that ended the guest, if any. `Some(None)` means
    /// the guest finished normally through `finish`.
    pub(crate) fn stop_reason(&self) -> Option<Option<StepError>> {
        if let Some(stop) = &self.stop {
            return Some(Some(stop.clone()));
        }
        self.finished.as_ref().map(|_| None)
    }

    pub(crate) fn output_overflowed(&self) -> bool {
        self.output.overflowed()
    }

    fn violate(&mut self, category: ErrorCategory, message: String) {
        tracing::warn!(step = %self.setup.step, %category, %message, "policy violation");
        self.violation_count += 1;
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(StepError::new(category, message));
        }
    }

    /// Records an intentional stop and returns the error that unwinds the guest.
    fn halt(&mut self, category: ErrorCategory, message: String) -> wasmtime::Error {
        let error = StepError::new(category, message);
        let unwind = wasmtime::format_err!("{error}");
        self.stop.get_or_insert(error);
        unwind
    }

    /// Turns the attempt's state into its report.
    pub(crate) fn into_report(self, stop: Option<StepError>) -> StepReport {
        let writes: Vec<KvWrite> = self
            .staged
            .into_iter()
            .map(|(key, value)| KvWrite { key, value })
            .collect();
        let (step_outcome, output, reason) = match self.finished {
            Some((o, output, reason)) => (Some(o), output, reason),
            None => (None, None, None),
        };
        let stopped = stop.is_some();
        let error = stop.or_else(|| self.violations.first().cloned());
        let outcome = match (error.is_some(), step_outcome) {
            (false, Some(o)) => o,
            _ => Outcome::Escalate,
        };
        let (kv_writes, discarded_kv_writes) = if stopped {
            (Vec::new(), writes)
        } else {
            (writes, Vec::new())
        };
        StepReport {
            outcome,
            step_outcome,
            output,
            reason,
            error,
            violations: self.violations,
            logs: self.logs,
            stdout: self.stdout.contents(),
            stderr: self.stderr.contents(),
            kv_writes,
            discarded_kv_writes,
            tool_calls: self.tool_calls,
            duration_ms: 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Import checking
// ---------------------------------------------------------------------------

/// One function of ABI v1.
struct AbiFunc {
    module: &'static str,
    name: &'static str,
    params: &'static [Ty],
    results: &'static [Ty],
}

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    I32,
    I64,
}

const I: Ty = Ty::I32;

#[rustfmt::skip]
const ABI: &[AbiFunc] = &[
    AbiFunc { module: STEP, name: "input_len", params: &[], results: &[I] },
    AbiFunc { module: STEP, name: "input_read", params: &[I, I], results: &[I] },
    AbiFunc { module: STEP, name: "log", params: &[I, I, I], results: &[] },
    AbiFunc { module: STEP, name: "finish", params: &[I, I, I], results: &[] },
    AbiFunc { module: KV_READ, name: "get", params: &[I, I, I, I], results: &[Ty::I64] },
    AbiFunc { module: KV_WRITE, name: "put", params: &[I, I, I, I], results: &[I] },
    AbiFunc { module: KV_WRITE, name: "delete", params: &[I, I], results: &[I] },
    AbiFunc { module: TOOL_READ, name: "call", params: &[I, I, I, I, I, I], results: &[Ty::I64] },
    AbiFunc { module: TOOL_MUTATE, name: "call", params: &[I, I, I, I, I, I], results: &[Ty::I64] },
];

fn ty_name(t: &ValType) -> String {
    match t {
        ValType::I32 => "i32".into(),
        ValType::I64 => "i64".into(),
        ValType::F32 => "f32".into(),
        ValType::F64 => "f64".into(),
        other => format!("{other}"),
    }
}

fn same_types(actual: impl ExactSizeIterator<Item = ValType>, expected: &[Ty]) -> bool {
    actual.len() == expected.len()
        && actual
            .zip(expected)
            .all(|(a, e)| matches!((a, e), (ValType::I32, Ty::I32) | (ValType::I64, Ty::I64)))
}

fn signature(params: &[Ty], results: &[Ty]) -> String {
    let names = |ts: &[Ty]| {
        ts.iter()
            .map(|t| if *t == Ty::I32 { "i32" } else { "i64" })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", names(params), names(results))
}

/// Why a capability module is not linked for this step, if it is not.
fn withheld(module: &str, linked: &Linked) -> Option<String> {
    match module {
        STEP | WASI => None,
        KV_READ if !linked.kv_read => Some("its policy grants no `kv_read` patterns".into()),
        KV_WRITE if linked.kv_write_withheld => {
            Some("read-only mode links no KV write capability".into())
        }
        KV_WRITE if !linked.kv_write => Some("its policy grants no `kv_write` patterns".into()),
        TOOL_READ if !linked.tool_read => Some("its policy grants no tool with mode `read`".into()),
        TOOL_MUTATE if !linked.tool_mutate => Some(
            linked
                .mutate_withheld
                .unwrap_or("its policy grants no tool with mode `mutate`")
                .into(),
        ),
        _ => None,
    }
}

/// Checks a module's imports and exports before it may run: every import must
/// be an ABI v1 function with its exact signature from a linked capability,
/// and the module must be a WASI command (`_start`) exporting `memory`.
pub(crate) fn check_module(
    step: &str,
    module: &Module,
    linked: &Linked,
) -> Result<InstancePre<StepCtx>, StepError> {
    let deny =
        |m: String| StepError::new(ErrorCategory::DeniedImport, format!("step `{step}` {m}"));
    for import in module.imports() {
        let (m, n) = (import.module(), import.name());
        let ExternType::Func(func) = import.ty() else {
            return Err(deny(format!(
                "imports `{m}`.`{n}` as a non-function; runbox links only functions"
            )));
        };
        if m == WASI {
            continue; // checked against the WASI linker below
        }
        let Some(abi) = ABI.iter().find(|f| f.module == m && f.name == n) else {
            let known = ABI.iter().any(|f| f.module == m);
            return Err(deny(if known {
                format!(
                    "imports unknown function `{m}`.`{n}`: ABI v1 of `{m}` has no such function"
                )
            } else {
                format!("imports `{m}`.`{n}`: module `{m}` is not part of runbox ABI v1")
            }));
        };
        if let Some(why) = withheld(m, linked) {
            return Err(deny(format!(
                "imports `{m}`.`{n}`, which is not linked: {why}"
            )));
        }
        if !same_types(func.params(), abi.params) || !same_types(func.results(), abi.results) {
            let params: Vec<String> = func.params().map(|t| ty_name(&t)).collect();
            let results: Vec<String> = func.results().map(|t| ty_name(&t)).collect();
            return Err(deny(format!(
                "imports `{m}`.`{n}` with signature ({}) -> ({}), but ABI v1 defines {}",
                params.join(", "),
                results.join(", "),
                signature(abi.params, abi.results)
            )));
        }
    }
    check_exports(step, module)?;
    // Resolve against the real linker: this also catches misspelled or
    // mistyped WASI imports, and the result is reused by every attempt.
    let mut linker: Linker<StepCtx> = Linker::new(module.engine());
    link(&mut linker, linked)
        .map_err(|e| StepError::new(ErrorCategory::Host, super::root_message(&e)))?;
    linker
        .instantiate_pre(module)
        .map_err(|e| deny(format!("cannot be linked: {}", super::root_message(&e))))
}

fn check_exports(step: &str, module: &Module) -> Result<(), StepError> {
    let invalid =
        |m: String| StepError::new(ErrorCategory::InvalidModule, format!("step `{step}` {m}"));
    match module.get_export("_start") {
        Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
        Some(_) => {
            return Err(invalid(
                "exports `_start` with the wrong type; it must be () -> ()".into(),
            ));
        }
        None => {
            return Err(invalid(
                "exports no `_start`: build it as a WASI command (a binary, not a library)".into(),
            ));
        }
    }
    let needs_memory = module
        .imports()
        .any(|i| i.module().starts_with("runbox:") && i.name() != "input_len");
    if needs_memory && !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err(invalid(
            "imports runbox functions that take pointers but exports no `memory`".into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Linking
// ---------------------------------------------------------------------------

/// Defines WASI and exactly the capability modules in `linked`.
pub(crate) fn link(linker: &mut Linker<StepCtx>, linked: &Linked) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |ctx: &mut StepCtx| &mut ctx.wasi)?;
    linker.func_wrap(STEP, "input_len", input_len)?;
    linker.func_wrap(STEP, "input_read", input_read)?;
    linker.func_wrap(STEP, "log", log)?;
    linker.func_wrap(STEP, "finish", finish)?;
    if linked.kv_read {
        linker.func_wrap(KV_READ, "get", kv_get)?;
    }
    if linked.kv_write {
        linker.func_wrap(KV_WRITE, "put", kv_put)?;
        linker.func_wrap(KV_WRITE, "delete", kv_delete)?;
    }
    if linked.tool_read {
        linker.func_wrap_async(TOOL_READ, "call", |caller, args| {
            Box::new(tool_call(caller, ToolMode::Read, args))
        })?;
    }
    if linked.tool_mutate {
        linker.func_wrap_async(TOOL_MUTATE, "call", |caller, args| {
            Box::new(tool_call(caller, ToolMode::Mutate, args))
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Guest memory
// ---------------------------------------------------------------------------

/// A checked byte range in guest memory, or why it is not one.
fn guest_range(memory_len: usize, ptr: i32, len: i32) -> Result<Range<usize>, AbiCode> {
    // Offsets are unsigned in wasm32; a negative i32 is a huge u32, which the
    // bounds check below refuses anyway, but say so explicitly.
    let start = u32::try_from(ptr).map_err(|_| AbiCode::Invalid)? as usize;
    let len = u32::try_from(len).map_err(|_| AbiCode::Invalid)? as usize;
    let end = start.checked_add(len).ok_or(AbiCode::Invalid)?;
    if end > memory_len {
        return Err(AbiCode::Invalid);
    }
    Ok(start..end)
}

/// The guest's memory and the host state, borrowed together.
fn memory_and_ctx<'a>(
    caller: &'a mut Caller<'_, StepCtx>,
) -> Option<(&'a mut [u8], &'a mut StepCtx)> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    Some(memory.data_and_store_mut(caller.as_context_mut()))
}

/// Copies `len` bytes at `ptr` out of guest memory.
fn read_guest(caller: &mut Caller<'_, StepCtx>, ptr: i32, len: i32) -> Result<Vec<u8>, AbiCode> {
    let (mem, _) = memory_and_ctx(caller).ok_or(AbiCode::Invalid)?;
    let range = guest_range(mem.len(), ptr, len)?;
    Ok(mem[range].to_vec())
}

/// Copies `data` (or its first `cap` bytes) to guest memory at `ptr`.
fn write_guest(
    caller: &mut Caller<'_, StepCtx>,
    ptr: i32,
    cap: i32,
    data: &[u8],
) -> Result<(), AbiCode> {
    let (mem, _) = memory_and_ctx(caller).ok_or(AbiCode::Invalid)?;
    let range = guest_range(mem.len(), ptr, cap)?;
    let n = data.len().min(range.len());
    mem[range.start..range.start + n].copy_from_slice(&data[..n]);
    Ok(())
}

/// Checks that a destination buffer is valid before doing work for it.
fn check_buffer(caller: &mut Caller<'_, StepCtx>, ptr: i32, cap: i32) -> Result<(), AbiCode> {
    let (mem, _) = memory_and_ctx(caller).ok_or(AbiCode::Invalid)?;
    guest_range(mem.len(), ptr, cap).map(|_| ())
}

fn read_str(caller: &mut Caller<'_, StepCtx>, ptr: i32, len: i32) -> Result<String, AbiCode> {
    String::from_utf8(read_guest(caller, ptr, len)?).map_err(|_| AbiCode::Invalid)
}

// ---------------------------------------------------------------------------
// runbox:step/v1
// ---------------------------------------------------------------------------

fn input_len(caller: Caller<'_, StepCtx>) -> i32 {
    // Input is serialized from host JSON, far below 2 GiB.
    i32::try_from(caller.data().setup.input.len()).unwrap_or(i32::MAX)
}

fn input_read(mut caller: Caller<'_, StepCtx>, ptr: i32, len: i32) -> i32 {
    let input = std::mem::take(&mut caller.data_mut().setup.input);
    let n = input.len().min(len.max(0) as usize);
    let result = write_guest(&mut caller, ptr, len, &input[..n]);
    caller.data_mut().setup.input = input;
    match result {
        Ok(()) => n as i32,
        Err(code) => code as i32,
    }
}

const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

fn log(mut caller: Caller<'_, StepCtx>, level: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let bytes = match read_guest(&mut caller, ptr, len) {
        Ok(b) => b,
        Err(_) => {
            let msg = format!("log: message at {ptr}+{len} is outside guest memory");
            return Err(caller.data_mut().halt(ErrorCategory::Trap, msg));
        }
    };
    let ctx = caller.data_mut();
    let Some(level) = usize::try_from(level).ok().and_then(|l| LEVELS.get(l)) else {
        let msg = format!("log: unknown level {level} (0 trace .. 4 error)");
        return Err(ctx.halt(ErrorCategory::Trap, msg));
    };
    if !ctx.output.take(bytes.len()) {
        let msg = format!(
            "output limit exceeded: stdout, stderr and logs may hold {} bytes (limits.output_bytes)",
            ctx.output.cap()
        );
        return Err(ctx.halt(ErrorCategory::Limit, msg));
    }
    let message = String::from_utf8_lossy(&bytes).into_owned();
    tracing::info!(step = %ctx.setup.step, level, "{message}");
    ctx.logs.push(LogLine {
        level: (*level).to_string(),
        message,
    });
    Ok(())
}

fn finish(mut caller: Caller<'_, StepCtx>, code: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let bytes = read_guest(&mut caller, ptr, len);
    let ctx = caller.data_mut();
    let Some(outcome) = Outcome::from_code(code) else {
        let msg =
            format!("finish: unknown outcome code {code} (0 ok, 1 retry, 2 escalate, 3 fail)");
        return Err(ctx.halt(ErrorCategory::Trap, msg));
    };
    let Ok(bytes) = bytes else {
        let msg = format!("finish: bytes at {ptr}+{len} are outside guest memory");
        return Err(ctx.halt(ErrorCategory::Trap, msg));
    };
    if !ctx.output.take(bytes.len()) {
        let msg = format!(
            "finish: output exceeds limits.output_bytes ({})",
            ctx.output.cap()
        );
        return Err(ctx.halt(ErrorCategory::Limit, msg));
    }
    let parsed = match outcome {
        Outcome::Ok if bytes.is_empty() => Ok((None, None)),
        Outcome::Ok => serde_json::from_slice(&bytes)
            .map(|v| (Some(v), None))
            .map_err(|e| format!("finish: `ok` output is not JSON: {e}")),
        _ => String::from_utf8(bytes)
            .map(|r| (None, Some(r)))
            .map_err(|_| "finish: reason is not UTF-8".to_string()),
    };
    match parsed {
        Ok((output, reason)) => {
            ctx.finished = Some((outcome, output, reason));
            // Unwind at once: nothing the guest does after `finish` counts.
            Err(wasmtime::format_err!("step finished"))
        }
        Err(msg) => Err(ctx.halt(ErrorCategory::Trap, msg)),
    }
}

// ---------------------------------------------------------------------------
// runbox:kv-read/v1 and runbox:kv-write/v1
// ---------------------------------------------------------------------------

/// Counts one KV call against the budget: `Err(Ok(code))` refuses the call,
/// `Err(Err(trap))` stops a guest that keeps going after a refusal.
fn kv_budget(ctx: &mut StepCtx) -> Result<(), Result<i32, wasmtime::Error>> {
    let max = ctx.setup.limits.kv_ops;
    if ctx.kv_exhausted {
        let msg = format!("KV call after its budget was used up (limits.kv_ops = {max})");
        return Err(Err(ctx.halt(ErrorCategory::Limit, msg)));
    }
    ctx.kv_ops += 1;
    if ctx.kv_ops > max {
        ctx.kv_exhausted = true;
        ctx.violate(
            ErrorCategory::Limit,
            format!("more than {max} KV calls (limits.kv_ops)"),
        );
        return Err(Ok(AbiCode::Budget as i32));
    }
    Ok(())
}

/// Reads and checks a key: UTF-8, size, and the granted patterns.
fn checked_key(
    caller: &mut Caller<'_, StepCtx>,
    ptr: i32,
    len: i32,
    write: bool,
) -> Result<String, i32> {
    let max = caller.data().setup.limits.kv_key_bytes;
    if len > max as i32 {
        let ctx = caller.data_mut();
        ctx.violate(
            ErrorCategory::Limit,
            format!("key of {len} bytes exceeds limits.kv_key_bytes ({max})"),
        );
        return Err(AbiCode::TooLarge as i32);
    }
    let key = read_str(caller, ptr, len).map_err(|c| c as i32)?;
    let ctx = caller.data_mut();
    let patterns = if write {
        &ctx.setup.write_patterns
    } else {
        &ctx.setup.read_patterns
    };
    if !patterns.allows(&key) {
        let verb = if write { "write" } else { "read" };
        let granted: Vec<&str> = patterns.patterns().collect();
        let msg =
            format!("{verb} of key `{key}` denied: granted kv_{verb} patterns are {granted:?}");
        ctx.violate(ErrorCategory::DeniedKey, msg);
        return Err(AbiCode::Denied as i32);
    }
    Ok(key)
}

fn kv_get(
    mut caller: Caller<'_, StepCtx>,
    kp: i32,
    kl: i32,
    buf: i32,
    cap: i32,
) -> wasmtime::Result<i64> {
    if let Err(refusal) = kv_budget(caller.data_mut()) {
        return refusal.map(i64::from);
    }
    let key = match checked_key(&mut caller, kp, kl, false) {
        Ok(k) => k,
        Err(code) => return Ok(code.into()),
    };
    if let Err(code) = check_buffer(&mut caller, buf, cap) {
        return Ok(code as i64);
    }
    let ctx = caller.data_mut();
    let value = match ctx.staged.get(&key) {
        Some(staged) => staged.clone(),
        None => match ctx.setup.kv.get(&key) {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("reading key `{key}` from the store failed: {e}");
                return Err(ctx.halt(ErrorCategory::Host, msg));
            }
        },
    };
    let Some(value) = value else {
        return Ok(AbiCode::NotFound as i64);
    };
    write_guest(&mut caller, buf, cap, &value).map_err(|_| {
        wasmtime::format_err!("guest memory shrank during a call; impossible in wasm32")
    })?;
    Ok(value.len() as i64)
}

fn kv_put(
    mut caller: Caller<'_, StepCtx>,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> wasmtime::Result<i32> {
    if let Err(refusal) = kv_budget(caller.data_mut()) {
        return refusal;
    }
    let key = match checked_key(&mut caller, kp, kl, true) {
        Ok(k) => k,
        Err(code) => return Ok(code),
    };
    let limits = caller.data().setup.limits;
    if vl > limits.kv_value_bytes as i32 {
        let msg = format!(
            "value of {vl} bytes for key `{key}` exceeds limits.kv_value_bytes ({})",
            limits.kv_value_bytes
        );
        caller.data_mut().violate(ErrorCategory::Limit, msg);
        return Ok(AbiCode::TooLarge as i32);
    }
    let value = match read_guest(&mut caller, vp, vl) {
        Ok(v) => v,
        Err(code) => return Ok(code as i32),
    };
    let ctx = caller.data_mut();
    let added = key.len() + value.len();
    if ctx.staged_bytes + added > limits.kv_write_bytes as usize {
        ctx.kv_exhausted = true;
        let msg = format!(
            "staged KV writes exceed limits.kv_write_bytes ({})",
            limits.kv_write_bytes
        );
        ctx.violate(ErrorCategory::Limit, msg);
        return Ok(AbiCode::Budget as i32);
    }
    ctx.staged_bytes += added;
    ctx.staged.insert(key, Some(value));
    Ok(0)
}

fn kv_delete(mut caller: Caller<'_, StepCtx>, kp: i32, kl: i32) -> wasmtime::Result<i32> {
    if let Err(refusal) = kv_budget(caller.data_mut()) {
        return refusal;
    }
    let key = match checked_key(&mut caller, kp, kl, true) {
        Ok(k) => k,
        Err(code) => return Ok(code),
    };
    let ctx = caller.data_mut();
    ctx.staged_bytes += key.len();
    ctx.staged.insert(key, None);
    Ok(0)
}

// ---------------------------------------------------------------------------
// runbox:tool-read/v1 and runbox:tool-mutate/v1
// ---------------------------------------------------------------------------

type ToolArgs = (i32, i32, i32, i32, i32, i32);

/// Checks a tool call before anything runs; returns the tool name and args.
fn admit_tool_call(
    caller: &mut Caller<'_, StepCtx>,
    mode: ToolMode,
    (np, nl, ap, al, buf, cap): ToolArgs,
) -> Result<(String, serde_json::Value), Result<i64, wasmtime::Error>> {
    let ctx = caller.data_mut();
    let max = ctx.setup.limits.tool_calls;
    if ctx.tools_exhausted {
        let msg = format!("tool call after its budget was used up (limits.tool_calls = {max})");
        return Err(Err(ctx.halt(ErrorCategory::Limit, msg)));
    }
    if ctx.tool_calls.len() >= max as usize {
        ctx.tools_exhausted = true;
        ctx.violate(
            ErrorCategory::Limit,
            format!("more than {max} tool calls (limits.tool_calls)"),
        );
        return Err(Ok(AbiCode::Budget as i64));
    }
    let code = |c: AbiCode| Err(Ok(c as i64));
    let name = match read_str(caller, np, nl) {
        Ok(n) if n.len() <= 128 => n,
        Ok(_) | Err(_) => return code(AbiCode::Invalid),
    };
    let ctx = caller.data_mut();
    let registry_mode = ctx.setup.tools.get(&name).map(|t| t.mode);
    let granted = ctx.setup.granted_tools.contains(&name);
    if !granted || registry_mode != Some(mode) {
        let msg = match registry_mode {
            _ if !granted => {
                format!("call of tool `{name}` denied: not in the step's `tools` grant")
            }
            Some(actual) => format!(
                "call of tool `{name}` through tool-{mode} denied: the registry declares it `{actual}`"
            ),
            None => format!("call of unknown tool `{name}` denied"),
        };
        ctx.violate(ErrorCategory::DeniedTool, msg);
        return code(AbiCode::Denied);
    }
    // Tool arguments are bounded by the key/value style limits of the call.
    if al > 64 * 1024 {
        return code(AbiCode::TooLarge);
    }
    let args = match read_guest(caller, ap, al).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        _ => return code(AbiCode::Invalid),
    };
    if check_buffer(caller, buf, cap).is_err() {
        return code(AbiCode::Invalid);
    }
    Ok((name, args))
}

async fn tool_call(
    mut caller: Caller<'_, StepCtx>,
    mode: ToolMode,
    args: ToolArgs,
) -> wasmtime::Result<i64> {
    let (name, tool_args) = match admit_tool_call(&mut caller, mode, args) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let ctx = caller.data_mut();
    if mode == ToolMode::Mutate && !ctx.mutation_announced {
        if let Some(guard) = ctx.setup.guard.as_mut()
            && let Err(e) = guard.before_first_mutation(&name)
        {
            let msg = format!("cannot record the attempt start before mutating tool `{name}`: {e}");
            return Err(ctx.halt(ErrorCategory::Host, msg));
        }
        ctx.mutation_announced = true;
    }
    let tools = ctx.setup.tools.clone();
    let cap = ctx.setup.limits.tool_output_bytes;
    let started = std::time::Instant::now();
    let result = tools.run(&name, &tool_args, cap).await;
    let ctx = caller.data_mut();
    let (json, record) = match result {
        Ok(out) => {
            let json = serde_json::json!({
                "rc": out.rc, "stdout": out.stdout, "stderr": out.stderr,
                "truncated": out.truncated, "timed_out": out.timed_out,
            });
            let record = ToolCall {
                name: name.clone(),
                mode,
                rc: out.rc,
                timed_out: out.timed_out,
                error: None,
                duration_ms: out.duration_ms,
            };
            (Some(json), record)
        }
        Err(e) => {
            let record = ToolCall {
                name: name.clone(),
                mode,
                rc: -1,
                timed_out: false,
                error: Some(e.to_string()),
                duration_ms: started.elapsed().as_millis() as u64,
            };
            (None, record)
        }
    };
    tracing::info!(step = %ctx.setup.step, tool = %name, %mode, rc = record.rc, "tool call");
    ctx.tool_calls.push(record);
    let Some(json) = json else {
        return Ok(AbiCode::ToolFailure as i64);
    };
    let bytes = serde_json::to_vec(&json).expect("a Value always serializes");
    let (_, _, _, _, buf, cap) = args;
    write_guest(&mut caller, buf, cap, &bytes).map_err(|_| {
        wasmtime::format_err!("guest memory shrank during a call; impossible in wasm32")
    })?;
    Ok(bytes.len() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_range_refuses_negative_overflowing_and_out_of_bounds() {
        assert_eq!(guest_range(100, 0, 100), Ok(0..100));
        assert_eq!(guest_range(100, 100, 0), Ok(100..100));
        assert_eq!(guest_range(100, -1, 1), Err(AbiCode::Invalid));
        assert_eq!(guest_range(100, 0, -1), Err(AbiCode::Invalid));
        assert_eq!(guest_range(100, 50, 51), Err(AbiCode::Invalid));
        assert_eq!(
            guest_range(usize::MAX, i32::MAX, i32::MAX),
            Ok(i32::MAX as usize..2 * i32::MAX as usize)
        );
    }

    #[test]
    fn mutate_is_withheld_without_token_and_in_read_only_mode() {
        let tools = ToolRegistry::from_toml(
            "[tools.restart]\nmode = \"mutate\"\nargv = [\"true\"]\n",
            std::path::Path::new("t"),
            Default::default(),
        )
        .unwrap();
        let mut policy = StepPolicy::default();
        policy.grants.tools = vec!["restart".into()];
        policy.grants.kv_write = vec!["a".into()];
        let no_token = Linked::from_policy(&policy, &tools, Capabilities::default());
        assert!(!no_token.tool_mutate);
        assert!(withheld(TOOL_MUTATE, &no_token).unwrap().contains("token"));
        let read_only = Linked::from_policy(
            &policy,
            &tools,
            Capabilities {
                allow_mutate: true,
                read_only: true,
            },
        );
        assert!(!read_only.tool_mutate && !read_only.kv_write);
        assert!(
            withheld(TOOL_MUTATE, &read_only)
                .unwrap()
                .contains("read-only")
        );
        let full = Linked::from_policy(
            &policy,
            &tools,
            Capabilities {
                allow_mutate: true,
                read_only: false,
            },
        );
        assert!(full.tool_mutate && full.kv_write);
    }
}
