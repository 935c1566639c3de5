//! # runbox-component: write runbox steps in Rust, as components
//!
//! A step built with this crate is a WebAssembly component of the world
//! `runbox:step/step@1.0.0` (`guest-sdk/wit/step.wit`, the reference), built
//! for `wasm32-wasip2`. The API is the one of `runbox-guest` (ABI v1): it
//! reads its input, may read and write KV keys and call tools (as far as its
//! policy grants), and ends with an [`Outcome`].
//!
//! ```ignore
//! use runbox_component::{Outcome, kv, log, tool};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Input { service: String }
//!
//! fn probe(input: Input) -> Outcome {
//!     match tool::read("http_probe", &serde_json::json!({"service": input.service})) {
//!         Ok(r) if r.rc == 0 => Outcome::ok(serde_json::json!({"healthy": true})),
//!         Ok(r) => { log::warn(&format!("probe failed: {}", r.stderr)); Outcome::Escalate("unhealthy".into()) }
//!         Err(e) => Outcome::Escalate(format!("probe could not run: {e}")),
//!     }
//! }
//!
//! runbox_component::step!(probe);
//! ```
//!
//! The step's crate is a `cdylib`; build it with `cargo build --release
//! --target wasm32-wasip2` and try it with `runbox exec
//! target/wasm32-wasip2/release/probe.wasm --policy probe.toml --input
//! '{"service":"api"}'`. `runbox new step NAME --lang rust-component`
//! writes such a crate.
//!
//! Only the capabilities a step calls become imports of its component (the
//! linker drops the rest), so a step that never writes KV does not import
//! `runbox:step/kv-write@1.0.0` and needs no such grant: a component that
//! imports an interface its policy does not grant is refused before it runs.
//!
//! Strings and lists cross by the canonical ABI, so unlike ABI v1 nothing
//! here guesses a buffer size: each tool call runs the tool once and hands
//! back its whole answer.

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "step",
        pub_export_macro: true,
        default_bindings_module: "runbox_component::__bindings",
    });
}

use __bindings::runbox::step::types::{ErrorCode, OutcomeError};

/// How a step ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; the JSON output is recorded and the runbook moves on.
    Ok(serde_json::Value),
    /// Try again (the runbook's `max_retries` and backoff apply).
    Retry(String),
    /// Stop and hand the incident to a human, with the reason.
    Escalate(String),
    /// The step failed; the runbook's `fail` transition applies.
    Fail(String),
}

impl Outcome {
    /// `Ok` with any serializable output.
    pub fn ok(output: impl Serialize) -> Self {
        match serde_json::to_value(output) {
            Ok(v) => Outcome::Ok(v),
            Err(e) => Outcome::Fail(format!("output does not serialize: {e}")),
        }
    }

    /// The world's `run` result: `ok` carries JSON text (empty for `null`).
    fn into_result(self) -> Result<String, OutcomeError> {
        match self {
            Outcome::Ok(serde_json::Value::Null) => Ok(String::new()),
            Outcome::Ok(v) => Ok(v.to_string()),
            Outcome::Retry(r) => Err(OutcomeError::Retry(r)),
            Outcome::Escalate(r) => Err(OutcomeError::Escalate(r)),
            Outcome::Fail(r) => Err(OutcomeError::Fail(r)),
        }
    }
}

/// Why a host call was refused (the WIT `error-code`), or what could not be
/// decoded on this side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Refused by policy. The attempt will escalate whatever it reports.
    Denied,
    /// A key or value over its size limit.
    TooLarge,
    /// Tool args that are not a JSON object of the tool's declared arguments.
    Invalid,
    /// A per-attempt budget is used up; calling again stops the step.
    Budget,
    /// The tool could not be started.
    ToolFailure,
    /// Something this side could not encode or decode.
    Decode(String),
}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Denied => Error::Denied,
            ErrorCode::TooLarge => Error::TooLarge,
            ErrorCode::Invalid => Error::Invalid,
            ErrorCode::Budget => Error::Budget,
            ErrorCode::ToolFailure => Error::ToolFailure,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied => f.write_str("denied by policy"),
            Error::TooLarge => f.write_str("too large"),
            Error::Invalid => f.write_str("invalid argument"),
            Error::Budget => f.write_str("budget exhausted"),
            Error::ToolFailure => f.write_str("tool could not run"),
            Error::Decode(m) => write!(f, "cannot decode: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// The input document, as JSON text.
pub fn input_text() -> String {
    __bindings::runbox::step::input::get()
}

/// The input, deserialized.
pub fn input<T: DeserializeOwned>() -> Result<T, Error> {
    serde_json::from_str(&input_text()).map_err(|e| Error::Decode(e.to_string()))
}

/// Runs a step function for the world's `run`: decodes the input, calls `f`
/// and returns its outcome. Input that does not decode fails the step.
#[doc(hidden)]
pub fn __run<I: DeserializeOwned>(f: impl FnOnce(I) -> Outcome) -> Result<String, OutcomeError> {
    match input::<I>() {
        Ok(i) => f(i),
        Err(e) => Outcome::Fail(format!("step input does not match: {e}")),
    }
    .into_result()
}

/// Declares the step's entry point: `runbox_component::step!(my_step);`
/// where `fn my_step(input: I) -> Outcome` and `I: Deserialize`.
#[macro_export]
macro_rules! step {
    ($f:path) => {
        struct RunboxStep;

        impl $crate::__bindings::Guest for RunboxStep {
            fn run() -> ::core::result::Result<
                ::std::string::String,
                $crate::__bindings::runbox::step::types::OutcomeError,
            > {
                $crate::__run($f)
            }
        }

        $crate::__bindings::export!(RunboxStep);
    };
}

/// Lines in the step record. Each counts against `limits.output_bytes`.
pub mod log {
    use super::__bindings::runbox::step::log::{Level, log};

    /// A debug line.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// An info line.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// A warning.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// An error line.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// The step's KV store: reads see the step's own staged writes; writes
/// commit with its outcome, in one atomic write.
pub mod kv {
    use super::Error;
    use super::__bindings::runbox::step::{kv_read, kv_write};

    /// The value of `key`, or `None` when absent.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(kv_read::get(key)?)
    }

    /// The value of `key` as UTF-8 text, or `None` when absent.
    pub fn get_string(key: &str) -> Result<Option<String>, Error> {
        get(key)?
            .map(|v| String::from_utf8(v).map_err(|e| Error::Decode(e.to_string())))
            .transpose()
    }

    /// Stages a write of `value` at `key`.
    pub fn put(key: &str, value: &[u8]) -> Result<(), Error> {
        Ok(kv_write::put(key, value)?)
    }

    /// Stages a delete of `key`.
    pub fn delete(key: &str) -> Result<(), Error> {
        Ok(kv_write::delete(key)?)
    }
}

/// Tools from the runbook's registry, as far as the policy grants them.
/// **Each call runs the tool**: call a mutating tool once per change.
pub mod tool {
    use serde::{Deserialize, Serialize};

    use super::Error;
    use super::__bindings::runbox::step::types::Answer;
    use super::__bindings::runbox::step::{tool_mutate, tool_read};

    /// What a tool returned.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ToolResult {
        /// Exit code; -1 when killed or timed out.
        pub rc: i32,
        /// Standard output (capped by the host).
        pub stdout: String,
        /// Standard error (capped by the host).
        pub stderr: String,
        /// Whether output was cut at the cap.
        pub truncated: bool,
        /// Whether the tool was killed at its timeout.
        pub timed_out: bool,
    }

    impl From<Answer> for ToolResult {
        fn from(a: Answer) -> Self {
            ToolResult {
                rc: a.rc,
                stdout: a.stdout,
                stderr: a.stderr,
                truncated: a.truncated,
                timed_out: a.timed_out,
            }
        }
    }

    fn args_text(args: &impl Serialize) -> Result<String, Error> {
        serde_json::to_string(args).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Calls a read-only tool with `args`, a JSON object of its arguments.
    pub fn read(name: &str, args: &impl Serialize) -> Result<ToolResult, Error> {
        Ok(tool_read::call(name, &args_text(args)?)?.into())
    }

    /// Calls a mutating tool (the host links it only for the holder of the
    /// mutation token). Each call runs the tool again.
    pub fn mutate(name: &str, args: &impl Serialize) -> Result<ToolResult, Error> {
        Ok(tool_mutate::call(name, &args_text(args)?)?.into())
    }
}
