use std::process::ExitCode;

use std::collections::BTreeMap;

use anyhow::Result;
use runbox_core::records::StepRecord;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
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
        outln!("{}", event.line());
        let key = event.step.clone().zip(event.attempt);
        let record = key
            .filter(|_| event.kind.commits_record())
            .and_then(|k| records.get(&k));
        if let Some(r) = record {
            outln!("      -> {}", r.next.as_deref().unwrap_or("-"));
            print_record_details(r, "      ")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A step record's output or reason, error and log lines, indented.
pub(crate) fn print_record_details(r: &StepRecord, indent: &str) -> Result<()> {
    if let Some(output) = &r.output {
        outln!("{indent}output {output}");
    }
    if let Some(reason) = &r.reason {
        outln!("{indent}reason {reason}");
    }
    if let Some(error) = &r.error {
        outln!("{indent}error  {error}");
    }
    for log in &r.logs {
        // Quoted: a step's log line cannot forge a line of this output.
        outln!("{indent}log    {} {:?}", log.level, log.message);
    }
    Ok(())
}
