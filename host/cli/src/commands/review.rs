use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use runbox_core::runbook::LoadedRunbook;
use runbox_core::tools::ToolRegistry;
use runbox_engine::review::{StepReview, review};
use runbox_sandbox::{Sandbox, SandboxConfig};

use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The runbook file.
    runbook: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let rb = LoadedRunbook::load(&args.runbook)?;
    let tools = match rb.tools_path() {
        Some(p) => ToolRegistry::load(&p)?,
        None => ToolRegistry::empty(),
    };
    let sandbox = Sandbox::new(SandboxConfig::default());
    let reviews = review(&sandbox, &rb, Arc::new(tools));
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&reviews)?);
    } else {
        for r in &reviews {
            print_review(r)?;
        }
    }
    Ok(if reviews.iter().all(|r| r.verdict.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_review(r: &StepReview) -> Result<()> {
    outln!("step {} ({})", r.step, r.action);
    outln!(
        "  module     {} sha256 {}",
        r.module,
        r.sha256.as_deref().unwrap_or("-")
    );
    outln!("  imports    {}", r.imports.join(", "));
    outln!("  kv_read    {:?}", r.kv_read);
    outln!("  kv_write   {:?}", r.kv_write);
    outln!("  tools      {}", r.tools.join(", "));
    outln!(
        "  safety     impact {:?}, mutates {}, idempotent {}, max_retries {}, cooldown {} ms",
        r.impact,
        r.mutates,
        r.idempotent,
        r.max_retries,
        r.cooldown_ms
    );
    outln!("  verdict    {}", r.verdict);
    Ok(())
}
