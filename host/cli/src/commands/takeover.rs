use std::process::ExitCode;

use anyhow::Result;

use super::{Actor, human};
use crate::context::Context;
use crate::output::outln;

pub(crate) type Args = Actor;

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let name = human(&args.actor);
    ctx.engine()?.takeover(&args.id, name)?;
    outln!("{}: now owned by human:{name}", args.id);
    Ok(ExitCode::SUCCESS)
}
