//! What an attempt did and how it ended: the step's outcome, why the
//! sandbox stopped it, its tool calls, logs and KV writes. The sandbox
//! produces these; step records keep them.

use serde::{Deserialize, Serialize};

/// A step's outcome, as passed to `finish` (codes 0..=3) or decided by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done; go on with the runbook.
    Ok,
    /// Try again (subject to the step's `max_retries`).
    Retry,
    /// Stop and hand the incident to a human.
    Escalate,
    /// The step failed; follow the runbook's `fail` transition.
    Fail,
}

impl Outcome {
    /// Decodes the `finish` outcome code ([`runbox_abi::Outcome`]).
    pub fn from_code(code: i32) -> Option<Self> {
        runbox_abi::Outcome::from_code(code).map(Self::from)
    }

    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retry => "retry",
            Outcome::Escalate => "escalate",
            Outcome::Fail => "fail",
        }
    }
}

impl From<runbox_abi::Outcome> for Outcome {
    fn from(o: runbox_abi::Outcome) -> Self {
        match o {
            runbox_abi::Outcome::Ok => Outcome::Ok,
            runbox_abi::Outcome::Retry => Outcome::Retry,
            runbox_abi::Outcome::Escalate => Outcome::Escalate,
            runbox_abi::Outcome::Fail => Outcome::Fail,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ok" => Ok(Outcome::Ok),
            "retry" => Ok(Outcome::Retry),
            "escalate" => Ok(Outcome::Escalate),
            "fail" => Ok(Outcome::Fail),
            other => Err(format!(
                "unknown outcome `{other}` (ok, retry, escalate, fail)"
            )),
        }
    }
}

/// Why the sandbox stopped a step, or what policy it broke.
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
pub enum ErrorCategory {
    /// Ran past `limits.timeout_ms`.
    Timeout,
    /// Tried to grow memory past `limits.memory_mib`.
    Memory,
    /// A wasm trap (unreachable, out-of-bounds access, misuse of the ABI).
    Trap,
    /// Imports something its policy does not grant, or that does not exist.
    DeniedImport,
    /// Touched a KV key outside its granted patterns.
    DeniedKey,
    /// Called a tool it was not granted, or through the wrong mode.
    DeniedTool,
    /// Not a valid module, or not a WASI command.
    InvalidModule,
    /// Exceeded another limit (stack, output, KV, tool calls, sizes).
    Limit,
    /// Ended without calling `finish`.
    NoOutcome,
    /// The host itself failed (store read error, attempt record not durable).
    Host,
    /// Stopped before a mutating call by a safety rule across incidents: a
    /// brake, a rate limit exceeded, or shared state that moved.
    Held,
}

impl ErrorCategory {
    /// The kebab-case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::Timeout => "timeout",
            ErrorCategory::Memory => "memory",
            ErrorCategory::Trap => "trap",
            ErrorCategory::DeniedImport => "denied-import",
            ErrorCategory::DeniedKey => "denied-key",
            ErrorCategory::DeniedTool => "denied-tool",
            ErrorCategory::InvalidModule => "invalid-module",
            ErrorCategory::Limit => "limit",
            ErrorCategory::NoOutcome => "no-outcome",
            ErrorCategory::Host => "host",
            ErrorCategory::Held => "held",
        }
    }
}

impl std::fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A categorized error with a message for humans.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, thiserror::Error,
)]
#[error("{category}: {message}")]
pub struct StepError {
    /// The category.
    pub category: ErrorCategory,
    /// What happened, naming the import, key, tool or limit.
    pub message: String,
}

impl StepError {
    /// Builds an error.
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        StepError {
            category,
            message: message.into(),
        }
    }
}

/// A call the guest made that its policy refused. The attempt escalates.
pub type Violation = StepError;

/// A log line the guest emitted through `runbox:step/v1`.`log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogLine {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The message.
    pub message: String,
}

/// One staged KV write: a put (with value) or a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWrite {
    /// The key, relative to the step KV namespace.
    pub key: String,
    /// The value, or `None` for a delete.
    #[serde(with = "value_text")]
    pub value: Option<Vec<u8>>,
}

/// One tool call and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// `read` or `mutate`.
    pub mode: crate::tools::ToolMode,
    /// The tool's exit code; -1 when killed or it could not start.
    pub rc: i32,
    /// Whether the tool was killed at its timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// Why the call failed before the tool ran, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall-clock duration.
    pub duration_ms: u64,
    /// A dry run's mutating call: intercepted, never run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// KV values print as text when they are UTF-8 and as `{"hex": "…"}` otherwise.
pub(crate) mod value_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Hex { hex: String },
    }

    pub(crate) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Repr::Text(text.to_string()).serialize(s),
                Err(_) => Repr::Hex {
                    hex: hex::encode(bytes),
                }
                .serialize(s),
            },
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(None),
            Some(Repr::Text(t)) => Ok(Some(t.into_bytes())),
            Some(Repr::Hex { hex }) => hex::decode(hex).map(Some).map_err(serde::de::Error::custom),
        }
    }
}
