use std::process::ExitCode;

use anyhow::Result;

use super::human;
use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
    /// The human.
    #[arg(long = "as")]
    actor: String,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    ctx.engine()?.handback(&args.id, human(&args.actor), None)?;
    outln!("{}: handed back to agent:runbox", args.id);
    Ok(ExitCode::SUCCESS)
}
