use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;
use crate::output::out;

/// A postmortem's rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// JSON for tools.
    Json,
    /// Markdown for people.
    #[value(alias = "md")]
    Markdown,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
    /// The rendering.
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    format: Format,
    /// Include what each attempt saw (its recording, for replay) in JSON.
    #[arg(long)]
    with_recordings: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let mut p = runbox_report::postmortem(&ctx.reader()?, &args.id)?;
    if !args.with_recordings {
        p = p.without_recordings();
    }
    match args.format {
        Format::Json => out!("{}\n", runbox_report::json(&p)),
        Format::Markdown => out!("{}", runbox_report::markdown(&p)),
    }
    Ok(ExitCode::SUCCESS)
}
