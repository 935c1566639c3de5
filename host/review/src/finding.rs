//! Findings: what a reviewer should act on, each with a stable code and a
//! severity that follows from the code alone.

use schemars::JsonSchema;
use serde::Serialize;

/// How much a finding matters. Ordered: `Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Context a reviewer should see.
    Info,
    /// Risky or wider than needed; fails the review under `--deny warnings`.
    Warning,
    /// Wrong: the step would be refused, or breaks a safety rule. Fails the review.
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// What a finding is about. The code is stable (a CI pipeline may match on
/// it); [`Code::severity`] is the one place a code's severity is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    // Errors.
    /// The module imports a capability its grants do not cover: it would be refused.
    UngrantedImport,
    /// The module is not valid wasm, or not a WASI command.
    InvalidModule,
    /// The module file cannot be read.
    ModuleUnreadable,
    /// The module's sha256 differs from the runbook's pin.
    PinMismatch,
    /// A granted tool is not in the tools file.
    UnknownTool,
    /// A mutating tool on a step that needs no approval (`impact` is not `high`).
    MutatingWithoutApproval,
    /// A `kv_write` pattern of a bare `*` or `**`: the step may write any key.
    BareKvWrite,
    /// A tool runs a shell script (`sh -c`) with a parameter inside the script.
    ShellScriptParam,
    /// The module's initial memory is larger than its `limits.memory_mib`:
    /// every attempt would stop before its first instruction.
    MemoryOverLimit,
    // Warnings.
    /// A granted capability the module never imports.
    OverGrant,
    /// No `sha256` pin: any module at that path would run.
    Unpinned,
    /// A non-idempotent step with mutating tools and `max_retries > 0`.
    RetriedMutation,
    /// No explicit `limits.timeout_ms`.
    NoTimeout,
    /// A tool argument that accepts any value of its type.
    UnboundedToolArg,
    /// KV grants that reach the shared namespace (`shared:…`), state that
    /// spans incidents: one incident's step can change what another's sees.
    SharedKv,
    /// A KV pattern whose leading parameter could name a plane
    /// (`{ns}:svc/**` with `ns=shared`): `open` refuses such a value, but
    /// the pattern reads as one thing and may mean another.
    ParamPlane,
    // Information.
    /// The step's limits.
    Limits,
    /// Who must approve the step.
    Approval,
    /// Retries and backoff.
    Retries,
    /// Cooldown after the last destructive step.
    Cooldown,
    /// Declared idempotent: retried automatically when in doubt.
    Idempotent,
    /// A tool runs a shell script without parameters in it.
    ShellScript,
    // Differences between two versions of a runbook.
    /// A step is new.
    StepAdded,
    /// A step is gone.
    StepRemoved,
    /// A step gains a capability.
    CapabilityAdded,
    /// A step loses a capability.
    CapabilityRemoved,
    /// A KV pattern the old grants did not cover.
    KvPatternWidened,
    /// A KV pattern is gone.
    KvPatternRemoved,
    /// A step may call a tool it could not before.
    ToolAdded,
    /// A step may no longer call a tool.
    ToolRemoved,
    /// A tool became mutating.
    ToolNowMutates,
    /// A tool became read-only.
    ToolNowReads,
    /// A tool's command, arguments or environment changed.
    ToolCommandChanged,
    /// `impact` lowered from `high` to `low`: no approval needed any more.
    ApprovalLowered,
    /// `impact` raised to `high`.
    ApprovalRaised,
    /// `max_retries` raised.
    RetriesRaised,
    /// `max_retries` lowered.
    RetriesLowered,
    /// `cooldown_ms` shortened.
    CooldownShortened,
    /// `cooldown_ms` lengthened.
    CooldownLengthened,
    /// Declared idempotent: in-doubt attempts now re-run without a human.
    IdempotentDeclared,
    /// No longer declared idempotent.
    IdempotentWithdrawn,
    /// The module's bytes changed.
    ModuleChanged,
    /// The module's pin was removed.
    PinRemoved,
    /// The module is pinned now.
    PinAdded,
    /// A resource limit was raised.
    LimitRaised,
    /// A precondition checked before each attempt is gone.
    PreconditionRemoved,
    /// A resource limit was lowered.
    LimitLowered,
}

impl Code {
    /// The severity of every finding with this code.
    pub fn severity(self) -> Severity {
        use Code::*;
        match self {
            UngrantedImport
            | InvalidModule
            | ModuleUnreadable
            | PinMismatch
            | UnknownTool
            | MutatingWithoutApproval
            | BareKvWrite
            | ShellScriptParam
            | MemoryOverLimit => Severity::Error,
            OverGrant | Unpinned | RetriedMutation | NoTimeout | UnboundedToolArg | SharedKv
            | ParamPlane => Severity::Warning,
            // A widening is what a reviewer of a change must look at.
            StepAdded | CapabilityAdded | KvPatternWidened | ToolAdded | ToolNowMutates
            | ToolCommandChanged | ApprovalLowered | RetriesRaised | CooldownShortened
            | IdempotentDeclared | ModuleChanged | PinRemoved | LimitRaised
            | PreconditionRemoved => Severity::Warning,
            Limits | Approval | Retries | Cooldown | Idempotent | ShellScript | StepRemoved
            | CapabilityRemoved | KvPatternRemoved | ToolRemoved | ToolNowReads
            | ApprovalRaised | RetriesLowered | CooldownLengthened | IdempotentWithdrawn
            | PinAdded | LimitLowered => Severity::Info,
        }
    }

    /// The code as written in JSON (`ungranted-import`).
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Finding {
    /// Follows from `code`.
    pub severity: Severity,
    /// What it is about.
    pub code: Code,
    /// The step, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The tool, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// What was found, and what to do about it.
    pub message: String,
    /// The value before a change (diffs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    /// The value after a change (diffs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

impl Finding {
    /// A finding about `step`.
    pub fn step(code: Code, step: &str, message: impl Into<String>) -> Self {
        Finding {
            severity: code.severity(),
            code,
            step: Some(step.to_string()),
            tool: None,
            message: message.into(),
            old: None,
            new: None,
        }
    }

    /// A finding about `tool` as granted to `step`.
    pub fn tool(code: Code, step: Option<&str>, tool: &str, message: impl Into<String>) -> Self {
        Finding {
            tool: Some(tool.to_string()),
            step: step.map(str::to_string),
            ..Finding::step(code, "", message)
        }
    }

    /// Adds the values before and after a change.
    pub fn change(mut self, old: impl ToString, new: impl ToString) -> Self {
        self.old = Some(old.to_string());
        self.new = Some(new.to_string());
        self
    }
}

/// How many findings of each severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Summary {
    /// Error findings.
    pub errors: usize,
    /// Warning findings.
    pub warnings: usize,
    /// Info findings.
    pub infos: usize,
}

impl Summary {
    /// Counts `findings`.
    pub fn of(findings: &[Finding]) -> Self {
        let count = |s| findings.iter().filter(|f| f.severity == s).count();
        Summary {
            errors: count(Severity::Error),
            warnings: count(Severity::Warning),
            infos: count(Severity::Info),
        }
    }

    /// Whether the findings pass a gate that fails at `deny` and above.
    pub fn passes(&self, deny: Severity) -> bool {
        match deny {
            Severity::Error => self.errors == 0,
            Severity::Warning => self.errors == 0 && self.warnings == 0,
            Severity::Info => self.errors + self.warnings + self.infos == 0,
        }
    }
}
