//! Capability review: what each step of a runbook can touch, for security
//! reviewers, read straight from the modules (their imports) and the runbook
//! (their grants), with the sandbox's verdict on whether they load.

use std::sync::Arc;

use serde::Serialize;

use runbox_core::runbook::{Impact, LoadedRunbook};
use runbox_core::tools::ToolRegistry;
use runbox_sandbox::{Capabilities, Sandbox, granted_modes};

/// One step's capabilities.
#[derive(Debug, Clone, Serialize)]
pub struct StepReview {
    /// Step id.
    pub step: String,
    /// Action name.
    pub action: String,
    /// Module path.
    pub module: String,
    /// sha256 of the module, if it could be read.
    pub sha256: Option<String>,
    /// What the module imports, as `module.name`.
    pub imports: Vec<String>,
    /// Granted KV read patterns.
    pub kv_read: Vec<String>,
    /// Granted KV write patterns.
    pub kv_write: Vec<String>,
    /// Granted tools with their registry mode (`name (read)`), or `(unknown)`.
    pub tools: Vec<String>,
    /// Whether it can reach a mutating tool.
    pub mutates: bool,
    /// `low` or `high`.
    pub impact: Impact,
    /// Safe to re-run when in doubt.
    pub idempotent: bool,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Cooldown after the last destructive step.
    pub cooldown_ms: u64,
    /// Whether the sandbox loads it.
    pub verdict: Verdict,
}

/// Whether the sandbox would load a step. Serialized as `"ok"` or the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It loads under its grants.
    Ok,
    /// It is refused, and why.
    Refused(String),
}

impl Verdict {
    /// Whether it loads.
    pub fn is_ok(&self) -> bool {
        *self == Verdict::Ok
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Ok => f.write_str("ok"),
            Verdict::Refused(why) => f.write_str(why),
        }
    }
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reviews every step of a runbook.
pub fn review(sandbox: &Sandbox, rb: &LoadedRunbook, tools: Arc<ToolRegistry>) -> Vec<StepReview> {
    rb.runbook
        .steps
        .iter()
        .map(|step| {
            let path = rb.module_path(step);
            let policy = step.policy();
            let bytes = std::fs::read(&path);
            let (sha256, imports, verdict) = match &bytes {
                Err(e) => (
                    None,
                    Vec::new(),
                    Verdict::Refused(format!("cannot read {}: {e}", path.display())),
                ),
                Ok(bytes) => {
                    let sha = runbox_sandbox::sha256_hex(bytes);
                    let imports = match sandbox.imports(bytes, &policy.limits) {
                        Ok(list) => list,
                        Err(e) => vec![format!("<{e}>")],
                    };
                    let caps = Capabilities {
                        allow_mutate: true,
                        read_only: false,
                    };
                    let verdict =
                        match sandbox.prepare(&step.id, bytes, &policy, tools.clone(), caps) {
                            Ok(_) => Verdict::Ok,
                            Err(e) => Verdict::Refused(e.to_string()),
                        };
                    (Some(sha), imports, verdict)
                }
            };
            let tool_list = step
                .grants
                .tools
                .iter()
                .map(|t| match tools.get(t) {
                    Some(spec) => format!("{t} ({})", spec.mode),
                    None => format!("{t} (unknown)"),
                })
                .collect();
            StepReview {
                step: step.id.clone(),
                action: step.action().to_string(),
                module: path.display().to_string(),
                sha256,
                imports,
                kv_read: step.grants.kv_read.clone(),
                kv_write: step.grants.kv_write.clone(),
                tools: tool_list,
                mutates: granted_modes(&policy, &tools).1,
                impact: step.impact,
                idempotent: step.idempotent,
                max_retries: step.max_retries,
                cooldown_ms: step.cooldown_ms,
                verdict,
            }
        })
        .collect()
}
