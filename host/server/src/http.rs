//! The HTTP API (`runbox serve`): the service's operations under `/v1`,
//! server-sent events of an incident's timeline, the MCP streamable-HTTP
//! transport at `/mcp`, and `/healthz`. Agents authenticate with a bearer
//! token; every error is JSON `{"error": {"code", "message"}}` with its
//! status.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use futures_util::Stream;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use tracing::Instrument;

use crate::agents::Caller;
use crate::client::route;
use crate::error::{ErrorCode, ServiceError};
use crate::mcp::Mcp;
use crate::openapi::{Created, EventStream, IncidentPath, OPENAPI, Receipt, RunbookPath, StepPath};
use crate::service::{
    AwaitArgs, BrakeArgs, BrakeStatementArgs, ChangeReport, Done, EscalateArgs, IncidentDetail,
    NoteArgs, OpenArgs, RunStepReport, RunbookArgs, RunbookInfo, Service, StatementArgs,
    StatementText, StepRecordArgs, TimelineArgs, TimelinePage,
};
use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with};
use aide::openapi::OpenApi;
use runbox_core::limits::Brake;
use runbox_core::records::StepRecord;
use runbox_engine::IncidentSummary;
use runbox_engine::fleet::{EngagedBrake, Released};
use schemars::JsonSchema;
use serde::Serialize;

/// The largest request body: 64 KiB (a signed statement is a few KiB).
/// `POST /v1/alerts` takes up to [`runbox_core::alert::MAX_WEBHOOK_BYTES`].
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Alertmanager's webhook receiver, under `/v1`.
pub const ALERTS: &str = "/alerts";

/// The body cap of a request to `path`: an Alertmanager webhook carries a
/// whole alert group, so its route has its own (larger) cap.
fn body_cap(path: &str) -> usize {
    if path.strip_prefix(route::V1) == Some(ALERTS) {
        runbox_core::alert::MAX_WEBHOOK_BYTES
    } else {
        MAX_BODY_BYTES
    }
}
/// How often the event stream looks for new events.
const EVENT_POLL: Duration = Duration::from_millis(250);

/// The challenge of a 401 when no bearer token came (RFC 6750 §3: no
/// error code then).
const BEARER_CHALLENGE: &str = "Bearer realm=\"runbox\"";

/// The challenge of a 401 for a bearer token that is wrong (RFC 6750 §3.1).
const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"runbox\", error=\"invalid_token\", error_description=\"the token is unknown or was revoked\"";

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = crate::error::ErrorBody { error: self };
        let mut response = (status, Json(body)).into_response();
        // Every 401 says how to authenticate: without it, MCP clients take
        // a bare 401 for "OAuth needed" and go looking for discovery.
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(BEARER_CHALLENGE),
            );
        }
        response
    }
}

/// An answer: a JSON value, or the error's JSON.
type Reply<T> = Result<Json<T>, ServiceError>;

/// A JSON body, or a 400 naming what is wrong. (The body's size and
/// deadline were checked before, by [`bounded_body`].)
pub(crate) fn body<T>(json: Result<Json<T>, JsonRejection>) -> Result<T, ServiceError> {
    json.map(|Json(value)| value).map_err(|e| {
        ServiceError::bad_request(format!("malformed request body: {}", e.body_text()))
    })
}

/// How long a client may take to send a request's body once its headers
/// are in: a client trickling its body a byte a second is answered 408
/// and its connection closed, so it holds nothing for long.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the whole request body before any route sees it, at most
/// [`MAX_BODY_BYTES`] (the alerts route: its own cap, see `body_cap`)
/// (else 413) within [`BODY_READ_TIMEOUT`] (else 408),
/// for every route alike: `/v1`, `/mcp` (whose MCP service reads bodies
/// itself, past any extractor's limit) and the control socket.
pub(crate) async fn bounded_body(req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let cap = body_cap(parts.uri.path());
    let limited = http_body_util::Limited::new(body, cap).collect();
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, limited).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return closing(ServiceError::new(
                ErrorCode::TooLarge,
                format!("the request body is over {cap} bytes"),
            ));
        }
        Ok(Err(e)) => {
            return closing(ServiceError::bad_request(format!(
                "the request body could not be read: {e}"
            )));
        }
        Err(_) => {
            return closing(ServiceError::new(
                ErrorCode::Timeout,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// `error` as a response that ends the connection: the rest of the body
/// is never read.
fn closing(error: ServiceError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ServiceError> {
    p.map(|Path(v)| v)
        .map_err(|e| ServiceError::bad_request(e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ServiceError> {
    q.map(|Query(v)| v)
        .map_err(|e| ServiceError::bad_request(e.body_text()))
}

/// How a server is reached from outside: the names clients put in `Host`
/// beyond loopback, and whether it speaks TLS.
#[derive(Debug, Clone, Default)]
pub struct Exposure {
    /// Host names (or `host:port`) `/mcp` accepts besides loopback's: the
    /// DNS-rebinding protection lets a browser's page reach a loopback
    /// server under no other name.
    pub allowed_hosts: Vec<String>,
    /// Whether clients reach it over HTTPS (the metadata's URLs say so).
    pub https: bool,
}

impl Exposure {
    /// Checks a `--allowed-host` value: a DNS name or IP, with an optional
    /// port; never a wildcard, a scheme or a path.
    pub fn check_host(name: &str) -> Result<(), ServiceError> {
        let host = match name.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => {
                port.parse::<u16>().map_err(|_| {
                    ServiceError::bad_request(format!(
                        "allowed host {name:?}: `{port}` is not a port"
                    ))
                })?;
                host
            }
            _ => name,
        };
        let fine = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
        if fine {
            return Ok(());
        }
        Err(ServiceError::bad_request(format!(
            "allowed host {name:?}: a DNS name or IP address, with an optional :PORT (no scheme, path or wildcard)"
        )))
    }
}

/// The API's router over `service`, reached on loopback only.
pub fn router(service: Arc<Service>) -> Router {
    router_for(service, &Exposure::default())
}

/// The API's router over `service`, reached as `exposure` says.
pub fn router_for(service: Arc<Service>, exposure: &Exposure) -> Router {
    let mcp_service = service.clone();
    let mut config = StreamableHttpServerConfig::default();
    config
        .allowed_hosts
        .extend(exposure.allowed_hosts.iter().cloned());
    let mcp = StreamableHttpService::new(
        move || Ok(Mcp::new(mcp_service.clone(), None)),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let https = exposure.https;
    let (v1, api) = v1_routes();
    let api = Arc::new(api);
    let authenticated = v1
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(
            service.clone(),
            authenticate,
        ));
    let ops = crate::health::router(service.ops().clone());
    Router::new()
        .merge(ops)
        .route(
            PROTECTED_RESOURCE_METADATA,
            get(move |headers: axum::http::HeaderMap| protected_resource(headers, https)),
        )
        .route(
            OPENAPI,
            get(move || std::future::ready(Json(api.clone()).into_response())),
        )
        .merge(authenticated)
        .merge(crate::console::router(service.clone()))
        .fallback(|| async {
            ServiceError::new(ErrorCode::NotFound, "no such route (see /v1)").into_response()
        })
        .layer(middleware::map_response(json_method_not_allowed))
        .layer(middleware::from_fn(bounded_body))
        .layer(middleware::from_fn(traced))
        .with_state(service)
}

/// Each request in a span of its own, which continues the caller's trace
/// when it sends a W3C `traceparent` (only while traces are exported).
async fn traced(req: Request, next: Next) -> Response {
    if !runbox_telemetry::traces::exporting() {
        return next.run(req).await;
    }
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        runbox_telemetry::traces::continue_trace(
            &span,
            header("traceparent"),
            header("tracestate"),
        );
    }
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The `/v1` routes, and the OpenAPI document their handlers' types make.
fn v1_routes() -> (Router<Arc<Service>>, OpenApi) {
    let v1 = |path: &str| format!("{}{path}", route::V1);
    let routes = ApiRouter::new()
        .api_route(
            &v1("/runbooks"),
            get_with(list_runbooks, |o| {
                o.summary("The runbooks this server may open")
            }),
        )
        .api_route(
            &v1("/runbooks/{name}/review"),
            get_with(review_runbook, |o| {
                o.summary("What a runbook may do, step by step")
            }),
        )
        .api_route(
            &v1("/incidents"),
            get_with(list_incidents, |o| o.summary("The incidents"))
                .post_with(open_incident, |o| {
                    o.summary("Open an incident with a runbook")
                }),
        )
        .api_route(
            &v1("/incidents/{id}"),
            get_with(get_incident, |o| {
                o.summary("An incident: status, owner, next step, and what you may do (`you_may`)")
            }),
        )
        .api_route(
            &v1("/incidents/{id}/steps:run"),
            post_with(run_step, |o| {
                o.summary("Run exactly one step (`running` when it outlasts the wait)")
            }),
        )
        .api_route(
            &v1("/incidents/{id}/steps/{step}"),
            get_with(get_step_record, |o| {
                o.summary("A step's record (an attempt's)")
            }),
        )
        .api_route(
            &v1("/incidents/{id}/timeline"),
            get_with(get_timeline, |o| {
                o.summary("The timeline, a page at a time")
            }),
        )
        .api_route(
            &v1("/incidents/{id}/events"),
            get_with(events, |o| {
                o.summary("The timeline as server-sent events; `Last-Event-ID` resumes")
            }),
        )
        .api_route(
            &v1("/incidents/{id}/await"),
            get_with(await_change, |o| {
                o.summary("Wait until the status, owner or pending approval changes")
            }),
        )
        .api_route(
            &v1("/incidents/{id}/escalate"),
            post_with(escalate, |o| {
                o.summary("Hand the incident to a human, saying why")
            }),
        )
        .api_route(
            &v1("/incidents/{id}/notes"),
            post_with(add_note, |o| o.summary("Add a note to the timeline")),
        )
        .api_route(
            &v1(route::STATEMENTS),
            post_with(statement, |o| {
                o.summary("The statement a human signs for a decision")
            }),
        )
        .api_route(
            &v1(route::DECISIONS),
            post_with(decide, |o| o.summary("A human's signed decision")),
        )
        .api_route(
            &v1(route::BRAKES),
            get_with(list_brakes, |o| o.summary("The brakes engaged"))
                .post_with(engage_brake, |o| {
                    o.summary("Engage a brake: mutating steps stop")
                }),
        )
        .api_route(
            &v1(route::BRAKE_STATEMENTS),
            post_with(brake_statement, |o| {
                o.summary("The statement a human signs to release a brake")
            }),
        )
        .api_route(
            &v1(route::BRAKE_RELEASE),
            post_with(release_brake, |o| {
                o.summary("Release a brake with a signed statement")
            }),
        )
        .api_route(
            &v1(ALERTS),
            post_with(receive_alerts, |o| {
                o.summary("Alertmanager's webhook (version 4): routed groups open incidents")
            }),
        );
    let mut api = OpenApi::default();
    let router = routes.finish_api_with(&mut api, crate::openapi::describe);
    (router, api)
}

/// The OpenAPI 3.1 document of `/v1`, as `/v1/openapi.json` serves it.
pub fn openapi() -> OpenApi {
    v1_routes().1
}

/// Bearer-token authentication: the caller goes into the request's
/// extensions (where MCP tools find it too).
async fn authenticate(
    State(service): State<Arc<Service>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(token) = token else {
        return ServiceError::new(
            ErrorCode::Unauthorized,
            "no bearer token: `Authorization: Bearer TOKEN` (runbox agent add NAME)",
        )
        .into_response();
    };
    match service.agents().authenticate(token) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) if e.code == ErrorCode::Unauthorized => {
            let mut response = e.into_response();
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(INVALID_TOKEN_CHALLENGE),
            );
            response
        }
        Err(e) => e.into_response(),
    }
}

/// The token of an `Authorization: Bearer TOKEN` value. The scheme is
/// case-insensitive (RFC 9110 §11.1): `bearer xyz` is as good.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Gives axum's empty 405 (a method the route does not take) the JSON
/// error shape every other answer has. (The route's `Allow` header is
/// added around this, by axum.)
async fn json_method_not_allowed(method: axum::http::Method, response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED || is_json(&response) {
        return response;
    }
    ServiceError::new(
        ErrorCode::MethodNotAllowed,
        format!("this route does not take {method}: its `Allow` header says what it takes"),
    )
    .into_response()
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"))
}

/// Where the OAuth protected-resource metadata is (RFC 9728): an MCP client
/// that gets a 401 reads how to authenticate here instead of guessing.
pub const PROTECTED_RESOURCE_METADATA: &str = "/.well-known/oauth-protected-resource";

/// RFC 9728's document for this server: the resource is `/mcp` under the
/// name the client used; bearer tokens in the header, made by `runbox agent
/// add` (there is no authorization server to name).
async fn protected_resource(headers: axum::http::HeaderMap, https: bool) -> Response {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| Exposure::check_host(h).is_ok());
    let Some(host) = host else {
        return ServiceError::bad_request("a Host header naming this server is needed")
            .into_response();
    };
    let scheme = if https { "https" } else { "http" };
    Json(serde_json::json!({
        "resource": format!("{scheme}://{host}/mcp"),
        "bearer_methods_supported": ["header"],
        "resource_name": "runbox",
        // Not an RFC 9728 field (allowed: extra parameters may be added):
        // where a person gets a token, since no authorization server does.
        "runbox_token_command": "runbox agent add NAME --can read|run|mutate|alert",
    }))
    .into_response()
}

async fn list_runbooks(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
) -> Reply<Vec<RunbookInfo>> {
    Ok(Json(s.list_runbooks(&c)?))
}

async fn review_runbook(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    name: Result<Path<RunbookPath>, PathRejection>,
) -> Reply<serde_json::Value> {
    let runbook = path(name)?.name;
    Ok(Json(s.review_runbook(&c, &RunbookArgs { runbook })?))
}

async fn list_incidents(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
) -> Reply<Vec<IncidentSummary>> {
    Ok(Json(s.list_incidents(&c)?))
}

async fn open_incident(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    args: Result<Json<OpenArgs>, JsonRejection>,
) -> Result<Created<Done>, ServiceError> {
    Ok(Created(s.open_incident(&c, &body(args)?)?))
}

async fn get_incident(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    id: Result<Path<IncidentPath>, PathRejection>,
) -> Reply<IncidentDetail> {
    Ok(Json(s.get_incident(&c, &path(id)?.id)?))
}

async fn run_step(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    id: Result<Path<IncidentPath>, PathRejection>,
) -> Reply<RunStepReport> {
    Ok(Json(s.run_step(&c, &path(id)?.id).await?))
}

/// An Alertmanager webhook: the body is read as bytes, so a malformed
/// payload is refused in the service's words, not the extractor's.
async fn receive_alerts(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    bytes: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Receipt, ServiceError> {
    let bytes = bytes.map_err(|e| ServiceError::bad_request(e.body_text()))?;
    Ok(Receipt(s.receive_alerts(&c, &bytes).await?))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AttemptQuery {
    /// The attempt (default: the last).
    attempt: Option<u32>,
}

async fn get_step_record(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    p: Result<Path<StepPath>, PathRejection>,
    q: Result<Query<AttemptQuery>, QueryRejection>,
) -> Reply<StepRecord> {
    let StepPath { id, step } = path(p)?;
    let attempt = query(q)?.attempt;
    Ok(Json(s.get_step_record(
        &c,
        &StepRecordArgs { id, step, attempt },
    )?))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// Events after this sequence number.
    after: Option<u64>,
    /// At most this many events.
    limit: Option<u32>,
}

async fn get_timeline(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    id: Result<Path<IncidentPath>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Reply<TimelinePage> {
    let PageQuery { after, limit } = query(q)?;
    let args = TimelineArgs {
        id: path(id)?.id,
        after,
        limit,
    };
    Ok(Json(s.get_timeline(&c, &args)?))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AwaitQuery {
    /// Seconds to wait (at most 50).
    timeout_s: Option<u32>,
}

async fn await_change(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    id: Result<Path<IncidentPath>, PathRejection>,
    q: Result<Query<AwaitQuery>, QueryRejection>,
) -> Reply<ChangeReport> {
    let args = AwaitArgs {
        id: path(id)?.id,
        timeout_s: query(q)?.timeout_s,
    };
    Ok(Json(s.await_change(&c, &args).await?))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    /// Why a human must look.
    reason: String,
}

async fn escalate(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    id: Result<Path<IncidentPath>, PathRejection>,
    b: Result<Json<ReasonBody>, JsonRejection>,
) -> Reply<Done> {
    let args = EscalateArgs {
        id: path(id)?.id,
        reason: body(b)?.reason,
    };
    Ok(Json(s.escalate(&c, &args).await?))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TextBody {
    /// The note.
    text: String,
}

async fn add_note(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    id: Result<Path<IncidentPath>, PathRejection>,
    b: Result<Json<TextBody>, JsonRejection>,
) -> Reply<Done> {
    let args = NoteArgs {
        id: path(id)?.id,
        text: body(b)?.text,
    };
    Ok(Json(s.add_note(&c, &args).await?))
}

pub(crate) async fn statement(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    id: Result<Path<IncidentPath>, PathRejection>,
    b: Result<Json<StatementArgs>, JsonRejection>,
) -> Reply<StatementText> {
    let statement = s.statement(&c, &path(id)?.id, &body(b)?)?;
    Ok(Json(StatementText { statement }))
}

pub(crate) async fn decide(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    id: Result<Path<IncidentPath>, PathRejection>,
    b: Result<Json<runbox_trust::Decision>, JsonRejection>,
) -> Reply<Done> {
    Ok(Json(s.decide(&c, &path(id)?.id, &body(b)?)?))
}

/// The brakes engaged now.
#[derive(Debug, Serialize, JsonSchema)]
struct Brakes {
    brakes: Vec<EngagedBrake>,
}

async fn list_brakes(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
) -> Reply<Brakes> {
    Ok(Json(Brakes {
        brakes: s.brakes(&c)?,
    }))
}

pub(crate) async fn engage_brake(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    b: Result<Json<BrakeArgs>, JsonRejection>,
) -> Reply<Brake> {
    Ok(Json(s.engage_brake(&c, &body(b)?)?))
}

pub(crate) async fn brake_statement(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    b: Result<Json<BrakeStatementArgs>, JsonRejection>,
) -> Reply<StatementText> {
    let statement = s.brake_statement(&c, &body(b)?)?;
    Ok(Json(StatementText { statement }))
}

pub(crate) async fn release_brake(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    b: Result<Json<runbox_trust::Decision>, JsonRejection>,
) -> Reply<Released> {
    Ok(Json(s.release_brake(&c, &body(b)?)?))
}

/// The incident's timeline as server-sent events (`event: timeline`, `id:`
/// its sequence number), as they are committed, from `Last-Event-ID` on
/// or, on a first connection, from `?after=`. The header wins: an
/// `EventSource` reconnects to the same URL, `?after=` and all, and sends
/// the last id it got; starting from `?after=` again would send it events
/// it already has.
async fn events(
    State(s): State<Arc<Service>>,
    Extension(c): Extension<Caller>,
    id: Result<Path<IncidentPath>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
) -> Result<EventStream<impl Stream<Item = Result<Event, Infallible>>>, ServiceError> {
    let id = path(id)?.id;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let after = resume.or(query(q)?.after);
    // Checks the caller and the incident before the stream starts.
    s.get_timeline(
        &c,
        &TimelineArgs {
            id: id.clone(),
            after,
            limit: Some(1),
        },
    )?;
    let state = (s, c, id, after, std::collections::VecDeque::new());
    let stream =
        futures_util::stream::unfold(state, |(s, c, id, mut after, mut queue)| async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    let e: runbox_core::records::TimelineEvent = e;
                    after = Some(e.seq);
                    let event = Event::default()
                        .event("timeline")
                        .id(e.seq.to_string())
                        .json_data(&e)
                        .unwrap_or_default();
                    return Some((Ok(event), (s, c, id, after, queue)));
                }
                let args = TimelineArgs {
                    id: id.clone(),
                    after,
                    limit: None,
                };
                match s.get_timeline(&c, &args) {
                    Ok(page) if !page.events.is_empty() => queue.extend(page.events),
                    Ok(_) => tokio::time::sleep(EVENT_POLL).await,
                    Err(_) => return None,
                }
            }
        });
    Ok(EventStream(
        Sse::new(stream).keep_alive(KeepAlive::default()),
    ))
}

/// TLS for `serve`: a certificate chain and its private key, PEM files.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The DNS names of the leaf certificate (subjectAltName): names this
    /// server is reached by, so `/mcp` accepts them as `Host`.
    names: Vec<String>,
}

impl Tls {
    /// Reads `cert` (a PEM chain, leaf first) and `key` (a PEM private
    /// key), naming the file that is wrong.
    pub fn from_pem_files(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, ServiceError> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |path: &std::path::Path, e: &dyn std::fmt::Display| {
            ServiceError::bad_request(format!("{}: {e}", path.display()))
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, &e))?;
        if certs.is_empty() {
            return Err(bad(cert, &"no certificate in it"));
        }
        let names = leaf_dns_names(&certs[0]);
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(cert, &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad(cert, &e))?;
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            names,
        })
    }

    /// The certificate's DNS names.
    pub fn dns_names(&self) -> &[String] {
        &self.names
    }
}

/// The DNS names a leaf certificate is valid for (none when it does not
/// parse as an end-entity certificate: rustls refuses it at the handshake).
fn leaf_dns_names(leaf: &tokio_rustls::rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(leaf)
        .map(|cert| cert.valid_dns_names().map(str::to_string).collect())
        .unwrap_or_default()
}

/// How long a client may take to send a request's headers before its
/// connection is closed: a slow client cannot hold a connection open for
/// free. The TLS handshake gets as long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` (over TLS with `tls`) until Ctrl-C or
/// SIGTERM, when it stops accepting connections. Each connection is
/// HTTP/1.1 with a [`HEADER_READ_TIMEOUT`], and each request's body has
/// [`BODY_READ_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    tls: Option<Tls>,
    allowed_hosts: &[String],
) -> std::io::Result<()> {
    let mut exposure = Exposure {
        allowed_hosts: allowed_hosts.to_vec(),
        https: tls.is_some(),
    };
    // With TLS the certificate's names are how clients reach the server.
    if let Some(tls) = &tls {
        exposure
            .allowed_hosts
            .extend(tls.dns_names().iter().cloned());
    }
    serve_app(listener, router_for(service, &exposure), tls).await
}

/// Serves `app` on `listener` until SIGINT or SIGTERM: each connection
/// with a header read timeout, over TLS if `tls`.
pub(crate) async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Tls>,
) -> std::io::Result<()> {
    let mut stop = std::pin::pin!(shutdown());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: wait, go on serving.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => return Ok(()),
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, app).await,
                Some(Tls { acceptor, .. }) => {
                    let handshake =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        serve_connection(stream, app).await;
                    }
                }
            }
        });
    }
}

/// One HTTP/1.1 connection.
async fn serve_connection<S>(stream: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, hyper_util::service::TowerToHyperService::new(app))
        .with_upgrades()
        .await;
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
