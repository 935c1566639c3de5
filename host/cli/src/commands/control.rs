//! The client side of the control socket (see `runbox_server::control`):
//! a human's decision, a brake, or the admin's edit of agents and humans
//! reaches the process that owns the data dir.

use std::path::Path;

use anyhow::{Result, anyhow};
use runbox_store::StoreError;

/// Listens on the data dir's control socket for as long as this process
/// owns it, so humans can decide while it runs. A socket that cannot be
/// made (a read-only data dir) is a warning: the run goes on.
pub(crate) async fn listen(
    ctx: &crate::context::Context,
    service: &std::sync::Arc<runbox_server::Service>,
) {
    // On a shared store nobody owns the data dir: decisions go to the store.
    if ctx.shared_store() {
        return;
    }
    let readiness = &service.ops().readiness;
    match runbox_server::control::listen(ctx.data_dir(), service.clone()).await {
        Ok(()) => readiness.control_socket(Ok(runbox_server::control::socket_path(ctx.data_dir()))),
        Err(e) => {
            eprintln!(
                "runbox: no control socket in {} ({e}): humans cannot decide until this process exits",
                ctx.data_dir().display()
            );
            readiness.control_socket(Err(format!("not bound: {e}")));
        }
    }
}

/// Whether `err` says another process owns the data dir and that process
/// listens on its control socket.
pub(crate) fn owned_elsewhere(err: &anyhow::Error, data_dir: &Path) -> bool {
    let locked = err.chain().any(|c| {
        matches!(
            c.downcast_ref::<StoreError>(),
            Some(StoreError::Locked { .. })
        )
    });
    locked && runbox_server::control::socket_path(data_dir).exists()
}

/// Where a write goes: here, when this process could open the data dir
/// (`opened`), or to the process that owns it, through its control
/// socket. Any other failure to open is the command's error.
pub(crate) enum Writer<T> {
    /// This process holds the data dir.
    Here(T),
    /// Another process does; it listens on the control socket.
    Owner(Owner),
}

/// [`Writer`] for `opened`, this process's attempt to open `data_dir`.
pub(crate) fn here_or_owner<T>(opened: Result<T>, data_dir: &Path) -> Result<Writer<T>> {
    match opened {
        Ok(here) => Ok(Writer::Here(here)),
        Err(e) if owned_elsewhere(&e, data_dir) => Ok(Writer::Owner(Owner::socket(data_dir))),
        Err(e) => Err(e),
    }
}

/// The process that owns the data dir, where a human decision goes: its
/// control socket, or a `runbox serve` (`--server`).
pub(crate) type Owner = runbox_server::client::Client;

/// The `runbox serve` at `url` (`http://HOST:PORT`), with the agent's
/// bearer token from RUNBOX_AGENT_TOKEN.
pub(crate) fn server(url: &str) -> Result<Owner> {
    let authority = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| {
            anyhow!("--server {url:?}: expected http://HOST:PORT (runbox speaks plain HTTP; reach a TLS endpoint through a local proxy)")
        })?;
    let token = std::env::var("RUNBOX_AGENT_TOKEN")
        .map_err(|_| anyhow!("--server needs an agent's bearer token in RUNBOX_AGENT_TOKEN (runbox agent add NAME --can read)"))?;
    Ok(Owner::Server {
        authority: authority.to_string(),
        token,
    })
}
