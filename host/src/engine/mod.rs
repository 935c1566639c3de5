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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::incident::{
    Checkpoint, InFlight, IncidentMeta, Owner, Status, StepRecord, TimelineEvent, keys, now_ms,
    valid_id,
};
use crate::runbook::{LoadedRunbook, StepSpec};
use crate::sandbox::{Capabilities, ErrorCategory, PreparedStep, Sandbox, SandboxError, StepError};
use crate::store::{Store, StoreError};
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

mod change;
mod human;
mod run;

use change::Change;

/// The engine over one store.
pub struct Engine {
    store: Arc<Store>,
    sandbox: Sandbox,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held across each version check and its write, so two threads can
    /// never both commit on top of the same checkpoint version.
    commit: Arc<Mutex<()>>,
}

const TOKEN_KEY: &str = "mutation_token_sha256";

impl Engine {
    /// An engine over `store`, running steps in `sandbox`.
    pub fn new(store: Arc<Store>, sandbox: Sandbox) -> Self {
        Engine {
            store,
            sandbox,
            locks: Mutex::default(),
            commit: Arc::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    // --- reads --------------------------------------------------------------

    /// A record every incident has; its absence means no such incident.
    fn required<T: serde::de::DeserializeOwned>(&self, id: &str, key: &str) -> Result<T> {
        self.store
            .get(key)?
            .ok_or_else(|| EngineError::UnknownIncident(id.to_string()))
    }

    fn meta(&self, id: &str) -> Result<IncidentMeta> {
        self.required(id, &keys::meta(id))
    }

    fn checkpoint(&self, id: &str) -> Result<Checkpoint> {
        self.required(id, &keys::checkpoint(id))
    }

    fn status_of(&self, id: &str) -> Result<Status> {
        self.required(id, &keys::status(id))
    }

    fn owner_of(&self, id: &str) -> Result<Owner> {
        self.required(id, &keys::owner(id))
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
        let _commit = self.commit_lock();
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

    /// The commit lock. A panic cannot leave half a commit behind (the batch
    /// is written whole or not at all), so a poisoned lock is safe to reuse.
    fn commit_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
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
            // Validate against grants alone: token and mode are run-time matters.
            let caps = Capabilities {
                allow_mutate: true,
                read_only: false,
            };
            let prepared = self.step_module(&rb, step, &tools, None, caps)?;
            meta.modules
                .insert(step.id.clone(), prepared.sha256().to_string());
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
    /// at open, and prepares it for `caps`: it must load and import nothing
    /// its grants (under `caps`) do not cover.
    fn step_module(
        &self,
        rb: &LoadedRunbook,
        step: &StepSpec,
        tools: &Arc<ToolRegistry>,
        recorded: Option<&str>,
        caps: Capabilities,
    ) -> Result<PreparedStep> {
        let path = rb.module_path(step);
        let bytes = std::fs::read(&path).map_err(|source| SandboxError::ReadModule {
            path: path.clone(),
            source,
        })?;
        // Hashed once: the same digest checks the pins and keys the sandbox's caches.
        let digest = crate::sandbox::module_digest(&bytes);
        let sha = hex::encode(digest);
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
        self.sandbox
            .prepare_digested(
                &step.id,
                &bytes,
                digest,
                &step.policy(),
                tools.clone(),
                caps,
            )?
            .map_err(|error| EngineError::StepModule {
                step: step.id.clone(),
                error,
            })
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
}
