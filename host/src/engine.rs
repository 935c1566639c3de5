//! The engine: each incident's state machine and the commit protocol.
//!
//! For every step the `run` loop:
//!
//! 1. reads the checkpoint and checks the incident is open and agent-owned;
//! 2. checks the gates: read-only mode, mutation token, module hash,
//!    preconditions, approval (high impact), cooldown, retry backoff;
//! 3. runs one attempt in the sandbox; before its first mutating tool call
//!    the attempt is made durable as *in flight* (one synced write);
//! 4. commits the step record, the attempt's KV writes, the timeline events,
//!    the next checkpoint and the status in one synced `WriteBatch`,
//!    conditional on the checkpoint version it read;
//! 5. stops on uncertainty: status `escalated`, owner handed to a human.
//!
//! After a crash an attempt still *in flight* is in doubt: an idempotent step
//! is retried, any other escalates until a human settles it (`resolve`,
//! `retry`, `skip`), recorded with the human-override flag.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{Instrument, info, info_span};

use crate::incident::{
    Approval, Checkpoint, InFlight, IncidentMeta, LastDestructive, Owner, RecordOutcome, Status,
    StepRecord, TimelineEvent, keys, now_ms, valid_id, valid_name,
};
use crate::runbook::{Impact, LoadedRunbook, Next, Precondition, StepSpec, step_input, substitute};
use crate::sandbox::{
    Capabilities, ErrorCategory, MutationGuard, Outcome, Sandbox, SandboxError, StepError,
    StepReport, granted_modes,
};
use crate::store::{IncidentKv, Store, StoreError};
use crate::tools::ToolRegistry;

/// Errors from engine operations. Each one leaves the store as it was.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runbook is not valid.
    #[error(transparent)]
    Runbook(#[from] crate::runbook::RunbookError),
    /// The tool registry is not valid.
    #[error(transparent)]
    Tools(#[from] crate::tools::ToolError),
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
    #[error("invalid {what} `{value}`: letters, digits, `-`, `_`, `.`")]
    InvalidName {
        /// What it names.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The action does not fit the incident's state.
    #[error("incident `{id}`: {message}")]
    Refused {
        /// The incident.
        id: String,
        /// Why, and what to do instead.
        message: String,
    },
    /// Another writer moved the checkpoint.
    #[error(
        "incident `{id}` changed underneath (checkpoint version {expected} expected, found {found}); retry"
    )]
    Conflict {
        /// The incident.
        id: String,
        /// The version read.
        expected: u64,
        /// The version found.
        found: u64,
    },
}

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// How a `run` ended. Each maps to a distinct exit code in the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// A sink for progress lines (waits, committed steps).
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// How `run` behaves.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Diagnosis mode: mutating and KV-writing steps are not run.
    pub read_only: bool,
    /// The mutation token, if presented.
    pub token: Option<String>,
    /// Return [`RunExit::Waiting`] instead of sleeping through waits.
    pub no_wait: bool,
    /// The agent's name. Default: `runbox`.
    pub agent: Option<String>,
    /// Called with progress lines while waiting.
    pub progress: Option<Progress>,
}

/// A summary line for `runbox list`.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentSummary {
    /// Id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Owner.
    pub owner: String,
    /// The runbook.
    pub runbook: String,
    /// The next or current step.
    pub step: Option<String>,
}

/// What `runbox status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentView {
    /// Id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Owner.
    pub owner: String,
    /// The runbook.
    pub runbook: String,
    /// Params.
    pub params: BTreeMap<String, String>,
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The step waiting for approval, if any.
    pub pending_approval: Option<String>,
    /// An attempt in doubt, if any.
    pub in_doubt: Option<InFlight>,
    /// Why it stands where it stands: the last notable timeline message.
    pub why: Option<String>,
}

/// A change to one incident, committed atomically.
#[derive(Default)]
struct Change {
    checkpoint: Option<Checkpoint>,
    status: Option<Status>,
    owner: Option<Owner>,
    events: Vec<NewEvent>,
    records: Vec<(String, serde_json::Value)>,
    kv: Vec<(String, Option<Vec<u8>>)>,
}

struct NewEvent {
    actor: String,
    kind: &'static str,
    step: Option<String>,
    attempt: Option<u32>,
    message: String,
}

impl Change {
    fn event(
        &mut self,
        actor: &str,
        kind: &'static str,
        at: Option<(&str, u32)>,
        message: impl Into<String>,
    ) {
        self.events.push(NewEvent {
            actor: actor.to_string(),
            kind,
            step: at.map(|(s, _)| s.to_string()),
            attempt: at.map(|(_, a)| a),
            message: message.into(),
        });
    }

    fn record<T: Serialize>(&mut self, key: String, value: &T) {
        self.records.push((
            key,
            serde_json::to_value(value).expect("records always serialize"),
        ));
    }
}

/// The engine over one store.
pub struct Engine {
    store: Arc<Store>,
    sandbox: Sandbox,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

const TOKEN_KEY: &str = "mutation_token_sha256";

impl Engine {
    /// An engine over `store`, running steps in `sandbox`.
    pub fn new(store: Arc<Store>, sandbox: Sandbox) -> Self {
        Engine {
            store,
            sandbox,
            locks: Mutex::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    // --- reads --------------------------------------------------------------

    fn meta(&self, id: &str) -> Result<IncidentMeta> {
        self.store
            .get(&keys::meta(id))?
            .ok_or_else(|| EngineError::UnknownIncident(id.to_string()))
    }

    fn checkpoint(&self, id: &str) -> Result<Checkpoint> {
        self.store
            .get(&keys::checkpoint(id))?
            .ok_or_else(|| EngineError::UnknownIncident(id.to_string()))
    }

    fn status_of(&self, id: &str) -> Result<Status> {
        self.store
            .get(&keys::status(id))?
            .ok_or_else(|| EngineError::UnknownIncident(id.to_string()))
    }

    fn owner_of(&self, id: &str) -> Result<Owner> {
        self.store
            .get(&keys::owner(id))?
            .ok_or_else(|| EngineError::UnknownIncident(id.to_string()))
    }

    /// The runbook as it was opened, and its tool registry.
    fn runbook(&self, meta: &IncidentMeta) -> Result<(LoadedRunbook, Arc<ToolRegistry>)> {
        let base = PathBuf::from(&meta.base_dir);
        let rb = LoadedRunbook::parse(
            &meta.runbook_text,
            Path::new(&meta.runbook_path),
            base.clone(),
        )?;
        let tools = match (&meta.tools_text, rb.tools_path()) {
            (Some(text), Some(path)) => {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or(base);
                ToolRegistry::from_toml(text, &path, dir)?
            }
            _ => ToolRegistry::empty(),
        };
        Ok((rb, Arc::new(tools)))
    }

    /// The timeline, in order.
    pub fn timeline(&self, id: &str) -> Result<Vec<TimelineEvent>> {
        self.meta(id)?;
        Ok(self
            .store
            .scan(&keys::timeline(id))?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// Every step record, in key order (step, then attempt).
    pub fn step_records(&self, id: &str) -> Result<Vec<StepRecord>> {
        self.meta(id)?;
        let mut records: Vec<StepRecord> = self
            .store
            .scan(&keys::steps(id))?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        records.sort_by_key(|r| (r.started_at_ms, r.attempt));
        Ok(records)
    }

    /// The committed step KV of an incident.
    pub fn kv(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.meta(id)?;
        Ok(self.store.kv_scan(id)?)
    }

    /// All incidents.
    pub fn list(&self) -> Result<Vec<IncidentSummary>> {
        let ids: Vec<(String, String)> = self.store.scan(keys::INDEX)?;
        ids.into_iter()
            .map(|(_, id)| {
                let m = self.meta(&id)?;
                Ok(IncidentSummary {
                    status: self.status_of(&m.id)?,
                    owner: self.owner_of(&m.id)?.to_string(),
                    step: self.checkpoint(&m.id)?.step,
                    runbook: m.runbook_name,
                    id: m.id,
                })
            })
            .collect()
    }

    /// What `runbox status` shows.
    pub fn view(&self, id: &str) -> Result<IncidentView> {
        let meta = self.meta(id)?;
        let checkpoint = self.checkpoint(id)?;
        let status = self.status_of(id)?;
        let why = self
            .timeline(id)?
            .into_iter()
            .rev()
            .find(|e| {
                matches!(
                    e.kind.as_str(),
                    "escalated"
                        | "blocked"
                        | "approval-required"
                        | "failed"
                        | "resolved"
                        | "in-doubt"
                        | "retry-scheduled"
                        | "takeover"
                        | "handback"
                        | "denied"
                )
            })
            .map(|e| e.message);
        Ok(IncidentView {
            id: id.to_string(),
            status,
            owner: self.owner_of(id)?.to_string(),
            runbook: meta.runbook_name,
            params: meta.params,
            pending_approval: (status == Status::AwaitingApproval)
                .then(|| checkpoint.step.clone())
                .flatten(),
            in_doubt: checkpoint.in_flight.clone(),
            checkpoint,
            why,
        })
    }

    // --- writes ---------------------------------------------------------------

    /// Commits `change` to incident `id` if its checkpoint is still at
    /// `expected`; returns the new checkpoint.
    fn apply(&self, id: &str, expected: u64, change: Change) -> Result<Checkpoint> {
        let current = self.checkpoint(id)?;
        if current.version != expected {
            return Err(EngineError::Conflict {
                id: id.to_string(),
                expected,
                found: current.version,
            });
        }
        let mut next = change.checkpoint.unwrap_or_else(|| current.clone());
        next.version = expected + 1;
        next.next_seq = current.next_seq;
        let mut batch = self.store.batch();
        let at = now_ms();
        for e in change.events {
            let event = TimelineEvent {
                seq: next.next_seq,
                at_ms: at,
                actor: e.actor,
                kind: e.kind.to_string(),
                step: e.step,
                attempt: e.attempt,
                message: e.message,
            };
            batch.put(&keys::event(id, event.seq), &event);
            next.next_seq += 1;
        }
        for (key, value) in &change.records {
            batch.put(key, value);
        }
        for (key, value) in &change.kv {
            batch.kv(id, key, value.as_deref());
        }
        if let Some(status) = change.status {
            batch.put(&keys::status(id), &status);
        }
        if let Some(owner) = &change.owner {
            batch.put(&keys::owner(id), owner);
        }
        batch.put(&keys::checkpoint(id), &next);
        batch.commit()?;
        Ok(next)
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    // --- open -------------------------------------------------------------------

    /// Opens an incident: validates the runbook fully (every module exists,
    /// matches its pin, loads, and imports nothing its grants do not cover)
    /// and records it with the sha256 of every module.
    pub fn open(
        &self,
        id: &str,
        runbook_path: &Path,
        params: &BTreeMap<String, String>,
        actor: &str,
    ) -> Result<IncidentMeta> {
        if !valid_id(id) {
            return Err(EngineError::InvalidName {
                what: "incident id",
                value: id.into(),
            });
        }
        if self
            .store
            .get::<serde_json::Value>(&keys::meta(id))?
            .is_some()
        {
            return Err(EngineError::Exists(id.to_string()));
        }
        let rb = LoadedRunbook::load(runbook_path)?;
        let params = rb.resolve_params(params)?;
        let tools_text = match rb.tools_path() {
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|source| {
                crate::tools::ToolError::Read {
                    path: path.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let runbook_text = std::fs::read_to_string(runbook_path).map_err(|source| {
            crate::runbook::RunbookError::Read {
                path: runbook_path.to_path_buf(),
                source,
            }
        })?;
        let meta = IncidentMeta {
            id: id.to_string(),
            runbook_name: rb.runbook.runbook.name.clone(),
            runbook_path: runbook_path.display().to_string(),
            runbook_text,
            base_dir: rb.base_dir.display().to_string(),
            tools_text,
            params,
            modules: BTreeMap::new(),
            opened_at_ms: now_ms(),
            opened_by: actor.to_string(),
        };
        let (rb, tools) = self.runbook(&meta)?;
        let mut meta = meta;
        for step in &rb.runbook.steps {
            let sha = self.check_step_module(&rb, step, &tools, None)?;
            meta.modules.insert(step.id.clone(), sha);
        }
        let first = rb.runbook.steps[0].id.clone();
        let checkpoint = Checkpoint {
            version: 0,
            step: Some(first.clone()),
            attempt: 1,
            in_flight: None,
            not_before_ms: None,
            next_seq: 0,
        };
        let event = TimelineEvent {
            seq: 0,
            at_ms: meta.opened_at_ms,
            actor: actor.to_string(),
            kind: "opened".into(),
            step: None,
            attempt: None,
            message: format!(
                "opened with runbook `{}` ({} steps), params {:?}; first step `{first}`",
                meta.runbook_name,
                rb.runbook.steps.len(),
                meta.params
            ),
        };
        let mut batch = self.store.batch();
        batch
            .put(&keys::meta(id), &meta)
            .put(&keys::index(id), &id)
            .put(&keys::status(id), &Status::Open)
            .put(&keys::owner(id), &Owner::Agent("runbox".into()))
            .put(&keys::event(id, 0), &event)
            .put(
                &keys::checkpoint(id),
                &Checkpoint {
                    next_seq: 1,
                    ..checkpoint
                },
            );
        batch.commit()?;
        info!(incident = id, runbook = %meta.runbook_name, "incident opened");
        Ok(meta)
    }

    /// Reads a step's module, checks its pin and (if given) the hash recorded
    /// at open, and checks it loads with imports its grants cover.
    fn check_step_module(
        &self,
        rb: &LoadedRunbook,
        step: &StepSpec,
        tools: &Arc<ToolRegistry>,
        recorded: Option<&str>,
    ) -> Result<String> {
        let path = rb.module_path(step);
        let bytes = std::fs::read(&path).map_err(|source| SandboxError::ReadModule {
            path: path.clone(),
            source,
        })?;
        let sha = hex::encode(Sha256::digest(&bytes));
        let mismatch = |expected: &str, what: &str| EngineError::StepModule {
            step: step.id.clone(),
            error: StepError::new(
                ErrorCategory::InvalidModule,
                format!(
                    "{} has sha256 {sha}, but {what} is {expected}: refusing to run it",
                    path.display()
                ),
            ),
        };
        if let Some(pin) = &step.sha256
            && !pin.eq_ignore_ascii_case(&sha)
        {
            return Err(mismatch(pin, "the runbook's pin"));
        }
        if let Some(expected) = recorded
            && expected != sha
        {
            return Err(mismatch(
                expected,
                "the hash recorded when the incident was opened",
            ));
        }
        // Validate against grants alone: the token and mode are run-time matters.
        let caps = Capabilities {
            allow_mutate: true,
            read_only: false,
        };
        self.sandbox
            .prepare(&step.id, &bytes, &step.policy(), tools.clone(), caps)?
            .map_err(|error| EngineError::StepModule {
                step: step.id.clone(),
                error,
            })?;
        Ok(sha)
    }

    // --- token --------------------------------------------------------------------

    /// Creates the mutation token: returns it (to print once) and stores only
    /// its sha256. Refuses to replace an existing token unless `rotate`.
    pub fn init_token(&self, rotate: bool) -> Result<String> {
        if self.store.meta_get(TOKEN_KEY)?.is_some() && !rotate {
            return Err(EngineError::Refused {
                id: "-".into(),
                message: "a mutation token exists already; use `runbox token init --rotate` to replace it".into(),
            });
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| EngineError::Refused {
            id: "-".into(),
            message: format!("no randomness for the token: {e}"),
        })?;
        let token = format!("rbx_{}", hex::encode(raw));
        let hash = Sha256::digest(token.as_bytes());
        let mut batch = self.store.batch();
        batch.meta(TOKEN_KEY, &hash);
        batch.commit()?;
        Ok(token)
    }

    /// Whether `token` matches the stored hash (constant-time comparison).
    fn token_valid(&self, token: &str) -> Result<bool> {
        use subtle::ConstantTimeEq;
        let Some(stored) = self.store.meta_get(TOKEN_KEY)? else {
            return Ok(false);
        };
        let presented = Sha256::digest(token.trim().as_bytes());
        Ok(presented.as_slice().ct_eq(&stored).into())
    }

    // --- run ----------------------------------------------------------------------------

    /// Runs incident `id` until it is resolved, escalated, failed, waiting
    /// on a human, blocked, or (with `no_wait`) waiting on a timer.
    pub async fn run(&self, id: &str, opts: &RunOptions) -> Result<RunExit> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let span = info_span!("incident", incident = id);
        self.run_locked(id, opts).instrument(span).await
    }

    /// Runs every incident that is open for the agent, concurrently.
    pub async fn run_all(
        self: &Arc<Self>,
        opts: &RunOptions,
    ) -> Result<Vec<(String, Result<RunExit>)>> {
        let runnable: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|s| {
                !s.status.is_terminal()
                    && s.status != Status::Escalated
                    && s.owner.starts_with("agent:")
            })
            .map(|s| s.id)
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for id in runnable {
            let engine = self.clone();
            let opts = opts.clone();
            tasks.spawn(async move {
                let exit = engine.run(&id, &opts).await;
                (id, exit)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => results.push((
                    "?".into(),
                    Err(EngineError::Refused {
                        id: "?".into(),
                        message: format!("run task failed: {e}"),
                    }),
                )),
            }
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(results)
    }

    async fn run_locked(&self, id: &str, opts: &RunOptions) -> Result<RunExit> {
        let meta = self.meta(id)?;
        let (rb, tools) = self.runbook(&meta)?;
        let agent = format!("agent:{}", opts.agent.as_deref().unwrap_or("runbox"));
        let token_ok = match &opts.token {
            Some(t) => self.token_valid(t)?,
            None => false,
        };
        loop {
            let cp = self.checkpoint(id)?;
            let status = self.status_of(id)?;
            let owner = self.owner_of(id)?;
            if let Some(exit) = self.settled_exit(id, status, &owner, &cp)? {
                return Ok(exit);
            }
            let Some(step_id) = cp.step.clone() else {
                return Ok(RunExit::Resolved);
            };
            let step = rb.step(&step_id).ok_or_else(|| EngineError::Refused {
                id: id.into(),
                message: format!(
                    "checkpoint names step `{step_id}`, which the runbook does not have"
                ),
            })?;
            if cp.in_flight.is_some() {
                if let Some(exit) = self.handle_in_doubt(id, &cp, step, &agent)? {
                    return Ok(exit);
                }
                continue;
            }
            match self.gate(
                id, &meta, &rb, step, &tools, &cp, status, opts, token_ok, &agent,
            )? {
                Gate::Go { approved_by } => {
                    let ctx = AttemptCtx {
                        id,
                        meta: &meta,
                        rb: &rb,
                        tools: &tools,
                        agent: &agent,
                        token_ok,
                        read_only: opts.read_only,
                        progress: opts.progress.clone(),
                    };
                    if let Some(exit) = self.attempt(&ctx, step, &cp, approved_by).await? {
                        return Ok(exit);
                    }
                }
                Gate::Wait { until_ms, reason } => {
                    if opts.no_wait {
                        return Ok(RunExit::Waiting { until_ms, reason });
                    }
                    wait_until(until_ms, &reason, id, opts).await;
                }
                Gate::Stop(exit) => return Ok(exit),
            }
        }
    }

    /// The exit for an incident the agent cannot act on now, if any.
    fn settled_exit(
        &self,
        id: &str,
        status: Status,
        owner: &Owner,
        cp: &Checkpoint,
    ) -> Result<Option<RunExit>> {
        let last_reason = |kinds: &[&str]| -> Result<String> {
            Ok(self
                .timeline(id)?
                .into_iter()
                .rev()
                .find(|e| kinds.contains(&e.kind.as_str()))
                .map(|e| e.message)
                .unwrap_or_default())
        };
        Ok(match status {
            Status::Resolved => Some(RunExit::Resolved),
            Status::Failed => Some(RunExit::Failed {
                reason: last_reason(&["failed"])?,
            }),
            Status::Escalated => Some(RunExit::Escalated {
                reason: last_reason(&["escalated", "in-doubt", "denied"])?,
            }),
            _ if !owner.is_agent() => Some(RunExit::HumanOwner {
                owner: owner.to_string(),
            }),
            _ if cp.step.is_none() => Some(RunExit::Resolved),
            _ => None,
        })
    }

    /// An attempt that started a mutation and never committed.
    fn handle_in_doubt(
        &self,
        id: &str,
        cp: &Checkpoint,
        step: &StepSpec,
        agent: &str,
    ) -> Result<Option<RunExit>> {
        let flight = cp.in_flight.clone().expect("caller checked in_flight");
        let at = Some((flight.step.as_str(), flight.attempt));
        let mut change = Change::default();
        if step.idempotent {
            let record = in_doubt_record(
                step,
                &flight,
                agent,
                "in doubt after a crash; retried because the step is idempotent",
            );
            change.record(keys::step(id, &flight.step, flight.attempt), &record);
            change.event(agent, "in-doubt", at, format!(
                "attempt {} of `{}` started a mutation (`{}`) and never committed; the step is idempotent, so it runs again",
                flight.attempt, flight.step, flight.tool
            ));
            change.checkpoint = Some(Checkpoint {
                in_flight: None,
                attempt: flight.attempt + 1,
                not_before_ms: None,
                ..cp.clone()
            });
            change.status = Some(Status::Open);
            self.apply(id, cp.version, change)?;
            return Ok(None);
        }
        let reason = format!(
            "attempt {} of `{}` started mutating tool `{}` at {} and never committed: its outcome is unknown and the step is not idempotent. A human must settle it: `runbox resolve|retry|skip {id} --step {} --as NAME`",
            flight.attempt,
            flight.step,
            flight.tool,
            crate::incident::format_ms(flight.started_at_ms),
            flight.step
        );
        change.event(agent, "in-doubt", at, reason.clone());
        change.event(agent, "escalated", at, reason.clone());
        change.status = Some(Status::Escalated);
        change.owner = Some(Owner::on_call());
        self.apply(id, cp.version, change)?;
        Ok(Some(RunExit::Escalated { reason }))
    }

    #[allow(clippy::too_many_arguments)]
    fn gate(
        &self,
        id: &str,
        meta: &IncidentMeta,
        rb: &LoadedRunbook,
        step: &StepSpec,
        tools: &Arc<ToolRegistry>,
        cp: &Checkpoint,
        status: Status,
        opts: &RunOptions,
        token_ok: bool,
        agent: &str,
    ) -> Result<Gate> {
        let at = Some((step.id.as_str(), cp.attempt));
        let (_, mutates) = granted_modes(&step.policy(), tools);
        let writes_kv = !step.grants.kv_write.is_empty();
        let blocked = |message: String| -> Result<Gate> {
            let mut change = Change::default();
            change.event(agent, "blocked", at, message.clone());
            self.apply(id, cp.version, change)?;
            Ok(Gate::Stop(RunExit::Blocked { reason: message }))
        };
        if opts.read_only && (mutates || writes_kv) {
            let needs = if mutates {
                "a mutating tool"
            } else {
                "KV writes"
            };
            return blocked(format!(
                "read-only mode: step `{}` needs {needs}, which read-only mode never links",
                step.id
            ));
        }
        if mutates && !token_ok {
            let why = if opts.token.is_some() {
                "the mutation token presented does not match"
            } else {
                "no mutation token presented (RUNBOX_MUTATION_TOKEN or --token-file)"
            };
            return blocked(format!("step `{}` calls a mutating tool: {why}", step.id));
        }
        if let Err(e) = self.check_step_module(
            rb,
            step,
            tools,
            meta.modules.get(&step.id).map(String::as_str),
        ) {
            return blocked(e.to_string());
        }
        if let Some(reason) = self.failed_precondition(id, meta, step)? {
            return self
                .escalate(
                    id,
                    cp,
                    at,
                    agent,
                    format!("precondition of `{}` does not hold: {reason}", step.id),
                )
                .map(Gate::Stop);
        }
        let mut approved_by = None;
        if step.impact == Impact::High {
            match self
                .store
                .get::<Approval>(&keys::approval(id, &step.id, cp.attempt))?
            {
                Some(a) if a.approved => approved_by = Some(a.by),
                // A denial escalates at once, so this is only reached if the
                // status was changed by hand; refuse to run either way.
                Some(a) => {
                    return Ok(Gate::Stop(RunExit::Escalated {
                        reason: format!("{} denied attempt {} of `{}`", a.by, a.attempt, step.id),
                    }));
                }
                None => {
                    if status != Status::AwaitingApproval {
                        let mut change = Change {
                            status: Some(Status::AwaitingApproval),
                            ..Change::default()
                        };
                        change.event(agent, "approval-required", at, format!(
                            "step `{}` ({}) has impact high: attempt {} needs a named human's approval (`runbox approve {id} {} --as NAME`)",
                            step.id, step.action(), cp.attempt, step.id
                        ));
                        self.apply(id, cp.version, change)?;
                    }
                    return Ok(Gate::Stop(RunExit::AwaitingApproval {
                        step: step.id.clone(),
                        attempt: cp.attempt,
                    }));
                }
            }
        }
        let now = now_ms();
        if mutates
            && step.cooldown_ms > 0
            && let Some(last) = self
                .store
                .get::<LastDestructive>(&keys::last_destructive(id))?
        {
            let until = last.at_ms.saturating_add(step.cooldown_ms);
            if now < until {
                return Ok(Gate::Wait {
                    until_ms: until,
                    reason: format!(
                        "cooldown of `{}`: the last destructive step `{}` committed at {}",
                        step.id,
                        last.step,
                        crate::incident::format_ms(last.at_ms)
                    ),
                });
            }
        }
        if let Some(until) = cp.not_before_ms.filter(|&t| now < t) {
            return Ok(Gate::Wait {
                until_ms: until,
                reason: format!("backoff before attempt {} of `{}`", cp.attempt, step.id),
            });
        }
        Ok(Gate::Go { approved_by })
    }

    fn failed_precondition(
        &self,
        id: &str,
        meta: &IncidentMeta,
        step: &StepSpec,
    ) -> Result<Option<String>> {
        for pre in &step.preconditions {
            let holds = match pre {
                Precondition::KvEquals { kv, equals } => {
                    let key = substitute(kv, &meta.params);
                    let value = self.store.kv_get(id, &key)?;
                    if value.as_deref() == Some(equals.as_bytes()) {
                        None
                    } else {
                        Some(format!("KV `{key}` is not {equals:?}"))
                    }
                }
                Precondition::KvExists { kv, exists } => {
                    let key = substitute(kv, &meta.params);
                    let present = self.store.kv_get(id, &key)?.is_some();
                    if present == *exists {
                        None
                    } else {
                        Some(format!(
                            "KV `{key}` {}",
                            if *exists { "is absent" } else { "exists" }
                        ))
                    }
                }
                Precondition::StepOutcome {
                    step: other,
                    outcome,
                } => {
                    let last = self
                        .store
                        .scan::<StepRecord>(&format!("{}{other}:", keys::steps(id)))?
                        .pop()
                        .map(|(_, r)| r);
                    match last {
                        Some(r) if r.outcome.as_str() == outcome => None,
                        Some(r) => Some(format!(
                            "step `{other}` last ended {}, not {outcome}",
                            r.outcome.as_str()
                        )),
                        None => Some(format!("step `{other}` has not run")),
                    }
                }
            };
            if holds.is_some() {
                return Ok(holds);
            }
        }
        Ok(None)
    }

    fn escalate(
        &self,
        id: &str,
        cp: &Checkpoint,
        at: Option<(&str, u32)>,
        actor: &str,
        reason: String,
    ) -> Result<RunExit> {
        let mut change = Change::default();
        change.event(actor, "escalated", at, reason.clone());
        change.status = Some(Status::Escalated);
        change.owner = Some(Owner::on_call());
        self.apply(id, cp.version, change)?;
        Ok(RunExit::Escalated { reason })
    }

    /// Runs one attempt and commits it.
    async fn attempt(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        approved_by: Option<String>,
    ) -> Result<Option<RunExit>> {
        let id = ctx.id;
        let attempt = cp.attempt;
        let span = info_span!("step", step = %step.id, attempt);
        let started = now_ms();
        let input = step_input(step, &ctx.meta.params);
        let caps = Capabilities {
            allow_mutate: ctx.token_ok,
            read_only: ctx.read_only,
        };
        let version = Arc::new(Mutex::new(cp.version));
        let path = ctx.rb.module_path(step);
        let report = match self.sandbox.prepare_file(
            &step.id,
            &path,
            &step.policy(),
            ctx.tools.clone(),
            caps,
        )? {
            Ok(prepared) => {
                let guard = InFlightGuard {
                    store: self.store.clone(),
                    id: id.to_string(),
                    step: step.id.clone(),
                    attempt,
                    agent: ctx.agent.to_string(),
                    version: version.clone(),
                    started_at_ms: started,
                };
                let kv = Arc::new(IncidentKv::new(self.store.clone(), id));
                self.sandbox
                    .run(&prepared, &input, kv, Some(Box::new(guard)))
                    .instrument(span)
                    .await
            }
            Err(error) => StepReport::stopped(error),
        };
        let expected = *version.lock().unwrap_or_else(|p| p.into_inner());
        let cp = self.checkpoint(id)?;
        if cp.version != expected {
            return Err(EngineError::Conflict {
                id: id.into(),
                expected,
                found: cp.version,
            });
        }
        let record = StepRecord {
            step: step.id.clone(),
            action: step.action().to_string(),
            attempt,
            started_at_ms: started,
            ended_at_ms: now_ms(),
            outcome: report.outcome.into(),
            output: report.output.clone(),
            reason: report.reason.clone(),
            tool_calls: report.tool_calls.clone(),
            error: report.error.clone(),
            violations: report.violations.clone(),
            kv_keys: report.kv_writes.iter().map(|w| w.key.clone()).collect(),
            human_override: false,
            actor: ctx.agent.to_string(),
            module_sha256: ctx.meta.modules.get(&step.id).cloned(),
            approved_by,
        };
        let mut change = Change::default();
        let at = Some((step.id.as_str(), attempt));
        change.record(keys::step(id, &step.id, attempt), &record);
        for w in &report.kv_writes {
            change.kv.push((w.key.clone(), w.value.clone()));
        }
        if report.mutated() {
            change.record(
                keys::last_destructive(id),
                &LastDestructive {
                    step: step.id.clone(),
                    attempt,
                    at_ms: record.ended_at_ms,
                },
            );
        }
        let summary = commit_summary(&report);
        if let Some(progress) = &ctx.progress {
            progress(&format!("{id}: {}#{attempt} {summary}", step.id));
        }
        change.event(ctx.agent, "step-committed", at, summary);
        let exit = self.transition(ctx, step, &cp, &report, &mut change);
        change
            .checkpoint
            .get_or_insert_with(|| Checkpoint {
                in_flight: None,
                ..cp.clone()
            })
            .in_flight = None;
        self.apply(id, cp.version, change)?;
        Ok(exit)
    }

    /// Decides where the incident goes after a report; fills `change`.
    fn transition(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        report: &StepReport,
        change: &mut Change,
    ) -> Option<RunExit> {
        let at = Some((step.id.as_str(), cp.attempt));
        if let Some(error) = &report.error {
            return Some(escalation(
                change,
                ctx.agent,
                at,
                format!("step `{}` attempt {}: {error}", step.id, cp.attempt),
            ));
        }
        match report.outcome {
            Outcome::Ok => {
                let next = ctx.rb.next_after_ok(step, report.output.as_ref());
                follow(change, ctx.agent, at, cp, next, "ok")
            }
            Outcome::Fail => {
                let next = ctx.rb.next_after_fail(step);
                follow(
                    change,
                    ctx.agent,
                    at,
                    cp,
                    next,
                    report.reason.as_deref().unwrap_or("fail"),
                )
            }
            Outcome::Escalate => Some(escalation(
                change,
                ctx.agent,
                at,
                format!(
                    "step `{}` escalated: {}",
                    step.id,
                    report.reason.as_deref().unwrap_or("no reason given")
                ),
            )),
            Outcome::Retry if cp.attempt <= step.max_retries => {
                let delay = step.backoff.delay_ms(cp.attempt);
                change.event(
                    ctx.agent,
                    "retry-scheduled",
                    at,
                    format!(
                        "`{}` asked to retry ({}); attempt {} of {} in {} ms",
                        step.id,
                        report.reason.as_deref().unwrap_or("no reason"),
                        cp.attempt + 1,
                        step.max_retries + 1,
                        delay
                    ),
                );
                change.checkpoint = Some(Checkpoint {
                    attempt: cp.attempt + 1,
                    not_before_ms: Some(now_ms() + delay),
                    in_flight: None,
                    ..cp.clone()
                });
                change.status = Some(Status::Open);
                None
            }
            Outcome::Retry => Some(escalation(
                change,
                ctx.agent,
                at,
                format!(
                    "step `{}` still asks to retry after {} attempts (max_retries {}): {}",
                    step.id,
                    cp.attempt,
                    step.max_retries,
                    report.reason.as_deref().unwrap_or("no reason")
                ),
            )),
        }
    }

    // --- human actions ------------------------------------------------------------------

    fn human(&self, name: &str) -> Result<Owner> {
        if !valid_name(name) {
            return Err(EngineError::InvalidName {
                what: "human name",
                value: name.into(),
            });
        }
        Ok(Owner::Human(name.to_string()))
    }

    fn refused(id: &str, message: impl Into<String>) -> EngineError {
        EngineError::Refused {
            id: id.to_string(),
            message: message.into(),
        }
    }

    /// Approves (or denies) the attempt of `step` that awaits approval.
    pub fn approve(&self, id: &str, step: &str, actor: &str, approve: bool) -> Result<()> {
        let human = self.human(actor)?.to_string();
        let cp = self.checkpoint(id)?;
        let status = self.status_of(id)?;
        if status != Status::AwaitingApproval || cp.step.as_deref() != Some(step) {
            return Err(Self::refused(
                id,
                format!(
                    "step `{step}` is not awaiting approval (status {status}, current step {})",
                    cp.step.as_deref().unwrap_or("none")
                ),
            ));
        }
        if self
            .store
            .get::<Approval>(&keys::approval(id, step, cp.attempt))?
            .is_some()
        {
            return Err(Self::refused(
                id,
                format!("attempt {} of `{step}` was already decided", cp.attempt),
            ));
        }
        let approval = Approval {
            step: step.into(),
            attempt: cp.attempt,
            by: human.clone(),
            at_ms: now_ms(),
            approved: approve,
        };
        let mut change = Change::default();
        let at = Some((step, cp.attempt));
        change.record(keys::approval(id, step, cp.attempt), &approval);
        if approve {
            change.event(
                &human,
                "approved",
                at,
                format!("{human} approved attempt {} of `{step}`", cp.attempt),
            );
            change.status = Some(Status::Open);
        } else {
            let reason = format!(
                "{human} denied attempt {} of `{step}`; the incident is theirs",
                cp.attempt
            );
            change.event(&human, "denied", at, reason.clone());
            change.event(&human, "escalated", at, reason);
            change.status = Some(Status::Escalated);
            change.owner = Some(Owner::Human(actor.into()));
        }
        self.apply(id, cp.version, change)?;
        Ok(())
    }

    /// A human takes the incident: the agent stops executing steps.
    pub fn takeover(&self, id: &str, actor: &str) -> Result<()> {
        let human = self.human(actor)?;
        let cp = self.checkpoint(id)?;
        let owner = self.owner_of(id)?;
        if self.status_of(id)?.is_terminal() {
            return Err(Self::refused(id, "the incident is over"));
        }
        if owner == human {
            return Err(Self::refused(id, format!("{human} owns it already")));
        }
        let mut change = Change::default();
        change.event(
            &human.to_string(),
            "takeover",
            None,
            format!("{human} took over from {owner}"),
        );
        change.owner = Some(human);
        self.apply(id, cp.version, change)?;
        Ok(())
    }

    /// Hands the incident back to the agent from the current checkpoint.
    pub fn handback(&self, id: &str, actor: &str, agent: Option<&str>) -> Result<()> {
        let human = self.human(actor)?;
        let cp = self.checkpoint(id)?;
        let status = self.status_of(id)?;
        if self.owner_of(id)?.is_agent() {
            return Err(Self::refused(id, "an agent owns it already"));
        }
        if status.is_terminal() {
            return Err(Self::refused(id, "the incident is over"));
        }
        if let Some(f) = &cp.in_flight {
            return Err(Self::refused(
                id,
                format!(
                    "attempt {} of `{}` is in doubt: settle it first (`runbox resolve|retry|skip {id} --step {} --as NAME`)",
                    f.attempt, f.step, f.step
                ),
            ));
        }
        if status == Status::Escalated {
            let step = cp.step.as_deref().unwrap_or("?");
            return Err(Self::refused(
                id,
                format!(
                    "it is escalated at `{step}`: settle the step first (`runbox resolve|retry|skip {id} --step {step} --as NAME`)"
                ),
            ));
        }
        let agent = Owner::Agent(agent.unwrap_or("runbox").to_string());
        let mut change = Change::default();
        change.event(
            &human.to_string(),
            "handback",
            None,
            format!(
                "{human} handed back to {agent} at step `{}`",
                cp.step.as_deref().unwrap_or("none")
            ),
        );
        change.owner = Some(agent);
        self.apply(id, cp.version, change)?;
        Ok(())
    }

    /// Checks that `step` is the one a human may settle now.
    fn settleable(&self, id: &str, step: &str) -> Result<(Checkpoint, Status)> {
        let cp = self.checkpoint(id)?;
        let status = self.status_of(id)?;
        if cp.step.as_deref() != Some(step) {
            return Err(Self::refused(
                id,
                format!(
                    "`{step}` is not the current step (`{}`)",
                    cp.step.as_deref().unwrap_or("none")
                ),
            ));
        }
        if cp.in_flight.is_none() && !matches!(status, Status::Escalated | Status::Failed) {
            return Err(Self::refused(
                id,
                format!(
                    "`{step}` is neither in doubt nor escalated (status {status}); nothing to settle"
                ),
            ));
        }
        Ok((cp, status))
    }

    /// The attempt number a human decision is recorded under: the in-doubt
    /// attempt itself, or a fresh one after a committed attempt.
    fn settle_attempt(&self, id: &str, step: &str, cp: &Checkpoint) -> Result<u32> {
        if let Some(f) = &cp.in_flight {
            return Ok(f.attempt);
        }
        let committed = self
            .store
            .get::<StepRecord>(&keys::step(id, step, cp.attempt))?
            .is_some();
        Ok(if committed {
            cp.attempt + 1
        } else {
            cp.attempt
        })
    }

    fn human_record(
        &self,
        id: &str,
        step: &str,
        attempt: u32,
        outcome: RecordOutcome,
        human: &Owner,
        note: String,
    ) -> Result<StepRecord> {
        let meta = self.meta(id)?;
        let (rb, _) = self.runbook(&meta)?;
        let spec = rb
            .step(step)
            .ok_or_else(|| Self::refused(id, format!("unknown step `{step}`")))?;
        let now = now_ms();
        Ok(StepRecord {
            step: step.into(),
            action: spec.action().into(),
            attempt,
            started_at_ms: now,
            ended_at_ms: now,
            outcome,
            output: None,
            reason: Some(note),
            tool_calls: Vec::new(),
            error: None,
            violations: Vec::new(),
            kv_keys: Vec::new(),
            human_override: true,
            actor: human.to_string(),
            module_sha256: meta.modules.get(step).cloned(),
            approved_by: None,
        })
    }

    /// A human states the outcome of an in-doubt or escalated step; the
    /// runbook's transition for that outcome follows.
    pub fn resolve_step(&self, id: &str, step: &str, outcome: Outcome, actor: &str) -> Result<()> {
        let human = self.human(actor)?;
        let (cp, _) = self.settleable(id, step)?;
        let meta = self.meta(id)?;
        let (rb, _) = self.runbook(&meta)?;
        let spec = rb
            .step(step)
            .ok_or_else(|| Self::refused(id, format!("unknown step `{step}`")))?;
        let attempt = self.settle_attempt(id, step, &cp)?;
        let record = self.human_record(
            id,
            step,
            attempt,
            outcome.into(),
            &human,
            format!("outcome {outcome} stated by {human}"),
        )?;
        let mut change = Change::default();
        let at = Some((step, attempt));
        change.record(keys::step(id, step, attempt), &record);
        change.event(
            &human.to_string(),
            "human-resolve",
            at,
            format!("{human} settled attempt {attempt} of `{step}` as {outcome}"),
        );
        let base = Checkpoint {
            in_flight: None,
            attempt,
            not_before_ms: None,
            ..cp.clone()
        };
        let next = match outcome {
            Outcome::Ok => rb.next_after_ok(spec, None),
            Outcome::Fail => rb.next_after_fail(spec),
            Outcome::Escalate => Next::Escalate,
            Outcome::Retry => Next::Step(step.to_string()),
        };
        let actor_s = human.to_string();
        follow(
            &mut change,
            &actor_s,
            at,
            &base,
            next,
            &format!("settled by {human}"),
        );
        if change.status == Some(Status::Escalated) {
            change.owner = Some(human);
        }
        self.apply(id, cp.version, change)?;
        Ok(())
    }

    /// A human asks for a fresh attempt of an in-doubt or escalated step.
    pub fn retry_step(&self, id: &str, step: &str, actor: &str) -> Result<()> {
        let human = self.human(actor)?;
        let (cp, _) = self.settleable(id, step)?;
        let attempt = self.settle_attempt(id, step, &cp)?;
        let mut change = Change::default();
        if cp.in_flight.is_some() {
            let record = self.human_record(
                id,
                step,
                attempt,
                RecordOutcome::InDoubt,
                &human,
                format!("in doubt; {human} chose to retry"),
            )?;
            change.record(keys::step(id, step, attempt), &record);
        }
        let next_attempt = if cp.in_flight.is_some() {
            attempt + 1
        } else {
            attempt.max(cp.attempt + 1)
        };
        change.event(
            &human.to_string(),
            "human-retry",
            Some((step, next_attempt)),
            format!("{human} asked for attempt {next_attempt} of `{step}`"),
        );
        change.checkpoint = Some(Checkpoint {
            in_flight: None,
            attempt: next_attempt,
            not_before_ms: None,
            ..cp.clone()
        });
        change.status = Some(Status::Open);
        self.apply(id, cp.version, change)?;
        Ok(())
    }

    /// A human skips an in-doubt or escalated step; the runbook goes on as
    /// after `ok`.
    pub fn skip_step(&self, id: &str, step: &str, actor: &str) -> Result<()> {
        let human = self.human(actor)?;
        let (cp, _) = self.settleable(id, step)?;
        let meta = self.meta(id)?;
        let (rb, _) = self.runbook(&meta)?;
        let spec = rb
            .step(step)
            .ok_or_else(|| Self::refused(id, format!("unknown step `{step}`")))?;
        let attempt = self.settle_attempt(id, step, &cp)?;
        let record = self.human_record(
            id,
            step,
            attempt,
            RecordOutcome::Skipped,
            &human,
            format!("skipped by {human}"),
        )?;
        let mut change = Change::default();
        let at = Some((step, attempt));
        change.record(keys::step(id, step, attempt), &record);
        change.event(
            &human.to_string(),
            "human-skip",
            at,
            format!("{human} skipped `{step}`"),
        );
        let base = Checkpoint {
            in_flight: None,
            attempt,
            not_before_ms: None,
            ..cp.clone()
        };
        let actor_s = human.to_string();
        follow(
            &mut change,
            &actor_s,
            at,
            &base,
            rb.next_after_ok(spec, None),
            &format!("skipped by {human}"),
        );
        self.apply(id, cp.version, change)?;
        Ok(())
    }
}

/// What the gates decided.
enum Gate {
    Go { approved_by: Option<String> },
    Wait { until_ms: u64, reason: String },
    Stop(RunExit),
}

struct AttemptCtx<'a> {
    id: &'a str,
    meta: &'a IncidentMeta,
    rb: &'a LoadedRunbook,
    tools: &'a Arc<ToolRegistry>,
    agent: &'a str,
    token_ok: bool,
    read_only: bool,
    progress: Option<Progress>,
}

/// Fills `change` for an escalation and returns the exit.
fn escalation(
    change: &mut Change,
    actor: &str,
    at: Option<(&str, u32)>,
    reason: String,
) -> RunExit {
    change.event(actor, "escalated", at, reason.clone());
    change.status = Some(Status::Escalated);
    change.owner = Some(Owner::on_call());
    RunExit::Escalated { reason }
}

/// Fills `change` for a transition to `next` and returns the exit, if the run ends.
fn follow(
    change: &mut Change,
    actor: &str,
    at: Option<(&str, u32)>,
    cp: &Checkpoint,
    next: Next,
    why: &str,
) -> Option<RunExit> {
    match next {
        Next::Step(s) => {
            let attempt = if Some(&s) == cp.step.as_ref() {
                cp.attempt + 1
            } else {
                1
            };
            change.checkpoint = Some(Checkpoint {
                step: Some(s),
                attempt,
                in_flight: None,
                not_before_ms: None,
                ..cp.clone()
            });
            change.status = Some(Status::Open);
            None
        }
        Next::Resolve => {
            change.event(actor, "resolved", at, format!("incident resolved ({why})"));
            change.checkpoint = Some(Checkpoint {
                step: None,
                in_flight: None,
                not_before_ms: None,
                ..cp.clone()
            });
            change.status = Some(Status::Resolved);
            Some(RunExit::Resolved)
        }
        Next::Escalate => Some(escalation(
            change,
            actor,
            at,
            format!("runbook escalates after {why}"),
        )),
        Next::Fail => {
            let reason = format!("runbook fails the incident after {why}");
            change.event(actor, "failed", at, reason.clone());
            change.status = Some(Status::Failed);
            Some(RunExit::Failed { reason })
        }
    }
}

fn commit_summary(report: &StepReport) -> String {
    let mut parts = vec![format!("outcome {}", report.outcome)];
    if let Some(e) = &report.error {
        parts.push(format!("error {}", e.category));
    }
    for call in &report.tool_calls {
        parts.push(format!("tool {} ({}) rc {}", call.name, call.mode, call.rc));
    }
    if !report.kv_writes.is_empty() {
        parts.push(format!("{} KV writes", report.kv_writes.len()));
    }
    if let Some(r) = &report.reason {
        parts.push(format!("reason: {r}"));
    }
    parts.join(", ")
}

fn in_doubt_record(step: &StepSpec, flight: &InFlight, agent: &str, note: &str) -> StepRecord {
    StepRecord {
        step: flight.step.clone(),
        action: step.action().into(),
        attempt: flight.attempt,
        started_at_ms: flight.started_at_ms,
        ended_at_ms: now_ms(),
        outcome: RecordOutcome::InDoubt,
        output: None,
        reason: Some(note.into()),
        tool_calls: Vec::new(),
        error: Some(StepError::new(
            ErrorCategory::Host,
            "no result committed before the process stopped",
        )),
        violations: Vec::new(),
        kv_keys: Vec::new(),
        human_override: false,
        actor: agent.into(),
        module_sha256: None,
        approved_by: None,
    }
}

async fn wait_until(until_ms: u64, reason: &str, id: &str, opts: &RunOptions) {
    loop {
        let now = now_ms();
        if now >= until_ms {
            return;
        }
        let left = until_ms - now;
        if let Some(progress) = &opts.progress {
            progress(&format!(
                "{id}: waiting {:.1}s for {reason}",
                left as f64 / 1000.0
            ));
        }
        tokio::time::sleep(Duration::from_millis(left.min(5_000))).await;
    }
}

/// Makes `attempt started` durable before the first mutating tool call.
struct InFlightGuard {
    store: Arc<Store>,
    id: String,
    step: String,
    attempt: u32,
    agent: String,
    version: Arc<Mutex<u64>>,
    started_at_ms: u64,
}

impl MutationGuard for InFlightGuard {
    fn before_first_mutation(&mut self, tool: &str) -> std::result::Result<(), String> {
        let mut version = self.version.lock().unwrap_or_else(|p| p.into_inner());
        let cp: Checkpoint = self
            .store
            .get(&keys::checkpoint(&self.id))
            .map_err(|e| e.to_string())?
            .ok_or("the incident vanished")?;
        if cp.version != *version {
            return Err(format!(
                "checkpoint moved (version {} expected, found {})",
                *version, cp.version
            ));
        }
        let flight = InFlight {
            step: self.step.clone(),
            attempt: self.attempt,
            started_at_ms: self.started_at_ms,
            tool: tool.into(),
        };
        let event = TimelineEvent {
            seq: cp.next_seq,
            at_ms: now_ms(),
            actor: self.agent.clone(),
            kind: "attempt-started".into(),
            step: Some(self.step.clone()),
            attempt: Some(self.attempt),
            message: format!("about to call mutating tool `{tool}`"),
        };
        let next = Checkpoint {
            version: cp.version + 1,
            next_seq: cp.next_seq + 1,
            in_flight: Some(flight),
            ..cp
        };
        let mut batch = self.store.batch();
        batch
            .put(&keys::event(&self.id, event.seq), &event)
            .put(&keys::status(&self.id), &Status::Running)
            .put(&keys::checkpoint(&self.id), &next);
        batch.commit().map_err(|e| e.to_string())?;
        *version = next.version;
        Ok(())
    }
}
