use std::process::ExitCode;

use anyhow::Result;
use runbox_core::ident::Name;
use runbox_server::forward::{Forwarded, forward_stdio};
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
    let token = args.serving.token()?;
    let started = match args.serving.start(ctx, false).await {
        Ok(started) => started,
        Err(e) if super::control::owned_elsewhere(&e, ctx.data_dir()) => {
            // Another process owns the data dir: be its MCP client's pipe.
            eprintln!(
                "runbox mcp: {} is in use; forwarding to the process that owns it (its control socket)",
                ctx.data_dir().display()
            );
            let who = Forwarded {
                agent: name.to_string(),
                token: token.filter(|_| !read_only),
                read_only,
            };
            forward_stdio(ctx.data_dir().to_path_buf(), who).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
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
