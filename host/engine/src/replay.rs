//! Replaying recorded attempts: the recorded module (or a new version of
//! it) runs in the sandbox against what the attempt saw. KV reads and tool
//! calls are answered from the recording, so no tool runs and the store is
//! only read; the first input the step asks for that the recording does not
//! have, in that order, is a divergence. A replay matches when the outcome,
//! output, KV writes and tool calls are the same.
//!
//! ```no_run
//! # async fn demo(incidents: &runbox_engine::Incidents) -> Result<(), runbox_engine::EngineError> {
//! use runbox_engine::replay::{Selection, replay};
//! use runbox_sandbox::{Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::new(SandboxConfig::default());
//! let selection = Selection { step: Some("diagnose"), ..Selection::default() };
//! for r in replay(incidents, &sandbox, "INC-7", &selection).await? {
//!     println!("{}#{} {:?}", r.step, r.attempt, r.verdict);
//! }
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use runbox_core::records::{RecordOutcome, StepRecord};
use runbox_core::runbook::LoadedRunbook;
use runbox_core::tools::ToolRegistry;
use runbox_sandbox::{Capabilities, MapKv, Sandbox, StepReport, Tape};

use crate::query::parse_id;
use crate::{Incidents, Result};

/// Which attempts to replay, and against which module.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection<'a> {
    /// Only this step. Default: every step.
    pub step: Option<&'a str>,
    /// Only this attempt. Default: every attempt.
    pub attempt: Option<u32>,
    /// Replay against this module file instead of the recorded one.
    pub module: Option<&'a Path>,
}

/// How a replay came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Same outcome, output, KV writes and tool calls.
    Same,
    /// Something differs: see `differences`.
    Different,
    /// The attempt has no complete recording.
    NotReplayable,
    /// The attempt was in doubt: it has no result to compare.
    InDoubt,
}

/// One attempt's replay.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The incident.
    pub incident: String,
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// The verdict.
    pub verdict: Verdict,
    /// sha256 of the module that ran in the attempt.
    pub recorded_module: Option<String>,
    /// sha256 of the module replayed.
    pub replayed_module: Option<String>,
    /// The first input the step asked for that the recording does not have.
    pub divergence: Option<String>,
    /// What differs, or why it could not be replayed.
    pub differences: Vec<String>,
}

/// Replays the selected attempts of incident `id`. Reads only.
pub async fn replay(
    incidents: &Incidents,
    sandbox: &Sandbox,
    id: &str,
    selection: &Selection<'_>,
) -> Result<Vec<ReplayReport>> {
    let id = parse_id(id)?;
    let meta = incidents.meta(&id)?;
    let (rb, tools) = incidents.runbook(&meta)?;
    let mut out = Vec::new();
    for record in incidents.step_records(&id)? {
        if selection.step.is_some_and(|s| s != record.step)
            || selection.attempt.is_some_and(|a| a != record.attempt)
        {
            continue;
        }
        let ctx = Ctx {
            rb: &rb,
            tools: &tools,
            sandbox,
        };
        out.push(ctx.replay_one(&id, &record, selection.module).await);
    }
    Ok(out)
}

/// Replays the selected attempts of every incident opened at or after
/// `since_ms` (all of them when `None`).
pub async fn replay_all(
    incidents: &Incidents,
    sandbox: &Sandbox,
    since_ms: Option<u64>,
    selection: &Selection<'_>,
) -> Result<Vec<ReplayReport>> {
    let mut out = Vec::new();
    for id in incidents.ids()? {
        if since_ms.is_some_and(|since| incidents.meta(&id).is_ok_and(|m| m.opened_at_ms < since)) {
            continue;
        }
        out.extend(replay(incidents, sandbox, &id, selection).await?);
    }
    Ok(out)
}

struct Ctx<'a> {
    rb: &'a LoadedRunbook,
    tools: &'a Arc<ToolRegistry>,
    sandbox: &'a Sandbox,
}

impl Ctx<'_> {
    async fn replay_one(
        &self,
        id: &str,
        record: &StepRecord,
        module: Option<&Path>,
    ) -> ReplayReport {
        let mut report = ReplayReport {
            incident: id.to_string(),
            step: record.step.clone(),
            attempt: record.attempt,
            verdict: Verdict::NotReplayable,
            recorded_module: record.module_sha256.clone(),
            replayed_module: None,
            divergence: None,
            differences: Vec::new(),
        };
        let recording = match &record.recording {
            _ if record.outcome == RecordOutcome::InDoubt => {
                report.verdict = Verdict::InDoubt;
                report
                    .differences
                    .push("in doubt: the attempt has no result to compare".into());
                return report;
            }
            None => {
                report.differences.push(
                    "no recording: settled by a human, or recorded before replay existed".into(),
                );
                return report;
            }
            Some(r) if !r.replayable() => {
                let why = r
                    .incomplete
                    .clone()
                    .unwrap_or_else(|| format!("schema `{}`", r.schema));
                report.differences.push(format!("not replayable: {why}"));
                return report;
            }
            Some(r) => r.clone(),
        };
        let replayed = match self.run(record, recording.clone(), module).await {
            Ok((sha, replayed)) => {
                report.replayed_module = Some(sha);
                replayed
            }
            Err(why) => {
                // A new module that does not load on a past attempt differs
                // from the one that ran; a recorded module that is gone
                // leaves the attempt not replayable.
                if module.is_some() {
                    report.verdict = Verdict::Different;
                }
                report.differences.push(why);
                return report;
            }
        };
        report.divergence = replayed.divergence.clone();
        report.differences = compare(record, &recording.kv_writes, &replayed);
        report.verdict = if report.differences.is_empty() && report.divergence.is_none() {
            Verdict::Same
        } else {
            Verdict::Different
        };
        report
    }

    /// Runs the module on the recording: its sha256 and its report.
    async fn run(
        &self,
        record: &StepRecord,
        recording: runbox_core::recording::Recording,
        module: Option<&Path>,
    ) -> Result<(String, StepReport), String> {
        let spec = self
            .rb
            .step(&record.step)
            .ok_or_else(|| format!("the runbook has no step `{}`", record.step))?;
        let path = module.map_or_else(|| self.rb.module_path(spec), Path::to_path_buf);
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let sha = runbox_sandbox::sha256_hex(&bytes);
        if module.is_none() && record.module_sha256.as_deref().is_some_and(|r| r != sha) {
            return Err(format!(
                "{} has sha256 {sha}, not the recorded {}: pass the recorded module with --module",
                path.display(),
                record.module_sha256.as_deref().unwrap_or("-")
            ));
        }
        // Every capability the grants allow: the tape, not the token, stands
        // between the step and the world.
        let caps = Capabilities {
            allow_mutate: true,
            read_only: false,
        };
        let prepared = self
            .sandbox
            .prepare(
                &record.step,
                &bytes,
                &spec.policy(),
                self.tools.clone(),
                caps,
            )
            .map_err(|e| format!("the module does not load: {e}"))?;
        let input = recording.input.clone();
        let report = self
            .sandbox
            .run_on_tape(
                &prepared,
                &input,
                Arc::new(MapKv::new()),
                None,
                Tape::replay(recording),
            )
            .await;
        Ok((sha, report))
    }
}

/// What differs between a recorded attempt and its replay.
fn compare(
    record: &StepRecord,
    recorded_writes: &[runbox_core::attempt::KvWrite],
    replayed: &StepReport,
) -> Vec<String> {
    let mut out = Vec::new();
    let outcome = RecordOutcome::from(replayed.outcome);
    if outcome != record.outcome {
        out.push(format!(
            "outcome: recorded {}, replayed {}",
            record.outcome.as_str(),
            outcome.as_str()
        ));
    }
    if record.output != replayed.output {
        out.push(format!(
            "output: recorded {}, replayed {}",
            json_or_none(&record.output),
            json_or_none(&replayed.output)
        ));
    }
    if recorded_writes != replayed.kv_writes.as_slice() {
        let keys = |w: &[runbox_core::attempt::KvWrite]| {
            w.iter()
                .map(|w| w.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(format!(
            "KV writes: recorded [{}], replayed [{}]",
            keys(recorded_writes),
            keys(&replayed.kv_writes)
        ));
    }
    let calls = |c: &[runbox_core::attempt::ToolCall]| {
        c.iter()
            .map(|c| format!("{} rc {}", c.name, c.rc))
            .collect::<Vec<_>>()
    };
    if calls(&record.tool_calls) != calls(&replayed.tool_calls) {
        out.push(format!(
            "tool calls: recorded {:?}, replayed {:?}",
            calls(&record.tool_calls),
            calls(&replayed.tool_calls)
        ));
    }
    out
}

fn json_or_none(v: &Option<serde_json::Value>) -> String {
    v.as_ref().map_or("none".to_string(), ToString::to_string)
}
