use std::process::ExitCode;

use anyhow::Result;
use runbox_trust::Action;

use super::Settle;
use super::sign::Wanted;
use crate::context::Context;
use crate::output::outln;

pub(crate) type Args = Settle;

pub(crate) async fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let wanted = Wanted {
        action: Action::Retry,
        incident: &args.id,
        step: Some(&args.step),
        outcome: None,
    };
    if let Some(code) = args.signing.decide(ctx, &wanted).await? {
        return Ok(code);
    }
    outln!("{}: `{}` will run again", args.id, args.step);
    Ok(ExitCode::SUCCESS)
}
