//! The control socket: humans are never locked out by a runner.
//!
//! One process at a time owns a data dir (RocksDB takes a lock). While
//! one does (`run`, `run --all`, `serve`, `mcp`), it listens on
//! `control.sock` in the data dir (owner-only permissions), and the CLI's
//! human decisions (approve, deny, takeover, handback, resolve, retry,
//! skip) go through it: the CLI asks the owner for the statement to sign,
//! signs it locally with the human's key, and hands the signed decision
//! back. The signature is the authority, verified by the engine as
//! always; the socket adds none for decisions. It also serves engaging a
//! brake (which only ever stops things) and the admin's registry edits
//! (`runbox agent add/remove`, `runbox human add/remove`): whoever can
//! reach the socket (mode 0600 in an owner-only data dir) is the data
//! dir's Unix user, who could edit the store and `allowed_signers`
//! directly anyway ([`Admin`]). And it serves MCP (`/mcp`) to a `runbox
//! mcp` started beside the owner ([`crate::forward`]), as the agent that
//! process names, with `mutate` only for the holder of the owner's own
//! mutation token.
//!
//! A Unix socket's path is limited to 107 bytes (`sun_path`); a data dir
//! in a Kubernetes `emptyDir` or a CI workspace is often longer. So the
//! socket file stays in the data dir, but both ends name it through a
//! short path, `/proc/self/fd/N/control.sock`, where N is a descriptor of
//! the data dir held open while binding or connecting ([`connect`], the
//! one way in for every client). The kernel checks the same permissions
//! on that path as on the long one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};

use crate::agents::{Caller, Power};
use crate::client::route;
use crate::service::{
    Admin, BrakeArgs, ControlBrakeArgs, HumanArgs, NameArgs, NewAgentArgs, PasskeyArgs, Service,
};

/// The socket's file name in the data dir.
const SOCKET_FILE: &str = "control.sock";

/// The name a control-socket caller acts under when it names no agent.
const CONTROL_AGENT: &str = "control";

/// The control socket of a data dir (its file; to reach it, [`connect`]).
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Connects to the control socket of `data_dir`, however long its path:
/// what every client (the CLI, the tests) uses.
pub async fn connect(data_dir: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let short = ShortPath::of(data_dir);
    tokio::net::UnixStream::connect(&short.path).await
}

/// Binds the control socket of `data_dir`, however long its path.
fn bind(data_dir: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let short = ShortPath::of(data_dir);
    tokio::net::UnixListener::bind(&short.path)
}

/// A path to the control socket that fits in `sun_path`, valid while
/// this value lives (it may hold a descriptor of the data dir).
struct ShortPath {
    /// The data dir's descriptor the path goes through, if it does.
    _dir: Option<std::fs::File>,
    path: PathBuf,
}

impl ShortPath {
    /// Through `/proc/self/fd` where the system has it (Linux with procfs
    /// mounted), else the socket's own path (which then must be short).
    fn of(data_dir: &Path) -> Self {
        Self::through_proc(data_dir).unwrap_or_else(|| ShortPath {
            _dir: None,
            path: socket_path(data_dir),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn through_proc(_data_dir: &Path) -> Option<Self> {
        None
    }

    #[cfg(target_os = "linux")]
    fn through_proc(data_dir: &Path) -> Option<Self> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        // O_PATH: a handle on the directory that reads nothing and needs
        // no read permission; lookups through it are checked as usual.
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(data_dir)
            .ok()?;
        let via = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        // No procfs (a minimal container or chroot): the direct path.
        if !via.is_dir() {
            return None;
        }
        Some(ShortPath {
            path: via.join(SOCKET_FILE),
            _dir: Some(dir),
        })
    }
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
    let listener = bind(data_dir)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let app = router(service);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("control socket stopped: {e}");
        }
    });
    Ok(())
}

/// The routes of the control socket: statements and decisions (the
/// signature is the authority), engaging a brake, and the admin's edits.
fn router(service: Arc<Service>) -> Router {
    let local = Caller::agent(
        runbox_core::ident::Name::new(CONTROL_AGENT).expect("a valid name"),
        Power::Read,
    );
    let v1 = Router::new()
        .route(route::STATEMENTS, post(crate::http::statement))
        .route(route::DECISIONS, post(crate::http::decide))
        .route(route::BRAKES, post(engage_brake))
        .route(route::BRAKE_STATEMENTS, post(crate::http::brake_statement))
        .route(route::BRAKE_RELEASE, post(crate::http::release_brake))
        .route(route::ADMIN_AGENTS, post(add_agent))
        .route(route::ADMIN_AGENTS_REMOVE, post(remove_agent))
        .route(route::ADMIN_HUMANS, post(add_human))
        .route(route::ADMIN_HUMANS_REMOVE, post(remove_human))
        .route(route::ADMIN_PASSKEYS, post(enroll_passkey))
        .route(route::NOTIFY_RETRY, post(retry_notifications));
    Router::new()
        .nest(route::V1, v1)
        .nest_service(crate::forward::MCP_PATH, forwarded_mcp(service.clone()))
        .layer(Extension(local))
        .layer(axum::middleware::from_fn(crate::http::bounded_body))
        .with_state(service)
}

/// MCP for forwarded sessions: the agent comes from the forwarder's
/// headers ([`forwarded_caller`]), after the socket's own caller is set.
fn forwarded_mcp(service: Arc<Service>) -> Router {
    let mcp_service = service.clone();
    let mcp = rmcp::transport::streamable_http_server::StreamableHttpService::new(
        move || Ok(crate::mcp::Mcp::new(mcp_service.clone(), None)),
        Arc::new(
            rmcp::transport::streamable_http_server::session::local::LocalSessionManager::default(),
        ),
        rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default(),
    );
    Router::new()
        .fallback_service(mcp)
        .layer(axum::middleware::from_fn_with_state(
            service,
            forwarded_caller,
        ))
}

async fn forwarded_caller(
    State(s): State<Arc<Service>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match forwarded(&s, req.headers()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The agent a forwarder names: `read` when read-only, `mutate` with the
/// owner's mutation token, `run` without one; another token is refused.
fn forwarded(s: &Service, headers: &axum::http::HeaderMap) -> Result<Caller, crate::ServiceError> {
    use crate::forward::{AGENT_HEADER, READ_ONLY_HEADER, TOKEN_HEADER};
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let name = header(AGENT_HEADER).ok_or_else(|| {
        crate::ServiceError::bad_request(format!("{AGENT_HEADER} names the forwarded agent"))
    })?;
    let name = runbox_core::ident::Name::new(name)
        .map_err(|e| crate::ServiceError::bad_request(format!("{AGENT_HEADER}: {e}")))?;
    let can = if header(READ_ONLY_HEADER) == Some("true") {
        Power::Read
    } else {
        match header(TOKEN_HEADER) {
            None => Power::Run,
            Some(token) if s.holds_mutation_token(token) => Power::Mutate,
            Some(_) => {
                return Err(crate::ServiceError::new(
                    crate::error::ErrorCode::Forbidden,
                    "the forwarded mutation token is not the one the owning process holds",
                ));
            }
        }
    };
    Ok(Caller::agent(name, can))
}

async fn engage_brake(
    State(s): State<Arc<Service>>,
    b: Result<Json<ControlBrakeArgs>, JsonRejection>,
) -> Result<Response, crate::ServiceError> {
    let args = crate::http::body(b)?;
    let name = args.agent.as_deref().unwrap_or(CONTROL_AGENT);
    let caller = Caller::agent(
        runbox_core::ident::Name::new(name)
            .map_err(|e| crate::ServiceError::bad_request(e.to_string()))?,
        Power::Read,
    );
    let brake = s.engage_brake(
        &caller,
        &BrakeArgs {
            scope: args.scope,
            reason: args.reason,
        },
    )?;
    Ok(Json(brake).into_response())
}

async fn add_agent(
    State(s): State<Arc<Service>>,
    b: Result<Json<NewAgentArgs>, JsonRejection>,
) -> Result<Response, crate::ServiceError> {
    let added = s.add_agent(&Admin::control_socket(), &crate::http::body(b)?)?;
    Ok(Json(added).into_response())
}

async fn remove_agent(
    State(s): State<Arc<Service>>,
    b: Result<Json<NameArgs>, JsonRejection>,
) -> Result<Response, crate::ServiceError> {
    let removed = s.remove_agent(&Admin::control_socket(), &crate::http::body(b)?)?;
    Ok(Json(removed).into_response())
}

async fn add_human(
    State(s): State<Arc<Service>>,
    b: Result<Json<HumanArgs>, JsonRejection>,
) -> Result<Response, crate::ServiceError> {
    let added = s.add_human(&Admin::control_socket(), &crate::http::body(b)?)?;
    Ok(Json(added).into_response())
}

async fn enroll_passkey(
    State(s): State<Arc<Service>>,
    b: Result<Json<PasskeyArgs>, JsonRejection>,
) -> Result<Response, crate::ServiceError> {
    let link = s.enroll_passkey(&Admin::control_socket(), &crate::http::body(b)?)?;
    Ok(Json(link).into_response())
}

async fn remove_human(
    State(s): State<Arc<Service>>,
    b: Result<Json<NameArgs>, JsonRejection>,
) -> Result<Response, crate::ServiceError> {
    let removed = s.remove_human(&Admin::control_socket(), &crate::http::body(b)?)?;
    Ok(Json(removed).into_response())
}

async fn retry_notifications(
    State(s): State<Arc<Service>>,
    b: Result<Json<crate::service::RetryArgs>, JsonRejection>,
) -> Result<Response, crate::ServiceError> {
    let retried = s.retry_notifications(&crate::http::body(b)?)?;
    Ok(Json(retried).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A data dir path far past `sun_path`'s 107 bytes still binds and
    /// connects, and the socket file is in the data dir itself.
    #[tokio::test]
    async fn a_long_data_dir_path_binds_and_connects() {
        let base = tempfile::tempdir().unwrap();
        let data = base.path().join("d".repeat(100)).join("e".repeat(100));
        runbox_core::files::create_private_dir(&data).unwrap();
        assert!(socket_path(&data).as_os_str().len() > 200);
        let listener = bind(&data).unwrap();
        assert!(socket_path(&data).exists(), "the file is in the data dir");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"hi").await.unwrap();
        });
        let mut client = connect(&data).await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        server.await.unwrap();
    }
}
