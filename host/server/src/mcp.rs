//! The MCP server: the service's operations as tools, over stdio
//! (`runbox mcp`) or streamable HTTP (`/mcp` of `runbox serve`). Every tool
//! answers structured JSON; a refusal is a tool error whose JSON is
//! `{"error": {"code", "message"}}`, so an agent can read why and act.
//!
//! No tool grants a human decision: approving, denying, taking over,
//! handing back and settling steps need a human's signature.

use std::sync::Arc;

use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::agents::Caller;
use crate::error::{ErrorCode, ServiceError};
use crate::service::{
    AwaitArgs, BrakeArgs, EscalateArgs, IncidentArgs, NoteArgs, OpenArgs, RunbookArgs, Service,
    StepRecordArgs, TimelineArgs,
};

const INSTRUCTIONS: &str = "runbox runs incident-recovery runbooks one step at a time, with durable state and safety rules enforced by the server. Start with list_incidents or open_incident, then get_incident: its `you_may` says what you may do next and why. run_step runs exactly one step; when it answers `running`, call await_change. You cannot approve steps or take decisions for humans: when a step awaits approval, await_change until a human decides. Escalate with a reason when unsure.";

/// The MCP server over one [`Service`]: one per session.
#[derive(Clone)]
pub struct Mcp {
    service: Arc<Service>,
    /// The caller over stdio; over HTTP, each request's authenticated agent.
    caller: Option<Caller>,
    tool_router: ToolRouter<Self>,
    /// The session's `resources/subscribe` subscriptions.
    legacy: crate::subscriptions::Legacy,
    /// The least severe log message the client asked for
    /// (`logging/setLevel`), if it asked.
    log_level: Arc<std::sync::Mutex<Option<Severity>>>,
}

/// A log message's severity, least first: MCP's levels, which rmcp keeps
/// unordered (and deprecated: SEP-2577 retires logging after 2026-07-28,
/// which only sends messages a request opts in to by `_meta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Severity {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
}

#[expect(
    deprecated,
    reason = "MCP logging, for the clients that still ask for it"
)]
impl Severity {
    fn of(level: rmcp::model::LoggingLevel) -> Self {
        use rmcp::model::LoggingLevel as L;
        match level {
            L::Debug => Severity::Debug,
            L::Info => Severity::Info,
            L::Notice => Severity::Notice,
            L::Warning => Severity::Warning,
            L::Error | L::Critical | L::Alert | L::Emergency => Severity::Error,
        }
    }

    fn level(self) -> rmcp::model::LoggingLevel {
        use rmcp::model::LoggingLevel as L;
        match self {
            Severity::Debug => L::Debug,
            Severity::Info => L::Info,
            Severity::Notice => L::Notice,
            Severity::Warning => L::Warning,
            Severity::Error => L::Error,
        }
    }
}

/// A tool's arguments, or why they do not fit its schema: a refusal the
/// agent reads as `{"error": {"code": "bad_request", "message"}}` like any
/// other tool error, not a protocol error in plain text. (Named so because
/// rmcp's `#[tool]` finds a tool's input schema by this name.)
pub struct Parameters<T>(Result<T, ServiceError>);

impl<T: schemars::JsonSchema> schemars::JsonSchema for Parameters<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Parameters<T> {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, rmcp::ErrorData> {
        let arguments = context.arguments.take().unwrap_or_default();
        Ok(Parameters(
            serde_json::from_value(serde_json::Value::Object(arguments))
                .map_err(|e| ServiceError::bad_request(format!("arguments: {e}"))),
        ))
    }
}

/// A tool answer: the value as structured content, or the error as a tool
/// error with `{"error": {"code", "message"}}`.
fn answer<T: Serialize>(result: Result<T, ServiceError>) -> CallToolResult {
    match result {
        Ok(value) => CallToolResult::structured(
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        ),
        Err(error) => CallToolResult::structured_error(
            serde_json::to_value(crate::error::ErrorBody { error })
                .unwrap_or(serde_json::Value::Null),
        ),
    }
}

/// Wraps a list in an object: structured content must be an object.
#[derive(Serialize)]
struct Listing<T> {
    items: Vec<T>,
}

#[tool_router]
impl Mcp {
    /// A server acting for `caller` (stdio), or for each HTTP request's
    /// authenticated agent (`None`).
    pub fn new(service: Arc<Service>, caller: Option<Caller>) -> Self {
        Mcp {
            service,
            caller,
            tool_router: Self::tool_router(),
            legacy: crate::subscriptions::Legacy::default(),
            log_level: Arc::default(),
        }
    }

    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, ServiceError> {
        if let Some(caller) = &self.caller {
            return Ok(caller.clone());
        }
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| ServiceError::new(ErrorCode::Unauthorized, "no authenticated agent"))
    }

    #[tool(
        description = "The runbooks this server may open: name, description, steps (which need a human's approval, which tools each may call).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_runbooks(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        answer(self.caller(&ctx).and_then(|c| {
            self.service
                .list_runbooks(&c)
                .map(|items| Listing { items })
        }))
    }

    #[tool(
        description = "What each step of a runbook may touch (KV keys, tools and their modes, limits, approval) with review findings.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn review_runbook(
        &self,
        Parameters(args): Parameters<RunbookArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(args.and_then(|args| {
            self.caller(&ctx)
                .and_then(|c| self.service.review_runbook(&c, &args))
        }))
    }

    #[tool(
        description = "Every incident with its status, owner, runbook and next step.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_incidents(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        answer(self.caller(&ctx).and_then(|c| {
            self.service
                .list_incidents(&c)
                .map(|items| Listing { items })
        }))
    }

    #[tool(
        description = "One incident: status, owner, checkpoint, the next step and what it may touch, a pending approval and who may give it, cooldown or backoff end, in-doubt attempt, why it stands where it stands, and `you_may`: what you may do next.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_incident(
        &self,
        Parameters(args): Parameters<IncidentArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(args.and_then(|args| {
            self.caller(&ctx)
                .and_then(|c| self.service.get_incident(&c, &args.id))
        }))
    }

    #[tool(
        description = "The incident's timeline, paged by sequence number: pass the previous page's `next_after` as `after`.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_timeline(
        &self,
        Parameters(args): Parameters<TimelineArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(args.and_then(|args| {
            self.caller(&ctx)
                .and_then(|c| self.service.get_timeline(&c, &args))
        }))
    }

    #[tool(
        description = "One attempt's record: outcome, output or reason, tool calls with return codes, error category, logs, where the incident went next.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_step_record(
        &self,
        Parameters(args): Parameters<StepRecordArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(args.and_then(|args| {
            self.caller(&ctx)
                .and_then(|c| self.service.get_step_record(&c, &args))
        }))
    }

    #[tool(
        description = "Open an incident of a served runbook with its parameters. Nothing runs yet.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn open_incident(
        &self,
        Parameters(args): Parameters<OpenArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(args.and_then(|args| {
            self.caller(&ctx)
                .and_then(|c| self.service.open_incident(&c, &args))
        }))
    }

    #[tool(
        description = "Run exactly one step of the incident (its gates first: approval, cooldown, token) and return its record and the incident. Answers within 50 s; `running` means the step goes on: call await_change.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn run_step(
        &self,
        Parameters(args): Parameters<IncidentArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (caller, args) = match self.caller(&ctx).and_then(|c| args.map(|a| (c, a))) {
            Ok(both) => both,
            Err(e) => return answer::<()>(Err(e)),
        };
        answer(self.service.run_step(&caller, &args.id).await)
    }

    #[tool(
        description = "Wait (at most 50 s) until the incident's status, owner or pending approval changes; answers `changed` and the incident.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn await_change(
        &self,
        Parameters(args): Parameters<AwaitArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (caller, args) = match self.caller(&ctx).and_then(|c| args.map(|a| (c, a))) {
            Ok(both) => both,
            Err(e) => return answer::<()>(Err(e)),
        };
        answer(self.service.await_change(&caller, &args).await)
    }

    #[tool(
        description = "Hand the incident to humans (human:on-call) with a reason: the agent stops acting on it.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn escalate(
        &self,
        Parameters(args): Parameters<EscalateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (caller, args) = match self.caller(&ctx).and_then(|c| args.map(|a| (c, a))) {
            Ok(both) => both,
            Err(e) => return answer::<()>(Err(e)),
        };
        answer(self.service.escalate(&caller, &args).await)
    }

    #[tool(
        description = "Add a note to the incident's timeline, by you.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn add_note(
        &self,
        Parameters(args): Parameters<NoteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (caller, args) = match self.caller(&ctx).and_then(|c| args.map(|a| (c, a))) {
            Ok(both) => both,
            Err(e) => return answer::<()>(Err(e)),
        };
        answer(self.service.add_note(&caller, &args).await)
    }

    #[tool(
        description = "The brakes engaged fleet-wide: scope, reason, who engaged it and when. A mutating step a brake covers escalates instead of running until a human releases it.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_brakes(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        answer(
            self.caller(&ctx)
                .and_then(|c| self.service.brakes(&c).map(|items| Listing { items })),
        )
    }

    #[tool(
        description = "Engage a brake: every mutating step in its scope stops before its mutating call and its incident escalates, fleet-wide, until a human releases it. Scope: `all`, or `key=value` parts joined by `,` (`runbook=NAME`, `step=ID`, `tool=NAME`, or an incident parameter such as `service=api`). Use it when automated recovery makes things worse.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn engage_brake(
        &self,
        Parameters(args): Parameters<BrakeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        answer(args.and_then(|args| {
            self.caller(&ctx)
                .and_then(|c| self.service.engage_brake(&c, &args))
        }))
    }
}

/// Tells a client that wants warnings of a refused tool call (a tool error:
/// `{"error": {"code", "message"}}`), as a `notifications/message` from the
/// `runbox` logger, so its log pane shows why.
#[expect(
    deprecated,
    reason = "MCP logging, for the clients that still ask for it"
)]
async fn log_refusal(
    peer: &rmcp::Peer<RoleServer>,
    wanted: Severity,
    tool: &str,
    answer: &rmcp::model::CallToolResponse,
) {
    let rmcp::model::CallToolResponse::Complete(result) = answer else {
        return;
    };
    if result.is_error != Some(true) || wanted > Severity::Warning {
        return;
    }
    let data = serde_json::json!({
        "tool": tool,
        "refused": result.structured_content.clone().unwrap_or_default()["error"],
    });
    let message =
        rmcp::model::LoggingMessageNotificationParam::new(Severity::Warning.level(), data)
            .with_logger("runbox");
    if let Err(e) = peer.notify_logging_message(message).await {
        tracing::debug!(error = %e, "a log message did not reach the MCP client");
    }
}

/// The W3C `traceparent` and `tracestate` of a tool call: its `_meta`'s,
/// else its HTTP request's.
fn trace_context(
    request: &rmcp::model::CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> (Option<String>, Option<String>) {
    let metas = [Some(&context.meta), request.meta.as_ref()];
    if let Some(meta) = metas
        .into_iter()
        .flatten()
        .find(|m| m.get_traceparent().is_some())
    {
        let owned = |v: Option<&str>| v.map(str::to_string);
        return (owned(meta.get_traceparent()), owned(meta.get_tracestate()));
    }
    let Some(parts) = context.extensions.get::<axum::http::request::Parts>() else {
        return (None, None);
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    (header("traceparent"), header("tracestate"))
}

impl Mcp {
    /// The least severe message the client wants for this call: its
    /// request's `_meta` opt-in (2026-07-28), else the session's
    /// `logging/setLevel`; none when it asked for neither.
    fn log_wanted(
        &self,
        request: &rmcp::model::CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Option<Severity> {
        let asked = request
            .meta
            .as_ref()
            .and_then(rmcp::model::RequestMetaObject::log_level)
            .or_else(|| context.meta.log_level());
        asked
            .map(Severity::of)
            .or(*runbox_core::sync::lock(&self.log_level))
    }

    /// Serves MCP on stdin and stdout until the client goes away. Logs must
    /// go to stderr: stdout carries the protocol. A line that is not JSON is
    /// answered `-32700` ([`crate::stdio`]).
    pub async fn serve_stdio(self) -> Result<(), ServiceError> {
        use rmcp::ServiceExt;
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (from_server, to_server) = tokio::io::split(ours);
        let stdout: Arc<tokio::sync::Mutex<dyn tokio::io::AsyncWrite + Send + Unpin>> =
            Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
        tokio::spawn(crate::stdio::filter_input(
            tokio::io::stdin(),
            to_server,
            stdout.clone(),
        ));
        tokio::spawn(crate::stdio::relay_output(from_server, stdout));
        let running = self
            .serve(theirs)
            .await
            .map_err(|e| ServiceError::bad_request(format!("MCP initialization failed: {e}")))?;
        running
            .waiting()
            .await
            .map_err(|e| ServiceError::new(ErrorCode::Unavailable, format!("MCP server: {e}")))?;
        Ok(())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Mcp {
    /// Each tool call in a span of its own, which continues the agent's
    /// trace: the W3C trace context of the request's `_meta` (SEP-414),
    /// else of the HTTP request's headers.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let span = tracing::info_span!("mcp.tool", otel.kind = "server", tool = %request.name);
        let (parent, state) = trace_context(&request, &context);
        runbox_telemetry::traces::continue_trace(&span, parent.as_deref(), state.as_deref());
        let wanted = self.log_wanted(&request, &context);
        let (tool, peer) = (request.name.to_string(), context.peer.clone());
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        let answer = tracing::Instrument::instrument(self.tool_router.call(call), span).await;
        if let (Some(wanted), Ok(answer)) = (wanted, &answer) {
            log_refusal(&peer, wanted, &tool, answer).await;
        }
        answer
    }

    #[expect(
        deprecated,
        reason = "MCP logging, for the clients that still ask for it"
    )]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), rmcp::ErrorData> {
        *runbox_core::sync::lock(&self.log_level) = Some(Severity::of(request.level));
        Ok(())
    }

    async fn list_resources(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, rmcp::ErrorData> {
        let caller = self.caller(&context).map_err(crate::resources::mcp_error)?;
        let cursor = request.as_ref().and_then(|r| r.cursor.as_deref());
        let (resources, next) = crate::resources::list(&self.service, &caller, cursor)?;
        let mut result = rmcp::model::ListResourcesResult::with_all_items(resources);
        result.next_cursor = next;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, rmcp::ErrorData> {
        Ok(rmcp::model::ListResourceTemplatesResult::with_all_items(
            crate::resources::templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, rmcp::ErrorData> {
        let caller = self.caller(&context).map_err(crate::resources::mcp_error)?;
        Ok(crate::resources::read(&self.service, &caller, &request.uri)?.into())
    }

    async fn list_prompts(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, rmcp::ErrorData> {
        Ok(rmcp::model::ListPromptsResult::with_all_items(
            crate::resources::prompts(),
        ))
    }

    async fn get_prompt(
        &self,
        request: rmcp::model::GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, rmcp::ErrorData> {
        let caller = self.caller(&context).map_err(crate::resources::mcp_error)?;
        let args = request.arguments.as_ref();
        Ok(crate::resources::prompt(&self.service, &caller, &request.name, args)?.into())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        // Resource updates only (no list changes: the tools and prompts are
        // fixed), and none when none were asked for; which resources the
        // caller may read is checked in `listen`, where the caller is known.
        let uris = requested
            .resource_subscriptions
            .as_deref()
            .unwrap_or_default();
        let mut accepted = rmcp::model::SubscriptionFilter::new();
        accepted.resource_subscriptions = Some(
            uris.iter()
                .filter(|u| crate::resources::IncidentResource::parse(u).is_ok())
                .take(crate::subscriptions::MAX_SUBSCRIBED)
                .cloned()
                .collect(),
        );
        Some(accepted)
    }

    /// Forwards the accepted resources' updates on the listen stream until
    /// the client cancels it. A resource the caller may not read (or that
    /// does not exist) is never updated.
    async fn listen(
        &self,
        subscription: rmcp::service::SubscriptionContext,
    ) -> Result<(), rmcp::ErrorData> {
        let caller = self
            .caller(subscription.request_context())
            .map_err(crate::resources::mcp_error)?;
        let uris = subscription
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        let subscribed = uris
            .iter()
            .filter_map(|u| crate::subscriptions::Subscribed::check(&self.service, &caller, u).ok())
            .collect();
        let sink = subscription.sink().clone();
        let send = |uri: String| {
            let sink = sink.clone();
            async move { sink.notify_resource_updated(uri).await.is_ok() }
        };
        let listener = self.service.changes();
        crate::subscriptions::forward(listener, subscribed, send, subscription.cancelled()).await;
        Ok(())
    }

    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), rmcp::ErrorData> {
        let caller = self.caller(&context).map_err(crate::resources::mcp_error)?;
        let subscribed =
            crate::subscriptions::Subscribed::check(&self.service, &caller, &request.uri)
                .map_err(crate::resources::mcp_error)?;
        let peer = context.peer.clone();
        let send = move |uri: String| {
            let peer = peer.clone();
            async move {
                let update = rmcp::model::ResourceUpdatedNotificationParam::new(uri);
                peer.notify_resource_updated(update).await.is_ok()
            }
        };
        self.legacy
            .subscribe(&self.service, subscribed, send)
            .map_err(crate::resources::mcp_error)
    }

    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), rmcp::ErrorData> {
        self.legacy.unsubscribe(&request.uri);
        Ok(())
    }

    #[expect(
        deprecated,
        reason = "MCP logging, for the clients that still ask for it"
    )]
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_prompts()
            .enable_logging()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("runbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
