//! ABI v1: one import module per capability, the return codes, which modules
//! a step's linker gets, and the import check that refuses a module before
//! it runs. The host functions themselves live in `hostfns`.
//!
//! Return codes follow `guest-sdk/ABI.md`: non-negative is success, and
//! [`runbox_abi::Code`] lists the errors. Calls with nothing to return (`log`,
//! `finish`) trap on bad arguments instead.

use wasmtime::{ExternType, InstancePre, Linker, Module, ValType};

use runbox_abi::{
    KV_READ, KV_WRITE, LAST_TOOL_ANSWER, MODULE_PREFIX, STEP, TOOL_MUTATE, TOOL_READ, WASI,
};
use runbox_core::attempt::{ErrorCategory, StepError};
use runbox_core::policy::StepPolicy;
use runbox_core::tools::ToolRegistry;

use crate::Capabilities;
use crate::state::StepCtx;

/// Which capability modules a step's linker defines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
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
        let runbox_core::tools::Modes { read, mutate } = tools.modes(&policy.grants);
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
    AbiFunc { module: STEP, name: LAST_TOOL_ANSWER, params: &[I, I], results: &[Ty::I64] },
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
pub(crate) fn withheld(module: &str, linked: &Linked) -> Option<String> {
    match module {
        STEP | WASI => None,
        KV_READ if !linked.kv_read => Some("its policy grants no `kv_read` patterns".into()),
        KV_WRITE if linked.kv_write_withheld => Some(format!(
            "read-only mode links no KV write capability ({})",
            runbox_core::policy::READ_ONLY_KV_HINT
        )),
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
    linker: &Linker<StepCtx>,
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
    linker
        .instantiate_pre(module)
        .map_err(|e| deny(format!("cannot be linked: {}", crate::root_message(&e))))
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
        .any(|i| i.module().starts_with(MODULE_PREFIX) && i.name() != "input_len");
    if needs_memory && !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err(invalid(
            "imports runbox functions that take pointers but exports no `memory`".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
