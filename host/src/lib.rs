//! # runbox
//!
//! runbox runs incident-recovery runbooks as sandboxed WebAssembly steps with
//! durable, crash-safe state. This crate is the host: the library behind the
//! `runbox` command.
//!
//! ## The path of a step
//!
//! ```text
//! runbook ── steps, their modules, grants, limits, safety rules, transitions
//! policy  ── what a step may touch (grants) and use (limits)
//! tools   ── the host commands a step may call, typed and shell-free
//! engine  ── gates, one attempt, one synced commit, the next transition
//! sandbox ── compiles the module, links only granted capabilities, runs one attempt
//! store   ── RocksDB: incident records, step KV and meta in separate column families
//! incident ─ the records: status, owner, checkpoint, step records, timeline
//! verify / export / review ── consistency checks, postmortems, capability reviews
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
//!
//! ## Running an incident
//!
//! The [`engine::Engine`] drives a runbook over a [`store::Store`]. Each step
//! attempt passes the gates (read-only mode, mutation token, module hash,
//! preconditions, approval, cooldown, backoff), runs in the sandbox, and
//! commits its record, KV writes, timeline events and next checkpoint in one
//! synced write. Before a step's first mutating tool call the attempt is made
//! durable as *in flight*, so a crash leaves it in doubt rather than forgotten.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use runbox::engine::{Engine, RunExit, RunOptions};
//! use runbox::sandbox::{Sandbox, SandboxConfig};
//! use runbox::store::Store;
//!
//! let store = Arc::new(Store::open("/var/lib/runbox".as_ref())?);
//! let engine = Engine::new(store, Sandbox::new(SandboxConfig::default()));
//! let params = BTreeMap::from([("service".to_string(), "api".to_string())]);
//! engine.open("INC-7", "runbook.toml".as_ref(), &params, "agent:runbox")?;
//! match engine.run("INC-7", &RunOptions::default()).await? {
//!     RunExit::AwaitingApproval { step, .. } => engine.approve("INC-7", &step, "alice", true)?,
//!     other => println!("{other:?}"),
//! }
//! # Ok(()) }
//! ```

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
