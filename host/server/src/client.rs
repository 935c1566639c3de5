//! The one client of the routes a human's command uses: the control socket
//! of the process that owns a data dir, or a `runbox serve` over HTTP. The
//! paths are the routers' own ([`route`]), the bodies the service's own
//! types, so the two sides cannot drift apart.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runbox_server::client::ClientError> {
//! use runbox_server::client::{Client, route};
//! use runbox_server::StatementArgs;
//! use runbox_trust::Action;
//!
//! let owner = Client::socket("/var/lib/runbox");
//! let args = StatementArgs::new(Action::Takeover, "alice");
//! let answer: runbox_server::StatementText =
//!     owner.post(&route::of(route::STATEMENTS, "INC-7"), &args).await?;
//! println!("sign this:\n{}", answer.statement);
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The routes, relative to [`route::V1`], as both routers mount them and
/// the client calls them.
pub mod route {
    /// Where the API is mounted.
    pub const V1: &str = "/v1";
    /// The statement a human signs for a decision on an incident.
    pub const STATEMENTS: &str = "/incidents/{id}/statements";
    /// A human's signed decision on an incident.
    pub const DECISIONS: &str = "/incidents/{id}/decisions";
    /// Brakes: listed, or one engaged.
    pub const BRAKES: &str = "/brakes";
    /// The statement a human signs to release a brake.
    pub const BRAKE_STATEMENTS: &str = "/brakes/statements";
    /// A human's signed release of a brake.
    pub const BRAKE_RELEASE: &str = "/brakes/release";
    /// The admin adds an agent (control socket only).
    pub const ADMIN_AGENTS: &str = "/admin/agents";
    /// The admin removes an agent (control socket only).
    pub const ADMIN_AGENTS_REMOVE: &str = "/admin/agents/remove";
    /// The admin adds a human (control socket only).
    pub const ADMIN_HUMANS: &str = "/admin/humans";
    /// The admin asks for a passkey enrollment link (control socket only).
    pub const ADMIN_PASSKEYS: &str = "/admin/humans/passkeys";
    /// The admin removes a human (control socket only).
    pub const ADMIN_HUMANS_REMOVE: &str = "/admin/humans/remove";
    /// Parked notifications are tried again (control socket only).
    pub const NOTIFY_RETRY: &str = "/notify/retry";

    /// The full path of `route` for incident `id` (a route without `{id}`
    /// is only prefixed). The id is a checked incident id by the time the
    /// server reads it; here it is only placed.
    pub fn of(route: &str, id: &str) -> String {
        format!("{V1}{}", route.replace("{id}", id))
    }

    /// The full path of a route that names no incident.
    pub fn at(route: &str) -> String {
        format!("{V1}{route}")
    }
}

/// Why a call did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The owner could not be reached.
    #[error("{what}: {source}")]
    Connect {
        /// Whom, and what that means.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed half way.
    #[error("the exchange with {whom} failed: {source}")]
    Exchange {
        /// Whom.
        whom: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be made (a body that does not serialize).
    #[error("cannot make the request: {0}")]
    Request(String),
    /// The answer is not the JSON the route promises.
    #[error("{whom} answered {status} with no JSON the route promises: {source}")]
    Answer {
        /// Whom.
        whom: String,
        /// The HTTP status.
        status: u16,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
    },
    /// The owner refused, with its error's code and message.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error's code (`forbidden`, `conflict`, …).
        code: String,
        /// What it said.
        message: String,
    },
}

/// Where the calls go.
#[derive(Debug, Clone)]
pub enum Client {
    /// The control socket of the process that owns this data dir.
    Socket(PathBuf),
    /// A `runbox serve` at `HOST:PORT`, with an agent's bearer token.
    Server {
        /// `HOST:PORT`.
        authority: String,
        /// The bearer token.
        token: String,
    },
}

impl Client {
    /// The owner of data dir `dir`, through its control socket.
    pub fn socket(dir: impl Into<PathBuf>) -> Self {
        Client::Socket(dir.into())
    }

    /// POSTs `body` as JSON to `path` and decodes the answer.
    pub async fn post<B, R>(&self, path: &str, body: &B) -> Result<R, ClientError>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Request(e.to_string()))?;
        let request = self.request(path, bytes)?;
        let (status, answer) = self.exchange(request).await?;
        if !status.is_success() {
            return Err(refusal(status.as_u16(), &answer));
        }
        serde_json::from_slice(&answer).map_err(|source| ClientError::Answer {
            whom: self.whom(),
            status: status.as_u16(),
            source,
        })
    }

    fn whom(&self) -> String {
        match self {
            Client::Socket(dir) => format!("the owner of {}", dir.display()),
            Client::Server { authority, .. } => format!("runbox serve at {authority}"),
        }
    }

    fn request(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Request<Full<Bytes>>, ClientError> {
        let host = match self {
            Client::Socket(_) => "localhost",
            Client::Server { authority, .. } => authority,
        };
        let mut request = hyper::Request::post(path)
            .header("content-type", "application/json")
            .header("host", host);
        if let Client::Server { token, .. } = self {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Request(e.to_string()))
    }

    async fn exchange(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, Bytes), ClientError> {
        let whom = self.whom();
        match self {
            Client::Socket(dir) => {
                let stream = crate::control::connect(dir).await.map_err(|source| {
                    ClientError::Connect {
                        what: format!(
                            "the data dir is in use, and its owner's control socket {} does not answer",
                            crate::control::socket_path(dir).display()
                        ),
                        source,
                    }
                })?;
                send(stream, request, whom).await
            }
            Client::Server { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|source| ClientError::Connect {
                        what: format!("cannot reach runbox serve at {authority}"),
                        source,
                    })?;
                send(stream, request, whom).await
            }
        }
    }
}

/// The server's `{"error": {"code", "message"}}`, or what stands in for it.
fn refusal(status: u16, answer: &[u8]) -> ClientError {
    let error: Option<serde_json::Value> = serde_json::from_slice(answer).ok();
    let field = |name: &str| {
        error
            .as_ref()
            .and_then(|v| v["error"][name].as_str())
            .map(str::to_string)
    };
    ClientError::Refused {
        status,
        code: field("code").unwrap_or_else(|| "unknown".into()),
        message: field("message").unwrap_or_else(|| format!("refused with HTTP {status}")),
    }
}

/// One HTTP/1.1 exchange over `stream`.
async fn send<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
    whom: String,
) -> Result<(hyper::StatusCode, Bytes), ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failed = |source| ClientError::Exchange {
        whom: whom.clone(),
        source,
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(failed)?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(failed)?
        .to_bytes();
    Ok((status, bytes))
}
