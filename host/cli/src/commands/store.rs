//! `runbox store copy FROM TO`: move incidents between the embedded store
//! and etcd (either way), then check the copy record by record.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use runbox_engine::deployment::is_identity_key;
use runbox_store::copy::copy_store;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Copy every incident (records and step KV), the meta plane (the
    /// mutation token's hash, agents) and the shared plane (shared KV,
    /// rate-limit counts, brakes) from one store to another, then compare
    /// them. FROM and TO are data dirs or `etcd://HOST:PORT[,…][/PREFIX]`.
    /// Stop every runner on both first; incidents TO has already are kept.
    ///
    /// TO stays a deployment of its own (signed decisions name the
    /// deployment they are for, so FROM's are not accepted there) unless
    /// --with-identity makes it FROM's: for moving a deployment, not for
    /// seeding one from another. Either way `verify` accepts the decisions
    /// the copied incidents carry.
    Copy {
        /// Where the incidents are.
        from: String,
        /// Where they go.
        to: String,
        /// Carry FROM's deployment identity to TO (a move).
        #[arg(long)]
        with_identity: bool,
    },
}

pub(crate) fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    let Command::Copy {
        from,
        to,
        with_identity,
    } = command;
    if from == to {
        bail!("FROM and TO are the same store");
    }
    let source = ctx.store_at(&from)?;
    let target = ctx.store_at(&to)?;
    let copied = copy_store(&*source, &*target, &is_identity_key)?;
    runbox_engine::deployment::carry_identity(&*source, &*target, with_identity)?;
    outln!(
        "copied {} incident(s), the meta plane and {} shared value(s) from {from} to {to}; each incident read back identical",
        copied.incidents,
        copied.shared
    );
    if !copied.kept.is_empty() {
        let kept: Vec<String> = copied.kept.iter().map(ToString::to_string).collect();
        outln!(
            "kept {} incident(s) {to} had already: {}",
            kept.len(),
            kept.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
