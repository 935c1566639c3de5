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
    Code as AbiCode, KV_READ, KV_WRITE, LAST_TOOL_ANSWER, STEP, TOOL_MUTATE, TOOL_READ,
};
use runbox_core::attempt::{ErrorCategory, Outcome};
use runbox_core::tools::ToolMode;
use tracing::Instrument;

use crate::abi::Linked;
use crate::calls;
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
            Box::new(
                tool_call(caller, ToolMode::Read, args)
                    .instrument(calls::tool_span(ToolMode::Read)),
            )
        })?;
    }
    if linked.tool_mutate {
        linker.func_wrap_async(TOOL_MUTATE, "call", |caller, args| {
            Box::new(
                tool_call(caller, ToolMode::Mutate, args)
                    .instrument(calls::tool_span(ToolMode::Mutate)),
            )
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
    let _span = calls::host_call("input_read");
    let input = std::mem::take(&mut caller.data_mut().setup.input);
    let n = input.len().min(len.max(0) as usize);
    let result = write_guest(&mut caller, ptr, len, &input[..n]);
    caller.data_mut().setup.input = input;
    match result {
        Ok(()) => n as i32,
        Err(code) => code as i32,
    }
}

fn log(mut caller: Caller<'_, StepCtx>, level: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let _span = calls::host_call("log");
    let Ok(bytes) = read_guest(&mut caller, ptr, len) else {
        let msg = format!("log: message at {ptr}+{len} is outside guest memory");
        return Err(caller.data_mut().halt(ErrorCategory::Trap, msg));
    };
    calls::log(caller.data_mut(), level, &bytes)
}

fn finish(mut caller: Caller<'_, StepCtx>, code: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let _span = calls::host_call("finish");
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
    calls::finish(ctx, outcome, bytes)?;
    // Unwind at once: nothing the guest does after `finish` counts.
    Err(wasmtime::format_err!("step finished"))
}

/// Copies the answer of the attempt's most recent tool call again. A guest
/// whose buffer was too small reads the rest here: calling the tool again
/// would run it again (twice the mutation, for a mutating tool). Not a tool
/// call: no budget, nothing on the tape (the answer already is).
fn last_tool_answer(mut caller: Caller<'_, StepCtx>, buf: i32, cap: i32) -> i64 {
    let _span = calls::host_call("last_tool_answer");
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

/// Reads and checks a key: size first (before copying it), UTF-8, and the
/// granted patterns.
fn checked_key(
    caller: &mut Caller<'_, StepCtx>,
    ptr: i32,
    len: i32,
    write: bool,
) -> Result<String, i32> {
    let size = usize::try_from(len).unwrap_or(0);
    calls::key_size(caller.data_mut(), size).map_err(AbiCode::raw)?;
    let key = read_str(caller, ptr, len).map_err(|c| c as i32)?;
    calls::key_granted(caller.data_mut(), &key, write).map_err(AbiCode::raw)?;
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
    calls::kv_budget(caller.data_mut()).map_err(|e| e.map(AbiCode::raw))?;
    checked_key(caller, kp, kl, write).map_err(Ok)
}

fn kv_get(
    mut caller: Caller<'_, StepCtx>,
    kp: i32,
    kl: i32,
    buf: i32,
    cap: i32,
) -> wasmtime::Result<i64> {
    let _span = calls::host_call("kv_get");
    let key = match admit_kv(&mut caller, kp, kl, false) {
        Ok(k) => k,
        Err(answer) => return answer.map(i64::from),
    };
    if let Err(code) = check_buffer(&mut caller, buf, cap) {
        return Ok(code as i64);
    }
    let Some(value) = calls::kv_value(caller.data_mut(), &key)? else {
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
    let _span = calls::host_call("kv_put");
    let key = match admit_kv(&mut caller, kp, kl, true) {
        Ok(k) => k,
        Err(answer) => return answer,
    };
    // A negative length is refused by the read below, not here.
    let size = usize::try_from(vl).unwrap_or(0);
    if let Err(code) = calls::value_size(caller.data_mut(), &key, size) {
        return Ok(code.raw());
    }
    let value = match read_guest(&mut caller, vp, vl) {
        Ok(v) => v,
        Err(code) => return Ok(code as i32),
    };
    Ok(calls::stage(caller.data_mut(), key, Some(value)).map_or_else(AbiCode::raw, |()| 0))
}

fn kv_delete(mut caller: Caller<'_, StepCtx>, kp: i32, kl: i32) -> wasmtime::Result<i32> {
    let _span = calls::host_call("kv_delete");
    let key = match admit_kv(&mut caller, kp, kl, true) {
        Ok(k) => k,
        Err(answer) => return answer,
    };
    Ok(calls::stage(caller.data_mut(), key, None).map_or_else(AbiCode::raw, |()| 0))
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
    calls::tool_budget(caller.data_mut()).map_err(|e| e.map(|c| i64::from(c.raw())))?;
    let code = |c: AbiCode| Err(Ok(i64::from(c.raw())));
    let name = match read_str(caller, np, nl) {
        Ok(n) if n.len() <= calls::TOOL_NAME_BYTES => n,
        Ok(_) | Err(_) => return code(AbiCode::Invalid),
    };
    if let Err(c) = calls::tool_granted(caller.data_mut(), &name, mode) {
        return code(c);
    }
    if usize::try_from(al).is_ok_and(|al| al > calls::TOOL_ARGS_BYTES) {
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
    let json = match calls::run_tool(caller.data_mut(), &name, mode, &tool_args).await? {
        Ok(json) => json,
        Err(code) => return Ok(i64::from(code.raw())),
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
