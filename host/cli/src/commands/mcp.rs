use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use runbox_core::ident::Name;
use runbox_server::mcp::Mcp;
use runbox_server::{Caller, Power, Service, ServiceConfig};

use super::read_token;
use crate::context::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The agent's name: it acts as `agent:NAME` on the timeline.
    #[arg(long, default_value = "mcp")]
    agent: String,
    /// A directory of runbooks the agent may open (repeatable).
    #[arg(long = "runbooks")]
    runbooks: Vec<PathBuf>,
    /// Serve diagnosis only: no step that mutates or writes KV runs.
    #[arg(long)]
    read_only: bool,
    /// File holding the mutation token (else RUNBOX_MUTATION_TOKEN); without
    /// it no mutating step runs. It is never a tool argument or result.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

pub(crate) async fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let token = read_token(args.token_file.as_deref())?;
    // What the agent may do follows from how the server was started: with
    // --read-only it runs diagnosis steps and the service refuses any step
    // that mutates or writes KV.
    let can = match (&token, args.read_only) {
        (Some(_), false) => Power::Mutate,
        _ => Power::Run,
    };
    let caller = Caller {
        name: Name::new(args.agent)?,
        can,
    };
    let engine = Arc::new(ctx.engine()?);
    super::control::listen(ctx, &engine).await;
    let service = Arc::new(Service::new(
        engine,
        ServiceConfig {
            runbooks: args.runbooks,
            mutation_token: token,
            read_only: args.read_only,
            ..ServiceConfig::default()
        },
    ));
    Mcp::new(service, Some(caller)).serve_stdio().await?;
    Ok(ExitCode::SUCCESS)
}
