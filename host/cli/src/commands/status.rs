use std::process::ExitCode;

use anyhow::Result;
use runbox_core::inert::{SHOWN_CHARS, shown};
use runbox_engine::IncidentView;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let view = ctx.reader()?.view(&args.id)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print_status(&view)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(v: &IncidentView) -> Result<()> {
    outln!("incident   {}", v.id);
    outln!("runbook    {}", v.runbook);
    if v.dry_run {
        outln!(
            "status     {} (dry run: mutating tools intercepted, never run)",
            v.status
        );
    } else {
        outln!("status     {}", v.status);
    }
    outln!("owner      {}", v.owner);
    // A resolved or failed incident has no next step: say so, not `step -`.
    match &v.checkpoint.step {
        Some(step) => outln!(
            "checkpoint step {step} attempt {} (version {})",
            v.checkpoint.attempt,
            v.checkpoint.version
        ),
        None => outln!(
            "checkpoint no step left: the incident is {} (version {})",
            v.status,
            v.checkpoint.version
        ),
    }
    if let Some(step) = &v.pending_approval {
        outln!(
            "approval   `{step}` attempt {} awaits a named human",
            v.checkpoint.attempt
        );
    }
    if let Some(f) = &v.in_doubt {
        outln!(
            "in doubt   `{}` attempt {} (started mutating `{}`)",
            f.step,
            f.attempt,
            f.tool
        );
    }
    if let Some(why) = &v.why {
        // Often an agent's or a step's words: inert, in this labelled field.
        outln!("why        {}", shown(why, SHOWN_CHARS));
    }
    if let Some(scope) = &v.braked_by {
        outln!(
            "braked     escalated under brake `{scope}`: `runbox brake release {scope} --as NAME --key KEY` hands it back"
        );
    }
    for b in &v.brakes {
        outln!("brake      {} (fleet-wide)", b.brake.describe());
    }
    for n in &v.undelivered {
        outln!("notify     {}", super::notify::line(n));
    }
    if let Some(a) = &v.alert {
        // The group's state: a resolved alert is news, not a resolution.
        outln!(
            "alert      {} at {} ({} firing, {} resolved; {} from route `{}`){}",
            a.status,
            runbox_core::time::format_ms(a.at_ms),
            a.firing,
            a.resolved,
            runbox_core::text::count(a.notifications, "notification"),
            a.route,
            match a.status {
                runbox_core::alert::AlertStatus::Resolved => {
                    "; the incident stays open until its runbook or a human resolves it"
                }
                runbox_core::alert::AlertStatus::Firing => "",
            }
        );
    }
    if let Some(r) = &v.last_step {
        outln!(
            "last step  {}#{} {} -> {}",
            r.step,
            r.attempt,
            r.outcome.as_str(),
            r.next.as_deref().unwrap_or("-")
        );
        super::timeline::print_record_details(r, "           ", false)?;
    }
    Ok(())
}
