use std::process::ExitCode;

use anyhow::Result;
use runbox_core::ident::Name;
use runbox_server::mcp::Mcp;
use runbox_server::{Caller, Power};

use super::serving::Serving;
use crate::context::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The agent's name: it acts as `agent:NAME` on the timeline.
    #[arg(long, default_value = "mcp")]
    agent: String,
    #[command(flatten)]
    serving: Serving,
}

pub(crate) async fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let name = Name::new(args.agent)?;
    let read_only = args.serving.read_only;
    let started = args.serving.start(ctx, false).await?;
    let (service, has_token) = (started.service, started.has_token);
    started.metrics.start(service.ops()).await?;
    // What the agent may do follows from how the server was started: with
    // --read-only it runs diagnosis steps and the service refuses any step
    // that mutates or writes KV.
    let can = if has_token && !read_only {
        Power::Mutate
    } else {
        Power::Run
    };
    Mcp::new(service, Some(Caller::agent(name, can)))
        .serve_stdio()
        .await?;
    Ok(ExitCode::SUCCESS)
}
