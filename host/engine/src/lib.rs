//! # runbox-engine: incidents, step by step
//!
//! The engine drives each incident's runbook over a [`runbox_store::Store`].
//! For every step the `run` loop:
//!
//! 1. reads the checkpoint and checks the incident is open and agent-owned;
//! 2. gathers what the gates need and asks [`gate::verdict`] (a pure
//!    function, one small rule per gate: read-only mode, mutation token,
//!    module, preconditions, approval, cooldown, backoff) whether the step
//!    may run;
//! 3. runs one attempt in the sandbox; before its first mutating tool call
//!    the attempt is made durable as *in flight*;
//! 4. commits the step record, the attempt's KV writes, the timeline events,
//!    the next checkpoint and the status as one store commit, conditional on
//!    the checkpoint version it read;
//! 5. stops on uncertainty: status `escalated`, owner handed to a human.
//!
//! Every write (those above, human actions, `open`) takes one path:
//! `change::commit`, which builds one store batch and hands it to
//! [`runbox_store::Store::commit`], the store's fenced compare-and-write.
//!
//! After a crash an attempt still *in flight* is in doubt: an idempotent step
//! is retried, any other escalates until a human settles it (`resolve`,
//! `retry`, `skip`), recorded with the human-override flag.
//!
//! A human's decision is a statement the engine binds to the incident as it
//! stands ([`Humans::statement`]), signed with the human's SSH key and
//! handed to [`Humans::decide`], which verifies it against the
//! allowed_signers file before writing anything ([`decision`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use runbox_engine::decision::{DEFAULT_TTL, Request};
//! use runbox_engine::{Engine, RunExit, RunOptions};
//! use runbox_sandbox::{Sandbox, SandboxConfig};
//! use runbox_store::MemoryStore;
//! use runbox_trust::{Action, Decision};
//!
//! let engine = Engine::new(Arc::new(MemoryStore::new()), Sandbox::new(SandboxConfig::default()))
//!     .with_allowed_signers("data/allowed_signers");
//! let params = BTreeMap::from([("service".to_string(), "api".to_string())]);
//! engine.opener().open("INC-7", "runbook.toml".as_ref(), &params, "agent:runbox")?;
//! if let RunExit::AwaitingApproval { step, .. } = engine.runs().run("INC-7", &RunOptions::default()).await? {
//!     let statement = engine.humans().statement(&Request {
//!         action: Action::Approve,
//!         incident: "INC-7",
//!         step: Some(&step),
//!         outcome: None,
//!         signer: "alice",
//!         ttl: DEFAULT_TTL,
//!     })?;
//!     let text = statement.to_text();
//!     let signature = runbox_trust::sign_with_ssh_keygen("/home/alice/.ssh/id_ed25519".as_ref(), &text)?;
//!     engine.humans().decide(&Decision { statement: text, signature })?;
//! }
//! # Ok(()) }
//! ```
//!
//! ## Who writes what
//!
//! The write paths sit behind handles named for who acts; what anyone
//! reads is [`Engine::incidents`]. An `Engine` is cheap to clone (every
//! clone is the same engine), and a handle borrows it.
//!
//! | handle | writes |
//! |---|---|
//! | [`Engine::runs`] ([`Runs`]) | the run loop: one incident, every runnable one, each as it becomes runnable; an agent's notes and escalations |
//! | [`Engine::opener`] ([`Opener`]) | opens incidents, by hand or from an alert |
//! | [`Engine::humans`] ([`Humans`]) | humans' signed decisions on incidents |
//! | [`Engine::fleet`] ([`Fleet`]) | brakes, the fleet's configuration on a shared store, the mutation token |
//!
//! Reading needs no sandbox: the read model (`runbox-incidents`,
//! re-exported here as [`Incidents`]) answers `status`, `timeline`, `list`
//! and [`verify`] over a store alone; [`Engine::incidents`] is the engine's.

#![deny(missing_docs)]

pub mod agent;
mod alert;
mod blocking;
mod change;
pub mod config;
pub mod decision;
pub mod deployment;
pub mod fleet;
mod follow;
pub mod gate;
mod guard;
mod human;
mod kv;
mod module_file;
mod open;
pub mod outbox;
pub mod replay;
mod run;
mod token;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use runbox_core::attempt::StepError;
use runbox_core::ident::{IdentError, IncidentId};
use runbox_core::records::Checkpoint;
use runbox_core::runbook::RunbookError;
use runbox_core::tools::ToolError;
use runbox_sandbox::{Sandbox, SandboxError};
use runbox_store::keys::Group;
use runbox_store::{Store, StoreError, Values};
use serde::{Deserialize, Serialize};

pub use decision::Humans;
pub use fleet::Fleet;
pub use follow::OnStop;
pub use kv::IncidentKv;
pub use open::Opener;
pub use run::Runs;
pub use runbox_incidents::{
    Attempts, EventPages, Events, IncidentSummary, IncidentView, Incidents, LOOKBACK, NextStep,
    Notification, ReadError, verify,
};
pub use token::TokenAuth;

use change::{Base, Change};

pub(crate) use runbox_core::sync::lock;

/// Errors from engine operations. Each one leaves the store as it was.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed, or another writer moved the checkpoint
    /// ([`StoreError::Conflict`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runbook is not valid.
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    /// The tool registry is not valid.
    #[error(transparent)]
    Tools(#[from] ToolError),
    /// The sandbox could not check a step.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A step's module is not fit to run.
    #[error("runbook step `{step}`: {error}")]
    StepModule {
        /// The step.
        step: String,
        /// Why.
        error: StepError,
    },
    /// No such incident.
    #[error("unknown incident `{0}`")]
    UnknownIncident(String),
    /// The incident already exists.
    #[error("incident `{0}` already exists")]
    Exists(String),
    /// An id or name is malformed.
    #[error("invalid {what} {:?}: {}", source.value, source.kind.rule())]
    InvalidName {
        /// What it names (`incident id`, `human name`, …).
        what: &'static str,
        /// The rule it broke.
        #[source]
        source: IdentError,
    },
    /// The mutation token cannot be made or replaced this way.
    #[error("mutation token: {0}")]
    Token(String),
    /// A human decision's signature or signer file is refused.
    #[error(transparent)]
    Trust(#[from] runbox_trust::TrustError),
    /// A rate limit is not valid (the data dir's limits.toml).
    #[error(transparent)]
    Limits(#[from] runbox_core::limits::LimitError),
    /// A brake scope does not parse.
    #[error(transparent)]
    Scope(#[from] runbox_core::limits::ScopeError),
    /// A brake cannot be engaged or released this way.
    #[error("{0}")]
    Fleet(String),
    /// Something inside this process failed (a task died, the attempt
    /// queue closed, an engine invariant broke): not the request's fault,
    /// and nothing was written.
    #[error("internal failure ({what}): {message}")]
    Internal {
        /// Which part failed.
        what: &'static str,
        /// What happened.
        message: String,
    },
    /// The action does not fit the incident's state.
    #[error("incident `{id}`: {message}")]
    Refused {
        /// The incident.
        id: String,
        /// Why, and what to do instead.
        message: String,
    },
}

/// A read's failure is the engine's, variant for variant: a caller that
/// matches `EngineError::UnknownIncident` sees one whichever side read.
impl From<ReadError> for EngineError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Store(e) => EngineError::Store(e),
            ReadError::UnknownIncident(id) => EngineError::UnknownIncident(id),
            ReadError::InvalidName { what, source } => EngineError::InvalidName { what, source },
            ReadError::Runbook(e) => EngineError::Runbook(e),
            ReadError::Tools(e) => EngineError::Tools(e),
            ReadError::Trust(e) => EngineError::Trust(e),
            ReadError::Limit(message) | ReadError::Config(message) => EngineError::Fleet(message),
        }
    }
}

impl From<IdentError> for EngineError {
    fn from(source: IdentError) -> Self {
        EngineError::InvalidName {
            what: source.kind.what(),
            source,
        }
    }
}

impl EngineError {
    /// An invalid name, said as `what`.
    pub(crate) fn invalid(what: &'static str) -> impl FnOnce(IdentError) -> Self {
        move |source| EngineError::InvalidName { what, source }
    }
}

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// How a `run` ended. Each maps to a distinct exit code in the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum RunExit {
    /// The incident is resolved.
    Resolved,
    /// A high-impact step waits for approval.
    AwaitingApproval {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
    },
    /// Handed to a human.
    Escalated {
        /// Why.
        reason: String,
    },
    /// Ended by a `fail` transition.
    Failed {
        /// Why.
        reason: String,
    },
    /// A human owns the incident; the agent does not act.
    HumanOwner {
        /// `human:NAME`.
        owner: String,
    },
    /// A safety rule keeps the next step from running in this mode.
    Blocked {
        /// Which rule.
        reason: String,
    },
    /// Waiting for a cooldown or retry backoff (`--no-wait`).
    Waiting {
        /// Until when (ms since epoch).
        until_ms: u64,
        /// For what.
        reason: String,
    },
    /// Another runner holds the incident (a store shared by several
    /// runners): this one leaves it alone.
    Elsewhere {
        /// The runner that holds it.
        runner: String,
    },
    /// One attempt committed and the incident can go on (`one_step`).
    Stepped {
        /// The step that ran.
        step: String,
        /// Its attempt.
        attempt: u32,
    },
}

/// A sink for progress lines (waits, committed steps).
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// How `run` behaves.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Diagnosis mode: mutating and KV-writing steps are not run (they are
    /// blocked, recorded in the timeline). Default: false.
    pub read_only: bool,
    /// The mutation token, compared in constant time with the stored hash.
    /// Default: none (mutating steps are blocked).
    pub token: Option<String>,
    /// Return [`RunExit::Waiting`] instead of sleeping through cooldowns
    /// and retry backoff. Default: false (wait).
    pub no_wait: bool,
    /// The agent's name, recorded as `agent:NAME`. Default: `runbox`.
    pub agent: Option<String>,
    /// Called with progress lines (waits, committed steps). Default: none.
    pub progress: Option<Progress>,
    /// Run with every mutating tool call intercepted and recorded as what it
    /// would have done (the tool's `dry_run` reply answers the step). The
    /// first dry run makes the incident a dry-run one for good. Default: false.
    pub dry_run: bool,
    /// Stop after one attempt commits ([`RunExit::Stepped`]) instead of
    /// going on to the next step: the bounded action an agent takes at a
    /// time. Default: false (run until the incident stops).
    pub one_step: bool,
}

/// The engine over one store: the power to open, run and settle incidents;
/// what it reads goes through [`Engine::incidents`]. Cheap to clone: every
/// clone is the same engine (one store, one sandbox, one run loop per
/// incident, one budget of attempts), which is how a run hands itself to
/// the tasks it spawns.
#[derive(Clone)]
pub struct Engine {
    /// The store every write goes to (the same one `incidents` reads).
    store: Arc<dyn Store>,
    incidents: Incidents,
    sandbox: Sandbox,
    /// One run loop per incident at a time in this process. Writes need no
    /// lock here: the store fences every commit on the checkpoint version.
    runs: Arc<Mutex<HashMap<IncidentId, Arc<tokio::sync::Mutex<()>>>>>,
    /// Attempts (and so tool processes) running at once, across incidents.
    attempts: Arc<tokio::sync::Semaphore>,
    /// Module files read and hashed, by path and file stamp.
    modules: Arc<module_file::ModuleFiles>,
    /// How much of what attempts see is recorded for replay.
    recording: RecordingLimits,
    /// Tool answers from a script instead of real tools (`runbox test`).
    tool_script: Option<Arc<runbox_sandbox::ToolScript>>,
    /// The fleet-wide rate limits file (see [`Engine::with_fleet_limits`]).
    limits_file: Option<std::path::PathBuf>,
    /// Where escalations go (see [`Engine::with_notify`]).
    outbox: Arc<outbox::Outbox>,
}

/// How much of what attempts see is recorded for replay (see
/// [`Engine::with_recording_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingLimits {
    /// Bytes of inputs kept per attempt. Default: 1 MiB.
    pub per_attempt: u64,
    /// Bytes of inputs kept per incident, over all its attempts. Default: 64 MiB.
    pub per_incident: u64,
}

impl Default for RecordingLimits {
    fn default() -> Self {
        RecordingLimits {
            per_attempt: 1024 * 1024,
            per_incident: 64 * 1024 * 1024,
        }
    }
}

impl Engine {
    /// The sandbox steps run in (and reviews load modules with).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }
}

impl Engine {
    /// What the engine reads through: every query of the read model
    /// ([`Incidents`]) over the same store.
    pub fn incidents(&self) -> &Incidents {
        &self.incidents
    }
}

impl Engine {
    /// The default of [`Engine::with_max_concurrent_attempts`].
    pub const DEFAULT_MAX_CONCURRENT_ATTEMPTS: usize = 64;

    /// The most [`Engine::with_max_concurrent_attempts`] takes: each
    /// attempt running at once holds a sandbox pool slot, which reserves
    /// address space for the step's memory and stack.
    pub const MAX_CONCURRENT_ATTEMPTS: usize = 65_536;

    /// An engine over `store`, running steps in `sandbox`.
    pub fn new(store: Arc<dyn Store>, sandbox: Sandbox) -> Self {
        let store: Arc<dyn Store> = Arc::new(blocking::OffWorker(store));
        Engine {
            incidents: Incidents::new(store.clone()),
            store,
            sandbox,
            runs: Arc::default(),
            attempts: Arc::new(tokio::sync::Semaphore::new(
                Self::DEFAULT_MAX_CONCURRENT_ATTEMPTS,
            )),
            modules: Arc::default(),
            recording: RecordingLimits::default(),
            tool_script: None,
            limits_file: None,
            outbox: Arc::default(),
        }
    }

    /// Answers every tool call from `script` instead of running a tool: the
    /// engine of `runbox test`, which runs whole runbooks with no side
    /// effect. Default: none (tools run).
    pub fn with_tool_script(mut self, script: Arc<runbox_sandbox::ToolScript>) -> Self {
        self.tool_script = Some(script);
        self
    }

    /// How much of what attempts see (KV reads, tool answers, clock
    /// readings, random bytes) is recorded with each step record for
    /// replay. An attempt past either limit keeps what it recorded and is
    /// marked not replayable. Default: [`RecordingLimits::default`].
    pub fn with_recording_limits(mut self, limits: RecordingLimits) -> Self {
        self.recording = limits;
        self
    }

    /// See [`Incidents::with_allowed_signers`]. Default: none, so every
    /// human decision is refused.
    pub fn with_allowed_signers(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.incidents = self.incidents.with_allowed_signers(path);
        self
    }

    /// The fleet's configuration (its humans, its limits, its sinks) is the
    /// store's ([`config`]), as on a store several runners share: the data
    /// dir's allowed_signers, limits.toml and notify.toml are not read
    /// (this replaces [`Engine::with_notify`]).
    pub fn with_config_in_store(mut self) -> Self {
        self.incidents = self.incidents.with_config_in_store();
        self.limits_file = None;
        self.outbox = Arc::new(outbox::Outbox::in_store());
        self
    }

    /// How many step attempts may run at once across all incidents of this
    /// engine (`run_all`, several `run`s); the others wait their turn before
    /// their attempt, so a wide outage never starts thousands of tool
    /// processes at once. Waiting on a cooldown or an approval takes no
    /// turn. Default: [`Engine::DEFAULT_MAX_CONCURRENT_ATTEMPTS`] (64);
    /// at least 1, at most [`Engine::MAX_CONCURRENT_ATTEMPTS`]. The
    /// sandbox's pool needs a slot for each
    /// (`SandboxConfig::pool_slots`), or attempts past it stop with a host
    /// error.
    pub fn with_max_concurrent_attempts(mut self, n: usize) -> Self {
        let n = n.clamp(1, Self::MAX_CONCURRENT_ATTEMPTS);
        self.attempts = Arc::new(tokio::sync::Semaphore::new(n));
        self
    }

    /// Commits `change` decided on checkpoint `base` (see `change::commit`).
    fn apply(&self, id: &IncidentId, base: &Checkpoint, change: Change) -> Result<Checkpoint> {
        Ok(change::commit(
            &*self.store,
            &self.outbox,
            id,
            Base::At(base),
            change,
        )?)
    }

    /// [`Engine::apply`] without holding up the other incidents, and the
    /// records under `read_back` as of right after it
    /// (`change::commit_and_read`). A synced commit waits on the disk, and
    /// while it waits the store gathers the commits of other incidents
    /// into the same write (see `runbox_store_rocksdb`'s group commit). On
    /// a multi-threaded runtime the commit runs in place and the runtime
    /// moves this worker's other tasks to a fresh one (no hand-off to
    /// another thread and back, which cost more than the step); elsewhere
    /// it goes to a blocking thread.
    async fn apply_async(
        &self,
        id: &IncidentId,
        base: Checkpoint,
        change: Change,
        read_back: Group,
    ) -> Result<(Checkpoint, Values)> {
        let commit = move |store: &dyn Store, outbox: &outbox::Outbox, id: &IncidentId| {
            change::commit_and_read(store, outbox, id, Base::At(&base), change, &read_back)
        };
        if blocking::on_multi_threaded_runtime() {
            // The write itself moves off this worker (`blocking::OffWorker`).
            return Ok(commit(&*self.store, &self.outbox, id)?);
        }
        let store = self.store.clone();
        let outbox = self.outbox.clone();
        let id = id.clone();
        // The commit's span goes on in the attempt's trace.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| commit(&*store, &outbox, &id)))
            .await
            .map_err(|e| EngineError::Internal {
                what: "commit task",
                message: e.to_string(),
            })?
            .map_err(EngineError::from)
    }

    fn run_lock(&self, id: &IncidentId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.runs).entry(id.clone()).or_default().clone()
    }
}
