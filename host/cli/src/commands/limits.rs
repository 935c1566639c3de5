//! `runbox limits`: the rate-limit counts across incidents, each with its
//! uses still in the window.

use std::process::ExitCode;

use anyhow::Result;
use runbox_core::time::format_ms;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// One JSON object per count: its key and its uses.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let counts = ctx.reader()?.limit_counts()?;
    for (key, uses) in &counts {
        if args.json {
            outln!("{}", serde_json::json!({ "count": key, "uses": uses.uses }));
            continue;
        }
        outln!("{key}: {} use(s)", uses.uses.len());
        for u in &uses.uses {
            outln!(
                "  {} {} {}#{} `{}`",
                format_ms(u.at_ms),
                u.incident,
                u.step,
                u.attempt,
                u.tool
            );
        }
    }
    if counts.is_empty() && !args.json {
        outln!("nothing counted yet");
    }
    Ok(ExitCode::SUCCESS)
}
