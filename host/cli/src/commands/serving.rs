//! What `serve` and `mcp` share: the runbooks agents may open, read-only
//! serving, the mutation token, and starting the service (with the data
//! dir's control socket, so humans can decide while it runs).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use runbox_server::{Service, ServiceConfig};

use super::read_token;
use crate::context::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct Serving {
    /// A directory of runbooks agents may open (repeatable).
    #[arg(long = "runbooks")]
    runbooks: Vec<PathBuf>,
    /// Serve diagnosis only: no step that mutates or writes KV (even the
    /// incident's own step KV) runs.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// File holding the mutation token (else RUNBOX_MUTATION_TOKEN); without
    /// it no mutating step runs. It is never a tool argument or result.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Serving {
    /// The service over this data dir's engine, and whether it holds the
    /// mutation token.
    pub(crate) async fn start(self, ctx: &Context) -> Result<(Arc<Service>, bool)> {
        let token = read_token(self.token_file.as_deref())?;
        let has_token = token.is_some();
        let engine = Arc::new(ctx.engine()?);
        let notifier = runbox_notify::Notifier::new(engine.clone(), ctx.data_dir())?;
        let mut service = Service::new(
            engine,
            ServiceConfig {
                runbooks: self.runbooks,
                mutation_token: token,
                read_only: self.read_only,
                routes: Some(ctx.data_dir().join(runbox_core::route::ROUTES_FILE)),
                ..ServiceConfig::default()
            },
        );
        if notifier.has_sinks() {
            service = service.with_notifier(notifier);
        }
        let service = Arc::new(service);
        super::control::listen(ctx, &service).await;
        Ok((service, has_token))
    }
}
