//! The one error type of the service, with the codes every front-end maps
//! to its own: an HTTP status, an MCP tool error, a CLI exit.

use runbox_core::alert::WebhookError;
use runbox_core::errors::one_line_of;
use runbox_core::route::RouteError;
use runbox_engine::{EngineError, ReadError};
use runbox_store::StoreError;
use serde::Serialize;

/// What kind of refusal or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: bad JSON, a missing or invalid argument.
    BadRequest,
    /// No token, or a token no agent has.
    Unauthorized,
    /// Not allowed for this agent, or by a safety rule.
    Forbidden,
    /// No such incident or runbook.
    NotFound,
    /// The route does not take this HTTP method (its `Allow` header says
    /// which it takes).
    MethodNotAllowed,
    /// The incident's state does not allow it now (or a concurrent change).
    Conflict,
    /// The request body did not arrive within its deadline.
    Timeout,
    /// The request body is over the limit.
    TooLarge,
    /// The store cannot be read or written.
    Unavailable,
    /// Something inside the server failed; the request may be retried.
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::Timeout => 408,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// A refusal or failure, with a message naming what and where.
#[derive(Debug, Clone, thiserror::Error, Serialize, schemars::JsonSchema)]
#[error("{message}")]
pub struct ServiceError {
    /// The kind.
    pub code: ErrorCode,
    /// What went wrong, for a person or an agent to act on.
    pub message: String,
}

/// An error on the wire, over HTTP and MCP alike: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ServiceError,
}

impl ServiceError {
    /// An error of `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError {
            code,
            message: message.into(),
        }
    }

    /// A malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// Not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
}

/// Every engine error's code, written out: a new variant does not compile
/// until someone decides what it means to a client.
pub(crate) fn engine_error_code(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::Store(e) => store_code(e),
        EngineError::UnknownIncident(_) => ErrorCode::NotFound,
        EngineError::InvalidName { .. }
        | EngineError::Runbook(_)
        | EngineError::Tools(_)
        | EngineError::Scope(_)
        | EngineError::Limits(_) => ErrorCode::BadRequest,
        EngineError::Sandbox(_)
        | EngineError::StepModule { .. }
        | EngineError::Token(_)
        | EngineError::Trust(_) => ErrorCode::Forbidden,
        EngineError::Exists(_) | EngineError::Fleet(_) | EngineError::Refused { .. } => {
            ErrorCode::Conflict
        }
        EngineError::Internal { .. } => ErrorCode::Internal,
    }
}

/// Every store error's code, written out.
fn store_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Conflict { .. }
        | StoreError::SharedConflict { .. }
        | StoreError::MetaConflict { .. }
        | StoreError::Fenced { .. } => ErrorCode::Conflict,
        StoreError::Locked { .. }
        | StoreError::Open { .. }
        | StoreError::Io { .. }
        | StoreError::TooLarge { .. } => ErrorCode::Unavailable,
        StoreError::Corrupt { .. } | StoreError::BadBatch { .. } => ErrorCode::Internal,
    }
}

/// A read error is the engine's (mapped variant for variant), so it takes
/// the one table above.
impl From<ReadError> for ServiceError {
    fn from(e: ReadError) -> Self {
        EngineError::from(e).into()
    }
}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> Self {
        ServiceError::new(engine_error_code(&e), one_line_of(&e))
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        EngineError::from(e).into()
    }
}

/// Every notify error's code, written out.
impl From<runbox_notify::NotifyError> for ServiceError {
    fn from(e: runbox_notify::NotifyError) -> Self {
        use runbox_notify::NotifyError as N;
        match e {
            N::Read(e) => e.into(),
            N::Store(e) => e.into(),
            e @ (N::UnknownSink(_) | N::NotParked(_)) => {
                ServiceError::new(ErrorCode::NotFound, one_line_of(&e))
            }
            e @ (N::Secret { .. } | N::Entry { .. }) => {
                ServiceError::new(ErrorCode::Internal, one_line_of(&e))
            }
        }
    }
}
/// Every webhook refusal's code, written out: each is the client's
/// payload at fault (nothing was written).
fn webhook_code(e: &WebhookError) -> ErrorCode {
    match e {
        WebhookError::Malformed(_) | WebhookError::Version(_) | WebhookError::Invalid { .. } => {
            ErrorCode::BadRequest
        }
    }
}

impl From<WebhookError> for ServiceError {
    fn from(e: WebhookError) -> Self {
        ServiceError::new(webhook_code(&e), one_line_of(&e))
    }
}

/// A broken `routes.toml` is the server's configuration, not the
/// client's payload: `unavailable` (503), which Alertmanager retries, so
/// no alert is lost while an admin fixes the file.
impl From<RouteError> for ServiceError {
    fn from(e: RouteError) -> Self {
        ServiceError::new(ErrorCode::Unavailable, e.to_string())
    }
}
