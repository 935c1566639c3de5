//! # runbox
//!
//! runbox runs incident-recovery runbooks as sandboxed WebAssembly steps with
//! durable, crash-safe state. This crate is the host: the library behind the
//! `runbox` command.
//!
//! ## The path of a step
//!
//! ```text
//! policy  ── what the step may touch (grants) and use (limits)
//! tools   ── the host commands a step may call, typed and shell-free
//! sandbox ── compiles the module, links only granted capabilities, runs one attempt
//! ```
//!
//! ## Running one step
//!
//! A step is a core WASM module that is a WASI command (`_start`) and imports
//! runbox's ABI v1 (see `guest-sdk/ABI.md`). Its policy grants capabilities;
//! everything else is denied: an ungranted import is refused before the step
//! runs, and a call outside the granted keys or tools returns `-2` and is
//! recorded as a violation.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use runbox::policy::StepPolicy;
//! use runbox::sandbox::{Capabilities, MapKv, Sandbox, SandboxConfig};
//! use runbox::tools::ToolRegistry;
//!
//! let sandbox = Sandbox::new(SandboxConfig::default());
//! let policy = StepPolicy::from_toml(r#"
//!     [grants]
//!     kv_read = ["svc/{service}/*"]
//!     [limits]
//!     timeout_ms = 1000
//! "#, "inline".as_ref())?;
//! let wasm = std::fs::read("probe.wasm")?;
//! let step = sandbox
//!     .prepare("probe", &wasm, &policy, Arc::new(ToolRegistry::empty()), Capabilities::default())??;
//! let input = serde_json::json!({"service": "api"});
//! let report = sandbox.run(&step, &input, Arc::new(MapKv::new()), None).await;
//! println!("{}: {:?}", report.outcome, report.error);
//! # Ok(()) }
//! ```
//!
//! The [`sandbox::StepReport`] says what the step decided (`ok`, `retry`,
//! `escalate`, `fail`) or why the sandbox stopped it (an
//! [`sandbox::ErrorCategory`]), and carries its logs, captured output, tool
//! calls and staged KV writes. Writes stand only when the step ended through
//! `finish`; a step stopped by the sandbox has them discarded.

pub mod engine;
pub mod export;
pub mod incident;
pub mod policy;
pub mod review;
pub mod runbook;
pub mod sandbox;
pub mod store;
pub mod tools;
pub mod verify;
