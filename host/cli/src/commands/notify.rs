//! `runbox notify`: where escalations go (`notify.toml`), what waits in the
//! outbox, trying parked notifications again, and a sample to each sink.
//! Also [`deliver_before_exit`], what a command that commits does before it
//! exits when no `runbox serve` delivers for it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use runbox_core::notify::DeliveryState;
use runbox_core::time::format_ms;
use runbox_engine::{Engine, Notification};
use runbox_notify::Notifier;
use runbox_server::RetryArgs;
use runbox_server::client::route;

use super::config_file::{self, FileCommand};
use super::control;
use crate::context::Context;
use crate::output::outln;
use runbox_core::fleet_config::ConfigKind;

/// How long a command that committed tries to deliver its notifications
/// before it exits; what is left waits for the next process that owns the
/// data dir (`runbox serve`, the next command) or `runbox notify retry`.
pub(crate) const FLUSH_BUDGET: Duration = Duration::from_secs(15);

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check notify.toml and read each sink's URL and secret: what `serve`
    /// does before it starts.
    Check,
    /// Notifications not delivered yet (waiting for a retry, or parked).
    List {
        /// Every notification, delivered ones too.
        #[arg(long)]
        all: bool,
        /// One JSON object per notification.
        #[arg(long)]
        json: bool,
    },
    /// Try parked notifications again with a fresh budget of tries.
    Retry {
        /// The notification's id (`runbox notify list`); none: every parked one.
        id: Option<String>,
    },
    /// Send a sample notification to SINK and print what it answered.
    Test {
        /// The sink's name in notify.toml.
        sink: String,
    },
    /// Print the sinks as they stand (notify.toml's format).
    Show,
    /// Make FILE (notify.toml's format) the sinks: on a store runners
    /// share, a human's signed change every runner reads within seconds
    /// (secrets stay in each runner's files and variables); else written
    /// as the data dir's notify.toml, read when a process starts.
    Set {
        /// The file.
        file: std::path::PathBuf,
        #[command(flatten)]
        consent: super::sign::Consent,
    },
}

pub(crate) async fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    match command {
        Command::Check => check(ctx),
        Command::List { all, json } => list(ctx, all, json),
        Command::Retry { id } => retry(ctx, id).await,
        Command::Test { sink } => test(ctx, &sink).await,
        Command::Show => config_file::run(ConfigKind::Sinks, FileCommand::Show, ctx),
        Command::Set { file, consent } => {
            config_file::run(ConfigKind::Sinks, FileCommand::Set { file, consent }, ctx)
        }
    }
}

fn check(ctx: &Context) -> Result<ExitCode> {
    let routing = ctx.notify_routing()?;
    runbox_notify::check(&routing, ctx.data_dir())?;
    for sink in routing.sinks() {
        let events: Vec<_> = sink.events.iter().map(|e| e.as_str()).collect();
        outln!("{} ({}): {}", sink.name, sink.kind, events.join(", "));
    }
    if routing.is_empty() {
        outln!("no sinks: escalations reach no one outside runbox (see docs/oncall.md)");
    }
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Context, all: bool, json: bool) -> Result<ExitCode> {
    let incidents = ctx.reader()?;
    let shown: Vec<Notification> = if all {
        incidents.every_notification()?
    } else {
        incidents.undelivered()?
    };
    for n in &shown {
        if json {
            outln!("{}", serde_json::to_string(n)?);
        } else {
            outln!("{}", line(n));
        }
    }
    if shown.is_empty() && !json {
        outln!(
            "{}",
            if all {
                "no notifications"
            } else {
                "every notification is delivered"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `INC-7:12:hook escalated pending, 3 tries, next 2026-12-03 12:00:01: HTTP 500`.
pub(crate) fn line(n: &Notification) -> String {
    let d = &n.delivery;
    let mut out = format!(
        "{} {} {}, {} tries",
        n.id, n.entry.event, d.state, d.attempts
    );
    match (d.state, d.next_at_ms, d.delivered_ms) {
        (DeliveryState::Pending, Some(at), _) => out.push_str(&format!(", next {}", format_ms(at))),
        (DeliveryState::Delivered, _, Some(at)) => out.push_str(&format!(", at {}", format_ms(at))),
        _ => {}
    }
    if let (Some(e), false) = (&d.last_error, d.state == DeliveryState::Delivered) {
        out.push_str(&format!(": {}", runbox_core::inert::shown(e, 200)));
    }
    out
}

async fn retry(ctx: &Context, id: Option<String>) -> Result<ExitCode> {
    let engine = match control::here_or_owner(ctx.engine(), ctx.data_dir())? {
        control::Writer::Here(engine) => Arc::new(engine),
        control::Writer::Owner(owner) => {
            let retried: Vec<Notification> = owner
                .post(&route::at(route::NOTIFY_RETRY), &RetryArgs { id })
                .await?;
            outln!(
                "{} notification(s) queued again by the process that owns the data dir",
                retried.len()
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let notifier = Notifier::new(engine, ctx.data_dir())?;
    let retried = notifier.retry(id.as_deref())?;
    let delivered = notifier.flush(FLUSH_BUDGET).await?.delivered;
    outln!(
        "{} notification(s) tried again, {delivered} delivered",
        retried.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn test(ctx: &Context, sink: &str) -> Result<ExitCode> {
    let routing = ctx.notify_routing()?;
    match runbox_notify::send_sample(&routing, ctx.data_dir(), sink).await? {
        Ok(answer) => {
            outln!("{sink}: {answer}");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => bail!("{sink}: {error}"),
    }
}

/// What a command that committed does before it exits: tries each due
/// notification once, within [`FLUSH_BUDGET`], and says what is left. It
/// never fails the command: what it committed stands, and what is not
/// delivered waits in the outbox for the next process that owns the data
/// dir.
pub(crate) async fn deliver_before_exit(engine: &Arc<Engine>, ctx: &Context) {
    match engine.sinks() {
        Ok(routing) if routing.is_empty() => return,
        Ok(_) => {}
        Err(e) => {
            eprintln!("runbox: notifications not sent: {e}");
            return;
        }
    }
    let flushed = match Notifier::new(engine.clone(), ctx.data_dir()) {
        Ok(notifier) => notifier.flush(FLUSH_BUDGET).await,
        Err(e) => Err(e),
    };
    let owed = match flushed {
        Ok(flushed) => Ok(flushed.owed),
        Err(e) => {
            eprintln!("runbox: notifications not sent: {e}");
            engine.incidents().undelivered().map(|o| o.len())
        }
    };
    match owed {
        Ok(0) => {}
        Ok(n) => eprintln!(
            "runbox: {n} notification(s) not delivered yet: `runbox serve` delivers them, `runbox notify list` shows them"
        ),
        Err(e) => eprintln!("runbox: cannot read the outbox: {e}"),
    }
}
