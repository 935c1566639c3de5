//! What one attempt produced: the step's own outcome, or why the sandbox
//! stopped it, plus everything it did (logs, KV writes, tool calls).

use runbox_core::attempt::{KvWrite, LogLine, Outcome, StepError, ToolCall, Violation};
use runbox_core::tools::ToolMode;
use serde::{Deserialize, Serialize};

/// Everything one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// The outcome the engine acts on: the step's own, or `escalate` when the
    /// sandbox stopped it or it broke its policy.
    pub outcome: Outcome,
    /// What the step passed to `finish`, if it did.
    pub step_outcome: Option<Outcome>,
    /// JSON output of an `ok` step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Reason given with `retry`, `escalate` or `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the sandbox stopped the step, or the first policy violation.
    pub error: Option<StepError>,
    /// Every refused call (capped at 32).
    pub violations: Vec<Violation>,
    /// Log lines.
    pub logs: Vec<LogLine>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Staged KV writes that stand with the outcome (the step called `finish`).
    pub kv_writes: Vec<KvWrite>,
    /// Staged KV writes thrown away because the sandbox stopped the step.
    pub discarded_kv_writes: Vec<KvWrite>,
    /// Tool calls in order.
    pub tool_calls: Vec<ToolCall>,
    /// Wall-clock duration of the attempt.
    pub duration_ms: u64,
    /// What the attempt saw, when it ran on a recording tape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<runbox_core::recording::Recording>,
    /// Replay: the first point where the step asked for something other
    /// than the recording has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergence: Option<String>,
}

impl StepReport {
    /// A report for a step stopped before it ran.
    pub fn stopped(error: StepError) -> Self {
        StepReport {
            outcome: Outcome::Escalate,
            step_outcome: None,
            output: None,
            reason: None,
            error: Some(error),
            violations: Vec::new(),
            logs: Vec::new(),
            stdout: String::new(),
            stderr: String::new(),
            kv_writes: Vec::new(),
            discarded_kv_writes: Vec::new(),
            recording: None,
            divergence: None,
            tool_calls: Vec::new(),
            duration_ms: 0,
        }
    }

    /// Whether any mutating tool was called.
    pub fn mutated(&self) -> bool {
        self.tool_calls
            .iter()
            .any(|c| c.mode == ToolMode::Mutate && !c.dry_run)
    }
}
