//! The host functions of ABI v1 and the guest-memory helpers under them.
//!
//! Every pointer, length, string and JSON document that crosses from the
//! guest is hostile until checked here: offsets and lengths are
//! bounds-checked against the guest's exported `memory` before any copy,
//! strings must be UTF-8, and every byte the host keeps on the guest's
//! behalf (staged writes, logs, tool output) is counted against a limit,
//! because wasmtime's store limits only see guest memory.

use std::ops::Range;

use wasmtime::{AsContextMut, Caller, Extern, Linker};

use runbox_abi::{
    Code as AbiCode, KV_READ, KV_WRITE, LAST_TOOL_ANSWER, LOG_LEVELS, STEP, TOOL_MUTATE, TOOL_READ,
};
use runbox_core::attempt::{ErrorCategory, LogLine, Outcome, ToolCall};
use runbox_core::tools::ToolMode;

use crate::abi::Linked;
use crate::hooks::Refusal;
use crate::state::StepCtx;

/// Defines WASI and exactly the capability modules in `linked`.
pub(super) fn link(linker: &mut Linker<StepCtx>, linked: &Linked) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |ctx: &mut StepCtx| &mut ctx.wasi)?;
    linker.func_wrap(STEP, "input_len", input_len)?;
    linker.func_wrap(STEP, "input_read", input_read)?;
    linker.func_wrap(STEP, "log", log)?;
    linker.func_wrap(STEP, "finish", finish)?;
    linker.func_wrap(STEP, LAST_TOOL_ANSWER, last_tool_answer)?;
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

/// Bytes of output budget each log line costs on top of its message.
pub(crate) const LOG_LINE_OVERHEAD: usize = 32;

fn log(mut caller: Caller<'_, StepCtx>, level: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let Ok(bytes) = read_guest(&mut caller, ptr, len) else {
        let msg = format!("log: message at {ptr}+{len} is outside guest memory");
        return Err(caller.data_mut().halt(ErrorCategory::Trap, msg));
    };
    let ctx = caller.data_mut();
    let Some(level) = usize::try_from(level).ok().and_then(|l| LOG_LEVELS.get(l)) else {
        let msg = format!("log: unknown level {level} (0 trace .. 4 error)");
        return Err(ctx.halt(ErrorCategory::Trap, msg));
    };
    // Each line also costs a fixed overhead, so empty messages cannot grow
    // the host's log list for free.
    if !ctx.output.take(bytes.len() + LOG_LINE_OVERHEAD) {
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

/// Copies the answer of the attempt's most recent tool call again. A guest
/// whose buffer was too small reads the rest here: calling the tool again
/// would run it again (twice the mutation, for a mutating tool). Not a tool
/// call: no budget, nothing on the tape (the answer already is).
fn last_tool_answer(mut caller: Caller<'_, StepCtx>, buf: i32, cap: i32) -> i64 {
    if let Err(code) = check_buffer(&mut caller, buf, cap) {
        return i64::from(code.raw());
    }
    let Some(answer) = caller.data_mut().last_answer.take() else {
        return i64::from(AbiCode::NotFound.raw());
    };
    let result = write_guest(&mut caller, buf, cap, &answer);
    let len = answer.len() as i64;
    caller.data_mut().last_answer = Some(answer);
    match result {
        Ok(()) => len,
        Err(code) => i64::from(code.raw()),
    }
}

// ---------------------------------------------------------------------------
// runbox:kv-read/v1 and runbox:kv-write/v1
// ---------------------------------------------------------------------------

/// Counts one KV call against the budget: `Err(Ok(code))` refuses the call,
/// `Err(Err(trap))` stops a guest that keeps going after a refusal.
fn kv_budget(ctx: &mut StepCtx) -> Result<(), Result<i32, wasmtime::Error>> {
    let max = ctx.setup.limits.kv_ops;
    if let Some(limit) = ctx.kv_exhausted {
        let msg = format!("KV call after its budget was used up (limits.{limit})");
        return Err(Err(ctx.halt(ErrorCategory::Limit, msg)));
    }
    ctx.kv_ops += 1;
    if ctx.kv_ops > max {
        ctx.kv_exhausted = Some("kv_ops");
        ctx.violate(
            ErrorCategory::Limit,
            format!("more than {max} KV calls (limits.kv_ops)"),
        );
        return Err(Ok(AbiCode::Budget.raw()));
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
        return Err(AbiCode::TooLarge.raw());
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
        return Err(AbiCode::Denied.raw());
    }
    Ok(key)
}

/// Admits one KV call: counts it against the budget, then checks its key.
/// `Err` is the call's answer: a refusal code, or a trap.
fn admit_kv(
    caller: &mut Caller<'_, StepCtx>,
    kp: i32,
    kl: i32,
    write: bool,
) -> Result<String, wasmtime::Result<i32>> {
    kv_budget(caller.data_mut())?;
    checked_key(caller, kp, kl, write).map_err(Ok)
}

/// Stages a put (`Some`) or delete (`None`); both count against
/// `limits.kv_write_bytes`, and running past it refuses this call and ends
/// the KV budget.
fn stage(ctx: &mut StepCtx, key: String, value: Option<Vec<u8>>) -> i32 {
    let max = ctx.setup.limits.kv_write_bytes;
    let added = key.len() + value.as_ref().map_or(0, Vec::len);
    if ctx.staged_bytes + added > max as usize {
        ctx.kv_exhausted = Some("kv_write_bytes");
        let msg = format!("staged KV writes exceed limits.kv_write_bytes ({max})");
        ctx.violate(ErrorCategory::Limit, msg);
        return AbiCode::Budget.raw();
    }
    ctx.staged_bytes += added;
    ctx.staged.insert(key, value);
    0
}

fn kv_get(
    mut caller: Caller<'_, StepCtx>,
    kp: i32,
    kl: i32,
    buf: i32,
    cap: i32,
) -> wasmtime::Result<i64> {
    let key = match admit_kv(&mut caller, kp, kl, false) {
        Ok(k) => k,
        Err(answer) => return answer.map(i64::from),
    };
    if let Err(code) = check_buffer(&mut caller, buf, cap) {
        return Ok(code as i64);
    }
    let ctx = caller.data_mut();
    let value = match ctx.staged.get(&key) {
        Some(staged) => staged.clone(),
        None => match ctx.setup.tape.kv_get(&key) {
            Some(Ok(recorded)) => recorded,
            Some(Err(divergence)) => {
                return Err(ctx.halt(ErrorCategory::Host, format!("replay diverged {divergence}")));
            }
            None => match ctx.setup.kv.get(&key) {
                Ok(v) => {
                    ctx.setup.tape.kv_seen(&key, &v);
                    v
                }
                Err(e) => {
                    let msg = format!("reading key `{key}` from the store failed: {e}");
                    return Err(ctx.halt(ErrorCategory::Host, msg));
                }
            },
        },
    };
    let Some(value) = value else {
        return Ok(i64::from(AbiCode::NotFound.raw()));
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
    let key = match admit_kv(&mut caller, kp, kl, true) {
        Ok(k) => k,
        Err(answer) => return answer,
    };
    let limits = caller.data().setup.limits;
    if vl > limits.kv_value_bytes as i32 {
        let msg = format!(
            "value of {vl} bytes for key `{key}` exceeds limits.kv_value_bytes ({})",
            limits.kv_value_bytes
        );
        caller.data_mut().violate(ErrorCategory::Limit, msg);
        return Ok(AbiCode::TooLarge.raw());
    }
    let value = match read_guest(&mut caller, vp, vl) {
        Ok(v) => v,
        Err(code) => return Ok(code as i32),
    };
    Ok(stage(caller.data_mut(), key, Some(value)))
}

fn kv_delete(mut caller: Caller<'_, StepCtx>, kp: i32, kl: i32) -> wasmtime::Result<i32> {
    let key = match admit_kv(&mut caller, kp, kl, true) {
        Ok(k) => k,
        Err(answer) => return answer,
    };
    Ok(stage(caller.data_mut(), key, None))
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
        return Err(Ok(i64::from(AbiCode::Budget.raw())));
    }
    let code = |c: AbiCode| Err(Ok(i64::from(c.raw())));
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
    let Ok(Ok(args)) = read_guest(caller, ap, al).map(|b| serde_json::from_slice(&b)) else {
        return code(AbiCode::Invalid);
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
    // Whatever this call ends in, an older answer is no longer "the last".
    caller.data_mut().last_answer = None;
    let (name, tool_args) = match admit_tool_call(&mut caller, mode, args) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let ctx = caller.data_mut();
    if mode == ToolMode::Mutate
        && let Some(guard) = ctx.setup.guard.as_mut()
    {
        let first = !ctx.mutation_announced;
        if let Err(refusal) = guard.before_mutation(&name, first, &ctx.staged) {
            let (category, msg) = match refusal {
                Refusal::Held(why) => (
                    ErrorCategory::Held,
                    format!("mutating tool `{name}` held, not called: {why}"),
                ),
                Refusal::Host(e) => (
                    ErrorCategory::Host,
                    format!("cannot record the attempt start before mutating tool `{name}`: {e}"),
                ),
            };
            return Err(ctx.halt(category, msg));
        }
        ctx.mutation_announced = true;
    }
    let tools = ctx.setup.tools.clone();
    let cap = ctx.setup.limits.tool_output_bytes;
    let tape = ctx.setup.tape.clone();
    let dry = mode == ToolMode::Mutate && tape.is_dry_run();
    let (json, record, bad_args) = match tape.tool(&name, mode, &tool_args) {
        _ if dry => {
            let (json, record, bad_args) = dry_run_call(&tools, &name, &tool_args);
            let error = record.error.as_deref();
            tape.tool_seen(&name, mode, &tool_args, json.as_ref(), error, bad_args);
            (json, record, bad_args)
        }
        Some(Err(divergence)) => {
            return Err(ctx.halt(ErrorCategory::Host, format!("replay diverged {divergence}")));
        }
        Some(Ok((answer, error, bad_args))) => {
            let (json, record) = replayed_call(&name, mode, answer, error);
            (json, record, bad_args)
        }
        None => {
            let started = std::time::Instant::now();
            let result = crate::runner::run(&tools, &name, &tool_args, cap).await;
            let bad_args = matches!(result, Err(runbox_core::tools::ToolError::BadArgs { .. }));
            let (json, record) = live_call(&name, mode, result, started);
            let error = record.error.as_deref();
            tape.tool_seen(&name, mode, &tool_args, json.as_ref(), error, bad_args);
            (json, record, bad_args)
        }
    };
    let ctx = caller.data_mut();
    tracing::info!(step = %ctx.setup.step, tool = %name, %mode, rc = record.rc, "tool call");
    ctx.tool_calls.push(record);
    let Some(json) = json else {
        // Arguments that do not fit the tool's types are the step's fault
        // (-4, as ABI.md says); anything else is the tool's (-6).
        let code = if bad_args {
            AbiCode::Invalid
        } else {
            AbiCode::ToolFailure
        };
        return Ok(i64::from(code.raw()));
    };
    let bytes = serde_json::to_vec(&json).expect("a Value always serializes");
    let (_, _, _, _, buf, cap) = args;
    write_guest(&mut caller, buf, cap, &bytes).map_err(|_| {
        wasmtime::format_err!("guest memory shrank during a call; impossible in wasm32")
    })?;
    let len = bytes.len() as i64;
    caller.data_mut().last_answer = Some(bytes);
    Ok(len)
}

/// The JSON a step receives for a tool's result, and the call's record.
fn live_call(
    name: &str,
    mode: ToolMode,
    result: Result<crate::runner::ToolOutput, runbox_core::tools::ToolError>,
    started: std::time::Instant,
) -> (Option<serde_json::Value>, ToolCall) {
    match result {
        Ok(out) => {
            let json = serde_json::json!({
                "rc": out.rc, "stdout": out.stdout, "stderr": out.stderr,
                "truncated": out.truncated, "timed_out": out.timed_out,
            });
            let record = ToolCall {
                name: name.to_string(),
                mode,
                rc: out.rc,
                timed_out: out.timed_out,
                error: None,
                duration_ms: out.duration_ms,
                dry_run: false,
            };
            (Some(json), record)
        }
        Err(e) => {
            let record = ToolCall {
                name: name.to_string(),
                mode,
                rc: -1,
                timed_out: false,
                error: Some(e.to_string()),
                duration_ms: started.elapsed().as_millis() as u64,
                dry_run: false,
            };
            (None, record)
        }
    }
}

/// A dry run's mutating call: the arguments are checked as for a real call,
/// nothing runs, and the step gets the tool's declared `dry_run` reply (or
/// a failure when it declares none).
fn dry_run_call(
    tools: &runbox_core::tools::ToolRegistry,
    name: &str,
    args: &serde_json::Value,
) -> (Option<serde_json::Value>, ToolCall, bool) {
    let mut record = ToolCall {
        name: name.to_string(),
        mode: ToolMode::Mutate,
        rc: -1,
        timed_out: false,
        error: None,
        duration_ms: 0,
        dry_run: true,
    };
    if let Err(e) = tools.argv(name, args) {
        let bad_args = matches!(e, runbox_core::tools::ToolError::BadArgs { .. });
        record.error = Some(e.to_string());
        return (None, record, bad_args);
    }
    let would = format!("dry run: would call `{name}` with {args}");
    match tools.get(name).and_then(|t| t.dry_run.clone()) {
        Some(reply) => {
            record.rc = reply.rc;
            record.error = Some(would);
            (Some(reply.step_json()), record, false)
        }
        None => {
            record.error = Some(format!("{would}; it declares no `dry_run` reply"));
            (None, record, false)
        }
    }
}

/// A tool call answered from a recording: nothing runs.
fn replayed_call(
    name: &str,
    mode: ToolMode,
    answer: Option<serde_json::Value>,
    error: Option<String>,
) -> (Option<serde_json::Value>, ToolCall) {
    let field = |k: &str| answer.as_ref().and_then(|a| a.get(k).cloned());
    let record = ToolCall {
        name: name.to_string(),
        mode,
        rc: field("rc")
            .and_then(|v| v.as_i64())
            .map_or(-1, |rc| rc as i32),
        timed_out: field("timed_out")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        error,
        duration_ms: 0,
        dry_run: false,
    };
    (answer, record)
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
}
