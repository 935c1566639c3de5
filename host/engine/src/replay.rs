//! Replaying recorded attempts: the recorded module (or a new version of
//! it) runs in the sandbox against what the attempt saw. KV reads and tool
//! calls are answered from the recording, so no tool runs and the store is
//! only read; the first input the step asks for that the recording does not
//! have, in that order, is a divergence. A replay matches when the outcome,
//! output, KV writes and tool calls are the same.
//!
//! Time is not compared. An attempt that ended in time replays under
//! [`REPLAY_TIMEOUT_FACTOR`] times its timeout, so a replay on a loaded
//! machine (or in a debug build) is not cut short by a deadline the live
//! attempt met; only a step that runs on past that (a new module that
//! loops) stops at it. An attempt that timed out replays under its own
//! timeout, which is what it is compared against.
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

use runbox_core::attempt::ErrorCategory;
use runbox_core::policy::StepPolicy;
use runbox_core::records::{RecordOutcome, StepRecord};
use runbox_core::runbook::LoadedRunbook;
use runbox_core::tools::ToolRegistry;
use runbox_sandbox::{Capabilities, MapKv, Sandbox, StepReport, Tape};

use crate::{Incidents, Result};
use runbox_incidents::parse_id;

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
    /// Same outcome (with the same reason), output, KV writes and tool calls.
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

/// How many times its timeout an attempt that ended in time may run in
/// replay.
pub const REPLAY_TIMEOUT_FACTOR: u64 = 10;

/// The policy an attempt replays under: its own, with the timeout widened
/// unless the recorded attempt timed out.
fn replay_policy(record: &StepRecord, mut policy: StepPolicy) -> StepPolicy {
    let timed_out = record
        .error
        .as_ref()
        .is_some_and(|e| e.category == ErrorCategory::Timeout);
    policy.limits.timeout_ms = replay_timeout_ms(timed_out, policy.limits.timeout_ms);
    policy
}

/// The timeout of a replay: the recorded attempt's own when it timed out
/// (that is what the replay is compared with), else [`REPLAY_TIMEOUT_FACTOR`]
/// times it.
fn replay_timeout_ms(recorded_timed_out: bool, timeout_ms: u64) -> u64 {
    if recorded_timed_out {
        timeout_ms
    } else {
        timeout_ms.saturating_mul(REPLAY_TIMEOUT_FACTOR)
    }
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
                &replay_policy(record, spec.policy()),
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
        let recorded_why = record
            .reason
            .clone()
            .or_else(|| record.error.as_ref().map(ToString::to_string));
        let replayed_why = replayed
            .reason
            .clone()
            .or_else(|| replayed.error.as_ref().map(ToString::to_string));
        out.push(format!(
            "outcome: recorded {}, replayed {}",
            said(record.outcome, recorded_why.as_deref()),
            said(outcome, replayed_why.as_deref())
        ));
    } else if record.reason != replayed.reason {
        // The step's own words with the same outcome: `fail` for another
        // reason is another decision.
        out.push(format!(
            "reason: recorded {}, replayed {}",
            quoted_or_none(record.reason.as_deref()),
            quoted_or_none(replayed.reason.as_deref())
        ));
    }
    if record.output != replayed.output {
        out.push(format!(
            "output: recorded {}, replayed {}",
            json_or_none(&record.output),
            json_or_none(&replayed.output)
        ));
    }
    out.extend(kv_differences(recorded_writes, &replayed.kv_writes));
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

/// An outcome with why: `fail ("disk full")`, or `ok`.
fn said(outcome: RecordOutcome, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("{} ({r:?})", outcome.as_str()),
        None => outcome.as_str().to_string(),
    }
}

fn quoted_or_none(text: Option<&str>) -> String {
    text.map_or("none".to_string(), |t| format!("{t:?}"))
}

/// How much of a differing KV value `replay` shows.
const SHOWN_VALUE_BYTES: usize = 64;

/// How two attempts' KV writes differ: the keys only one of them wrote
/// (in order), else the keys whose values differ, with both values.
fn kv_differences(
    recorded: &[runbox_core::attempt::KvWrite],
    replayed: &[runbox_core::attempt::KvWrite],
) -> Vec<String> {
    if recorded == replayed {
        return Vec::new();
    }
    let keys =
        |w: &[runbox_core::attempt::KvWrite]| w.iter().map(|w| w.key.clone()).collect::<Vec<_>>();
    if keys(recorded) != keys(replayed) {
        return vec![format!(
            "KV writes: recorded keys {:?}, replayed keys {:?}",
            keys(recorded),
            keys(replayed)
        )];
    }
    // Quoted, and cut short: a value may be 64 KiB.
    let value = |v: &Option<Vec<u8>>| match v {
        Some(bytes) if bytes.len() > SHOWN_VALUE_BYTES => format!(
            "{:?}… ({} bytes)",
            String::from_utf8_lossy(&bytes[..SHOWN_VALUE_BYTES]),
            bytes.len()
        ),
        Some(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
        None => "a delete".to_string(),
    };
    recorded
        .iter()
        .zip(replayed)
        .filter(|(a, b)| a.value != b.value)
        .map(|(a, b)| {
            format!(
                "KV write `{}`: recorded {}, replayed {}",
                a.key,
                value(&a.value),
                value(&b.value)
            )
        })
        .collect()
}

fn json_or_none(v: &Option<serde_json::Value>) -> String {
    v.as_ref().map_or("none".to_string(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_that_ended_in_time_replays_under_ten_times_its_timeout() {
        assert_eq!(replay_timeout_ms(false, 2_000), 20_000);
        assert_eq!(replay_timeout_ms(false, u64::MAX), u64::MAX);
    }

    #[test]
    fn an_attempt_that_timed_out_replays_under_its_own_timeout() {
        assert_eq!(replay_timeout_ms(true, 2_000), 2_000);
    }
}
