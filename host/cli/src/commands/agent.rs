//! `runbox agent`: the agents of the HTTP API and MCP, and their tokens.
//! While another process (`serve`, `run`, `mcp`) owns the data dir, adding
//! and removing go through its control socket, so revoking an agent never
//! needs the server stopped.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use runbox_server::{Agents, NewAgent, Power};

use super::control::{self, Writer};
use crate::context::Context;
use crate::output::outln;
use runbox_server::client::route;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Add an agent: prints its bearer token once; only its hash is kept.
    /// Works while a server owns the data dir (through its control socket).
    Add {
        /// Its name: it acts as `agent:NAME`.
        name: String,
        /// read: see; run: also open incidents and run non-mutating steps;
        /// mutate: also run mutating steps; alert: post Alertmanager
        /// webhooks to `serve`'s /v1/alerts, and nothing else.
        #[arg(long)]
        can: Power,
    },
    /// The agents and what each may do.
    List,
    /// Remove an agent: its token stops working at once, also while a
    /// server owns the data dir (through its control socket).
    Remove {
        /// Its name.
        name: String,
    },
}

pub(crate) async fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    match command {
        Command::Add { name, can } => {
            let token = match control::here_or_owner(ctx.store(), ctx.data_dir())? {
                Writer::Here(store) => Agents::new(store).add(&name, can)?,
                Writer::Owner(owner) => {
                    let args = runbox_server::NewAgentArgs {
                        name: name.clone(),
                        can,
                    };
                    let added: NewAgent =
                        owner.post(&route::at(route::ADMIN_AGENTS), &args).await?;
                    added.token
                }
            };
            eprintln!("runbox: agent:{name} may {can}; its token is shown once:");
            outln!("{token}");
        }
        Command::List => {
            // Read-only: lists beside a running server too.
            for a in Agents::new(ctx.read_store()?).list()? {
                outln!("agent:{:<24} {}", a.name, a.can);
            }
        }
        Command::Remove { name } => {
            match control::here_or_owner(ctx.store(), ctx.data_dir())? {
                Writer::Here(store) => Agents::new(store).remove(&name)?,
                Writer::Owner(owner) => {
                    let args = runbox_server::NameArgs { name: name.clone() };
                    let _: serde_json::Value = owner
                        .post(&route::at(route::ADMIN_AGENTS_REMOVE), &args)
                        .await?;
                }
            }
            outln!("removed agent:{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
