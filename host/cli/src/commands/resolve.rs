use std::process::ExitCode;

use anyhow::Result;
use runbox_core::attempt::Outcome;

use super::human;
use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
    /// The step.
    #[arg(long)]
    step: String,
    /// ok, retry, escalate or fail.
    #[arg(long)]
    outcome: Outcome,
    /// The human deciding.
    #[arg(long = "as")]
    actor: String,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let name = human(&args.actor);
    ctx.engine()?
        .resolve_step(&args.id, &args.step, args.outcome, name)?;
    outln!(
        "{}: `{}` settled as {} by human:{name}",
        args.id,
        args.step,
        args.outcome
    );
    Ok(ExitCode::SUCCESS)
}
