use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let entries: serde_json::Map<String, serde_json::Value> = ctx
        .reader()?
        .kv(&args.id)?
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned().into()))
        .collect();
    outln!("{}", serde_json::to_string_pretty(&entries)?);
    Ok(ExitCode::SUCCESS)
}
