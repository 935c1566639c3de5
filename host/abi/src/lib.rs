//! # runbox ABI v1
//!
//! The contract between the runbox host and a step module, defined once and
//! used by both sides: the host links these modules and returns these codes;
//! the guest SDK imports these modules and decodes these codes.
//! `guest-sdk/ABI.md` is the prose reference.
//!
//! Each import module is one capability. The host defines a module in a
//! step's linker only when the step's policy grants it, so a step that
//! imports an ungranted capability is refused before it runs.
//!
//! ```
//! use runbox_abi::{Code, Outcome, KV_READ};
//!
//! assert_eq!(KV_READ, "runbox:kv-read/v1");
//! assert_eq!(Code::from_raw(-2), Some(Code::Denied));
//! assert_eq!(Outcome::from_code(2), Some(Outcome::Escalate));
//! ```
//!
//! This crate is `no_std` and has no dependencies, so a guest built for any
//! target can use it.

#![no_std]
#![deny(missing_docs)]

/// The always-linked module: input, logging, `finish`.
pub const STEP: &str = "runbox:step/v1";
/// KV read capability (`kv_read` grants).
pub const KV_READ: &str = "runbox:kv-read/v1";
/// KV write capability (`kv_write` grants).
pub const KV_WRITE: &str = "runbox:kv-write/v1";
/// Read-only tool capability (tools with mode `read`).
pub const TOOL_READ: &str = "runbox:tool-read/v1";
/// Mutating tool capability (tools with mode `mutate`; needs the mutation token).
pub const TOOL_MUTATE: &str = "runbox:tool-mutate/v1";
/// WASI preview 1, always linked with an empty context.
pub const WASI: &str = "wasi_snapshot_preview1";

/// `runbox:step/v1` function that copies the answer of the attempt's most
/// recent tool call again, without running the tool: `(buf, cap) -> i64`,
/// the answer's full length, or -1 when the last call gave no answer.
/// **Calling a tool again runs it again**: a guest whose buffer was too
/// small for an answer reads it with this call instead.
pub const LAST_TOOL_ANSWER: &str = "last_tool_answer";

/// The prefix every runbox capability module name starts with.
pub const MODULE_PREFIX: &str = "runbox:";

/// The WIT package a component step imports from (`guest-sdk/wit/step.wit`).
pub const WIT_PACKAGE: &str = "runbox:step";
/// The version of [`WIT_PACKAGE`] the host implements.
pub const WIT_VERSION: &str = "1.0.0";

/// Each interface of [`WIT_PACKAGE`] with the ABI v1 module that stands for
/// the same capability: a component's interface is linked exactly when the
/// module would be.
pub const WIT_INTERFACES: [(&str, &str); 7] = [
    ("types", STEP),
    ("input", STEP),
    ("log", STEP),
    ("kv-read", KV_READ),
    ("kv-write", KV_WRITE),
    ("tool-read", TOOL_READ),
    ("tool-mutate", TOOL_MUTATE),
];

/// WASI 0.2 packages the host links into a component as implementations
/// that refuse every call: no preopened directory, no address, no lookup,
/// no outgoing request.
pub const WASI_DENIED: [&str; 3] = ["wasi:filesystem", "wasi:sockets", "wasi:http"];

/// What a component's import name asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentImport<'a> {
    /// An interface of `runbox:step`: the ABI v1 module of its capability.
    Runbox {
        /// The interface (`kv-read`).
        interface: &'a str,
        /// The ABI v1 module that stands for its capability.
        module: &'static str,
    },
    /// A `runbox:step` name that is no interface of this version.
    UnknownRunbox(&'a str),
    /// A WASI 0.2 interface linked with an empty context (clocks, random,
    /// stdio, exit, environment) or, for [`WASI_DENIED`], refusing every call.
    Wasi {
        /// Whether every call is refused.
        denied: bool,
    },
    /// Anything else: never linked.
    Outside,
}

impl<'a> ComponentImport<'a> {
    /// Sorts an import name such as `runbox:step/kv-read@1.0.0`.
    pub fn of(name: &'a str) -> Self {
        if let Some(rest) = name
            .strip_prefix(WIT_PACKAGE)
            .and_then(|r| r.strip_prefix('/'))
        {
            let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
            let found = WIT_INTERFACES.iter().find(|(i, _)| *i == interface);
            return match found {
                Some((_, module)) if version == WIT_VERSION => {
                    ComponentImport::Runbox { interface, module }
                }
                _ => ComponentImport::UnknownRunbox(rest),
            };
        }
        if name.starts_with("wasi:") {
            let package = name.split('/').next().unwrap_or(name);
            return ComponentImport::Wasi {
                denied: WASI_DENIED.contains(&package),
            };
        }
        ComponentImport::Outside
    }
}

/// Negative return codes of ABI v1. Non-negative returns are success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
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

impl Code {
    /// The raw value a host function returns.
    pub const fn raw(self) -> i32 {
        self as i32
    }

    /// Decodes a raw negative return value; `None` for anything else.
    pub const fn from_raw(raw: i64) -> Option<Self> {
        match raw {
            -1 => Some(Code::NotFound),
            -2 => Some(Code::Denied),
            -3 => Some(Code::TooLarge),
            -4 => Some(Code::Invalid),
            -5 => Some(Code::Budget),
            -6 => Some(Code::ToolFailure),
            _ => None,
        }
    }
}

/// A step's outcome, as passed to `finish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Outcome {
    /// Done; go on with the runbook.
    Ok = 0,
    /// Try again (subject to the step's `max_retries`).
    Retry = 1,
    /// Stop and hand the incident to a human.
    Escalate = 2,
    /// The step failed; follow the runbook's `fail` transition.
    Fail = 3,
}

impl Outcome {
    /// The code passed to `finish`.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// Decodes a `finish` outcome code.
    pub const fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Outcome::Ok),
            1 => Some(Outcome::Retry),
            2 => Some(Outcome::Escalate),
            3 => Some(Outcome::Fail),
            _ => None,
        }
    }
}

/// `log` levels, by the code passed to `log`.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in [
            Code::NotFound,
            Code::Denied,
            Code::TooLarge,
            Code::Invalid,
            Code::Budget,
            Code::ToolFailure,
        ] {
            assert_eq!(Code::from_raw(code.raw().into()), Some(code));
        }
        assert_eq!(Code::from_raw(0), None);
        for o in [
            Outcome::Ok,
            Outcome::Retry,
            Outcome::Escalate,
            Outcome::Fail,
        ] {
            assert_eq!(Outcome::from_code(o.code()), Some(o));
        }
        assert_eq!(Outcome::from_code(4), None);
    }

    #[test]
    fn component_imports_are_sorted_by_capability() {
        assert_eq!(
            ComponentImport::of("runbox:step/kv-write@1.0.0"),
            ComponentImport::Runbox {
                interface: "kv-write",
                module: KV_WRITE
            }
        );
        assert_eq!(
            ComponentImport::of("runbox:step/kv-write@2.0.0"),
            ComponentImport::UnknownRunbox("kv-write@2.0.0")
        );
        assert_eq!(
            ComponentImport::of("runbox:step/secrets@1.0.0"),
            ComponentImport::UnknownRunbox("secrets@1.0.0")
        );
        assert_eq!(
            ComponentImport::of("wasi:sockets/tcp@0.2.3"),
            ComponentImport::Wasi { denied: true }
        );
        assert_eq!(
            ComponentImport::of("wasi:clocks/wall-clock@0.2.0"),
            ComponentImport::Wasi { denied: false }
        );
        assert_eq!(ComponentImport::of("env"), ComponentImport::Outside);
    }
}
