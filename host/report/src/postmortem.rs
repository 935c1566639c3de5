//! One incident's postmortem, `runbox.postmortem/v1`: what `runbox export
//! ID --format json` prints and what the Markdown and HTML pages render.

use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::Serialize;
use sha2::{Digest, Sha256};

use runbox_core::attempt::{ErrorCategory, LogLine, StepError, ToolCall};
use runbox_core::event::EventKind;
use runbox_core::records::{RecordOutcome, Status, StepRecord, TimelineEvent};
use runbox_incidents::Incidents;
use runbox_trust::AllowedSigners;

use crate::ReportError;
use crate::figures::{Figures, Fold, Hold, OwnerChange, Wait};
use crate::stamp::rfc3339;

/// The `schema` of a postmortem. A new major version means a field changed
/// meaning or went away; fields may be added within v1.
pub const POSTMORTEM_SCHEMA: &str = "runbox.postmortem/v1";

/// Everything a postmortem review needs about one incident.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Postmortem {
    /// Always [`POSTMORTEM_SCHEMA`].
    pub schema: String,
    /// Where the incident stands.
    pub incident: IncidentSection,
    /// The runbook it was opened with.
    pub runbook: RunbookSection,
    /// The resolved parameters.
    pub params: BTreeMap<String, String>,
    /// What the records add up to.
    pub figures: Figures,
    /// Who owned it when, change by change (it starts with `agent:runbox`).
    pub owner_changes: Vec<OwnerChange>,
    /// Every step attempt, in the order they started.
    pub steps: Vec<StepView>,
    /// Every human decision, and whether its signature verifies now.
    pub decisions: Vec<DecisionView>,
    /// Every wait for a human's approval.
    pub approval_waits: Vec<Wait>,
    /// Every cooldown and retry backoff.
    pub holds: Vec<Hold>,
    /// Every timeline event, in order.
    pub timeline: Vec<EventView>,
}

/// Where the incident stands.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IncidentSection {
    /// The id.
    pub id: String,
    /// Its status.
    pub status: Status,
    /// Its owner now.
    pub owner: String,
    /// When it was opened.
    #[serde(rename = "opened", serialize_with = "rfc3339")]
    #[schemars(rename = "opened", with = "String")]
    pub opened_ms: u64,
    /// Who opened it.
    pub opened_by: String,
    /// The next step, or the one being settled.
    pub step: Option<String>,
    /// Why it stands where it stands.
    pub why: Option<String>,
    /// A dry run: its mutating tool calls were intercepted, never run.
    pub dry_run: bool,
}

/// The runbook as it was opened.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunbookSection {
    /// Its name.
    pub name: String,
    /// Where it was read from.
    pub path: String,
    /// sha256 of its text as opened.
    pub sha256: String,
    /// sha256 of each step's module at open.
    pub modules: BTreeMap<String, String>,
}

/// One attempt of one step.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepView {
    /// The step id.
    pub step: String,
    /// The runbook's action name.
    pub action: String,
    /// The attempt number (from 1).
    pub attempt: u32,
    /// When it started.
    #[serde(rename = "started", serialize_with = "rfc3339")]
    #[schemars(rename = "started", with = "String")]
    pub started_ms: u64,
    /// When it ended.
    #[serde(rename = "ended", serialize_with = "rfc3339")]
    #[schemars(rename = "ended", with = "String")]
    pub ended_ms: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: RecordOutcome,
    /// `agent:NAME`, or `human:NAME` when a human decided it.
    pub actor: String,
    /// Whether a human decided this outcome.
    pub human_override: bool,
    /// Tool calls: name, mode, return code, duration.
    pub tool_calls: Vec<ToolCall>,
    /// The category of the error that stopped it, if any.
    pub error_category: Option<ErrorCategory>,
    /// The error's message.
    pub error: Option<String>,
    /// Calls its policy refused.
    pub violations: Vec<StepError>,
    /// Who approved it, for high-impact steps (`human:NAME`, or several
    /// for a two-person rule).
    pub approved_by: Option<String>,
    /// The human approvals it ran under, with their signatures' checks.
    pub approvals: Vec<DecisionView>,
    /// The JSON output of an ok step.
    pub output: Option<serde_json::Value>,
    /// The reason given with retry, escalate or fail, or the human's note.
    pub reason: Option<String>,
    /// Its log lines.
    pub logs: Vec<LogLine>,
    /// Keys of the KV writes committed with it.
    pub kv_keys: Vec<String>,
    /// Where the incident went next.
    pub next: Option<String>,
    /// sha256 of the module that ran.
    pub module_sha256: Option<String>,
    /// The OpenTelemetry trace it ran in, when traces were exported.
    pub trace_id: Option<String>,
    /// What the attempt saw, for replay (`--with-recordings` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<serde_json::Value>,
}

impl StepView {
    /// The view of a record, with the approvals it ran under.
    pub(crate) fn new(r: StepRecord, approvals: Vec<DecisionView>, with_recording: bool) -> Self {
        StepView {
            duration_ms: r.ended_at_ms.saturating_sub(r.started_at_ms),
            started_ms: r.started_at_ms,
            ended_ms: r.ended_at_ms,
            error_category: r.error.as_ref().map(|e| e.category),
            error: r.error.map(|e| e.message),
            recording: r
                .recording
                .filter(|_| with_recording)
                .and_then(|rec| serde_json::to_value(rec).ok()),
            step: r.step,
            action: r.action,
            attempt: r.attempt,
            outcome: r.outcome,
            actor: r.actor,
            human_override: r.human_override,
            tool_calls: r.tool_calls,
            violations: r.violations,
            approved_by: r.approved_by,
            approvals,
            output: r.output,
            reason: r.reason,
            logs: r.logs,
            kv_keys: r.kv_keys,
            next: r.next,
            module_sha256: r.module_sha256,
            trace_id: r.trace_id,
        }
    }
}

/// One timeline event.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventView {
    /// Sequence number, from 0 with no gaps.
    pub seq: u64,
    /// When.
    #[serde(rename = "at", serialize_with = "rfc3339")]
    #[schemars(rename = "at", with = "String")]
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
    /// `SHA256:…` of the key that signed a human's decision.
    pub fingerprint: Option<String>,
}

impl From<TimelineEvent> for EventView {
    fn from(e: TimelineEvent) -> Self {
        EventView {
            seq: e.seq,
            at_ms: e.at_ms,
            actor: e.actor,
            kind: e.kind,
            step: e.step,
            attempt: e.attempt,
            message: e.message,
            fingerprint: e.signed.map(|s| s.fingerprint),
        }
    }
}

/// One human decision as a postmortem shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DecisionView {
    /// The timeline event's sequence number.
    pub seq: u64,
    /// When.
    #[serde(rename = "at", serialize_with = "rfc3339")]
    #[schemars(rename = "at", with = "String")]
    pub at_ms: u64,
    /// The decision (`approved`, `takeover`, …).
    pub kind: EventKind,
    /// `human:NAME`.
    pub by: String,
    /// The step, if any.
    pub step: Option<String>,
    /// The attempt, if any.
    pub attempt: Option<u32>,
    /// `SHA256:…` of the key that signed it (`passkey:…` for a passkey),
    /// if signed.
    pub fingerprint: Option<String>,
    /// What people call that key (`passkey laptop`), when it has a name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_label: Option<String>,
    /// Whether the signature verifies now against the data dir's
    /// allowed_signers.
    pub verified: bool,
    /// Why not, when it does not.
    pub problem: Option<String>,
}

impl DecisionView {
    /// The decision an event records, checked against `signers`.
    pub(crate) fn new(e: &TimelineEvent, signers: &AllowedSigners) -> Self {
        let (fingerprint, verified, problem) = match &e.signed {
            None => (
                None,
                false,
                Some("not signed (recorded before signed decisions)".to_string()),
            ),
            Some(signed) => match signers.verify(&runbox_trust::Decision::from(signed)) {
                Ok(_) => (Some(signed.fingerprint.clone()), true, None),
                Err(err) => (
                    Some(signed.fingerprint.clone()),
                    false,
                    Some(err.to_string()),
                ),
            },
        };
        let key_label = fingerprint.as_deref().and_then(|f| signers.key_label(f));
        DecisionView {
            key_label,
            seq: e.seq,
            at_ms: e.at_ms,
            kind: e.kind,
            by: e.actor.clone(),
            step: e.step.clone(),
            attempt: e.attempt,
            fingerprint,
            verified,
            problem,
        }
    }
}

/// Collects the postmortem of `id`, with what each attempt saw (its
/// recording) when `with_recordings`; those can dwarf the rest.
pub fn postmortem(
    incidents: &Incidents,
    id: &str,
    with_recordings: bool,
) -> Result<Postmortem, ReportError> {
    let view = incidents.view(id)?;
    let meta = incidents.incident_meta(id)?;
    let signers = incidents.signers()?;
    let records = incidents.step_records(id)?;
    let timeline = incidents.timeline(id)?;

    let mut fold = Fold::new(meta.opened_at_ms);
    records.iter().for_each(|r| fold.step(r));
    timeline.iter().for_each(|e| fold.event(e));
    let folded = fold.finish();

    let decisions: Vec<DecisionView> = timeline
        .iter()
        .filter(|e| e.kind.is_human_decision())
        .map(|e| DecisionView::new(e, &signers))
        .collect();
    let mut approvals: HashMap<(String, u32), Vec<DecisionView>> = HashMap::new();
    for d in decisions.iter().filter(|d| d.kind == EventKind::Approved) {
        if let (Some(step), Some(attempt)) = (&d.step, d.attempt) {
            approvals
                .entry((step.clone(), attempt))
                .or_default()
                .push(d.clone());
        }
    }
    let steps = records
        .into_iter()
        .map(|r| {
            let mine = approvals
                .remove(&(r.step.clone(), r.attempt))
                .unwrap_or_default();
            StepView::new(r, mine, with_recordings)
        })
        .collect();

    Ok(Postmortem {
        schema: POSTMORTEM_SCHEMA.to_string(),
        incident: IncidentSection {
            id: view.id.to_string(),
            status: view.status,
            owner: view.owner.to_string(),
            opened_ms: meta.opened_at_ms,
            opened_by: meta.opened_by,
            step: view.checkpoint.step,
            why: view.why,
            dry_run: view.dry_run,
        },
        runbook: RunbookSection {
            name: meta.runbook_name,
            path: meta.runbook_path,
            sha256: hex::encode(Sha256::digest(meta.runbook_text.as_bytes())),
            modules: meta.modules,
        },
        params: meta.params,
        figures: folded.figures,
        owner_changes: folded.owner_changes,
        steps,
        decisions,
        approval_waits: folded.waits,
        holds: folded.holds,
        timeline: timeline.into_iter().map(EventView::from).collect(),
    })
}

/// Renders a postmortem as pretty-printed JSON.
pub fn json(p: &Postmortem) -> String {
    serde_json::to_string_pretty(p).expect("a postmortem always serializes")
}
