use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use runbox_review::ModuleCaps;

use super::review::Format;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The module: binary wasm or WAT text.
    module: PathBuf,
    /// Output format (`json`: `runbox.caps/v1`).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read {}", args.module.display()))?;
    let caps = ModuleCaps::inspect(&bytes).with_context(|| args.module.display().to_string())?;
    if args.format == Format::Json {
        outln!("{}", serde_json::to_string_pretty(&caps)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("module   {}", args.module.display());
    outln!("sha256   {}", caps.sha256);
    outln!("bytes    {}", caps.bytes);
    outln!("imports");
    for group in &caps.imports {
        outln!("  {} ({})", group.capability, group.module);
        for item in &group.items {
            outln!("    {:<24} {}", item.name, item.kind);
        }
    }
    outln!("exports");
    for item in &caps.exports {
        outln!("  {:<26} {}", item.name, item.kind);
    }
    for m in &caps.memories {
        outln!(
            "memory   {} pages initial, maximum {}{}{}{}",
            m.initial_pages,
            m.maximum_pages
                .map_or("none".to_string(), |p| p.to_string()),
            if m.imported { ", imported" } else { "" },
            if m.memory64 { ", 64-bit" } else { "" },
            if m.shared { ", shared" } else { "" },
        );
    }
    for t in &caps.tables {
        outln!(
            "table    {} {} initial, maximum {}{}",
            t.element,
            t.initial,
            t.maximum.map_or("none".to_string(), |p| p.to_string()),
            if t.imported { ", imported" } else { "" },
        );
    }
    outln!("features {}", caps.features.join(", "));
    Ok(ExitCode::SUCCESS)
}
