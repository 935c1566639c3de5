//! `show` and `set FILE` of a document of the fleet's configuration (the
//! limits, the alert routes, the notification sinks): the data dir's file
//! on the embedded store; on a store runners share, the store's document,
//! each change a human's signed change of the fleet timeline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use runbox_core::fleet_config::{ConfigKind, MAX_CONFIG_BYTES};

use super::sign::Consent;
use crate::context::Context;
use crate::output::{out, outln};

/// What to do with the document.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum FileCommand {
    /// Print it as it stands (its file's format).
    Show,
    /// Make FILE the document: checked first; on a store runners share, a
    /// change of the fleet timeline signed by one of its humans (`--as
    /// NAME --key KEY`), which every runner reads from then on; else
    /// written as the data dir's file.
    Set {
        /// The file.
        file: PathBuf,
        #[command(flatten)]
        consent: Consent,
    },
}

pub(crate) fn run(kind: ConfigKind, command: FileCommand, ctx: &Context) -> Result<ExitCode> {
    match command {
        FileCommand::Show => show(kind, ctx),
        FileCommand::Set { file, consent } => set(kind, &file, &consent, ctx),
    }
}

fn show(kind: ConfigKind, ctx: &Context) -> Result<ExitCode> {
    let text = if ctx.shared_store() {
        ctx.reader()?.config_text(kind)?
    } else {
        let path = ctx.data_dir().join(kind.file());
        let text = runbox_core::files::read_capped(&path, MAX_CONFIG_BYTES as u64);
        match text {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            other => other.with_context(|| format!("cannot read {}", path.display()))?,
        }
    };
    if text.trim().is_empty() {
        eprintln!("runbox: the fleet's {kind} are empty");
    }
    out!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn set(kind: ConfigKind, file: &Path, consent: &Consent, ctx: &Context) -> Result<ExitCode> {
    let text = runbox_core::files::read_capped(file, MAX_CONFIG_BYTES as u64)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if !ctx.shared_store() {
        consent.not_here()?;
        check_file(kind, &text, file)?;
        let path = ctx.data_dir().join(kind.file());
        runbox_core::files::write_private(&path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?;
        outln!("{} set from {}", path.display(), file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let engine = ctx.engine_for_config()?;
    if let Some(change) = consent.change(&engine, kind, text)? {
        outln!(
            "the fleet's {kind} set from {}: fleet change {} by {}",
            file.display(),
            change.seq,
            change.by
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks a file about to become the data dir's, naming it in errors.
fn check_file(kind: ConfigKind, text: &str, file: &Path) -> Result<()> {
    let origin = file.display().to_string();
    match kind {
        ConfigKind::Limits => drop(runbox_core::limits::LimitsFile::parse(text, &origin)?),
        ConfigKind::Routes => drop(runbox_core::route::Routes::parse(text, &origin)?),
        ConfigKind::Sinks => drop(runbox_core::notify::Routing::parse(text, &origin)?),
        ConfigKind::Signers | ConfigKind::Passkeys => {
            bail!("the humans change one at a time: `runbox human add|remove`")
        }
    }
    Ok(())
}
