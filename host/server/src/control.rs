//! The control socket: humans are never locked out by a runner.
//!
//! One process at a time owns a data dir (RocksDB takes a lock). While
//! one does (`run`, `run --all`, `serve`, `mcp`), it listens on
//! `control.sock` in the data dir (owner-only permissions), and the CLI's
//! human decisions (approve, deny, takeover, handback, resolve, retry,
//! skip) go through it: the CLI asks the owner for the statement to sign,
//! signs it locally with the human's key, and hands the signed decision
//! back. The signature is the authority, verified by the engine as
//! always; the socket adds none, so it serves nothing but statements and
//! decisions (a brake's release among them), and engaging a brake, which
//! only ever stops things.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::routing::post;

use crate::agents::{Caller, Power};
use crate::service::Service;

/// The control socket of a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Listens on the data dir's control socket until the process exits,
/// replacing a socket left by a process that died (this process owns the
/// data dir's lock, so no live one can be listening).
pub async fn listen(data_dir: &Path, service: Arc<Service>) -> std::io::Result<()> {
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let local = Caller {
        name: runbox_core::ident::Name::new("control").expect("a valid name"),
        can: Power::Read,
    };
    let app = Router::new()
        .route(
            "/v1/incidents/{id}/statements",
            post(crate::http::statement),
        )
        .route("/v1/incidents/{id}/decisions", post(crate::http::decide))
        .route("/v1/brakes", post(crate::http::engage_brake))
        .route("/v1/brakes/statements", post(crate::http::brake_statement))
        .route("/v1/brakes/release", post(crate::http::release_brake))
        .layer(axum::Extension(local))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::MAX_BODY_BYTES,
        ))
        .with_state(service);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("control socket stopped: {e}");
        }
    });
    Ok(())
}
