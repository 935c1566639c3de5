use std::process::ExitCode;

use anyhow::Result;
use runbox_core::text::count;
use runbox_engine::verify::verify;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let incidents = ctx.reader()?;
    let ids = match args.id {
        Some(id) => vec![id],
        None => incidents.ids()?.into_iter().map(String::from).collect(),
    };
    let mut clean = true;
    for id in ids {
        let report = verify(&incidents, &id)?;
        clean &= report.is_clean();
        if args.json {
            outln!("{}", serde_json::to_string(&report)?);
            continue;
        }
        let verdict = if report.is_clean() {
            "ok"
        } else {
            "VIOLATIONS"
        };
        outln!(
            "{id}: {verdict} ({}, {}, {})",
            count(report.records as u64, "step record"),
            count(report.events as u64, "event"),
            count(report.kv_keys as u64, "KV key")
        );
        for v in &report.violations {
            outln!("  violation: {v}");
        }
        for f in &report.flags {
            outln!("  in doubt:  {f}");
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
