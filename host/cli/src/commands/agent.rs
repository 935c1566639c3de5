use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use runbox_server::{Agents, Power};

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Add an agent: prints its bearer token once; only its hash is kept.
    Add {
        /// Its name: it acts as `agent:NAME`.
        name: String,
        /// read: see; run: also open incidents and run non-mutating steps;
        /// mutate: also run mutating steps.
        #[arg(long)]
        can: Power,
    },
    /// The agents and what each may do.
    List,
    /// Remove an agent: its token stops working at once.
    Remove {
        /// Its name.
        name: String,
    },
}

pub(crate) fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    let agents = Agents::new(ctx.store()?);
    match command {
        Command::Add { name, can } => {
            let token = agents.add(&name, can)?;
            eprintln!("runbox: agent:{name} may {can}; its token is shown once:");
            outln!("{token}");
        }
        Command::List => {
            for a in agents.list()? {
                outln!("agent:{:<24} {}", a.name, a.can);
            }
        }
        Command::Remove { name } => {
            agents.remove(&name)?;
            outln!("removed agent:{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
