//! # Security review of runbooks
//!
//! One of runbox's users is the security reviewer who approves what each
//! step may do before it runs in production. This crate answers their
//! questions from the files alone, without running anything:
//!
//! - [`review`]: per step, what it can touch and every [`Finding`] with a
//!   [`Severity`] a CI pipeline can gate on (`runbox review --deny warnings`);
//! - [`ModuleCaps::inspect`]: what a module asks for, from its own import
//!   section (`runbox caps STEP.wasm`);
//! - [`diff`]: what a change to a runbook *adds* — new capabilities, wider
//!   KV patterns, new tools, lowered approval — read from two files or two
//!   git revisions of one ([`Source`]);
//! - [`pin`]: writes each module's sha256 into the runbook so a reviewed
//!   runbook runs only the reviewed modules.
//!
//! ```no_run
//! use std::path::Path;
//! use runbox_review::{Severity, Source, review};
//! use runbox_sandbox::{Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::new(SandboxConfig::default());
//! let report = review(&sandbox, &Source::Disk, Path::new("runbook.toml"))?;
//! for f in &report.findings {
//!     println!("{} {}: {}", f.severity, f.code.as_str(), f.message);
//! }
//! assert!(report.summary.passes(Severity::Warning));
//! # Ok::<(), runbox_review::ReviewError>(())
//! ```
//!
//! JSON output carries a `schema` name (`runbox.review/v1`,
//! `runbox.review-diff/v1`, `runbox.caps/v1`); [`schemas`] generates their
//! JSON Schemas, committed under `docs/schemas/`.

mod caps;
mod diff;
mod files;
mod finding;
mod pin;
mod rules;
mod source;

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Serialize;

use runbox_core::policy::Limits;
use runbox_core::runbook::{Impact, RunbookError};
use runbox_core::tools::{ToolError, ToolMode};
use runbox_sandbox::{PrepareError, Sandbox};

pub use caps::{
    CAPS_SCHEMA, Capability, CapsError, ImportGroup, Item, Kind, Memory, ModuleCaps, Table,
};
pub use diff::{DIFF_SCHEMA, Diff, diff};
pub use files::RunbookFiles;
pub use finding::{Code, Finding, Severity, Summary};
pub use pin::{PinChange, pin};
pub use source::Source;

/// The schema name of [`Review`] JSON.
pub const REVIEW_SCHEMA: &str = "runbox.review/v1";

/// Why a review could not be made (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The runbook is not valid.
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    /// The tools file is not valid.
    #[error(transparent)]
    Tools(#[from] ToolError),
    /// The sandbox cannot judge modules on this host.
    #[error("cannot check modules: {0}")]
    Sandbox(String),
    /// A git revision could not be read.
    #[error("{0}")]
    Git(String),
    /// The runbook could not be rewritten with pins.
    #[error("cannot pin {path}: {message}")]
    Pin {
        /// The runbook.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A runbook's review: each step's capabilities and every finding.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Review {
    /// `runbox.review/v1`.
    pub schema: String,
    /// The runbook's name.
    pub runbook: String,
    /// The runbook file.
    pub path: String,
    /// `working tree` or `revision REV`.
    pub source: String,
    /// Each step, in runbook order.
    pub steps: Vec<StepReview>,
    /// Findings, errors first within each step; tool findings last.
    pub findings: Vec<Finding>,
    /// Counts by severity.
    pub summary: Summary,
}

/// What one step can touch.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepReview {
    /// Step id.
    pub step: String,
    /// Action name.
    pub action: String,
    /// Module path.
    pub module: String,
    /// sha256 of the module file, if it could be read.
    pub sha256: Option<String>,
    /// The runbook's pin, if any.
    pub pin: Option<String>,
    /// What the module imports, as `module.name`.
    pub imports: Vec<String>,
    /// The capabilities those imports need.
    pub capabilities: Vec<Capability>,
    /// Granted KV read patterns.
    pub kv_read: Vec<String>,
    /// Granted KV write patterns.
    pub kv_write: Vec<String>,
    /// Granted tools with their mode (`None`: not in the tools file).
    pub tools: Vec<ToolGrant>,
    /// Whether it can reach a mutating tool.
    pub mutates: bool,
    /// `low` or `high` (approval per attempt).
    pub impact: Impact,
    /// Safe to re-run when in doubt.
    pub idempotent: bool,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Cooldown after the last destructive step, in ms.
    pub cooldown_ms: u64,
    /// Resource limits.
    pub limits: Limits,
    /// Whether the sandbox loads it under its grants.
    pub loads: bool,
    /// `ok`, or why the sandbox refuses it.
    pub verdict: String,
}

/// A granted tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ToolGrant {
    /// Its name.
    pub name: String,
    /// `read` or `mutate`; absent when the tools file has no such tool.
    pub mode: Option<ToolMode>,
}

/// Reviews the runbook at `path` as found in `source`.
pub fn review(sandbox: &Sandbox, source: &Source, path: &Path) -> Result<Review, ReviewError> {
    let files = RunbookFiles::load(source, path)?;
    review_files(sandbox, &files)
}

/// Reviews runbook files already loaded. Fails only when the host itself
/// cannot judge a module (the wasm engine cannot be configured).
pub fn review_files(sandbox: &Sandbox, files: &RunbookFiles) -> Result<Review, ReviewError> {
    let mut steps = Vec::new();
    let mut findings = Vec::new();
    for step in &files.runbook.runbook.steps {
        let module = files.module(&step.id);
        let verdict = rules::verdict(sandbox, files, step);
        if let Err(PrepareError::Host(e)) = &verdict
            && rules::unknown_tools(files, step).next().is_none()
        {
            return Err(ReviewError::Sandbox(e.to_string()));
        }
        let mut found = rules::step_findings(files, step, &verdict);
        found.sort_by_key(|f| std::cmp::Reverse(f.severity));
        findings.extend(found);
        let policy = step.policy();
        steps.push(StepReview {
            step: step.id.clone(),
            action: step.action().to_string(),
            module: files.runbook.module_path(step).display().to_string(),
            sha256: module.sha256.clone(),
            pin: step.sha256.clone(),
            imports: module
                .caps
                .as_ref()
                .map(ModuleCaps::import_names)
                .unwrap_or_default(),
            capabilities: module
                .caps
                .as_ref()
                .map(|c| c.capabilities().collect())
                .unwrap_or_default(),
            kv_read: step.grants.kv_read.clone(),
            kv_write: step.grants.kv_write.clone(),
            tools: step
                .grants
                .tools
                .iter()
                .map(|t| ToolGrant {
                    name: t.clone(),
                    mode: files.tools.get(t).map(|s| s.mode),
                })
                .collect(),
            mutates: files.tools.modes(&policy.grants).mutate,
            impact: step.impact,
            idempotent: step.idempotent,
            max_retries: step.max_retries,
            cooldown_ms: step.cooldown_ms,
            limits: step.limits,
            loads: verdict.is_ok(),
            verdict: match &verdict {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            },
        });
    }
    findings.extend(rules::tool_findings(files));
    Ok(Review {
        schema: REVIEW_SCHEMA.to_string(),
        runbook: files.runbook.runbook.runbook.name.clone(),
        path: files.runbook.path.display().to_string(),
        source: files.source.label(),
        summary: Summary::of(&findings),
        steps,
        findings,
    })
}

/// The JSON Schemas of every JSON document this crate prints, by file name.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    let to_value = |s: schemars::Schema| serde_json::to_value(s).unwrap_or_default();
    vec![
        (
            "review.schema.json",
            to_value(schemars::schema_for!(Review)),
        ),
        (
            "review-diff.schema.json",
            to_value(schemars::schema_for!(Diff)),
        ),
        (
            "caps.schema.json",
            to_value(schemars::schema_for!(ModuleCaps)),
        ),
    ]
}
