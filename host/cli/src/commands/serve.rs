use anyhow::{Context as _, Result, bail};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use super::serving::Serving;
use crate::context::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to listen; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7311")]
    listen: SocketAddr,
    #[command(flatten)]
    serving: Serving,
    /// Serve HTTPS with this certificate chain (PEM, leaf first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS (behind a TLS proxy).
    #[arg(long)]
    insecure_listen: bool,
    /// A name clients reach this server by (`runbox.example.com`, or with
    /// `:PORT`): `/mcp` accepts it as `Host` besides loopback's, which it
    /// refuses otherwise (DNS-rebinding protection). Repeatable; with
    /// --tls-cert the certificate's DNS names are allowed already.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Where browsers reach the web console (`https://runbox.example.com`),
    /// the origin passkeys are made for. Default: `http://localhost:PORT`
    /// on a loopback address, `https://NAME:PORT` with the certificate's
    /// first DNS name.
    #[arg(long, value_name = "URL")]
    console_origin: Option<String>,
}

/// The console's origin: `--console-origin`, or what the listener implies.
fn console_origin(
    given: Option<&str>,
    bound: SocketAddr,
    tls: Option<&runbox_server::http::Tls>,
) -> Option<String> {
    if let Some(origin) = given {
        return Some(origin.to_string());
    }
    let port = bound.port();
    match tls {
        Some(tls) => tls
            .dns_names()
            .first()
            .map(|name| format!("https://{name}:{port}")),
        None if bound.ip().is_loopback() => Some(format!("http://localhost:{port}")),
        None => None,
    }
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
    for name in &args.allowed_hosts {
        runbox_server::http::Exposure::check_host(name)?;
    }
    let started = args.serving.start(ctx, true).await?;
    let service = started.service;
    // A broken routes.toml stops the start, naming file, entry and field:
    // better than a 503 for the first alert of an outage.
    service.check_routes()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bound = listener.local_addr()?;
    eprintln!("listening on {scheme}://{bound}");
    if let Some(origin) = console_origin(args.console_origin.as_deref(), bound, tls.as_ref()) {
        let party = runbox_trust::RelyingParty::new(&origin)
            .with_context(|| "--console-origin".to_string())?;
        // Not eprintln!: a closed stderr must not stop the server.
        let _ = writeln!(std::io::stderr(), "console on {}ui", party.origin());
        service.console().set_party(party);
    }
    started.metrics.start(service.ops()).await?;
    runbox_server::http::serve(listener, service, tls, &args.allowed_hosts).await?;
    Ok(ExitCode::SUCCESS)
}
