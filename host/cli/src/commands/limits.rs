//! `runbox limits`: the rate-limit counts across incidents, each with its
//! uses still in the window; `runbox limits show` and `runbox limits set`:
//! the fleet-wide limits themselves (the data dir's limits.toml, or on a
//! store runners share, the store's, changed by a human's signature).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use runbox_core::fleet_config::{ConfigKind, MAX_CONFIG_BYTES};
use runbox_core::limits::LimitsFile;
use runbox_core::time::format_ms;

use super::sign::Consent;
use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// One JSON object per count: its key and its uses.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the fleet-wide limits as they stand (limits.toml's format).
    Show,
    /// Make FILE (limits.toml's format) the fleet-wide limits: checked
    /// first; on a store runners share, a change of the fleet timeline
    /// signed by one of its humans, which every runner enforces from its
    /// next mutating call; else written as the data dir's limits.toml.
    Set {
        /// The limits file.
        file: PathBuf,
        #[command(flatten)]
        consent: Consent,
    },
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    match args.command {
        None => counts(args.json, ctx),
        Some(Command::Show) => show(ctx),
        Some(Command::Set { file, consent }) => set(ctx, &file, &consent),
    }
}

fn show(ctx: &Context) -> Result<ExitCode> {
    let text = if ctx.shared_store() {
        let incidents = ctx.reader()?;
        runbox_incidents::config::read(&**incidents.store(), ConfigKind::Limits)?
            .text()
            .to_string()
    } else {
        let path = ctx.limits_path();
        LimitsFile::load(&path)?;
        std::fs::read_to_string(&path).unwrap_or_default()
    };
    if text.trim().is_empty() {
        eprintln!("runbox: no fleet-wide limits (only the runbooks' own)");
    }
    crate::output::out!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn set(ctx: &Context, file: &std::path::Path, consent: &Consent) -> Result<ExitCode> {
    let text = runbox_core::files::read_capped(file, MAX_CONFIG_BYTES as u64)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if !ctx.shared_store() {
        consent.not_here()?;
        LimitsFile::parse(&text, &file.display().to_string())?;
        let path = ctx.limits_path();
        runbox_core::files::write_private(&path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?;
        outln!("{} set from {}", path.display(), file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let engine = ctx.engine_for_config()?;
    if let Some(change) = consent.change(&engine, ConfigKind::Limits, text)? {
        outln!(
            "the fleet's limits set from {}: fleet change {} by {}",
            file.display(),
            change.seq,
            change.by
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn counts(json: bool, ctx: &Context) -> Result<ExitCode> {
    let counts = ctx.reader()?.limit_counts()?;
    for (key, uses) in &counts {
        if json {
            outln!("{}", serde_json::json!({ "count": key, "uses": uses.uses }));
            continue;
        }
        outln!("{key}: {} use(s)", uses.uses.len());
        for u in &uses.uses {
            outln!(
                "  {} {} {}#{} `{}`",
                format_ms(u.at_ms),
                u.incident,
                u.step,
                u.attempt,
                u.tool
            );
        }
    }
    if counts.is_empty() && !json {
        outln!("nothing counted yet");
    }
    Ok(ExitCode::SUCCESS)
}
