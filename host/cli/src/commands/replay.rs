use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use runbox_engine::replay::{ReplayReport, Selection, Verdict, replay, replay_all};
use runbox_sandbox::{Sandbox, SandboxConfig};

use super::review::Format;
use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when every replayed attempt is the same (attempts in doubt \
or without a recording are reported, not counted), 1 when one differs, 2 on errors. \
Nothing runs for real and nothing is written: KV reads and tool calls are answered from the recording.\n\n\
Examples:\n  runbox replay INC-7                      # every attempt of the incident\n  \
runbox replay INC-7 diagnose --attempt 2\n  \
runbox replay INC-7 diagnose --module new/probe.wasm\n  \
runbox replay --all --step diagnose --module new/probe.wasm --since 2026-11-01"
)]
pub(crate) struct Args {
    /// The incident (omit with --all).
    #[arg(required_unless_present = "all")]
    id: Option<String>,
    /// Only this step.
    step: Option<String>,
    /// Only this attempt.
    #[arg(long)]
    attempt: Option<u32>,
    /// Replay against this module instead of the recorded one.
    #[arg(long)]
    module: Option<PathBuf>,
    /// Every incident (with --step, and --module to test a new version).
    #[arg(long, conflicts_with = "id")]
    all: bool,
    /// The step, with --all.
    #[arg(long = "step", id = "step_flag")]
    step_flag: Option<String>,
    /// With --all: only incidents opened on or after this date (`2026-11-01`).
    #[arg(long, requires = "all")]
    since: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub(crate) async fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let incidents = ctx.reader()?;
    // A replay writes nothing, not even compiled modules, but loads those
    // the runs kept: a Python component compiles in seconds, loads in 0.1.
    let sandbox = Sandbox::new(SandboxConfig {
        artifact_dir: Some(ctx.data_dir().join("modules")),
        keep_new_artifacts: false,
        ..SandboxConfig::default()
    });
    let step = args.step_flag.as_deref().or(args.step.as_deref());
    let selection = Selection {
        step,
        attempt: args.attempt,
        module: args.module.as_deref(),
    };
    let reports = match &args.id {
        Some(id) => replay(&incidents, &sandbox, id, &selection).await?,
        None => {
            replay_all(
                &incidents,
                &sandbox,
                since_ms(args.since.as_deref())?,
                &selection,
            )
            .await?
        }
    };
    if args.format == Format::Json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            print(r)?;
        }
        if reports.is_empty() {
            outln!("no attempt matched");
        }
    }
    Ok(if reports.iter().any(|r| r.verdict == Verdict::Different) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn since_ms(since: Option<&str>) -> Result<Option<u64>> {
    let Some(since) = since else {
        return Ok(None);
    };
    let text = if since.len() == 10 {
        format!("{since}T00:00:00Z")
    } else {
        since.to_string()
    };
    match humantime::parse_rfc3339_weak(&text) {
        Ok(t) => Ok(Some(
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )),
        Err(e) => bail!("--since {since:?}: {e} (expected a date like 2026-11-01)"),
    }
}

fn print(r: &ReplayReport) -> Result<()> {
    let verdict = match r.verdict {
        Verdict::Same => "same",
        Verdict::Different => "DIFFERENT",
        Verdict::NotReplayable => "not replayable",
        Verdict::InDoubt => "in doubt",
    };
    outln!("{} {}#{}: {verdict}", r.incident, r.step, r.attempt);
    if let Some(d) = &r.divergence {
        outln!("  first divergence {d}");
    }
    for d in &r.differences {
        outln!("  {d}");
    }
    Ok(())
}
