use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use runbox_server::{Service, ServiceConfig};

use super::read_token;
use crate::context::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to listen; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7311")]
    listen: SocketAddr,
    /// A directory of runbooks agents may open (repeatable).
    #[arg(long = "runbooks")]
    runbooks: Vec<PathBuf>,
    /// Serve diagnosis only: no step that mutates or writes KV runs.
    #[arg(long)]
    read_only: bool,
    /// File holding the mutation token (else RUNBOX_MUTATION_TOKEN); without
    /// it no mutating step runs.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS (behind a TLS proxy).
    #[arg(long)]
    insecure_listen: bool,
}

pub(crate) async fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(runbox_server::http::Tls::from_pem_files(cert, key)?),
        _ => None,
    };
    if !args.listen.ip().is_loopback() && tls.is_none() && !args.insecure_listen {
        bail!(
            "{} is not a loopback address: agents' bearer tokens would cross the network in clear. Pass --tls-cert and --tls-key, or --insecure-listen behind a TLS-terminating proxy",
            args.listen
        );
    }
    let engine = Arc::new(ctx.engine()?);
    super::control::listen(ctx, &engine).await;
    let service = Arc::new(Service::new(
        engine,
        ServiceConfig {
            runbooks: args.runbooks,
            mutation_token: read_token(args.token_file.as_deref())?,
            read_only: args.read_only,
            ..ServiceConfig::default()
        },
    ));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("listening on {scheme}://{}", listener.local_addr()?);
    runbox_server::http::serve(listener, service, tls).await?;
    Ok(ExitCode::SUCCESS)
}
