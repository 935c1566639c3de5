use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    for event in ctx.reader()?.timeline(&args.id)? {
        if args.json {
            outln!("{}", serde_json::to_string(&event)?);
        } else {
            outln!("{}", event.line());
        }
    }
    Ok(ExitCode::SUCCESS)
}
