//! The client side of the control socket (see `runbox_server::control`):
//! a human's decision, a brake, or the admin's edit of agents and humans
//! reaches the process that owns the data dir.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
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
    if let Err(e) = runbox_server::control::listen(ctx.data_dir(), service.clone()).await {
        eprintln!(
            "runbox: no control socket in {} ({e}): humans cannot decide until this process exits",
            ctx.data_dir().display()
        );
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
        Err(e) if owned_elsewhere(&e, data_dir) => {
            Ok(Writer::Owner(Owner::Socket(data_dir.to_path_buf())))
        }
        Err(e) => Err(e),
    }
}

/// The process that owns the data dir, where a human decision goes.
pub(crate) enum Owner {
    /// The control socket in this data dir.
    Socket(std::path::PathBuf),
    /// A `runbox serve` (`--server`), with an agent's bearer token.
    Server {
        /// `HOST:PORT`.
        authority: String,
        /// RUNBOX_AGENT_TOKEN.
        token: String,
    },
}

impl Owner {
    /// The `runbox serve` at `url` (`http://HOST:PORT`).
    pub(crate) fn server(url: &str) -> Result<Self> {
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

    /// POSTs `body` to `path`; the answer's JSON, or its error's message.
    pub(crate) async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let request = hyper::Request::post(path)
            .header("content-type", "application/json")
            .header(
                "host",
                match self {
                    Owner::Socket(_) => "localhost",
                    Owner::Server { authority, .. } => authority,
                },
            );
        let request = match self {
            Owner::Server { token, .. } => {
                request.header("authorization", format!("Bearer {token}"))
            }
            Owner::Socket(_) => request,
        };
        let request = request.body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let response = match self {
            Owner::Socket(dir) => {
                let stream = runbox_server::control::connect(dir).await.with_context(|| {
                    format!(
                        "the data dir is in use, and its owner's control socket {} does not answer",
                        runbox_server::control::socket_path(dir).display()
                    )
                })?;
                send(stream, request).await?
            }
            Owner::Server { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .with_context(|| format!("cannot reach runbox serve at {authority}"))?;
                send(stream, request).await?
            }
        };
        let (status, bytes) = response;
        let answer: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the data dir's owner answered {status} with no JSON"))?;
        if !status.is_success() {
            let message = answer["error"]["message"].as_str().unwrap_or("refused");
            return Err(anyhow!("{message}"));
        }
        Ok(answer)
    }
}

/// One HTTP/1.1 exchange over `stream`.
async fn send<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}
