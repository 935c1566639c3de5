//! # runbox-server: the agent interface
//!
//! Recovery assistants (AI agents) drive incidents through MCP; dashboards
//! and chat-ops bots through HTTP. Both get exactly the powers the safety
//! rules allow, enforced here, never by the client:
//!
//! - [`Service`] is the one service layer: every operation and every rule
//!   check (what an agent's [`Power`] allows, whether a step mutates, the
//!   mutation token, read-only serving) lives there once.
//! - [`mcp::Mcp`] serves it as MCP tools (stdio for `runbox mcp`,
//!   streamable HTTP at `/mcp`).
//! - [`http::router`] serves it as a JSON API under `/v1`, with server-sent
//!   events of an incident's timeline.
//! - [`Agents`] keeps the agents and the sha256 of their bearer tokens.
//! - `POST /v1/alerts` takes Alertmanager's webhooks (the `alert` power)
//!   and routes them to incidents ([`Service::receive_alerts`]).
//!
//! No operation grants a human decision: a decision needs a human's SSH
//! signature, which the engine verifies whoever hands it in.

#![deny(missing_docs)]

mod agents;
mod alerts;
mod changes;
pub mod client;
pub mod console;
pub mod control;
mod error;
pub mod forward;
pub mod health;
pub mod http;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod resources;
mod service;
mod stdio;
mod subscriptions;
pub mod traces;

pub use agents::{AgentRecord, Agents, Caller, Power, Principal};
pub use alerts::{AlertOutcome, AlertReceipt, MAX_AUTO_STEPS};
pub use error::{ErrorBody, ErrorCode, ServiceError};
pub use service::{
    Admin, AwaitArgs, BrakeArgs, BrakeStatementArgs, ChangeReport, ControlBrakeArgs, Done,
    EscalateArgs, HumanArgs, HumanKey, IncidentArgs, IncidentDetail, MAX_AWAIT, MAX_TIMELINE_PAGE,
    NameArgs, NewAgent, NewAgentArgs, NextAction, NoteArgs, OpenArgs, PasskeyArgs, PasskeyLink,
    PendingApproval, RUN_STEP_WAIT, Removed, RetryArgs, RunStepReport, RunbookArgs, RunbookInfo,
    RunbookStep, Service, ServiceConfig, StatementArgs, StatementText, StepRecordArgs,
    TimelineArgs, TimelinePage,
};
