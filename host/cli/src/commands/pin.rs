use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::output::outln;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when every step is pinned to its module (after writing, \
or already with --check), 1 when --check finds a missing or stale pin, 2 on errors."
)]
pub(crate) struct Args {
    /// The runbook to pin (rewritten in place, comments and layout kept).
    runbook: PathBuf,
    /// Write nothing; exit 1 when a pin is missing or does not match.
    #[arg(long)]
    check: bool,
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let changes = runbox_review::pin(&args.runbook, !args.check)?;
    for c in &changes {
        let what = match (&c.old, c.unchanged(), args.check) {
            (_, true, _) => "pinned    ",
            (None, false, true) => "unpinned  ",
            (Some(_), false, true) => "stale pin ",
            (None, false, false) => "pin       ",
            (Some(_), false, false) => "repin     ",
        };
        outln!("{what} {:<20} sha256 {}", c.step, c.new);
        if let (Some(old), false) = (&c.old, c.unchanged()) {
            outln!("           {:<20} was    {old}", "");
        }
    }
    let stale = changes.iter().any(|c| !c.unchanged());
    Ok(if args.check && stale {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
