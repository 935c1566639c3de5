use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use runbox_trust::AllowedSigners;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Register a human's SSH public key in the data dir's allowed_signers.
    Add {
        /// The human's name (what `--as` names).
        name: String,
        /// Their public key file (`~/.ssh/id_ed25519.pub`, an `sk-` key, …).
        pubkey: PathBuf,
    },
    /// The humans who may decide, with their key fingerprints.
    List,
    /// Remove every key of a human: their decisions stop counting, and
    /// `verify` reports the ones already made as unverifiable.
    Remove {
        /// The human's name.
        name: String,
    },
}

pub(crate) fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    let path = ctx.signers_path();
    match command {
        Command::Add { name, pubkey } => {
            let text = std::fs::read_to_string(&pubkey)
                .with_context(|| format!("cannot read {}", pubkey.display()))?;
            let entry = AllowedSigners::add(&path, &name, &text)?;
            outln!(
                "human:{name} may decide with key {} ({})",
                entry.fingerprint,
                entry.key.algorithm()
            );
        }
        Command::List => {
            for e in AllowedSigners::read(&path)?.entries() {
                outln!(
                    "{:<20} {} {}",
                    e.names.join(","),
                    e.fingerprint,
                    e.key.algorithm()
                );
            }
        }
        Command::Remove { name } => {
            let removed = AllowedSigners::remove(&path, &name)?;
            if removed == 0 {
                anyhow::bail!("no key of `{name}` in {}", path.display());
            }
            outln!("removed {removed} key(s) of human:{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
