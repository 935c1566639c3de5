//! `runbox limits`: the rate-limit counts across incidents, each with its
//! uses still in the window; `runbox limits show` and `runbox limits set`:
//! the fleet-wide limits themselves (the data dir's limits.toml, or on a
//! store runners share, the store's, changed by a human's signature).

use std::process::ExitCode;

use anyhow::Result;
use runbox_core::fleet_config::ConfigKind;
use runbox_core::time::format_ms;

use super::config_file::{self, FileCommand};
use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    /// `show` the fleet-wide limits, or `set FILE` them (limits.toml's
    /// format; on a store runners share, a human's signed change).
    #[command(subcommand)]
    command: Option<FileCommand>,
    /// One JSON object per count: its key and its uses.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    match args.command {
        None => counts(args.json, ctx),
        Some(command) => config_file::run(ConfigKind::Limits, command, ctx),
    }
}

fn counts(json: bool, ctx: &Context) -> Result<ExitCode> {
    let counts = ctx.reader()?.limit_counts()?;
    for (key, uses) in &counts {
        if json {
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
    if counts.is_empty() && !json {
        outln!("nothing counted yet");
    }
    Ok(ExitCode::SUCCESS)
}
