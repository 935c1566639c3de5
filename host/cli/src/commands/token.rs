use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use runbox_engine::TokenAuth;

use super::read_token;
use super::sign::Signing;
use crate::context::Context;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the mutation token: printed once, only its hash is stored.
    /// Replacing it needs the current token or a human's signature; so does
    /// creating it once humans are registered.
    Init {
        /// Replace an existing token.
        #[arg(long)]
        rotate: bool,
        /// File holding the current token (else RUNBOX_MUTATION_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A human authorizing it instead: their name in allowed_signers.
        #[arg(long = "as")]
        actor: Option<String>,
        /// That human's SSH key (`ssh-keygen -Y sign`).
        #[arg(long, env = "RUNBOX_SIGNING_KEY", requires = "actor")]
        key: Option<PathBuf>,
        /// A `rotate-token` statement signed elsewhere (with --signature).
        #[arg(long, requires_all = ["signature", "actor"])]
        statement: Option<PathBuf>,
        /// Its signature.
        #[arg(long, requires = "statement")]
        signature: Option<PathBuf>,
    },
}

pub(crate) fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    let Command::Init {
        rotate,
        token_file,
        actor,
        key,
        statement,
        signature,
    } = command;
    let current = read_token(token_file.as_deref())?;
    let signing = actor.map(|a| Signing::for_token(a, key, statement, signature));
    let engine = ctx.engine()?;
    let decision = match &signing {
        Some(s) => {
            match s.token_decision(engine.fleet().token_subject()?, &engine.deployment_id()?)? {
                Some(d) => Some(d),
                None => return Ok(ExitCode::SUCCESS),
            }
        }
        None => None,
    };
    let auth = match (&decision, &current) {
        (Some(d), _) => TokenAuth::Human(d),
        (None, Some(t)) if rotate => TokenAuth::Current(t),
        _ => TokenAuth::None,
    };
    let token = engine.fleet().init_token(rotate, auth)?;
    eprintln!("runbox: mutation token created; it is shown once and only its hash is stored:");
    outln!("{token}");
    Ok(ExitCode::SUCCESS)
}
