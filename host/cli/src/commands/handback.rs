use std::process::ExitCode;

use anyhow::Result;

use super::{Actor, human};
use crate::context::Context;
use crate::output::outln;

pub(crate) type Args = Actor;

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    ctx.engine()?.handback(&args.id, human(&args.actor), None)?;
    outln!("{}: handed back to agent:runbox", args.id);
    Ok(ExitCode::SUCCESS)
}
