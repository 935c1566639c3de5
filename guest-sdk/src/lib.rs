//! # runbox-guest: write runbox steps in Rust
//!
//! A step is a small program built for `wasm32-wasip1`. It reads its input,
//! may read and write KV keys and call tools (as far as its policy grants),
//! and ends with an [`Outcome`].
//!
//! ```no_run
//! use runbox_guest::{kv, log, tool, Outcome};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Input { service: String }
//!
//! fn probe(input: Input) -> Outcome {
//!     let key = format!("svc/{}/probes", input.service);
//!     let probes = kv::get_string(&key).ok().flatten().and_then(|s| s.parse().ok()).unwrap_or(0u32);
//!     let _ = kv::put(&key, (probes + 1).to_string().as_bytes());
//!     match tool::read("http_probe", &serde_json::json!({"service": input.service})) {
//!         Ok(r) if r.rc == 0 => Outcome::ok(serde_json::json!({"healthy": true})),
//!         Ok(r) => { log::warn(&format!("probe failed: {}", r.stderr)); Outcome::Escalate("unhealthy".into()) }
//!         Err(e) => Outcome::Escalate(format!("probe could not run: {e}")),
//!     }
//! }
//!
//! runbox_guest::step!(probe);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip1` and try it with
//! `runbox exec target/wasm32-wasip1/release/probe.wasm --policy probe.toml --input '{"service":"api"}'`.
//!
//! Only the functions you call become imports of the module, so a step that
//! never writes KV does not import `runbox:kv-write/v1` and needs no such grant.
//!
//! On other targets the same API runs against an in-memory host (see
//! [`testing`]), so step logic can be unit-tested with `cargo test`.

use serde::Serialize;
use serde::de::DeserializeOwned;

mod raw;
#[cfg(not(target_family = "wasm"))]
pub mod testing;

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

    fn code_and_bytes(&self) -> (i32, Vec<u8>) {
        use runbox_abi::Outcome as Code;
        match self {
            Outcome::Ok(v) => (Code::Ok.code(), serde_json::to_vec(v).unwrap_or_default()),
            Outcome::Retry(r) => (Code::Retry.code(), r.clone().into_bytes()),
            Outcome::Escalate(r) => (Code::Escalate.code(), r.clone().into_bytes()),
            Outcome::Fail(r) => (Code::Fail.code(), r.clone().into_bytes()),
        }
    }
}

/// An error returned by a host call (the ABI's negative codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// -2: refused by policy. The attempt will escalate whatever it reports.
    Denied,
    /// -3: a key or value over its size limit.
    TooLarge,
    /// -4: a bad pointer, string or JSON document.
    Invalid,
    /// -5: a per-attempt budget is used up; calling again stops the step.
    Budget,
    /// -6: the tool could not be started.
    ToolFailure,
    /// The host's answer could not be decoded.
    Decode(String),
    /// A code this SDK does not know.
    Other(i64),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied => f.write_str("denied by policy"),
            Error::TooLarge => f.write_str("too large"),
            Error::Invalid => f.write_str("invalid argument"),
            Error::Budget => f.write_str("budget exhausted"),
            Error::ToolFailure => f.write_str("tool could not run"),
            Error::Decode(m) => write!(f, "cannot decode host answer: {m}"),
            Error::Other(c) => write!(f, "host error {c}"),
        }
    }
}

impl std::error::Error for Error {}

fn check(code: i64) -> Result<i64, Error> {
    use runbox_abi::Code;
    if code >= 0 {
        return Ok(code);
    }
    Err(match Code::from_raw(code) {
        Some(Code::Denied) => Error::Denied,
        Some(Code::TooLarge) => Error::TooLarge,
        Some(Code::Invalid) => Error::Invalid,
        Some(Code::Budget) => Error::Budget,
        Some(Code::ToolFailure) => Error::ToolFailure,
        Some(Code::NotFound) | None => Error::Other(code),
    })
}

/// The raw input bytes (a JSON document).
pub fn input_bytes() -> Vec<u8> {
    raw::input_bytes()
}

/// The input, deserialized.
pub fn input<T: DeserializeOwned>() -> Result<T, Error> {
    serde_json::from_slice(&input_bytes()).map_err(|e| Error::Decode(e.to_string()))
}

/// Ends the step with `outcome`. Nothing after this runs.
pub fn finish(outcome: Outcome) -> ! {
    let (code, bytes) = outcome.code_and_bytes();
    raw::finish(code, &bytes)
}

/// Runs a step function: decodes the input, calls `f`, finishes with its outcome.
/// Input that does not decode finishes the step with `Fail`.
pub fn run<I: DeserializeOwned, F: FnOnce(I) -> Outcome>(f: F) -> ! {
    let outcome = match input::<I>() {
        Ok(i) => f(i),
        Err(e) => Outcome::Fail(format!("step input does not match: {e}")),
    };
    finish(outcome)
}

/// Declares the step's entry point: `runbox_guest::step!(my_step);` where
/// `fn my_step(input: I) -> Outcome` and `I: Deserialize`.
#[macro_export]
macro_rules! step {
    ($f:path) => {
        fn main() {
            $crate::run($f)
        }
    };
}

/// Logging through the host (kept in the step record, counted against the
/// step's output limit).
pub mod log {
    fn emit(level: i32, message: &str) {
        super::raw::log(level, message.as_bytes());
    }
    /// Debug detail.
    pub fn debug(message: &str) {
        emit(1, message);
    }
    /// Normal progress.
    pub fn info(message: &str) {
        emit(2, message);
    }
    /// Something looks wrong.
    pub fn warn(message: &str) {
        emit(3, message);
    }
    /// Something is wrong.
    pub fn error(message: &str) {
        emit(4, message);
    }
}

/// The step KV store (`runbox:kv-read/v1`, `runbox:kv-write/v1`).
pub mod kv {
    use super::{Error, check};

    /// Reads a key; `None` when absent.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = super::raw::kv_get(key.as_bytes(), &mut buf);
            if n == i64::from(runbox_abi::Code::NotFound.raw()) {
                return Ok(None);
            }
            let n = check(n)? as usize;
            if n <= buf.len() {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            buf = vec![0u8; n];
        }
    }

    /// Reads a key as UTF-8 text.
    pub fn get_string(key: &str) -> Result<Option<String>, Error> {
        get(key)?
            .map(|b| String::from_utf8(b).map_err(|e| Error::Decode(e.to_string())))
            .transpose()
    }

    /// Stages a write; it is committed with the step's outcome.
    pub fn put(key: &str, value: &[u8]) -> Result<(), Error> {
        check(super::raw::kv_put(key.as_bytes(), value)).map(|_| ())
    }

    /// Stages a delete.
    pub fn delete(key: &str) -> Result<(), Error> {
        check(super::raw::kv_delete(key.as_bytes())).map(|_| ())
    }
}

/// Host tools (`runbox:tool-read/v1`, `runbox:tool-mutate/v1`).
pub mod tool {
    use super::{Error, check};
    use serde::{Deserialize, Serialize};

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
        #[serde(default)]
        pub truncated: bool,
        /// Whether the tool was killed at its timeout.
        #[serde(default)]
        pub timed_out: bool,
    }

    /// The buffer a tool answer is first read into; most answers fit.
    const FIRST_BUFFER: usize = 16 * 1024;

    /// One call through `invoke` (the read or the mutating import: generic,
    /// so each public function references only its own).
    fn call(
        invoke: impl FnOnce(&[u8], &[u8], &mut [u8]) -> i64,
        name: &str,
        args: &impl Serialize,
    ) -> Result<ToolResult, Error> {
        let args = serde_json::to_vec(args).map_err(|e| Error::Decode(e.to_string()))?;
        let mut buf = vec![0u8; FIRST_BUFFER];
        let n = check(invoke(name.as_bytes(), &args, &mut buf))? as usize;
        if n > buf.len() {
            // Calling the tool again would run it again: read the answer
            // the host kept instead.
            buf = vec![0u8; n];
            let again = check(super::raw::last_tool_answer(&mut buf))? as usize;
            if again != n {
                return Err(Error::Decode(format!(
                    "tool answer of {n} bytes read back as {again}"
                )));
            }
        }
        serde_json::from_slice(&buf[..n]).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Calls a read-only tool.
    pub fn read(name: &str, args: &impl Serialize) -> Result<ToolResult, Error> {
        call(super::raw::tool_read, name, args)
    }

    /// Calls a mutating tool (needs the mutation token on the host side).
    pub fn mutate(name: &str, args: &impl Serialize) -> Result<ToolResult, Error> {
        call(super::raw::tool_mutate, name, args)
    }
}
