//! `runbox alerts`: the alert groups no route took (or whose route could
//! not open an incident), as `POST /v1/alerts` recorded them. Read-only:
//! it lists beside a running server. `runbox alerts routes show|set`: the
//! routes themselves.

use std::process::ExitCode;

use anyhow::Result;
use runbox_core::inert::{SHOWN_CHARS, shown};
use runbox_core::time::format_ms;

use super::config_file::{self, FileCommand};
use crate::context::Context;
use crate::output::outln;
use runbox_core::fleet_config::ConfigKind;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Print JSON (every field, whole).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Which alert group opens which runbook: `show` the routes, or `set
    /// FILE` them (routes.toml's format; on a store runners share, a
    /// human's signed change every runner reads at the next alert).
    Routes {
        #[command(subcommand)]
        command: FileCommand,
    },
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    if let Some(Command::Routes { command }) = args.command {
        return config_file::run(ConfigKind::Routes, command, ctx);
    }
    let alerts = ctx.reader()?.unrouted_alerts()?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&alerts)?);
        return Ok(ExitCode::SUCCESS);
    }
    if alerts.is_empty() {
        outln!("no unrouted alerts");
    }
    // Every text here came from Alertmanager: shown inert and capped.
    for a in &alerts {
        let labels: Vec<String> = a
            .common_labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        outln!(
            "{} {} {} via {}: {}",
            format_ms(a.received_ms),
            a.status,
            runbox_core::text::count(a.alerts, "alert"),
            shown(&a.receiver, 64),
            shown(&labels.join(", "), SHOWN_CHARS)
        );
        outln!("    group  {}", shown(&a.group_key, SHOWN_CHARS));
        outln!("    why    {}", shown(&a.reason, SHOWN_CHARS));
    }
    Ok(ExitCode::SUCCESS)
}
