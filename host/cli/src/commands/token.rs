use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the mutation token: printed once, only its hash is stored.
    Init {
        /// Replace an existing token.
        #[arg(long)]
        rotate: bool,
    },
}

pub(crate) fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    let Command::Init { rotate } = command;
    let token = ctx.engine()?.init_token(rotate)?;
    eprintln!("runbox: mutation token created; it is shown once and only its hash is stored:");
    outln!("{token}");
    Ok(ExitCode::SUCCESS)
}
