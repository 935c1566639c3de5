use std::process::ExitCode;

use anyhow::Result;
use runbox_trust::Action;

use super::sign::{Signing, Wanted};
use crate::context::Context;
use crate::output::outln;

/// `approve` and `deny` take the same arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    id: String,
    /// The step awaiting approval.
    step: String,
    #[command(flatten)]
    signing: Signing,
}

pub(crate) async fn run(args: Args, ctx: &Context, approve: bool) -> Result<ExitCode> {
    let action = if approve {
        Action::Approve
    } else {
        Action::Deny
    };
    let wanted = Wanted {
        action,
        incident: &args.id,
        step: Some(&args.step),
        outcome: None,
    };
    if let Some(code) = args.signing.decide(ctx, &wanted).await? {
        return Ok(code);
    }
    let name = args.signing.name();
    if approve {
        outln!(
            "{}: approved `{}` as human:{name} (signed)",
            args.id,
            args.step
        );
    } else {
        outln!(
            "{}: denied `{}`; escalated to human:{name} (signed)",
            args.id,
            args.step
        );
    }
    Ok(ExitCode::SUCCESS)
}
