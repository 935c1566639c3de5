use std::process::ExitCode;

use std::collections::BTreeMap;

use anyhow::Result;
use runbox_core::inert::{SHOWN_CHARS, inert, shown};
use runbox_core::records::StepRecord;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    #[arg(required_unless_present = "fleet")]
    id: Option<String>,
    /// The fleet timeline instead: every change of the fleet's
    /// configuration in a shared store (its humans, its limits), by whom.
    #[arg(long, conflicts_with_all = ["id", "verbose"])]
    fleet: bool,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
    /// Under each committed step, its output or reason, where the incident
    /// went next, and its log lines.
    #[arg(short, long)]
    verbose: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let incidents = ctx.reader()?;
    let Some(id) = args.id else {
        return fleet(&incidents, args.json);
    };
    let args = Incident {
        id,
        json: args.json,
        verbose: args.verbose,
    };
    let records: BTreeMap<(String, u32), StepRecord> = if args.verbose {
        let all = incidents.step_records(&args.id)?;
        all.into_iter()
            .map(|r| ((r.step.clone(), r.attempt), r))
            .collect()
    } else {
        BTreeMap::new()
    };
    for event in incidents.timeline(&args.id)? {
        if args.json {
            outln!("{}", serde_json::to_string(&event)?);
            continue;
        }
        // Every event is one line: its message is inert, and capped unless -v.
        if args.verbose {
            outln!("{}", event.line());
        } else {
            outln!("{}", event.brief());
        }
        let key = event.step.clone().zip(event.attempt);
        let record = key
            .filter(|_| event.kind.commits_record())
            .and_then(|k| records.get(&k));
        if let Some(r) = record {
            outln!("      -> {}", r.next.as_deref().unwrap_or("-"));
            print_record_details(r, "      ", true)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What an incident's timeline is asked for.
struct Incident {
    id: String,
    json: bool,
    verbose: bool,
}

/// The fleet timeline, a line per change (JSON: the whole change).
fn fleet(incidents: &runbox_engine::Incidents, json: bool) -> Result<ExitCode> {
    for change in runbox_incidents::config::changes(&**incidents.store())? {
        if json {
            outln!("{}", serde_json::to_string(&change)?);
            continue;
        }
        outln!(
            "{} #{} {:<8} {} {}",
            runbox_core::time::format_ms(change.at_ms),
            change.seq,
            change.kind.as_str(),
            change.by,
            inert(&shown(&change.summary, SHOWN_CHARS))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A step record's output or reason, error and log lines, indented, each
/// labelled with where it came from and inert (whole when `full`, else
/// capped): nothing a step says can forge a line of this output.
pub(crate) fn print_record_details(r: &StepRecord, indent: &str, full: bool) -> Result<()> {
    let from = format!("from step {}", r.step);
    let text = |t: &str| {
        if full {
            inert(t).into_owned()
        } else {
            shown(t, SHOWN_CHARS)
        }
    };
    if let Some(output) = &r.output {
        outln!("{indent}output {from}: {}", text(&output.to_string()));
    }
    if let Some(reason) = &r.reason {
        outln!("{indent}reason {from}: {}", text(reason));
    }
    if let Some(error) = &r.error {
        outln!("{indent}error  {}", text(&error.to_string()));
    }
    for log in &r.logs {
        outln!(
            "{indent}log    {} {from}: {}",
            log.level,
            text(&log.message)
        );
    }
    Ok(())
}
