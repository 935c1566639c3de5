//! Components: steps built against the WIT package `runbox:step@1.0.0`
//! (`guest-sdk/wit/step.wit`) instead of ABI v1.
//!
//! The same rules as for core modules, through the same functions
//! ([`crate::calls`]): each runbox interface is linked only when the ABI v1
//! module of its capability would be, and an import of an ungranted one is
//! refused before the component runs. WASI 0.2 comes from the same empty
//! context as preview 1 (no preopens, no environment, no network; stdout and
//! stderr captured; clocks and random on the tape); `wasi:http`, which
//! wasmtime-wasi does not implement, is linked as functions that stop the
//! step, so a runtime that imports it still loads and can never use it.

use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker, ResourceType};

use runbox_abi::{Code as AbiCode, ComponentImport, WIT_PACKAGE, WIT_VERSION};
use runbox_core::attempt::{ErrorCategory, Outcome, StepError};
use runbox_core::tools::ToolMode;
use tracing::Instrument;

use crate::abi::{Linked, withheld};
use crate::calls;
use crate::state::StepCtx;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../guest-sdk/wit",
        world: "step",
        imports: {
            // Tools run as child processes: the host awaits them.
            "runbox:step/tool-read": async | trappable,
            "runbox:step/tool-mutate": async | trappable,
            // Every call may stop the step (a budget spent twice, a limit).
            default: trappable,
        },
        exports: { default: async },
    });
}

use bindings::runbox::step::{input, kv_read, kv_write, log, tool_mutate, tool_read, types};
use types::{Answer, ErrorCode, OutcomeError};

/// A component checked against its grants, ready to instantiate.
pub(crate) type ComponentPre = bindings::StepPre<StepCtx>;

/// The host state the interfaces are implemented on: the attempt's own.
fn this(ctx: &mut StepCtx) -> &mut StepCtx {
    ctx
}

/// Defines WASI 0.2 and exactly the runbox interfaces in `linked`.
pub(crate) fn link(linker: &mut Linker<StepCtx>, linked: &Linked) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    types::add_to_linker::<StepCtx, HasSelf<StepCtx>>(linker, this)?;
    input::add_to_linker::<StepCtx, HasSelf<StepCtx>>(linker, this)?;
    log::add_to_linker::<StepCtx, HasSelf<StepCtx>>(linker, this)?;
    if linked.kv_read {
        kv_read::add_to_linker::<StepCtx, HasSelf<StepCtx>>(linker, this)?;
    }
    if linked.kv_write {
        kv_write::add_to_linker::<StepCtx, HasSelf<StepCtx>>(linker, this)?;
    }
    if linked.tool_read {
        tool_read::add_to_linker::<StepCtx, HasSelf<StepCtx>>(linker, this)?;
    }
    if linked.tool_mutate {
        tool_mutate::add_to_linker::<StepCtx, HasSelf<StepCtx>>(linker, this)?;
    }
    Ok(())
}

/// Checks a component's imports and exports before it may run: every
/// import is a granted `runbox:step@1.0.0` interface or WASI 0.2, and it
/// exports the world's `run`.
pub(crate) fn check(
    step: &str,
    component: &Component,
    linked: &Linked,
    linker: &Linker<StepCtx>,
) -> Result<ComponentPre, StepError> {
    let deny =
        |m: String| StepError::new(ErrorCategory::DeniedImport, format!("step `{step}` {m}"));
    let engine = component.engine();
    // `wasi:http` refusals are defined per component, for what it imports.
    let mut linker = linker.clone();
    for (name, import) in component.component_type().imports(engine) {
        match ComponentImport::of(name) {
            ComponentImport::Runbox { module, .. } => {
                if let Some(why) = withheld(module, linked) {
                    return Err(deny(format!(
                        "imports `{name}`, which is not linked: {why}"
                    )));
                }
            }
            ComponentImport::UnknownRunbox(rest) => {
                return Err(deny(format!(
                    "imports `{name}`: `{WIT_PACKAGE}@{WIT_VERSION}` has no interface `{rest}`"
                )));
            }
            ComponentImport::Wasi { .. } if name.starts_with("wasi:http/") => {
                refuse_http(&mut linker, name, &import.ty, engine)
                    .map_err(|e| deny(format!("cannot be linked: {}", crate::root_message(&e))))?;
            }
            // Resolved against wasmtime-wasi below: one it lacks is refused.
            ComponentImport::Wasi { .. } => {}
            ComponentImport::Outside => {
                return Err(deny(format!(
                    "imports `{name}`, which is neither an interface of `{WIT_PACKAGE}@{WIT_VERSION}` nor WASI 0.2"
                )));
            }
        }
    }
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| deny(format!("cannot be linked: {}", crate::root_message(&e))))?;
    bindings::StepPre::new(pre).map_err(|e| {
        StepError::new(
            ErrorCategory::InvalidModule,
            format!(
                "step `{step}` does not export `run` as the `{WIT_PACKAGE}@{WIT_VERSION}` world `step` defines it: {}",
                crate::root_message(&e)
            ),
        )
    })
}

/// Marks the resources of a refused `wasi:http` instance; never created.
struct HttpRefused;

/// The type of a resource a `wasi:http` instance names: the `wasi:io`
/// resources it uses (`use wasi:io/streams.{input-stream, …}`) are the very
/// ones WASI 0.2 links, or the component's types would not match; its own
/// (request, response, fields…) are never made.
fn http_resource(name: &str) -> ResourceType {
    use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, IoError};
    match name {
        "input-stream" => ResourceType::host::<DynInputStream>(),
        "output-stream" => ResourceType::host::<DynOutputStream>(),
        "pollable" => ResourceType::host::<DynPollable>(),
        "io-error" => ResourceType::host::<IoError>(),
        _ => ResourceType::host::<HttpRefused>(),
    }
}

/// Defines an imported `wasi:http` instance as functions that stop the
/// step when called: a step has no network, and tools are its way out.
fn refuse_http(
    linker: &mut Linker<StepCtx>,
    name: &str,
    item: &ComponentItem,
    engine: &wasmtime::Engine,
) -> wasmtime::Result<()> {
    let ComponentItem::ComponentInstance(instance) = item else {
        return Ok(()); // not an instance: instantiate_pre refuses it
    };
    let mut defined = linker.instance(name)?;
    for (export, ext) in instance.exports(engine) {
        match ext.ty {
            ComponentItem::ComponentFunc(_) => {
                let what = format!("`{name}`.`{export}`");
                defined.func_new(export, move |mut store, _, _, _| {
                    let msg = format!(
                        "{what} refused: a step has no network (wasi:http is linked only to refuse every call); call a granted tool instead"
                    );
                    Err(store.data_mut().halt(ErrorCategory::Trap, msg))
                })?;
            }
            ComponentItem::Resource(_) => {
                defined.resource(export, http_resource(export), |_, _| Ok(()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs one attempt: instantiates the component and calls `run`; its
/// result is the step's outcome, recorded as `finish` records it.
pub(crate) async fn run(pre: &ComponentPre, store: &mut Store<StepCtx>) -> wasmtime::Result<()> {
    let step = pre.instantiate_async(&mut *store).await?;
    let result = step.call_run(&mut *store).await?;
    let (outcome, bytes) = match result {
        Ok(json) => (Outcome::Ok, json.into_bytes()),
        Err(OutcomeError::Retry(r)) => (Outcome::Retry, r.into_bytes()),
        Err(OutcomeError::Escalate(r)) => (Outcome::Escalate, r.into_bytes()),
        Err(OutcomeError::Fail(r)) => (Outcome::Fail, r.into_bytes()),
    };
    calls::finish(store.data_mut(), outcome, bytes)
}

fn error_code(code: AbiCode) -> ErrorCode {
    match code {
        AbiCode::Denied => ErrorCode::Denied,
        AbiCode::TooLarge => ErrorCode::TooLarge,
        AbiCode::Budget => ErrorCode::Budget,
        AbiCode::ToolFailure => ErrorCode::ToolFailure,
        // "Not found" is `none` in WIT; no rule a component reaches says it.
        AbiCode::Invalid | AbiCode::NotFound => ErrorCode::Invalid,
    }
}

/// A call's answer: a value, a refusal the step sees, or a stop.
type Answered<T> = wasmtime::Result<Result<T, ErrorCode>>;

/// Admits one KV call (budget, key size, grant), as ABI v1's do. `Err` is
/// the call's answer.
fn admit_key<T>(ctx: &mut StepCtx, key: &str, write: bool) -> Result<(), Answered<T>> {
    calls::kv_budget(ctx).map_err(|e| e.map(|c| Err(error_code(c))))?;
    calls::key_size(ctx, key.len()).map_err(|c| Ok(Err(error_code(c))))?;
    calls::key_granted(ctx, key, write).map_err(|c| Ok(Err(error_code(c))))
}

impl types::Host for StepCtx {}

impl input::Host for StepCtx {
    fn get(&mut self) -> wasmtime::Result<String> {
        let _span = calls::host_call("input");
        // Serialized from a host JSON value: always UTF-8.
        Ok(String::from_utf8_lossy(&self.setup.input).into_owned())
    }
}

impl log::Host for StepCtx {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let _span = calls::host_call("log");
        let level = match level {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        calls::log(self, level, message.as_bytes())
    }
}

impl kv_read::Host for StepCtx {
    fn get(&mut self, key: String) -> Answered<Option<Vec<u8>>> {
        let _span = calls::host_call("kv_get");
        if let Err(answer) = admit_key(self, &key, false) {
            return answer;
        }
        Ok(Ok(calls::kv_value(self, &key)?))
    }
}

impl kv_write::Host for StepCtx {
    fn put(&mut self, key: String, value: Vec<u8>) -> Answered<()> {
        let _span = calls::host_call("kv_put");
        if let Err(answer) = admit_key(self, &key, true) {
            return answer;
        }
        if let Err(code) = calls::value_size(self, &key, value.len()) {
            return Ok(Err(error_code(code)));
        }
        Ok(calls::stage(self, key, Some(value)).map_err(error_code))
    }

    fn delete(&mut self, key: String) -> Answered<()> {
        let _span = calls::host_call("kv_delete");
        if let Err(answer) = admit_key(self, &key, true) {
            return answer;
        }
        Ok(calls::stage(self, key, None).map_err(error_code))
    }
}

impl tool_read::Host for StepCtx {
    async fn call(&mut self, name: String, args: String) -> Answered<Answer> {
        tool_call(self, ToolMode::Read, &name, &args)
            .instrument(calls::tool_span(ToolMode::Read))
            .await
    }
}

impl tool_mutate::Host for StepCtx {
    async fn call(&mut self, name: String, args: String) -> Answered<Answer> {
        tool_call(self, ToolMode::Mutate, &name, &args)
            .instrument(calls::tool_span(ToolMode::Mutate))
            .await
    }
}

/// A tool call, checked in ABI v1's order: budget, name, grant, args.
async fn tool_call(ctx: &mut StepCtx, mode: ToolMode, name: &str, args: &str) -> Answered<Answer> {
    if let Err(refusal) = calls::tool_budget(ctx) {
        return refusal.map(|c| Err(error_code(c)));
    }
    if name.len() > calls::TOOL_NAME_BYTES {
        return Ok(Err(ErrorCode::Invalid));
    }
    if let Err(code) = calls::tool_granted(ctx, name, mode) {
        return Ok(Err(error_code(code)));
    }
    if args.len() > calls::TOOL_ARGS_BYTES {
        return Ok(Err(ErrorCode::TooLarge));
    }
    let Ok(args) = serde_json::from_str::<serde_json::Value>(args) else {
        return Ok(Err(ErrorCode::Invalid));
    };
    let answered = calls::run_tool(ctx, name, mode, &args).await?;
    Ok(answered.map(|json| answer(&json)).map_err(error_code))
}

/// The WIT answer of a tool's JSON answer (live, dry-run, scripted or
/// replayed: all the same JSON).
fn answer(json: &serde_json::Value) -> Answer {
    let text = |k: &str| {
        json.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let flag = |k: &str| {
        json.get(k)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    };
    Answer {
        rc: json
            .get("rc")
            .and_then(serde_json::Value::as_i64)
            .and_then(|rc| i32::try_from(rc).ok())
            .unwrap_or(-1),
        stdout: text("stdout"),
        stderr: text("stderr"),
        truncated: flag("truncated"),
        timed_out: flag("timed_out"),
    }
}
