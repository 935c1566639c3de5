use std::process::ExitCode;

use anyhow::Result;

use super::human;
use crate::context::Context;
use crate::output::outln;

/// `approve` and `deny` take the same arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
    /// The step awaiting approval.
    step: String,
    /// The human deciding.
    #[arg(long = "as")]
    actor: String,
}

pub(crate) fn run(args: Args, ctx: &Context, approve: bool) -> Result<ExitCode> {
    let name = human(&args.actor);
    ctx.engine()?.approve(&args.id, &args.step, name, approve)?;
    if approve {
        outln!("{}: approved `{}` as human:{name}", args.id, args.step);
    } else {
        outln!(
            "{}: denied `{}`; escalated to human:{name}",
            args.id,
            args.step
        );
    }
    Ok(ExitCode::SUCCESS)
}
