use std::process::ExitCode;

use anyhow::Result;
use runbox_core::attempt::Outcome;
use runbox_trust::Action;

use super::sign::{Signing, Wanted};
use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
    /// The step.
    #[arg(long)]
    step: String,
    /// ok, retry, escalate or fail.
    #[arg(long)]
    outcome: Outcome,
    #[command(flatten)]
    signing: Signing,
}

pub(crate) async fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let wanted = Wanted {
        action: Action::Resolve,
        incident: &args.id,
        step: Some(&args.step),
        outcome: Some(args.outcome),
    };
    if let Some(code) = args.signing.decide(ctx, &wanted).await? {
        return Ok(code);
    }
    outln!(
        "{}: `{}` settled as {} by human:{}",
        args.id,
        args.step,
        args.outcome,
        args.signing.name()
    );
    Ok(ExitCode::SUCCESS)
}
