use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::{Result, bail};
use runbox_core::time::{now_ms, parse_since};
use runbox_engine::Incidents;
use runbox_report::RowFormat;

use crate::context::Context;

/// A postmortem's rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// JSON for tools (`runbox.postmortem/v1`; with --all, an array).
    Json,
    /// Markdown for people.
    #[value(alias = "md")]
    Markdown,
    /// One self-contained page with a timeline chart.
    Html,
    /// One event or step record a line, streamed.
    Jsonl,
    /// RFC 4180 CSV, one event or step record a row, streamed.
    Csv,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<String>,
    /// Every incident (JSON, JSONL or CSV).
    #[arg(long)]
    all: bool,
    /// With --all: only incidents opened since then (`30d`, `2026-11-01`,
    /// an RFC 3339 time).
    #[arg(long)]
    since: Option<String>,
    /// The rendering.
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    format: Format,
    /// Include what each attempt saw (its recording, for replay) in JSON.
    #[arg(long)]
    with_recordings: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    if args.since.is_some() && !args.all {
        bail!("--since selects incidents for --all; with an id, leave it out");
    }
    let incidents = ctx.reader()?;
    let ids = match &args.id {
        Some(id) => vec![id.clone()],
        None => selected(&incidents, args.since.as_deref())?,
    };
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    match args.format {
        Format::Jsonl | Format::Csv => {
            let format = if args.format == Format::Csv {
                RowFormat::Csv
            } else {
                RowFormat::Jsonl
            };
            runbox_report::write_rows(&incidents, &ids, format, &mut out)?;
        }
        Format::Json if args.all => json_array(&incidents, &ids, args.with_recordings, &mut out)?,
        _ if args.all => bail!(
            "--all writes json, jsonl or csv; for a page across incidents use `runbox report --format html`"
        ),
        format => {
            let p = runbox_report::postmortem(&incidents, &ids[0], args.with_recordings)?;
            let text = match format {
                Format::Json => runbox_report::json(&p) + "\n",
                Format::Html => runbox_report::html(&p),
                _ => runbox_report::markdown(&p),
            };
            out.write_all(text.as_bytes())?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The incidents opened since `since`, or all.
fn selected(incidents: &Incidents, since: Option<&str>) -> Result<Vec<String>> {
    let since = since_ms(since)?;
    runbox_report::incidents_since(incidents, since)?
        .map(|chosen| Ok(chosen?.0))
        .collect()
}

/// A `--since` value as ms since the epoch.
pub(crate) fn since_ms(since: Option<&str>) -> Result<Option<u64>> {
    since
        .map(|s| parse_since(s, now_ms()).map_err(|e| anyhow::anyhow!("--since: {e}")))
        .transpose()
}

/// Postmortems as one JSON array, one incident in memory at a time.
fn json_array(
    incidents: &Incidents,
    ids: &[String],
    with_recordings: bool,
    out: &mut impl Write,
) -> Result<()> {
    out.write_all(b"[")?;
    for (i, id) in ids.iter().enumerate() {
        let p = runbox_report::postmortem(incidents, id, with_recordings)?;
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer_pretty(&mut *out, &p)?;
    }
    out.write_all(b"\n]\n")?;
    Ok(())
}
