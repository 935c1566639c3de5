use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use runbox_core::time::format_ms;
use runbox_engine::{RunExit, RunOptions};

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id.
    #[arg(required_unless_present = "all")]
    id: Option<String>,
    /// Run every incident open for the agent, concurrently.
    #[arg(long, conflicts_with = "id")]
    all: bool,
    /// Diagnosis mode: mutating and KV-writing steps are not run (the run
    /// stops before one, exit 7); not even the incident's step KV changes.
    /// A diagnosis step returns its finding as its output instead.
    #[arg(long)]
    read_only: bool,
    /// Run the steps for real, but intercept every mutating tool call and
    /// record what it would have done (answered with the tool's `dry_run`
    /// reply). The incident stays a dry run for good.
    #[arg(long, conflicts_with = "read_only")]
    dry_run: bool,
    /// File holding the mutation token (else RUNBOX_MUTATION_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Return (exit 8) instead of waiting through backoff and cooldowns.
    #[arg(long)]
    no_wait: bool,
    /// The agent's name.
    #[arg(long, default_value = "runbox")]
    agent: String,
    /// Step attempts (and so tool processes) running at once across
    /// incidents; the others wait their turn. At most 65536.
    #[arg(long, default_value_t = runbox_engine::Engine::DEFAULT_MAX_CONCURRENT_ATTEMPTS,
          value_parser = concurrency)]
    concurrency: usize,
    /// With --all: keep running, taking up incidents as they become
    /// runnable (and those a lapsed runner held), until SIGINT or SIGTERM.
    /// How several runners share a store on etcd.
    #[arg(long, requires = "all")]
    follow: bool,
    /// With --follow: how often to look for incidents to run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "follow")]
    poll: std::time::Duration,
    /// With --follow.
    #[command(flatten)]
    metrics: super::serving::MetricsListen,
}

/// `--concurrency`: 1 to [`runbox_engine::Engine::MAX_CONCURRENT_ATTEMPTS`].
fn concurrency(text: &str) -> Result<usize, String> {
    let max = runbox_engine::Engine::MAX_CONCURRENT_ATTEMPTS;
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of attempts from 1 to {max}")),
    }
}

pub(crate) async fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    if args.metrics.asked() && !args.follow {
        anyhow::bail!(
            "--metrics-listen needs --all --follow: a one-shot run exits before a scrape"
        );
    }
    let opts = RunOptions {
        read_only: args.read_only,
        token: super::read_token(args.token_file.as_deref())?,
        no_wait: args.no_wait,
        agent: Some(args.agent),
        progress: Some(Arc::new(|line: &str| eprintln!("runbox: {line}"))),
        dry_run: args.dry_run,
        one_step: false,
    };
    let engine = Arc::new(ctx.engine_for(args.concurrency)?);
    // Human decisions reach this process through the control socket; they
    // need nothing of a service's agent settings.
    let mut decisions =
        runbox_server::Service::new(engine.clone(), runbox_server::ServiceConfig::default());
    // A run that follows incidents owns the data dir for as long as it
    // runs: it delivers notifications as they are committed, like `serve`.
    let sinks = ctx.shared_store() || !engine.sinks()?.is_empty();
    if args.follow && sinks {
        decisions = decisions.with_notifier(runbox_notify::Notifier::new(
            engine.clone(),
            ctx.data_dir(),
        )?);
    }
    if args.metrics.asked() {
        decisions = super::serving::with_metrics(decisions, &engine)?;
    }
    let decisions = Arc::new(decisions);
    super::control::listen(ctx, &decisions).await;
    if args.follow {
        args.metrics.start(decisions.ops()).await?;
        return follow(&engine, &opts, args.poll).await;
    }
    let Some(id) = args.id else {
        let mut worst = 0u8;
        for (id, exit) in engine.runs().run_all(&opts).await? {
            let code = match exit {
                Ok(exit) => report_exit(&id, &exit)?,
                Err(e) => {
                    eprintln!("runbox: {id}: {e}");
                    2
                }
            };
            worst = worst.max(code);
        }
        super::notify::deliver_before_exit(&engine, ctx).await;
        return Ok(ExitCode::from(worst));
    };
    let exit = engine.runs().run(&id, &opts).await;
    // What the run committed before it stopped is told, whatever the exit.
    super::notify::deliver_before_exit(&engine, ctx).await;
    Ok(ExitCode::from(report_exit(&id, &exit?)?))
}

/// Runs incidents as they come until SIGINT or SIGTERM.
async fn follow(
    engine: &Arc<runbox_engine::Engine>,
    opts: &RunOptions,
    poll: std::time::Duration,
) -> Result<ExitCode> {
    let report: runbox_engine::OnStop = Arc::new(|id: &str, exit| match exit {
        Ok(exit) => {
            let _ = report_exit(id, exit);
        }
        Err(e) => eprintln!("runbox: {id}: {e}"),
    });
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    engine.runs().follow(opts, poll, report, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// Prints how the run ended and returns its exit code.
fn report_exit(id: &str, exit: &RunExit) -> Result<u8> {
    let (code, line) = match exit {
        RunExit::Resolved => (0, "resolved".to_string()),
        RunExit::AwaitingApproval { step, attempt } => (
            3,
            format!(
                "awaiting approval of `{step}` attempt {attempt}: runbox approve {id} {step} --as NAME --key KEY"
            ),
        ),
        RunExit::Escalated { reason } => (4, format!("escalated: {reason}")),
        RunExit::Failed { reason } => (5, format!("failed: {reason}")),
        RunExit::HumanOwner { owner } => (
            6,
            format!(
                "owned by {owner}; the agent does not act until a human hands it back: runbox handback {id} --as NAME --key KEY"
            ),
        ),
        RunExit::Blocked { reason } => (7, format!("blocked: {reason}")),
        RunExit::Waiting { until_ms, reason } => (
            8,
            format!("waiting until {} for {reason}", format_ms(*until_ms)),
        ),
        RunExit::Stepped { step, attempt } => (0, format!("ran `{step}` attempt {attempt}")),
        RunExit::Elsewhere { runner } => (9, format!("runner `{runner}` holds it; left alone")),
    };
    outln!("{id}: {line}");
    Ok(code)
}
