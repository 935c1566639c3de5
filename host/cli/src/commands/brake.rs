//! `runbox brake`: stop every mutating step in a scope, across incidents,
//! until a human releases it.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use runbox_core::inert::{SHOWN_CHARS, shown};
use runbox_core::time::format_ms;
use runbox_engine::fleet::Released;

use super::control;
use super::sign::Signing;
use crate::context::Context;
use crate::output::outln;
use runbox_server::client::route;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Engage a brake: every mutating step in SCOPE stops before its
    /// mutating call and its incident escalates, until a human releases it.
    Engage {
        /// `all`, or `key=value` parts joined by `,`: `runbook=NAME`,
        /// `step=ID`, `tool=NAME`, or an incident parameter (`service=api`).
        scope: String,
        /// Why (shown on every incident it holds).
        #[arg(long)]
        reason: String,
        /// The agent engaging it, recorded as `agent:NAME` (`NAME`,
        /// `agent:NAME`; a `human:NAME` is recorded as `agent:NAME` too:
        /// engaging is unsigned, and only a signed decision is a human's).
        #[arg(long = "as")]
        actor: String,
        /// Runbook files the scope may match besides those of open
        /// incidents (a brake engaged before any incident opens).
        #[arg(long = "runbook")]
        runbooks: Vec<std::path::PathBuf>,
    },
    /// The engaged brakes.
    List {
        /// One JSON object per brake.
        #[arg(long)]
        json: bool,
    },
    /// Release a brake (a human's signed decision); the incidents it
    /// escalated go back to the agent.
    Release {
        /// The brake's scope, as `runbox brake list` shows it.
        scope: String,
        #[command(flatten)]
        signing: Signing,
    },
}

pub(crate) async fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    match command {
        Command::Engage {
            scope,
            reason,
            actor,
            runbooks,
        } => engage(ctx, &scope, &reason, &actor, &runbooks).await,
        Command::List { json } => list(ctx, json),
        Command::Release { scope, signing } => release(ctx, &scope, &signing).await,
    }
}

async fn engage(
    ctx: &Context,
    scope: &str,
    reason: &str,
    actor: &str,
    runbooks: &[std::path::PathBuf],
) -> Result<ExitCode> {
    let by = super::acting_agent(actor)?;
    let brake = match control::here_or_owner(ctx.engine(), ctx.data_dir())? {
        control::Writer::Here(engine) => {
            engine
                .fleet()
                .engage_brake(scope, reason, &by.to_string(), runbooks)?
        }
        control::Writer::Owner(owner) => {
            let args = runbox_server::ControlBrakeArgs {
                scope: scope.to_string(),
                reason: reason.to_string(),
                agent: Some(by.name().to_string()),
            };
            owner.post(&route::at(route::BRAKES), &args).await?
        }
    };
    outln!("{}", brake.describe());
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Context, json: bool) -> Result<ExitCode> {
    let reader = ctx.reader()?;
    let brakes = reader.brakes()?;
    let mut held = reader.held_by_brakes()?;
    for b in &brakes {
        let holds = held.remove(&b.brake.scope).unwrap_or_default();
        if json {
            let mut object = serde_json::to_value(b)?;
            object["holds"] = serde_json::to_value(&holds)?;
            outln!("{}", serde_json::to_string(&object)?);
            continue;
        }
        // The reason is outside text: inert, and only in its labelled field.
        outln!(
            "{:<40} engaged {} by {}, reason: {}; holds: {}",
            b.brake.scope,
            format_ms(b.brake.at_ms),
            b.brake.by,
            shown(&b.brake.reason, SHOWN_CHARS),
            held_list(&holds)
        );
    }
    if brakes.is_empty() && !json {
        outln!("no brake engaged");
    }
    Ok(ExitCode::SUCCESS)
}

/// The incidents a brake holds, on its line: `INC-1 at restart#2, …`,
/// the first [`HELD_SHOWN`] of them.
fn held_list(holds: &[runbox_engine::fleet::Held]) -> String {
    if holds.is_empty() {
        return "no incident".into();
    }
    let mut shown: Vec<String> = holds
        .iter()
        .take(HELD_SHOWN)
        .map(|h| {
            format!(
                "{} at {}#{}",
                h.incident,
                h.step.as_deref().unwrap_or("-"),
                h.attempt
            )
        })
        .collect();
    if holds.len() > HELD_SHOWN {
        shown.push(format!(
            "{} more (--json lists all)",
            holds.len() - HELD_SHOWN
        ));
    }
    shown.join(", ")
}

/// How many held incidents a line of `brake list` names.
const HELD_SHOWN: usize = 10;

async fn release(ctx: &Context, scope: &str, signing: &Signing) -> Result<ExitCode> {
    runbox_core::ident::Name::new(signing.name())
        .map_err(|e| anyhow!("invalid human name {:?}: {}", e.value, e.kind.rule()))?;
    let released: Released = match control::here_or_owner(ctx.engine(), ctx.data_dir())? {
        control::Writer::Here(engine) => {
            let statement =
                engine
                    .fleet()
                    .brake_statement(scope, signing.name(), signing.expires())?;
            let Some(decision) = signing.decision_on(&statement.to_text())? else {
                return Ok(ExitCode::SUCCESS);
            };
            engine.fleet().release_brake(&decision)?
        }
        control::Writer::Owner(owner) => {
            let args = runbox_server::BrakeStatementArgs {
                scope: scope.to_string(),
                signer: signing.name().to_string(),
                ttl_s: Some(signing.expires().as_secs()),
            };
            let answer: runbox_server::StatementText = owner
                .post(&route::at(route::BRAKE_STATEMENTS), &args)
                .await?;
            let Some(decision) = signing.decision_on(&answer.statement)? else {
                return Ok(ExitCode::SUCCESS);
            };
            owner
                .post(&route::at(route::BRAKE_RELEASE), &decision)
                .await?
        }
    };
    outln!(
        "brake `{}` released by human:{}; {} incident(s) handed back to the agent{}",
        released.scope,
        signing.name(),
        released.reopened.len(),
        if released.reopened.is_empty() {
            String::new()
        } else {
            format!(": {}", released.reopened.join(", "))
        }
    );
    Ok(ExitCode::SUCCESS)
}
