use std::process::ExitCode;

use anyhow::Result;

use crate::commands::export::since_ms;
use crate::context::Context;
use crate::output::out;

/// A patterns report's rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Plain text tables.
    Table,
    /// JSON (`runbox.patterns/v1`).
    Json,
    /// One self-contained page with small charts.
    Html,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only incidents opened since then (`30d`, `2026-11-01`, an RFC 3339
    /// time). Default: all.
    #[arg(long)]
    since: Option<String>,
    /// The rendering.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let since = since_ms(args.since.as_deref())?;
    let p = runbox_report::patterns(&ctx.reader()?, since)?;
    match args.format {
        Format::Table => out!("{}", runbox_report::patterns_table(&p)),
        Format::Json => out!("{}\n", serde_json::to_string_pretty(&p)?),
        Format::Html => out!("{}", runbox_report::patterns_html(&p)),
    }
    Ok(ExitCode::SUCCESS)
}
