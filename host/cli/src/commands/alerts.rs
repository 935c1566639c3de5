//! `runbox alerts`: the alert groups no route took (or whose route could
//! not open an incident), as `POST /v1/alerts` recorded them. Read-only:
//! it lists beside a running server.

use std::process::ExitCode;

use anyhow::Result;
use runbox_core::inert::{SHOWN_CHARS, shown};
use runbox_core::time::format_ms;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON (every field, whole).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
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
