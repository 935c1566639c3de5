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
    /// Check only the fleet timeline: every change of the fleet's
    /// configuration in a shared store, replayed from the first. (Without
    /// an incident id, it is checked after the incidents.)
    #[arg(long, conflicts_with = "id")]
    fleet: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let incidents = ctx.reader()?;
    let ids = match (&args.id, args.fleet) {
        (Some(id), _) => vec![id.clone()],
        (None, true) => Vec::new(),
        (None, false) => incidents.ids()?.into_iter().map(String::from).collect(),
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
    if args.id.is_none() {
        clean &= fleet(&incidents, args.json, args.fleet)?;
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Checks the fleet timeline where there is one (or `asked`); whether it
/// is clean.
fn fleet(incidents: &runbox_engine::Incidents, json: bool, asked: bool) -> Result<bool> {
    if !asked && !incidents.config_in_store() {
        return Ok(true);
    }
    let report = incidents.verify_fleet()?;
    if json {
        outln!("{}", serde_json::json!({ "fleet": report }));
        return Ok(report.is_clean());
    }
    let verdict = if report.is_clean() {
        "ok"
    } else {
        "VIOLATIONS"
    };
    outln!(
        "fleet: {verdict} ({})",
        count(report.changes as u64, "configuration change")
    );
    for v in &report.violations {
        outln!("  violation: {v}");
    }
    Ok(report.is_clean())
}
