use std::process::ExitCode;

use anyhow::Result;
use runbox_trust::Action;

use super::Actor;
use super::sign::Wanted;
use crate::context::Context;
use crate::output::outln;

pub(crate) type Args = Actor;

pub(crate) async fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let wanted = Wanted {
        action: Action::Takeover,
        incident: &args.id,
        step: None,
        outcome: None,
    };
    if let Some(code) = args.signing.decide(ctx, &wanted).await? {
        return Ok(code);
    }
    outln!("{}: now owned by human:{}", args.id, args.signing.name());
    Ok(ExitCode::SUCCESS)
}
