use std::process::ExitCode;

use anyhow::Result;

use super::{Settle, human};
use crate::context::Context;
use crate::output::outln;

pub(crate) type Args = Settle;

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    ctx.engine()?
        .skip_step(&args.id, &args.step, human(&args.actor))?;
    outln!("{}: `{}` skipped", args.id, args.step);
    Ok(ExitCode::SUCCESS)
}
