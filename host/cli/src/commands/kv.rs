use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: Option<String>,
    /// The shared namespace instead (`shared:…` keys, across incidents).
    #[arg(long, conflicts_with = "id")]
    shared: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let reader = ctx.reader()?;
    let entries = match (&args.id, args.shared) {
        (_, true) => reader.shared_kv()?,
        (Some(id), false) => reader.kv(id)?,
        (None, false) => bail!("name an incident, or --shared for the shared namespace"),
    };
    let entries: serde_json::Map<String, serde_json::Value> = entries
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned().into()))
        .collect();
    outln!("{}", serde_json::to_string_pretty(&entries)?);
    Ok(ExitCode::SUCCESS)
}
