//! What `serve` and `mcp` share: the runbooks agents may open, read-only
//! serving, the mutation token, and starting the service (with the data
//! dir's control socket, so humans can decide while it runs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use runbox_server::health::Ops;
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
    #[command(flatten)]
    pub(crate) metrics: MetricsListen,
}

/// `--metrics-listen`: `/metrics`, `/healthz` and `/readyz` on a listener
/// of their own.
#[derive(Debug, clap::Args)]
pub(crate) struct MetricsListen {
    /// Serve /metrics, /healthz and /readyz on ADDR (port 0 picks a free
    /// one): Prometheus scrapes it without a token.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

impl MetricsListen {
    /// Whether a listener was asked for.
    pub(crate) fn asked(&self) -> bool {
        self.metrics_listen.is_some()
    }

    /// Binds the listener, if one was asked for, says where on stderr, and
    /// serves `ops` on it until the process exits.
    pub(crate) async fn start(&self, ops: &Ops) -> Result<()> {
        let Some(addr) = self.metrics_listen else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}"))?;
        eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
        let ops = ops.clone();
        tokio::spawn(async move {
            if let Err(e) = runbox_server::health::serve(listener, ops).await {
                tracing::warn!("the metrics listener stopped: {e}");
            }
        });
        Ok(())
    }
}

/// A started service, and the metrics listener its command starts once it
/// has said where it listens.
pub(crate) struct Started {
    pub(crate) service: Arc<Service>,
    /// Whether it holds the mutation token.
    pub(crate) has_token: bool,
    pub(crate) metrics: MetricsListen,
}

/// Exports this process's metrics at `service`'s `/metrics`.
pub(crate) fn with_metrics(
    service: Service,
    engine: &Arc<runbox_engine::Engine>,
) -> Result<Service> {
    let exposition = runbox_server::metrics::Exposition::new(engine.clone())?;
    Ok(service.with_metrics(exposition))
}

impl Serving {
    /// The mutation token it was given (`--token-file`, else
    /// RUNBOX_MUTATION_TOKEN), if any.
    pub(crate) fn token(&self) -> Result<Option<String>> {
        read_token(self.token_file.as_deref())
    }

    /// The service over this data dir's engine, with metrics if `metrics`
    /// or `--metrics-listen` asks for them.
    pub(crate) async fn start(self, ctx: &Context, metrics: bool) -> Result<Started> {
        let token = read_token(self.token_file.as_deref())?;
        let has_token = token.is_some();
        let engine = Arc::new(ctx.engine()?);
        let notifier = runbox_notify::Notifier::new(engine.clone(), ctx.data_dir())?;
        let mut service = Service::new(
            engine.clone(),
            ServiceConfig {
                runbooks: self.runbooks,
                mutation_token: token,
                read_only: self.read_only,
                routes: Some(ctx.data_dir().join(runbox_core::route::ROUTES_FILE)),
                ..ServiceConfig::default()
            },
        );
        // On a shared store sinks may be added while this runs.
        if notifier.has_sinks() || ctx.shared_store() {
            service = service.with_notifier(notifier);
        }
        if metrics || self.metrics.asked() {
            service = with_metrics(service, &engine)?;
        }
        let service = Arc::new(service);
        super::control::listen(ctx, &service).await;
        Ok(Started {
            service,
            has_token,
            metrics: self.metrics,
        })
    }
}
