//! One file per command, each with its arguments and one entry function.

mod agent;
mod alerts;
mod brake;
mod caps;
mod config_file;
mod control;
mod decide;
mod doctor;
mod exec;
mod export;
mod human;
mod kv;
mod limits;
mod list;
mod mcp;
mod new;
mod notify;
mod open;
mod pin;
mod plan;
mod replay;
mod report;
mod review;
mod run;
mod serve;
mod serving;
mod sign;
mod status;
mod store;
mod test;
mod timeline;
mod token;
mod verify;

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use runbox_trust::Action;

use crate::context::Context;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Open an incident with a runbook (validated fully first).
    Open(open::Args),
    /// Execute steps until resolved, escalated, or waiting on a human.
    Run(run::Args),
    /// Status, owner, checkpoint, pending approval, next step, and why.
    Status(status::Args),
    /// The event history, one line per event.
    Timeline(timeline::Args),
    /// Approve the attempt of a high-impact step that awaits approval.
    Approve(decide::OnStep),
    /// Deny it: the incident escalates to the denying human.
    Deny(decide::OnStep),
    /// A human takes the incident; the agent stops executing steps.
    Takeover(decide::OnIncident),
    /// Hand the incident back to the agent from the current checkpoint.
    Handback(decide::OnIncident),
    /// Settle an in-doubt or escalated step by stating its outcome.
    Resolve(decide::Resolve),
    /// Ask for a fresh attempt of an in-doubt or escalated step.
    Retry(decide::Settle),
    /// Skip an in-doubt or escalated step; the runbook goes on as after `ok`.
    Skip(decide::Settle),
    /// The committed step KV of an incident (or the shared namespace), as JSON.
    Kv(kv::Args),
    /// Rate-limit counts across incidents, with their uses in the window.
    Limits(limits::Args),
    /// Incidents with status and owner.
    List(list::Args),
    /// Brakes across incidents: engage one, list them, release one (a
    /// human's signed decision).
    Brake {
        #[command(subcommand)]
        command: brake::Command,
    },
    /// The humans who may decide: their SSH keys in allowed_signers.
    Human {
        #[command(subcommand)]
        command: human::Command,
    },
    /// Agents of the HTTP API and their bearer tokens.
    Agent {
        #[command(subcommand)]
        command: agent::Command,
    },
    /// Alert groups `serve` received that no route took (or whose route
    /// could not open an incident).
    Alerts(alerts::Args),
    /// Check this data dir (or etcd store) as a new user would: versions,
    /// file permissions, the module cache, routes and sinks, the clock
    /// against etcd, and what waits for a person. Exits 1 on a failure.
    Doctor(doctor::Args),
    /// Serve the HTTP API (and MCP at /mcp) for agents, dashboards, bots.
    Serve(serve::Args),
    /// Serve MCP on stdio for one agent (add this command to an MCP
    /// client's configuration).
    Mcp(mcp::Args),
    /// Move incidents between stores (the data dir and etcd).
    Store {
        #[command(subcommand)]
        command: store::Command,
    },
    /// Where escalations go (notify.toml): check the sinks, list what
    /// waits in the outbox, retry parked notifications, send a sample.
    Notify {
        #[command(subcommand)]
        command: notify::Command,
    },
    /// Manage the mutation token.
    Token {
        #[command(subcommand)]
        command: token::Command,
    },
    /// Export an incident's postmortem (JSON, Markdown, HTML), or incidents
    /// as rows for a warehouse (JSONL, CSV).
    Export(export::Args),
    /// Failure patterns across incidents: per runbook and step, outcomes,
    /// errors, overrides, durations and approval waits.
    Report(report::Args),
    /// Check incident records for consistency (all incidents without an id).
    /// Exits 1 on any violation; in-doubt attempts are flagged, not violations.
    Verify(verify::Args),
    /// Review what each step of a runbook can touch, with findings a CI
    /// pipeline can gate on; or what a change to a runbook adds (--diff, --git).
    Review(review::Args),
    /// What a module asks for: imports by capability, exports, memories,
    /// tables, wasm features.
    Caps(caps::Args),
    /// The path through a runbook without running anything: each step's
    /// gates, tools and transitions.
    Plan(plan::Args),
    /// Re-run recorded attempts against what they saw (no real tool runs,
    /// nothing is written), or test a new module on past attempts.
    Replay(replay::Args),
    /// Pin each step to its module's sha256, so the reviewed modules are the
    /// only ones that run.
    Pin(pin::Args),
    /// Run a whole runbook in memory against case files with scripted tool
    /// answers: no store, no real tool; checks each case's expectations.
    Test(test::Args),
    /// Create a working step (in Rust, C, WAT or AssemblyScript) or runbook.
    New {
        #[command(subcommand)]
        command: new::Command,
    },
    /// Run one step once in the sandbox and print its report as JSON.
    /// Nothing is persisted: this is the step author's test bench.
    Exec(exec::Args),
}

impl Command {
    /// Runs the command.
    pub(crate) async fn run(self, ctx: &Context) -> Result<ExitCode> {
        match self {
            Command::Open(args) => open::run(args, ctx),
            Command::Run(args) => run::run(args, ctx).await,
            Command::Status(args) => status::run(args, ctx),
            Command::Timeline(args) => timeline::run(args, ctx),
            Command::Approve(args) => decide::run(args.verb(Action::Approve), ctx).await,
            Command::Deny(args) => decide::run(args.verb(Action::Deny), ctx).await,
            Command::Takeover(args) => decide::run(args.verb(Action::Takeover), ctx).await,
            Command::Handback(args) => decide::run(args.verb(Action::Handback), ctx).await,
            Command::Resolve(args) => decide::run(args.verb(), ctx).await,
            Command::Retry(args) => decide::run(args.verb(Action::Retry), ctx).await,
            Command::Skip(args) => decide::run(args.verb(Action::Skip), ctx).await,
            Command::Kv(args) => kv::run(args, ctx),
            Command::Limits(args) => limits::run(args, ctx),
            Command::List(args) => list::run(args, ctx),
            Command::Brake { command } => brake::run(command, ctx).await,
            Command::Token { command } => token::run(command, ctx),
            Command::Notify { command } => notify::run(command, ctx).await,
            Command::Store { command } => store::run(command, ctx),
            Command::Agent { command } => agent::run(command, ctx).await,
            Command::Alerts(args) => alerts::run(args, ctx),
            Command::Doctor(args) => doctor::run(args, ctx).await,
            Command::Serve(args) => serve::run(args, ctx).await,
            Command::Mcp(args) => mcp::run(args, ctx).await,
            Command::Human { command } => human::run(command, ctx).await,
            Command::Export(args) => export::run(args, ctx),
            Command::Report(args) => report::run(args, ctx),
            Command::Verify(args) => verify::run(args, ctx),
            Command::Review(args) => review::run(args),
            Command::Caps(args) => caps::run(args),
            Command::Pin(args) => pin::run(args),
            Command::Replay(args) => replay::run(args, ctx).await,
            Command::Plan(args) => plan::run(args, ctx),
            Command::Exec(args) => exec::run(args).await,
            Command::Test(args) => test::run(args).await,
            Command::New { command } => new::run(command),
        }
    }
}

/// The agent an unsigned act (`open`, `brake engage`) is recorded under,
/// from its `--as`: `NAME` or `agent:NAME`. A `human:NAME` is recorded as
/// `agent:NAME`, said on stderr: no unsigned act is ever a human's (only
/// a decision signed with their key is).
fn acting_agent(flag: &str) -> Result<runbox_core::records::Owner> {
    let (name, said_human) = match flag.split_once(':') {
        Some(("agent", name)) => (name, false),
        Some(("human", name)) => (name, true),
        _ => (flag, false),
    };
    let agent = runbox_core::records::Owner::unsigned(&format!("agent:{name}"))
        .map_err(|e| anyhow::anyhow!("--as {flag:?}: {e}"))?;
    if said_human {
        eprintln!(
            "runbox: recorded as {agent}, not {flag}: an unsigned act is an agent's; only a human's signed decision is recorded under their name"
        );
    }
    Ok(agent)
}

/// The mutation token from `file`, else from `RUNBOX_MUTATION_TOKEN`. A file
/// others can read is refused, as ssh refuses such a private key.
fn read_token(file: Option<&std::path::Path>) -> Result<Option<String>> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt;
    if let Some(path) = file {
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the token file {} is readable by others (mode {:o}): `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        return Ok(Some(token.trim().to_string()));
    }
    Ok(std::env::var("RUNBOX_MUTATION_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty()))
}

/// A KV seed file: a JSON object of key to value (strings as they are,
/// anything else as its JSON text), for `exec --kv` and `open --kv`.
fn load_kv_seed(path: &std::path::Path) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    use anyhow::{Context as _, bail};
    let text = runbox_core::files::read_capped(path, runbox_core::files::MAX_USER_FILE_BYTES)
        .with_context(|| format!("cannot read KV seed {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("KV seed {} is not valid JSON", path.display()))?;
    let serde_json::Value::Object(object) = value else {
        bail!(
            "KV seed {} must be a JSON object of key to value",
            path.display()
        );
    };
    // One rule for every seed: `runbox_core::case::KvSeed`.
    Ok(runbox_core::case::KvSeed(object.into_iter().collect()).to_bytes())
}
