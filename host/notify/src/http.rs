//! The one HTTP client runbox sends out through (notifications, and the
//! OTLP traces `runbox_server::traces` exports): hyper over rustls
//! with the ring provider given explicitly (never a process-wide default,
//! which would change what every other TLS client in the process does) and
//! the system's root certificates. It follows no redirect (a receiver that
//! moves is a failure to see, not a place to send a signed body) and reads
//! no proxy from the environment.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP(S) client: hyper over rustls with the ring provider.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// What a POST got.
pub(crate) enum Reply {
    /// The receiver answered with this status (and `Retry-After`, in ms,
    /// when it gave one in seconds).
    Status {
        code: u16,
        retry_after_ms: Option<u64>,
    },
    /// No answer in time.
    TimedOut,
    /// No answer: why.
    Failed(String),
}

/// Why [`HttpClient::send`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No whole answer within the timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The answer's body is larger than the caller takes.
    #[error("the answer's body is larger than {0} bytes")]
    TooLarge(usize),
    /// The request could not be made or sent, or the answer not read.
    #[error("{0}")]
    Failed(String),
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client that trusts the system's root certificates (none, when the
    /// system has none: HTTPS then fails per request; HTTP still works).
    pub fn new() -> HttpClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            match HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
                Ok(builder) => builder,
                // No system roots (no ca-certificates): HTTPS fails per request,
                // saying the certificate is not trusted; HTTP still works.
                Err(_) => HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default protocol versions")
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                ),
            };
        let connector = builder.https_or_http().enable_http1().build();
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `request` and reads the answer, body and all (at most
    /// `max_body` bytes), within `timeout`.
    pub async fn send(
        &self,
        request: hyper::Request<Bytes>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<hyper::Response<Bytes>, SendError> {
        let exchange = async {
            let answer = self
                .inner
                .request(request.map(Full::new))
                .await
                .map_err(|e| SendError::Failed(runbox_core::errors::one_line_of(&e)))?;
            let (parts, body) = answer.into_parts();
            let body = http_body_util::Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => SendError::TooLarge(max_body),
                    Err(e) => SendError::Failed(e.to_string()),
                })?
                .to_bytes();
            Ok(hyper::Response::from_parts(parts, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| SendError::TimedOut(timeout))?
    }

    /// POSTs `body` with `headers` to `url`, waiting at most `timeout`.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Reply {
        let mut request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("runbox/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match request.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(e) => return Reply::Failed(format!("cannot make the request: {e}")),
        };
        match tokio::time::timeout(timeout, self.inner.request(request)).await {
            Err(_) => Reply::TimedOut,
            Ok(Err(e)) => Reply::Failed(runbox_core::errors::one_line_of(&e)),
            Ok(Ok(response)) => Reply::Status {
                code: response.status().as_u16(),
                retry_after_ms: response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| s.saturating_mul(1000)),
            },
        }
    }
}
