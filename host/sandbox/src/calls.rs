//! The rules of every host call, whichever ABI brought it: budgets, key
//! and value sizes, grants, staging, logging, the outcome, and tool calls
//! (the in-flight guard, the tape, the runner). ABI v1's host functions
//! (`hostfns`, guest pointers) and the component host (`component`, the
//! canonical ABI) decode their arguments and call these, so a rule is
//! written once and holds for both kinds of step.

use runbox_abi::{Code as AbiCode, LOG_LEVELS};
use runbox_core::attempt::{ErrorCategory, LogLine, Outcome, ToolCall};
use runbox_core::tools::{Shortfall, ToolMode};

use crate::hooks::Refusal;
use crate::state::StepCtx;

/// The span of one host call, entered for as long as the call runs, so a
/// trace shows each call a step made, whichever ABI brought it (the
/// entry points of `hostfns` and `component` open it; tool calls have
/// [`tool_span`]).
pub(crate) fn host_call(call: &'static str) -> tracing::span::EnteredSpan {
    tracing::info_span!("host_call", call).entered()
}

/// The span of one tool call, whole: admission, the guard, the tool. Its
/// tool and return code are recorded once known ([`run_tool`]).
pub(crate) fn tool_span(mode: ToolMode) -> tracing::Span {
    tracing::info_span!(
        "tool_call",
        %mode,
        tool = tracing::field::Empty,
        rc = tracing::field::Empty,
    )
}

/// Bytes of output budget each log line costs on top of its message, so
/// empty messages cannot grow the host's log list for free.
pub(crate) const LOG_LINE_OVERHEAD: usize = 32;

/// Longest tool name a call may carry (longer ones are invalid).
pub(crate) const TOOL_NAME_BYTES: usize = 128;

/// Largest tool args document (bytes of JSON) a call may carry.
pub(crate) const TOOL_ARGS_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Logs and the outcome
// ---------------------------------------------------------------------------

/// Keeps one log line, counted against `limits.output_bytes`; a bad level
/// or a full budget stops the step.
pub(crate) fn log(ctx: &mut StepCtx, level: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let Some(level) = usize::try_from(level).ok().and_then(|l| LOG_LEVELS.get(l)) else {
        let msg = format!("log: unknown level {level} (0 trace .. 4 error)");
        return Err(ctx.halt(ErrorCategory::Trap, msg));
    };
    if !ctx.output.take(bytes.len() + LOG_LINE_OVERHEAD) {
        let msg = format!(
            "output limit exceeded: stdout, stderr and logs may hold {} bytes (limits.output_bytes)",
            ctx.output.cap()
        );
        return Err(ctx.halt(ErrorCategory::Limit, msg));
    }
    let message = String::from_utf8_lossy(bytes).into_owned();
    tracing::info!(step = %ctx.setup.step, level, "{message}");
    ctx.logs.push(LogLine {
        level: (*level).to_string(),
        message,
    });
    Ok(())
}

/// Records the step's outcome: `ok` bytes must be JSON (or empty, `null`),
/// a reason UTF-8; both count against `limits.output_bytes`. `Err` stops
/// the step instead.
pub(crate) fn finish(ctx: &mut StepCtx, outcome: Outcome, bytes: Vec<u8>) -> wasmtime::Result<()> {
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
            Ok(())
        }
        Err(msg) => Err(ctx.halt(ErrorCategory::Trap, msg)),
    }
}

// ---------------------------------------------------------------------------
// KV
// ---------------------------------------------------------------------------

/// Counts one KV call against the budget: `Err(Ok(code))` refuses the call,
/// `Err(Err(trap))` stops a guest that keeps going after a refusal.
pub(crate) fn kv_budget(ctx: &mut StepCtx) -> Result<(), wasmtime::Result<AbiCode>> {
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
        return Err(Ok(AbiCode::Budget));
    }
    Ok(())
}

/// Refuses a key longer than `limits.kv_key_bytes` (checked before the
/// host copies it).
pub(crate) fn key_size(ctx: &mut StepCtx, len: usize) -> Result<(), AbiCode> {
    let max = ctx.setup.limits.kv_key_bytes;
    if len > max as usize {
        ctx.violate(
            ErrorCategory::Limit,
            format!("key of {len} bytes exceeds limits.kv_key_bytes ({max})"),
        );
        return Err(AbiCode::TooLarge);
    }
    Ok(())
}

/// Refuses a key outside the granted read (or write) patterns.
pub(crate) fn key_granted(ctx: &mut StepCtx, key: &str, write: bool) -> Result<(), AbiCode> {
    let patterns = if write {
        &ctx.setup.write_patterns
    } else {
        &ctx.setup.read_patterns
    };
    if patterns.allows(key) {
        return Ok(());
    }
    let verb = if write { "write" } else { "read" };
    let granted: Vec<&str> = patterns.patterns().collect();
    let msg = format!("{verb} of key `{key}` denied: granted kv_{verb} patterns are {granted:?}");
    ctx.violate(ErrorCategory::DeniedKey, msg);
    Err(AbiCode::Denied)
}

/// Refuses a value longer than `limits.kv_value_bytes`.
pub(crate) fn value_size(ctx: &mut StepCtx, key: &str, len: usize) -> Result<(), AbiCode> {
    let max = ctx.setup.limits.kv_value_bytes;
    if len > max as usize {
        let msg =
            format!("value of {len} bytes for key `{key}` exceeds limits.kv_value_bytes ({max})");
        ctx.violate(ErrorCategory::Limit, msg);
        return Err(AbiCode::TooLarge);
    }
    Ok(())
}

/// The value a read of an admitted key sees: the step's own staged write,
/// else the committed value (from the tape when replaying, recorded on it
/// otherwise). `Err` stops the step (a store failure, a replay divergence).
pub(crate) fn kv_value(ctx: &mut StepCtx, key: &str) -> wasmtime::Result<Option<Vec<u8>>> {
    if let Some(staged) = ctx.staged.get(key) {
        return Ok(staged.clone());
    }
    match ctx.setup.tape.kv_get(key) {
        Some(Ok(recorded)) => Ok(recorded),
        Some(Err(divergence)) => {
            Err(ctx.halt(ErrorCategory::Host, format!("replay diverged {divergence}")))
        }
        None => match ctx.setup.kv.get(key) {
            Ok(v) => {
                ctx.setup.tape.kv_seen(key, &v);
                Ok(v)
            }
            Err(e) => {
                let msg = format!("reading key `{key}` from the store failed: {e}");
                Err(ctx.halt(ErrorCategory::Host, msg))
            }
        },
    }
}

/// Stages a put (`Some`) or delete (`None`); both count against
/// `limits.kv_write_bytes`, and running past it refuses this call and ends
/// the KV budget.
pub(crate) fn stage(ctx: &mut StepCtx, key: String, value: Option<Vec<u8>>) -> Result<(), AbiCode> {
    let max = ctx.setup.limits.kv_write_bytes;
    let added = key.len() + value.as_ref().map_or(0, Vec::len);
    if ctx.staged_bytes + added > max as usize {
        ctx.kv_exhausted = Some("kv_write_bytes");
        let msg = format!("staged KV writes exceed limits.kv_write_bytes ({max})");
        ctx.violate(ErrorCategory::Limit, msg);
        return Err(AbiCode::Budget);
    }
    ctx.staged_bytes += added;
    ctx.staged.insert(key, value);
    Ok(())
}

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

/// Counts one tool call against `limits.tool_calls`: `Err(Ok(code))`
/// refuses it, `Err(Err(trap))` stops a guest that calls again after that.
pub(crate) fn tool_budget(ctx: &mut StepCtx) -> Result<(), wasmtime::Result<AbiCode>> {
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
        return Err(Ok(AbiCode::Budget));
    }
    Ok(())
}

/// Refuses a tool that is not granted, or is called through the other
/// mode's capability.
pub(crate) fn tool_granted(ctx: &mut StepCtx, name: &str, mode: ToolMode) -> Result<(), AbiCode> {
    let registry_mode = ctx.setup.tools.get(name).map(|t| t.mode);
    let granted = ctx.setup.granted_tools.iter().any(|t| t == name);
    if granted && registry_mode == Some(mode) {
        return Ok(());
    }
    let msg = match registry_mode {
        _ if !granted => format!("call of tool `{name}` denied: not in the step's `tools` grant"),
        Some(actual) => format!(
            "call of tool `{name}` through tool-{mode} denied: the registry declares it `{actual}`"
        ),
        None => format!("call of unknown tool `{name}` denied"),
    };
    ctx.violate(ErrorCategory::DeniedTool, msg);
    Err(AbiCode::Denied)
}

/// Runs an admitted tool call: the guard first for a mutating one, then
/// the tool (or its dry-run reply, or the recording's answer), recorded in
/// the attempt. `Ok(Err(code))` is a call that gave no answer; `Err` stops
/// the step (the guard held it, or replay diverged).
pub(crate) async fn run_tool(
    ctx: &mut StepCtx,
    name: &str,
    mode: ToolMode,
    args: &serde_json::Value,
) -> wasmtime::Result<Result<serde_json::Value, AbiCode>> {
    let span = tracing::Span::current();
    span.record("tool", name);
    if mode == ToolMode::Mutate {
        guard_mutation(ctx, name)?;
    }
    let tools = ctx.setup.tools.clone();
    let cap = ctx.setup.limits.tool_output_bytes;
    let tape = ctx.setup.tape.clone();
    let dry = mode == ToolMode::Mutate && tape.is_dry_run();
    let (json, record, bad_args) = match tape.tool(name, mode, args) {
        _ if dry => {
            let (json, record, bad_args) = dry_run_call(&tools, name, args);
            let error = record.error.as_deref();
            tape.tool_seen(name, mode, args, json.as_ref(), error, bad_args);
            (json, record, bad_args)
        }
        Some(Err(divergence)) => {
            return Err(ctx.halt(ErrorCategory::Host, format!("replay diverged {divergence}")));
        }
        Some(Ok((answer, error, bad_args))) => {
            let (json, record) = replayed_call(name, mode, answer, error);
            (json, record, bad_args)
        }
        None => {
            let started = std::time::Instant::now();
            // Known before the tool starts: a step stopped while the tool
            // runs (at its timeout) still shows the call, its outcome
            // unknown, and never reads as a step that did nothing.
            ctx.unanswered = Some(unanswered(name, mode));
            let result = crate::runner::run(&tools, name, args, cap).await;
            ctx.unanswered = None;
            let bad_args = matches!(result, Err(runbox_core::tools::ToolError::BadArgs { .. }));
            let (json, record) = live_call(name, mode, result, started);
            count_call(&record, started);
            let error = record.error.as_deref();
            tape.tool_seen(name, mode, args, json.as_ref(), error, bad_args);
            (json, record, bad_args)
        }
    };
    span.record("rc", record.rc);
    tracing::info!(step = %ctx.setup.step, tool = %name, %mode, rc = record.rc, "tool call");
    ctx.tool_calls.push(record);
    // Arguments that do not fit the tool's types are the step's fault
    // (invalid); anything else is the tool's (tool failure).
    Ok(json.ok_or(if bad_args {
        AbiCode::Invalid
    } else {
        AbiCode::ToolFailure
    }))
}

/// Before a mutating call runs: the engine's guard makes the attempt
/// durable (before the first), counts rate limits and checks brakes. A
/// refusal stops the step before the mutation happens.
fn guard_mutation(ctx: &mut StepCtx, name: &str) -> wasmtime::Result<()> {
    let Some(guard) = ctx.setup.guard.as_mut() else {
        return Ok(());
    };
    let first = !ctx.mutation_announced;
    if let Err(refusal) = guard.before_mutation(name, first, &ctx.staged) {
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
    Ok(())
}

/// Counts a tool call that ran (`runbox_tool_calls_total`).
fn count_call(record: &ToolCall, started: std::time::Instant) {
    let outcome = match record {
        ToolCall { error: Some(_), .. } => "error",
        ToolCall {
            timed_out: true, ..
        } => "timed-out",
        ToolCall { rc: 0, .. } => "ok",
        _ => "nonzero",
    };
    let seconds = started.elapsed().as_secs_f64();
    runbox_telemetry::tool_call(&record.name, record.mode.as_str(), outcome, seconds);
}

/// A live call whose answer has not come (yet): what the record keeps if
/// the step is stopped before it comes.
fn unanswered(name: &str, mode: ToolMode) -> ToolCall {
    ToolCall {
        name: name.to_string(),
        mode,
        rc: -1,
        timed_out: false,
        error: Some(
            "the step was stopped while the tool ran: whether the tool acted is unknown".into(),
        ),
        duration_ms: 0,
        dry_run: false,
    }
}

fn live_call(
    name: &str,
    mode: ToolMode,
    result: Result<crate::runner::ToolOutput, runbox_core::tools::ToolError>,
    started: std::time::Instant,
) -> (Option<serde_json::Value>, ToolCall) {
    match result {
        Ok(out) => {
            let json = out.answer.step_json(out.shortfall);
            let record = ToolCall {
                name: name.to_string(),
                mode,
                rc: out.answer.rc,
                timed_out: out.shortfall.timed_out,
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
            (Some(reply.step_json(Shortfall::default())), record, false)
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
