use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let list = ctx.reader()?.list()?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<30} {:<18} {:<20} {:<16} STEP",
        "ID",
        "STATUS",
        "OWNER",
        "RUNBOOK"
    );
    for i in list {
        outln!(
            "{:<30} {:<18} {:<20} {:<16} {}",
            i.id.as_str(),
            i.status.as_str(),
            i.owner.to_string(),
            i.runbook,
            i.step.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}
