//! The service layer: every operation an agent (over MCP or HTTP) can ask
//! for, and every rule check, in one place. Front-ends authenticate a
//! [`Caller`] and translate; they decide nothing.
//!
//! | operation | needs |
//! |---|---|
//! | list/review runbooks, list/get incidents, timeline, step records, await a change, make a statement to sign | `read` |
//! | open an incident, run a step that does not mutate, escalate, add a note | `run` |
//! | run a mutating step (and the server must hold the mutation token) | `mutate` |
//! | list or engage a brake (it only ever stops things) | `read` |
//! | a human decision, a brake's release | a human's signature (verified by the engine), handed in by an agent that may `read` |
//! | post an Alertmanager webhook (`POST /v1/alerts`) | `alert`, which allows nothing else |
//! | add or remove an agent or a human | [`Admin`]: the control socket only, never an agent |

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runbox_core::attempt::Outcome;
use runbox_core::ident::IncidentId;
use runbox_core::limits::Brake;
use runbox_core::records::{Status, StepRecord, TimelineEvent};
use runbox_core::runbook::LoadedRunbook;
use runbox_core::time::{format_ms, now_ms};
use runbox_engine::decision::Request;
use runbox_engine::fleet::{EngagedBrake, Released};
use runbox_engine::{Engine, IncidentSummary, IncidentView, NextStep, RunExit, RunOptions};
use runbox_trust::{Action, Decision};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agents::{Agents, Caller, Power};
use crate::error::{ErrorCode, ServiceError};

/// How long `run_step` waits for its step before answering `running`
/// (the step goes on): under the ~60 s after which MCP clients commonly
/// give up on a tool call.
pub const RUN_STEP_WAIT: Duration = Duration::from_secs(50);
/// The longest `await_change` may wait.
pub const MAX_AWAIT: Duration = Duration::from_secs(50);
/// Events per `get_timeline` page, at most.
pub const MAX_TIMELINE_PAGE: u32 = 500;

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Directories of runbooks agents may open, by name or by a path under
    /// one of them. Default: none (no runbook can be opened).
    pub runbooks: Vec<PathBuf>,
    /// The mutation token, from the server's environment: without it no
    /// mutating step runs. Default: none.
    pub mutation_token: Option<String>,
    /// Serve diagnosis only: no step that mutates or writes KV runs.
    /// Default: false.
    pub read_only: bool,
    /// How long `run_step` waits before answering `running`. Default:
    /// [`RUN_STEP_WAIT`].
    pub run_step_wait: Duration,
    /// The data dir's `routes.toml` (read afresh for each webhook, so an
    /// edit counts at once). Default: none (every alert is unrouted). An
    /// engine whose configuration is the store's reads the fleet's routes
    /// document instead.
    pub routes: Option<PathBuf>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            runbooks: Vec::new(),
            mutation_token: None,
            read_only: false,
            run_step_wait: RUN_STEP_WAIT,
            routes: None,
        }
    }
}

/// The service over one engine.
pub struct Service {
    engine: Arc<Engine>,
    agents: Agents,
    pub(crate) config: ServiceConfig,
    /// Held across an edit of allowed_signers (read, then write).
    signers_edits: Mutex<()>,
    /// Steps running in the background after `run_step` answered `running`.
    running: Mutex<HashMap<IncidentId, tokio::task::JoinHandle<()>>>,
    /// The deliverer of the outbox, when this process delivers it.
    notifier: Option<Arc<runbox_notify::Notifier>>,
    /// `/healthz`, `/readyz`, `/metrics`.
    ops: crate::health::Ops,
    /// The web console's sessions, links and ceremonies.
    console: crate::console::Console,
    /// The watcher of incidents' commits behind live pages and MCP
    /// resource subscriptions.
    changes: crate::changes::Live,
}

/// Which parked notifications to try again: one, or every one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryArgs {
    /// The notification's id (`runbox notify list`); none: every parked one.
    #[serde(default)]
    pub id: Option<String>,
}

/// The incident an operation concerns.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentArgs {
    /// The incident id.
    pub id: String,
}

/// A runbook, by registered name or path under a runbooks directory.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunbookArgs {
    /// The runbook's name (as `list_runbooks` shows it) or its path.
    pub runbook: String,
}

/// What `open_incident` takes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenArgs {
    /// The runbook's name (as `list_runbooks` shows it) or its path.
    pub runbook: String,
    /// The runbook's parameters, name to value.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The incident id; default: `INC-` and the time.
    #[serde(default)]
    #[schemars(with = "Option<runbox_core::ident::IncidentId>")]
    pub id: Option<String>,
}

/// The most characters a schema lets a note or reason have: what always
/// fits `MAX_NOTE_BYTES` (4096) of UTF-8, four bytes a character at most.
const NOTE_SCHEMA_CHARS: u32 = (runbox_engine::agent::MAX_NOTE_BYTES / 4) as u32;

/// What `get_timeline` takes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimelineArgs {
    /// The incident id.
    pub id: String,
    /// Only events after this sequence number (the previous page's `next_after`).
    #[serde(default)]
    #[schemars(with = "u64")]
    pub after: Option<u64>,
    /// At most this many events (default and maximum 500; 0 answers none).
    #[serde(default)]
    #[schemars(with = "u32")]
    pub limit: Option<u32>,
}

/// What `get_step_record` takes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRecordArgs {
    /// The incident id.
    pub id: String,
    /// The step.
    pub step: String,
    /// The attempt; default: the newest.
    #[serde(default)]
    #[schemars(with = "u32")]
    pub attempt: Option<u32>,
}

/// What `await_change` takes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwaitArgs {
    /// The incident id.
    pub id: String,
    /// How long to wait, in seconds (default and maximum 50).
    #[serde(default)]
    #[schemars(with = "u32")]
    pub timeout_s: Option<u32>,
}

/// What `escalate` takes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalateArgs {
    /// The incident id.
    #[schemars(with = "runbox_core::ident::IncidentId")]
    pub id: String,
    /// Why humans must take over (at most 4096 bytes).
    #[schemars(length(min = 1, max = NOTE_SCHEMA_CHARS))]
    pub reason: String,
}

/// What `add_note` takes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteArgs {
    /// The incident id.
    #[schemars(with = "runbox_core::ident::IncidentId")]
    pub id: String,
    /// The note (at most 4096 bytes).
    #[schemars(length(min = 1, max = NOTE_SCHEMA_CHARS))]
    pub text: String,
}

/// A passkey to enroll: `runbox human add NAME --passkey`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyArgs {
    /// The human's name.
    pub name: String,
    /// What to call the passkey (`laptop`); default `passkey`.
    #[serde(default)]
    pub label: Option<String>,
}

/// A one-time enrollment link.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PasskeyLink {
    /// Open it in a browser on the console's host name; it works once.
    pub url: String,
    /// How long it stays valid, in seconds.
    pub expires_in_s: u64,
}

/// What a human must sign: `POST /v1/incidents/{id}/statements`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatementArgs {
    /// approve, deny, takeover, handback, resolve, retry or skip.
    pub action: Action,
    /// The human's name, as in allowed_signers.
    #[schemars(with = "runbox_core::ident::Name")]
    pub signer: String,
    /// The step (approve, deny, resolve, retry, skip).
    #[serde(default)]
    #[schemars(with = "Option<runbox_core::ident::StepId>")]
    pub step: Option<String>,
    /// The outcome (resolve): ok, retry, escalate or fail.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// How long the statement counts, in seconds (default: 1800, the
    /// engine's `DEFAULT_TTL`; at most a day).
    #[serde(default)]
    #[schemars(range(min = 1, max = runbox_trust::MAX_TTL.as_secs()))]
    pub ttl_s: Option<u64>,
}

impl StatementArgs {
    /// A statement of `action` by `signer`, on no step, for the default time.
    pub fn new(action: Action, signer: &str) -> Self {
        StatementArgs {
            action,
            signer: signer.to_string(),
            step: None,
            outcome: None,
            ttl_s: None,
        }
    }
}

/// A statement to sign, as the routes that make one answer it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StatementText {
    /// The statement's text: sign exactly this.
    pub statement: String,
}

/// A statement's lifetime in seconds, or the engine's default.
fn statement_ttl(ttl_s: Option<u64>) -> Duration {
    ttl_s.map_or(runbox_engine::decision::DEFAULT_TTL, Duration::from_secs)
}

/// The admin's authority over who may act: adding and removing agents
/// and humans. Only the control socket makes one. It is owner-only (mode
/// 0600) in an owner-only data dir, so whoever reaches it is the data
/// dir's Unix user, who could edit the store and allowed_signers directly:
/// the same trust, not a new one. No agent (HTTP, MCP) ever holds one.
#[derive(Debug)]
pub struct Admin(());

impl Admin {
    /// The authority of a caller on the control socket.
    pub(crate) fn control_socket() -> Self {
        Admin(())
    }
}

/// An agent to add.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgentArgs {
    /// Its name: it acts as `agent:NAME`.
    pub name: String,
    /// What it may do.
    pub can: Power,
}

/// An agent added, with its token (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NewAgent {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub can: Power,
    /// Its bearer token; only its sha256 is kept.
    pub token: String,
}

/// An agent or a human, by name.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameArgs {
    /// The name.
    pub name: String,
}

/// A human's key to register.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HumanArgs {
    /// The human's name (what `--as` names).
    pub name: String,
    /// Their OpenSSH public key, as in `id_ed25519.pub`.
    pub key: String,
}

/// A human's key, registered.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HumanKey {
    /// The human's name.
    pub name: String,
    /// The key's SHA256 fingerprint.
    pub fingerprint: String,
    /// Its algorithm (`ssh-ed25519`, …).
    pub algorithm: String,
}

/// What a removal took away.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Removed {
    /// How many entries (an agent; a human's keys).
    pub removed: usize,
}

/// A runbook agents may open.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunbookInfo {
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its file.
    pub path: String,
    /// Its steps.
    pub steps: Vec<RunbookStep>,
}

/// A step of a runbook, as an agent sees it before opening an incident.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunbookStep {
    /// The step id.
    pub id: String,
    /// Whether a human must approve each attempt.
    pub high_impact: bool,
    /// The tools it may call.
    pub tools: Vec<String>,
}

/// An incident as an agent needs it to decide what to do.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IncidentDetail {
    /// Status, owner, checkpoint, params, why, last step.
    #[serde(flatten)]
    pub view: IncidentView,
    /// The step it runs next, with what it may touch.
    pub next_step: Option<NextStep>,
    /// A high-impact attempt waiting for a human, and how they give it.
    pub approval: Option<PendingApproval>,
    /// When a cooldown or retry backoff ends, if one holds the next step.
    pub waiting_until: Option<String>,
    /// What this agent may do next, and why.
    pub you_may: Vec<NextAction>,
}

/// A brake to engage.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrakeArgs {
    /// `all`, or `key=value` parts joined by `,`: `runbook=NAME`,
    /// `step=ID`, `tool=NAME`, or an incident parameter (`service=api`).
    #[schemars(pattern(runbox_core::limits::SCOPE_PATTERN), length(max = runbox_core::limits::SCOPE_MAX_BYTES))]
    pub scope: String,
    /// Why.
    #[schemars(length(min = 1, max = NOTE_SCHEMA_CHARS))]
    pub reason: String,
}

/// A brake engaged through the control socket (`runbox brake engage --as
/// NAME`), recorded under the agent it names.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlBrakeArgs {
    /// As [`BrakeArgs::scope`].
    pub scope: String,
    /// Why.
    pub reason: String,
    /// The acting agent's name; default `control`.
    #[serde(default)]
    pub agent: Option<String>,
}

/// The statement a human signs to release a brake.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrakeStatementArgs {
    /// The brake's scope, as `list_brakes` shows it.
    #[schemars(pattern(runbox_core::limits::SCOPE_PATTERN), length(max = runbox_core::limits::SCOPE_MAX_BYTES))]
    pub scope: String,
    /// The human's name in allowed_signers.
    #[schemars(with = "runbox_core::ident::Name")]
    pub signer: String,
    /// How long the statement counts, in seconds. Default: 1800 (the
    /// engine's `DEFAULT_TTL`; at most a day).
    #[serde(default)]
    #[schemars(range(min = 1, max = runbox_trust::MAX_TTL.as_secs()))]
    pub ttl_s: Option<u64>,
}

/// An approval a human must give.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PendingApproval {
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// Who may approve (`human:NAME`); empty: any registered human.
    pub approvers: Vec<String>,
    /// How many must.
    pub approvals: u32,
    /// How a human gives it.
    pub how: String,
}

/// A tool the agent may call next.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NextAction {
    /// The tool (MCP) or operation (HTTP).
    pub tool: &'static str,
    /// Why.
    pub why: String,
}

/// What `run_step` answers.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunStepReport {
    /// `running` when the step outlasted the wait (it goes on; call
    /// `await_change` or `get_incident`), else how the run stopped.
    pub state: String,
    /// How the run stopped, if it did.
    pub exit: Option<RunExit>,
    /// The record of the attempt that ran, if one committed.
    pub record: Option<StepRecord>,
    /// The incident now.
    pub incident: IncidentDetail,
}

/// A page of the timeline.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TimelinePage {
    /// The events.
    pub events: Vec<TimelineEvent>,
    /// Pass as `after` for the next page; null when this page holds the
    /// last event (or none).
    pub next_after: Option<u64>,
}

/// What `await_change` answers.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ChangeReport {
    /// Whether status, owner or pending approval changed.
    pub changed: bool,
    /// The incident now.
    pub incident: IncidentDetail,
}

/// What `open_incident`, `escalate`, `add_note` and decisions answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Done {
    /// What was done.
    pub done: String,
    /// The incident now.
    pub incident: IncidentDetail,
}

impl Service {
    /// The service over `engine`.
    pub fn new(engine: Arc<Engine>, config: ServiceConfig) -> Self {
        let store = engine.incidents().store().clone();
        Service {
            agents: Agents::new(store.clone()),
            engine,
            config,
            signers_edits: Mutex::new(()),
            running: Mutex::new(HashMap::new()),
            notifier: None,
            ops: crate::health::Ops {
                readiness: Arc::new(crate::health::Readiness::new(store)),
                metrics: None,
            },
            console: crate::console::Console::default(),
            changes: crate::changes::Live::default(),
        }
    }

    /// The web console's state: where browsers reach it, its sessions.
    pub fn console(&self) -> &crate::console::Console {
        &self.console
    }

    /// Delivers the outbox through `notifier` while the service runs, and
    /// takes `runbox notify retry` through the control socket.
    pub fn with_notifier(mut self, notifier: Arc<runbox_notify::Notifier>) -> Self {
        notifier.start();
        self.notifier = Some(notifier);
        self
    }

    /// Exports `exposition` at `/metrics`.
    pub fn with_metrics(mut self, exposition: Arc<crate::metrics::Exposition>) -> Self {
        self.ops.metrics = Some(exposition);
        self
    }

    /// `/healthz`, `/readyz` and `/metrics`.
    pub fn ops(&self) -> &crate::health::Ops {
        &self.ops
    }

    /// The deliverer of the outbox, when this process delivers it.
    pub(crate) fn notifier(&self) -> Option<&Arc<runbox_notify::Notifier>> {
        self.notifier.as_ref()
    }

    /// Makes parked notifications pending again and queues them (the
    /// control socket's `runbox notify retry`). Refused when this process
    /// delivers nothing.
    pub fn retry_notifications(
        &self,
        args: &RetryArgs,
    ) -> Result<Vec<runbox_engine::Notification>, ServiceError> {
        let notifier = self.notifier.as_ref().ok_or_else(|| {
            ServiceError::new(
                crate::ErrorCode::Conflict,
                "this process delivers no notifications (no sink in notify.toml when it started)",
            )
        })?;
        let retried = notifier.retry(args.id.as_deref())?;
        notifier.queue(&retried);
        Ok(retried)
    }

    /// The agent registry.
    pub fn agents(&self) -> &Agents {
        &self.agents
    }

    /// Whether `token` is the mutation token this service holds (compared
    /// in constant time).
    pub(crate) fn holds_mutation_token(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.config
            .mutation_token
            .as_ref()
            .is_some_and(|held| bool::from(held.as_bytes().ct_eq(token.as_bytes())))
    }

    /// A subscription to the incidents' changes (started with the first).
    pub(crate) fn changes(&self) -> crate::changes::Listener {
        self.changes.subscribe(&self.engine)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The runbooks agents may open.
    pub fn list_runbooks(&self, caller: &Caller) -> Result<Vec<RunbookInfo>, ServiceError> {
        caller.require(Power::Read, "list_runbooks")?;
        let mut out = Vec::new();
        for path in self.runbook_files() {
            let Ok(rb) = LoadedRunbook::load(&path) else {
                continue;
            };
            out.push(RunbookInfo {
                name: rb.runbook.runbook.name.clone(),
                description: rb.runbook.runbook.description.clone(),
                path: path.display().to_string(),
                steps: rb
                    .runbook
                    .steps
                    .iter()
                    .map(|s| RunbookStep {
                        id: s.id.clone(),
                        high_impact: s.impact == runbox_core::runbook::Impact::High,
                        tools: s.grants.tools.clone(),
                    })
                    .collect(),
            });
        }
        Ok(out)
    }

    fn runbook_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .config
            .runbooks
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    }

    /// The file of a runbook named `runbook`, or at that path under a
    /// runbooks directory; nothing outside them.
    pub(crate) fn resolve_runbook(&self, runbook: &str) -> Result<PathBuf, ServiceError> {
        for path in self.runbook_files() {
            let named =
                LoadedRunbook::load(&path).is_ok_and(|rb| rb.runbook.runbook.name == runbook);
            if named || path.file_stem().is_some_and(|s| s == runbook) {
                return Ok(path);
            }
        }
        let wanted = Path::new(runbook);
        if let Ok(real) = wanted.canonicalize() {
            let inside = self
                .config
                .runbooks
                .iter()
                .filter_map(|d| d.canonicalize().ok())
                .any(|d| real.starts_with(d));
            if inside {
                return Ok(real);
            }
        }
        Err(ServiceError::new(
            ErrorCode::NotFound,
            format!("no runbook `{runbook}` among the served runbooks (list_runbooks)"),
        ))
    }

    /// What each step of a runbook may touch, with findings.
    pub fn review_runbook(
        &self,
        caller: &Caller,
        args: &RunbookArgs,
    ) -> Result<serde_json::Value, ServiceError> {
        caller.require(Power::Read, "review_runbook")?;
        let path = self.resolve_runbook(&args.runbook)?;
        let review =
            runbox_review::review(self.engine.sandbox(), &runbox_review::Source::Disk, &path)
                .map_err(|e| ServiceError::bad_request(runbox_core::errors::one_line_of(&e)))?;
        Ok(serde_json::to_value(review).expect("a review serializes"))
    }

    /// Every incident.
    pub fn list_incidents(&self, caller: &Caller) -> Result<Vec<IncidentSummary>, ServiceError> {
        caller.require(Power::Read, "list_incidents")?;
        Ok(self.engine.incidents().list()?)
    }

    /// One incident, with what `caller` may do next.
    pub fn get_incident(&self, caller: &Caller, id: &str) -> Result<IncidentDetail, ServiceError> {
        caller.require(Power::Read, "get_incident")?;
        self.detail(caller, id)
    }

    fn detail(&self, caller: &Caller, id: &str) -> Result<IncidentDetail, ServiceError> {
        let view = self.engine.incidents().view(id)?;
        let next_step = self.engine.incidents().next_step(id)?;
        let approval = match (&next_step, view.status) {
            (Some(n), Status::AwaitingApproval) => Some(PendingApproval {
                step: n.step.clone(),
                attempt: n.attempt,
                approvers: n.approvers.clone(),
                approvals: n.approvals,
                how: format!(
                    "a human signs it: `runbox approve {id} {} --as NAME --key KEY`, or POST /v1/incidents/{id}/decisions",
                    n.step
                ),
            }),
            _ => None,
        };
        // The later of a retry backoff and a cooldown, while either holds.
        let waiting_until = next_step
            .as_ref()
            .and_then(|n| n.not_before_ms.max(n.cooldown_until_ms))
            .filter(|t| *t > now_ms())
            .map(format_ms);
        let you_may = self.you_may(caller, &view, next_step.as_ref(), waiting_until.is_some());
        Ok(IncidentDetail {
            view,
            next_step,
            approval,
            waiting_until,
            you_may,
        })
    }

    /// What `caller` may do next with an incident: the one place that says.
    fn you_may(
        &self,
        caller: &Caller,
        view: &IncidentView,
        next: Option<&NextStep>,
        waiting: bool,
    ) -> Vec<NextAction> {
        let act = |tool, why: &str| NextAction {
            tool,
            why: why.to_string(),
        };
        let mut out = Vec::new();
        if view.status.is_terminal() {
            out.push(act(
                "get_timeline",
                "the incident is over: read what happened",
            ));
            return out;
        }
        let can_run = caller.can.allows(Power::Run);
        match view.status {
            _ if !view.owner.is_agent() => out.push(act(
                "await_change",
                "a human owns it: wait until they hand it back",
            )),
            Status::Escalated => out.push(act(
                "await_change",
                "escalated: a human settles the step, then hands it back",
            )),
            Status::AwaitingApproval => out.push(act(
                "await_change",
                "a human must approve the step; you cannot approve it",
            )),
            _ if waiting => out.push(act(
                "await_change",
                "a cooldown or retry backoff holds the next step",
            )),
            _ => match next {
                Some(n) if !can_run => out.push(act(
                    "await_change",
                    &format!("step `{}` is next; running it needs `run`", n.step),
                )),
                Some(n) if let Some(why) = self.step_refusal(caller, n) => {
                    out.push(act("escalate", &why));
                }
                Some(n) => out.push(act("run_step", &format!("run step `{}`", n.step))),
                None => {}
            },
        }
        // Escalating may already be listed, as what to do about a step this
        // agent may not run: once is enough.
        let listed = out.iter().any(|a| a.tool == "escalate");
        if can_run {
            if view.owner.is_agent() && view.status != Status::Escalated && !listed {
                out.push(act("escalate", "hand it to humans with a reason"));
            }
            out.push(act("add_note", "say what you found"));
        }
        out
    }

    /// Why `caller` may not run step `n` here, if it may not: the one rule
    /// behind `run_step`'s refusals and `you_may`.
    fn step_refusal(&self, caller: &Caller, n: &NextStep) -> Option<String> {
        if !n.mutates {
            return (n.writes_kv && self.config.read_only).then(|| {
                format!(
                    "step `{}` writes KV and this server serves diagnosis only (--read-only): {}",
                    n.step,
                    runbox_core::policy::READ_ONLY_KV_HINT
                )
            });
        }
        if self.config.read_only {
            return Some(format!(
                "step `{}` mutates and this server serves diagnosis only (--read-only)",
                n.step
            ));
        }
        if !caller.can.allows(Power::Mutate) {
            return Some(format!(
                "step `{}` mutates; agent:{} may {}, and mutating steps need `mutate`",
                n.step, caller.name, caller.can
            ));
        }
        if self.config.mutation_token.is_none() {
            return Some(format!(
                "step `{}` mutates and this server holds no mutation token (RUNBOX_MUTATION_TOKEN)",
                n.step
            ));
        }
        None
    }

    /// A page of the timeline.
    pub fn get_timeline(
        &self,
        caller: &Caller,
        args: &TimelineArgs,
    ) -> Result<TimelinePage, ServiceError> {
        caller.require(Power::Read, "get_timeline")?;
        // `limit = 0` asks for no events, and gets none.
        let limit = args
            .limit
            .unwrap_or(MAX_TIMELINE_PAGE)
            .min(MAX_TIMELINE_PAGE) as usize;
        let mut events = Vec::with_capacity(limit.min(64));
        // One event past the page says whether there is a next page: a
        // page that is exactly full may be the last.
        let mut more = false;
        for event in self.engine.incidents().events_after(&args.id, args.after)? {
            let event = event?;
            if events.len() == limit {
                more = true;
                break;
            }
            events.push(event);
        }
        let next_after = more.then(|| events.last().map(|e| e.seq)).flatten();
        Ok(TimelinePage { events, next_after })
    }

    /// One attempt's record (without its recording).
    pub fn get_step_record(
        &self,
        caller: &Caller,
        args: &StepRecordArgs,
    ) -> Result<StepRecord, ServiceError> {
        caller.require(Power::Read, "get_step_record")?;
        let record = match args.attempt {
            Some(a) => self
                .engine
                .incidents()
                .step_record(&args.id, &args.step, a)?,
            None => self
                .engine
                .incidents()
                .attempts(&args.id, &args.step)?
                .filter_map(Result::ok)
                .last(),
        };
        let record = record.ok_or_else(|| {
            ServiceError::new(
                ErrorCode::NotFound,
                format!(
                    "{} has no record of step `{}`{}",
                    args.id,
                    args.step,
                    args.attempt
                        .map(|a| format!(" attempt {a}"))
                        .unwrap_or_default()
                ),
            )
        })?;
        Ok(StepRecord {
            recording: None,
            ..record
        })
    }

    /// Opens an incident of a served runbook.
    pub fn open_incident(&self, caller: &Caller, args: &OpenArgs) -> Result<Done, ServiceError> {
        caller.require(Power::Run, "open_incident")?;
        let path = self.resolve_runbook(&args.runbook)?;
        let id = args.id.clone().unwrap_or_else(new_incident_id);
        let meta = self
            .engine
            .opener()
            .open(&id, &path, &args.params, &caller.actor())
            .map_err(|e| match e {
                runbox_engine::EngineError::Exists(_) => {
                    ServiceError::new(ErrorCode::Conflict, runbox_core::errors::one_line_of(&e))
                }
                e => e.into(),
            })?;
        Ok(Done {
            done: format!("opened {id} with runbook `{}`", meta.runbook_name),
            incident: self.detail(caller, &id)?,
        })
    }

    /// Runs exactly one step of `id`: returns its report and the incident,
    /// or `running` after [`ServiceConfig::run_step_wait`] (the step goes
    /// on in the background).
    pub async fn run_step(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
    ) -> Result<RunStepReport, ServiceError> {
        caller.require(Power::Run, "run_step")?;
        let incident: IncidentId = id.parse().map_err(|e: runbox_core::ident::IdentError| {
            ServiceError::bad_request(e.to_string())
        })?;
        let next = self.engine.incidents().next_step(id)?;
        if let Some(why) = next.as_ref().and_then(|n| self.step_refusal(caller, n)) {
            return Err(ServiceError::forbidden(why));
        }
        let started_ms = now_ms();
        let handle = {
            let mut running = runbox_core::sync::lock(&self.running);
            running.retain(|_, h| !h.is_finished());
            if running.contains_key(&incident) {
                return Ok(RunStepReport {
                    state: "running".into(),
                    exit: None,
                    record: None,
                    incident: self.detail(caller, id)?,
                });
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let engine = self.engine.clone();
            let opts = RunOptions {
                read_only: self.config.read_only,
                token: self
                    .config
                    .mutation_token
                    .clone()
                    .filter(|_| caller.can.allows(Power::Mutate)),
                no_wait: true,
                agent: Some(caller.name.to_string()),
                one_step: true,
                ..RunOptions::default()
            };
            let owned_id = id.to_string();
            let (me, key) = (Arc::clone(self), incident.clone());
            // The run goes on in the request's trace (an agent's, when it
            // sent a `traceparent`), though it may outlast the request.
            let span = tracing::Span::current();
            let task = tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let exit = engine.runs().run(&owned_id, &opts).await;
                    // Off the list before the answer goes out: the caller's next
                    // `run_step` must not find this run still "running". (The
                    // entry is in by now: it is inserted under the lock this
                    // takes.)
                    runbox_core::sync::lock(&me.running).remove(&key);
                    let _ = tx.send(exit);
                },
                span,
            ));
            running.insert(incident, task);
            rx
        };
        let exit = match tokio::time::timeout(self.config.run_step_wait, handle).await {
            Err(_) => None,
            Ok(Err(_)) => {
                return Err(ServiceError::new(
                    ErrorCode::Unavailable,
                    "the step's task ended without a result",
                ));
            }
            Ok(Ok(result)) => Some(result?),
        };
        // The attempt this call ran, if one committed: the newest record,
        // when it started after the call did.
        let record = match &exit {
            Some(_) => self
                .engine
                .incidents()
                .view(id)?
                .last_step
                .filter(|r| r.started_at_ms >= started_ms),
            None => None,
        };
        Ok(RunStepReport {
            state: match &exit {
                None => "running".into(),
                Some(exit) => exit_state(exit),
            },
            exit,
            record: record.map(|r| StepRecord {
                recording: None,
                ..r
            }),
            incident: self.detail(caller, id)?,
        })
    }

    /// Waits (at most [`MAX_AWAIT`]) until the incident's status, owner or
    /// pending approval changes.
    pub async fn await_change(
        &self,
        caller: &Caller,
        args: &AwaitArgs,
    ) -> Result<ChangeReport, ServiceError> {
        caller.require(Power::Read, "await_change")?;
        let wait = Duration::from_secs(u64::from(args.timeout_s.unwrap_or(50))).min(MAX_AWAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let first = self.engine.incidents().view(&args.id)?;
        let mark = |v: &IncidentView| (v.status, v.owner.clone(), v.pending_approval.clone());
        let before = mark(&first);
        loop {
            let now = self.engine.incidents().view(&args.id)?;
            if mark(&now) != before {
                return Ok(ChangeReport {
                    changed: true,
                    incident: self.detail(caller, &args.id)?,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(ChangeReport {
                    changed: false,
                    incident: self.detail(caller, &args.id)?,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Hands the incident to humans with a reason.
    pub async fn escalate(
        &self,
        caller: &Caller,
        args: &EscalateArgs,
    ) -> Result<Done, ServiceError> {
        caller.require(Power::Run, "escalate")?;
        check_text("reason", &args.reason)?;
        self.engine
            .runs()
            .escalate(&args.id, caller.name.as_str(), &args.reason)
            .await?;
        Ok(Done {
            done: format!("escalated {} to human:on-call", args.id),
            incident: self.detail(caller, &args.id)?,
        })
    }

    /// A note by the agent on the timeline.
    pub async fn add_note(&self, caller: &Caller, args: &NoteArgs) -> Result<Done, ServiceError> {
        caller.require(Power::Run, "add_note")?;
        check_text("note", &args.text)?;
        let seq = self
            .engine
            .runs()
            .note(&args.id, &caller.actor(), &args.text)
            .await?;
        Ok(Done {
            done: format!("note {seq} added"),
            incident: self.detail(caller, &args.id)?,
        })
    }

    /// The statement a human must sign for a decision on `id`, bound to
    /// the incident as it stands.
    pub fn statement(
        &self,
        caller: &Caller,
        id: &str,
        args: &StatementArgs,
    ) -> Result<String, ServiceError> {
        caller.require(Power::Read, "a statement to sign")?;
        let statement = self.engine.humans().statement(&Request {
            action: args.action,
            incident: id,
            step: args.step.as_deref(),
            outcome: args.outcome,
            signer: &args.signer,
            ttl: statement_ttl(args.ttl_s),
        })?;
        Ok(statement.to_text())
    }

    /// Carries out a human's signed decision. The signature is the
    /// authority: the agent that hands it in adds none.
    pub fn decide(
        &self,
        caller: &Caller,
        id: &str,
        decision: &Decision,
    ) -> Result<Done, ServiceError> {
        // The signature is the authority; handing it in is still an
        // agent's act, which an `alert` token may not take.
        caller.require(Power::Read, "handing in a decision")?;
        let statement = runbox_trust::Statement::parse(&decision.statement)
            .map_err(|e| ServiceError::bad_request(runbox_core::errors::one_line_of(&e)))?;
        if statement.incident.as_deref() != Some(id) {
            return Err(ServiceError::bad_request(format!(
                "the statement is for incident {:?}, not {id}",
                statement.incident
            )));
        }
        let action = self.engine.humans().decide(decision)?;
        Ok(Done {
            done: format!("{} by human:{}", action.as_str(), statement.signer),
            incident: self.detail(caller, id)?,
        })
    }
}

impl Service {
    /// Every engaged brake.
    pub fn brakes(&self, caller: &Caller) -> Result<Vec<EngagedBrake>, ServiceError> {
        caller.require(Power::Read, "list_brakes")?;
        Ok(self.engine.incidents().brakes()?)
    }

    /// Engages a brake, recorded under the calling agent's name (never a
    /// human's: engaging is unsigned). Any agent may: a brake only stops.
    pub fn engage_brake(&self, caller: &Caller, args: &BrakeArgs) -> Result<Brake, ServiceError> {
        caller.require(Power::Read, "engage_brake")?;
        let runbooks = self.runbook_files();
        Ok(self.engine.fleet().engage_brake(
            &args.scope,
            &args.reason,
            &caller.actor(),
            &runbooks,
        )?)
    }

    /// The statement a human signs to release a brake.
    pub fn brake_statement(
        &self,
        caller: &Caller,
        args: &BrakeStatementArgs,
    ) -> Result<String, ServiceError> {
        caller.require(Power::Read, "a statement to sign")?;
        let statement = self.engine.fleet().brake_statement(
            &args.scope,
            &args.signer,
            statement_ttl(args.ttl_s),
        )?;
        Ok(statement.to_text())
    }

    /// Releases a brake on a human's signed statement: the signature is the
    /// authority, the agent that hands it in adds none.
    pub fn release_brake(
        &self,
        caller: &Caller,
        decision: &Decision,
    ) -> Result<Released, ServiceError> {
        caller.require(Power::Read, "handing in a brake's release")?;
        Ok(self.engine.fleet().release_brake(decision)?)
    }
}

impl Service {
    /// Adds an agent and returns its token, shown this once.
    pub fn add_agent(&self, _admin: &Admin, args: &NewAgentArgs) -> Result<NewAgent, ServiceError> {
        let token = self.agents.add(&args.name, args.can)?;
        Ok(NewAgent {
            name: args.name.clone(),
            can: args.can,
            token,
        })
    }

    /// Removes an agent: its token stops working at once.
    pub fn remove_agent(&self, _admin: &Admin, args: &NameArgs) -> Result<Removed, ServiceError> {
        self.agents.remove(&args.name)?;
        Ok(Removed { removed: 1 })
    }

    /// Registers a human's public key in the engine's allowed_signers.
    pub fn add_human(&self, _admin: &Admin, args: &HumanArgs) -> Result<HumanKey, ServiceError> {
        let path = self.signers_path()?;
        let _edit = self.signers_edit();
        let entry =
            runbox_trust::AllowedSigners::add(path, &args.name, &args.key).map_err(trust_error)?;
        Ok(HumanKey {
            name: args.name.clone(),
            fingerprint: entry.fingerprint,
            algorithm: entry.key.algorithm().to_string(),
        })
    }

    /// Removes every key of a human: their decisions stop counting.
    pub fn remove_human(&self, _admin: &Admin, args: &NameArgs) -> Result<Removed, ServiceError> {
        let path = self.signers_path()?;
        let _edit = self.signers_edit();
        let removed =
            runbox_trust::AllowedSigners::remove_human(path, &args.name).map_err(trust_error)?;
        self.console.sign_out_human(&args.name);
        if removed == 0 {
            return Err(ServiceError::new(
                ErrorCode::NotFound,
                format!("no key of `{}` in {}", args.name, path.display()),
            ));
        }
        Ok(Removed { removed })
    }

    /// Makes a one-time link that enrolls a passkey for a human, opened in
    /// a browser at the console (`runbox human add NAME --passkey`).
    pub fn enroll_passkey(
        &self,
        _admin: &Admin,
        args: &PasskeyArgs,
    ) -> Result<PasskeyLink, ServiceError> {
        let human = runbox_core::ident::Name::new(&args.name)
            .map_err(|e| ServiceError::bad_request(e.to_string()))?;
        let label = args.label.clone().unwrap_or_else(|| "passkey".into());
        runbox_core::ident::IdentKind::Name
            .check(&label)
            .map_err(|e| ServiceError::bad_request(format!("the passkey's label: {e}")))?;
        let origin = self.console.party()?.origin().clone();
        let token = self.console.enroll(human, label)?;
        let mut url = origin.join("/ui/enroll").expect("a path joins");
        url.set_fragment(Some(&token));
        Ok(PasskeyLink {
            url: url.to_string(),
            expires_in_s: crate::console::ENROLLMENT_TTL.as_secs(),
        })
    }

    /// On a shared store, takes the enrollment link `token` names from the
    /// store (once, whichever runner's console it is opened at), unless
    /// this console holds it already.
    pub(crate) fn adopt_enrollment(&self, token: &str) -> Result<(), ServiceError> {
        if !self.engine.incidents().config_in_store() || self.console.knows_enrollment(token) {
            return Ok(());
        }
        let Some(link) = self.engine.fleet().take_enrollment_link(token)? else {
            return Ok(());
        };
        let human = runbox_core::ident::Name::new(&link.human)
            .map_err(|e| ServiceError::bad_request(e.to_string()))?;
        let left = link.expires_ms.saturating_sub(now_ms());
        self.console
            .hold_enrollment(token, human, link.label, Duration::from_millis(left))
    }

    /// Registers a passkey made through an enrollment link; on a shared
    /// store, keeps it until a human's signed change lists it, and says
    /// so (`Some` of what to do next).
    pub(crate) fn add_passkey(
        &self,
        entry: runbox_trust::PasskeyEntry,
    ) -> Result<Option<String>, ServiceError> {
        if self.engine.incidents().config_in_store() {
            let next = format!(
                "It counts once one of the fleet's humans lists it: runbox human accept {} --as NAME --key KEY",
                entry.fingerprint()
            );
            self.engine.fleet().pend_passkey(entry)?;
            return Ok(Some(next));
        }
        let path = runbox_trust::passkeys_path(self.signers_path()?);
        let _edit = self.signers_edit();
        runbox_trust::Passkeys::add(&path, entry).map_err(trust_error)?;
        Ok(None)
    }

    /// Every human who may decide, with both kinds of keys.
    pub(crate) fn signers(&self) -> Result<runbox_trust::AllowedSigners, ServiceError> {
        Ok(self.engine.incidents().signers()?)
    }

    fn signers_path(&self) -> Result<&Path, ServiceError> {
        self.engine.incidents().signers_path().ok_or_else(|| {
            let why = if self.engine.incidents().config_in_store() {
                "the fleet's humans are the shared store's: change them with `runbox human add|remove` and a human's signature"
            } else {
                "this process reads no allowed_signers file"
            };
            ServiceError::new(ErrorCode::Unavailable, why)
        })
    }

    fn signers_edit(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere leaves nothing torn.
        runbox_core::sync::lock(&self.signers_edits)
    }
}

/// An allowed_signers edit's failure, as the service's error.
fn trust_error(e: runbox_trust::TrustError) -> ServiceError {
    use runbox_trust::TrustError;
    let code = match &e {
        TrustError::PublicKey(_) | TrustError::Statement(_) => ErrorCode::BadRequest,
        TrustError::Io { .. } | TrustError::SignersLine { .. } | TrustError::Sign(_) => {
            ErrorCode::Unavailable
        }
        TrustError::Signature(_)
        | TrustError::Namespace { .. }
        | TrustError::UnknownSigner { .. }
        | TrustError::WrongKey { .. }
        | TrustError::BadSignature(_)
        | TrustError::Passkey(_) => ErrorCode::Forbidden,
    };
    ServiceError::new(code, runbox_core::errors::one_line_of(&e))
}

/// The `state` of a run's exit.
fn exit_state(exit: &RunExit) -> String {
    serde_json::to_value(exit)
        .ok()
        .and_then(|v| v.get("state").and_then(|s| s.as_str().map(str::to_string)))
        .unwrap_or_default()
}

/// `INC-YYYYMMDD-HHMMSS-xxxx`.
fn new_incident_id() -> String {
    let stamp: String = format_ms(now_ms())
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    let mut salt = [0u8; 2];
    let _ = getrandom::fill(&mut salt);
    format!("INC-{}-{}-{}", &stamp[..8], &stamp[8..], hex::encode(salt))
}

/// A note or an escalation's reason that is empty or too long is a bad
/// request (400), checked here, before the engine, which refuses it too
/// but as a state conflict.
fn check_text(what: &str, text: &str) -> Result<(), ServiceError> {
    use runbox_engine::agent::MAX_NOTE_BYTES;
    if text.trim().is_empty() {
        return Err(ServiceError::bad_request(format!("the {what} is empty")));
    }
    if text.len() > MAX_NOTE_BYTES {
        return Err(ServiceError::bad_request(format!(
            "the {what} is {} bytes; at most {MAX_NOTE_BYTES}",
            text.len()
        )));
    }
    Ok(())
}
