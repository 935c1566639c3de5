//! Capability review: what each step of a runbook can touch, for security
//! reviewers, read straight from the modules (their imports) and the runbook
//! (their grants), with the sandbox's verdict on whether they load.

use std::sync::Arc;

use serde::Serialize;

use crate::runbook::{Impact, LoadedRunbook};
use crate::sandbox::{Capabilities, Sandbox, granted_modes};
use crate::tools::ToolRegistry;

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
    /// `ok`, or why the sandbox refuses it.
    pub verdict: String,
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
                    format!("cannot read {}: {e}", path.display()),
                ),
                Ok(bytes) => {
                    let sha = crate::sandbox::sha256_hex(bytes);
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
                            Ok(Ok(_)) => "ok".to_string(),
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
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
