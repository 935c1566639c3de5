//! The records of an incident, as stored under `incident:{id}:…`.
//!
//! | key | record |
//! |---|---|
//! | `incident:{id}:meta` | [`IncidentMeta`]: runbook text, params, module hashes |
//! | `incident:{id}:status` | [`Status`] |
//! | `incident:{id}:owner` | [`Owner`] |
//! | `incident:{id}:checkpoint` | [`Checkpoint`]: next step, attempt, version, in-flight attempt |
//! | `incident:{id}:steps:{step}:{attempt}` | [`StepRecord`] |
//! | `incident:{id}:timeline:{seq}` | [`TimelineEvent`] |
//! | `incident:{id}:approval:{step}:{attempt}` | [`Approval`] |
//! | `incident:{id}:last_destructive` | [`LastDestructive`] |
//!
//! The store layer builds the keys (`runbox_store::keys`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::attempt::{Outcome, StepError, ToolCall, Violation};
use crate::event::EventKind;
use crate::ident::Name;
use crate::time::format_ms;

/// Where an incident stands.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Ready for its next step.
    Open,
    /// An attempt that can reach a mutation has started and not committed.
    Running,
    /// A high-impact step waits for a named human's approval.
    AwaitingApproval,
    /// Stopped and handed to a human.
    Escalated,
    /// Done.
    Resolved,
    /// Ended by a `fail` transition.
    Failed,
}

impl Status {
    /// Every status, in declaration order.
    pub const ALL: [Status; 6] = [
        Status::Open,
        Status::Running,
        Status::AwaitingApproval,
        Status::Escalated,
        Status::Resolved,
        Status::Failed,
    ];

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Running => "running",
            Status::AwaitingApproval => "awaiting-approval",
            Status::Escalated => "escalated",
            Status::Resolved => "resolved",
            Status::Failed => "failed",
        }
    }

    /// Whether the incident is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Resolved | Status::Failed)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may act: `agent:NAME` executes steps; `human:NAME` decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub enum Owner {
    /// An automated agent (the `run` loop).
    Agent(Name),
    /// A named human.
    Human(Name),
}

impl Owner {
    /// The human an escalation hands an incident to until someone takes it.
    pub fn on_call() -> Self {
        Owner::Human(Name::new("on-call").expect("a valid name"))
    }

    /// The default agent, `agent:runbox`.
    pub fn default_agent() -> Self {
        Owner::Agent(Name::new("runbox").expect("a valid name"))
    }

    /// Whether an agent owns it.
    pub fn is_agent(&self) -> bool {
        matches!(self, Owner::Agent(_))
    }

    /// The name, without its side.
    pub fn name(&self) -> &Name {
        match self {
            Owner::Agent(n) | Owner::Human(n) => n,
        }
    }
}

impl Owner {
    /// `actor` as the author of an unsigned act (opening an incident, a
    /// note, engaging a brake): an agent, never a human. Only a human's
    /// signed decision is ever recorded under a human's name.
    pub fn unsigned(actor: &str) -> Result<Self, String> {
        match Owner::try_from(actor.to_string())? {
            Owner::Human(name) => Err(format!(
                "`human:{name}` cannot be recorded as the author of an unsigned act: only a human's signed decision is a human's; act as `agent:NAME`"
            )),
            agent @ Owner::Agent(_) => Ok(agent),
        }
    }
}

impl TryFrom<String> for Owner {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (side, name) = s
            .split_once(':')
            .ok_or_else(|| format!("owner `{s}` is not `agent:NAME` or `human:NAME`"))?;
        let name = Name::new(name).map_err(|e| e.to_string())?;
        match side {
            "agent" => Ok(Owner::Agent(name)),
            "human" => Ok(Owner::Human(name)),
            _ => Err(format!("owner `{s}` is not `agent:NAME` or `human:NAME`")),
        }
    }
}

impl From<Owner> for String {
    fn from(o: Owner) -> String {
        o.to_string()
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Agent(n) => write!(f, "agent:{n}"),
            Owner::Human(n) => write!(f, "human:{n}"),
        }
    }
}

/// What is fixed at `open`: the runbook as it was, its params, and the sha256
/// of every module, so a module swapped later is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentMeta {
    /// The incident id.
    pub id: String,
    /// The runbook's name.
    pub runbook_name: String,
    /// Where the runbook was read from.
    pub runbook_path: String,
    /// The runbook text as opened.
    pub runbook_text: String,
    /// The directory module and tool paths resolve against.
    pub base_dir: String,
    /// The tool registry text as opened, if any.
    pub tools_text: Option<String>,
    /// Resolved parameters.
    pub params: BTreeMap<String, String>,
    /// sha256 of each step's module at open.
    pub modules: BTreeMap<String, String>,
    /// When it was opened.
    pub opened_at_ms: u64,
    /// Who opened it.
    pub opened_by: String,
    /// Whether every human decision on it must carry a verified signature
    /// (false only for incidents opened by release 0.1).
    #[serde(default)]
    pub signed_decisions: bool,
    /// sha256 of each tool's files at open (program and file arguments),
    /// checked before each call.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools_sha256: BTreeMap<String, BTreeMap<String, String>>,
    /// The step KV keys seeded in the opening commit (`open --kv`): writes
    /// of the incident's own, which `verify` accepts like a step's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeded_kv: Vec<String>,
}

/// An attempt that began a mutation and has not committed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InFlight {
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// When the attempt started.
    pub started_at_ms: u64,
    /// The first mutating tool it was about to call.
    pub tool: String,
}

/// The engine's position in the runbook. Every write to an incident bumps
/// `version`, and every write is conditional on the version it read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Checkpoint {
    /// Bumped by every committed change.
    pub version: u64,
    /// The step to run next (or being settled); `None` once resolved.
    pub step: Option<String>,
    /// The attempt number of that step (1-based).
    pub attempt: u32,
    /// An attempt that started mutating and did not commit.
    pub in_flight: Option<InFlight>,
    /// Earliest time the next attempt may start (retry backoff).
    pub not_before_ms: Option<u64>,
    /// The next timeline sequence number.
    pub next_seq: u64,
}

impl Checkpoint {
    /// The checkpoint of a new incident: version 0, attempt 1 of `step`.
    pub fn first(step: &str) -> Self {
        Checkpoint {
            version: 0,
            step: Some(step.to_string()),
            attempt: 1,
            in_flight: None,
            not_before_ms: None,
            next_seq: 0,
        }
    }
}

/// How a step attempt ended, as recorded.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RecordOutcome {
    /// The step (or a human) said ok.
    Ok,
    /// Asked to be retried.
    Retry,
    /// Escalated, by the step or the sandbox.
    Escalate,
    /// Failed.
    Fail,
    /// Started a mutation; no result was committed (a crash).
    InDoubt,
    /// A human skipped it.
    Skipped,
}

impl RecordOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [RecordOutcome; 6] = [
        RecordOutcome::Ok,
        RecordOutcome::Retry,
        RecordOutcome::Escalate,
        RecordOutcome::Fail,
        RecordOutcome::InDoubt,
        RecordOutcome::Skipped,
    ];

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordOutcome::Ok => "ok",
            RecordOutcome::Retry => "retry",
            RecordOutcome::Escalate => "escalate",
            RecordOutcome::Fail => "fail",
            RecordOutcome::InDoubt => "in-doubt",
            RecordOutcome::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for RecordOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RecordOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RecordOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown outcome `{s}`"))
    }
}

impl From<Outcome> for RecordOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Ok => RecordOutcome::Ok,
            Outcome::Retry => RecordOutcome::Retry,
            Outcome::Escalate => RecordOutcome::Escalate,
            Outcome::Fail => RecordOutcome::Fail,
        }
    }
}

/// One attempt of one step: the postmortem's unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepRecord {
    /// The step id.
    pub step: String,
    /// The runbook's action name.
    pub action: String,
    /// The attempt number.
    pub attempt: u32,
    /// Start time.
    pub started_at_ms: u64,
    /// End time.
    pub ended_at_ms: u64,
    /// Outcome.
    pub outcome: RecordOutcome,
    /// JSON output of an ok step.
    pub output: Option<serde_json::Value>,
    /// Reason given with retry/escalate/fail, or the human's note.
    pub reason: Option<String>,
    /// Tool calls with return codes.
    pub tool_calls: Vec<ToolCall>,
    /// The error category and message, when the sandbox stopped the step or
    /// it broke its policy.
    pub error: Option<StepError>,
    /// Refused calls.
    pub violations: Vec<Violation>,
    /// Keys of the KV writes committed with this record.
    pub kv_keys: Vec<String>,
    /// Whether a human decided this outcome.
    pub human_override: bool,
    /// `agent:NAME` or `human:NAME`.
    pub actor: String,
    /// Module sha256 that ran.
    pub module_sha256: Option<String>,
    /// Who approved this attempt, for high-impact steps.
    pub approved_by: Option<String>,
    /// The signed decisions behind it: the approvals it ran under, or the
    /// human's statement of its outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Signed>,
    /// The step's log lines (bounded by its `output_bytes` limit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<crate::attempt::LogLine>,
    /// Where the incident went after this attempt: the next step, `retry`,
    /// `resolve`, `escalate` or `fail` (a branch's target when one matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// What the attempt saw, for replay (absent for human-settled records
    /// and records of release 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub recording: Option<crate::recording::Recording>,
    /// The OpenTelemetry trace the attempt ran in (32 hex digits), when
    /// traces were exported: where its spans are in the trace backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl StepRecord {
    /// A record of `attempt` of `step` that ended with `outcome` as soon as
    /// it started, with no output, calls, errors or writes; set the rest
    /// with struct update syntax.
    pub fn new(
        step: String,
        action: &str,
        attempt: u32,
        outcome: RecordOutcome,
        actor: String,
        started_at_ms: u64,
    ) -> Self {
        StepRecord {
            step,
            action: action.to_string(),
            attempt,
            started_at_ms,
            ended_at_ms: started_at_ms,
            outcome,
            output: None,
            reason: None,
            tool_calls: Vec::new(),
            error: None,
            violations: Vec::new(),
            kv_keys: Vec::new(),
            human_override: false,
            actor,
            module_sha256: None,
            approved_by: None,
            decisions: Vec::new(),
            logs: Vec::new(),
            next: None,
            recording: None,
            trace_id: None,
        }
    }

    /// The last tool return code, for one-line summaries.
    pub fn tool_rc(&self) -> Option<i32> {
        self.tool_calls.last().map(|c| c.rc)
    }
}

/// One entry of the append-only timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TimelineEvent {
    /// Sequence number, from 0 with no gaps.
    pub seq: u64,
    /// When.
    pub at_ms: u64,
    /// Who.
    pub actor: String,
    /// What kind of event.
    pub kind: EventKind,
    /// The step concerned.
    pub step: Option<String>,
    /// The attempt concerned.
    pub attempt: Option<u32>,
    /// What happened.
    pub message: String,
    /// The signed statement behind a human's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<Signed>,
}

impl TimelineEvent {
    /// [`TimelineEvent::line`] with the message capped at
    /// [`SHOWN_CHARS`](crate::inert::SHOWN_CHARS): the default view.
    pub fn brief(&self) -> String {
        self.line_with(&crate::inert::shown(
            &self.message,
            crate::inert::SHOWN_CHARS,
        ))
    }

    /// One line for `runbox timeline -v` ([`timeline_line`]), the whole
    /// message inert.
    pub fn line(&self) -> String {
        self.line_with(&self.message)
    }

    fn line_with(&self, message: &str) -> String {
        timeline_line(
            self.seq,
            self.at_ms,
            self.kind,
            &self.actor,
            (self.step.as_deref(), self.attempt),
            message,
        )
    }
}

/// One line of a timeline: sequence number, time, kind, actor, step and
/// attempt, message. The message is [`inert`](crate::inert::inert): a note
/// or a step's reason can never start a line of its own.
pub fn timeline_line(
    seq: u64,
    at_ms: u64,
    kind: EventKind,
    actor: &str,
    (step, attempt): (Option<&str>, Option<u32>),
    message: &str,
) -> String {
    let at = match (step, attempt) {
        (Some(s), Some(a)) => format!(" {s}#{a}"),
        (Some(s), None) => format!(" {s}"),
        _ => String::new(),
    };
    format!(
        "{seq:>4} {} {kind:<18} {actor:<20}{at}: {message}",
        format_ms(at_ms),
        message = crate::inert::inert(message)
    )
}

/// A human's decision on a high-impact attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The step.
    pub step: String,
    /// The attempt it covers, and only that one.
    pub attempt: u32,
    /// `human:NAME`.
    pub by: String,
    /// When.
    pub at_ms: u64,
    /// True for approve, false for deny.
    pub approved: bool,
    /// The human's signed statement (absent in release 0.1 records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<Signed>,
    /// Why it stopped counting before the step ran, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided: Option<String>,
}

/// A human's decision as signed: the statement's exact text, its SSH
/// signature, and the fingerprint of the key that verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Signed {
    /// The statement (`runbox.decision/v1` JSON).
    pub statement: String,
    /// The armored SSH signature.
    pub signature: String,
    /// `SHA256:…` of the key that signed it.
    pub fingerprint: String,
}

/// The last committed destructive (mutating) step, for cooldowns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDestructive {
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// When it committed.
    pub at_ms: u64,
}

impl LastDestructive {
    /// When a step with `cooldown_ms` may next mutate.
    pub fn cooldown_until(&self, cooldown_ms: u64) -> u64 {
        self.at_ms.saturating_add(cooldown_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_round_trips_and_refuses_garbage() {
        let o: Owner = "human:alice".to_string().try_into().unwrap();
        assert_eq!(o, Owner::Human(Name::new("alice").unwrap()));
        assert_eq!(o.to_string(), "human:alice");
        assert!(Owner::try_from("root".to_string()).is_err());
        assert!(Owner::try_from("robot:x".to_string()).is_err());
        assert!(Owner::try_from("human:a b".to_string()).is_err());
    }
}
