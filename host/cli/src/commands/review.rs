use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use runbox_core::text::count;
use runbox_review::{Diff, Finding, Review, RunbookFiles, Severity, Source, StepReview, Summary};
use runbox_sandbox::{Sandbox, SandboxConfig};

use crate::output::outln;

/// How a review is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned text for people.
    Table,
    /// JSON for pipelines (`runbox.review/v1`, `runbox.review-diff/v1`).
    Json,
}

/// The lowest severity that fails the review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Deny {
    /// Fail on errors only (the default).
    Errors,
    /// Fail on warnings too.
    Warnings,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when no finding reaches the --deny level, 1 when one does, \
2 when the review could not be made (unreadable runbook, bad revision).\n\n\
Examples:\n  runbox review runbook.toml --deny warnings\n  \
runbox review --diff old/runbook.toml runbook.toml\n  \
runbox review --git origin/main..HEAD runbook.toml"
)]
pub(crate) struct Args {
    /// The runbook (with --git: its path in the repository).
    #[arg(required_unless_present = "diff")]
    runbook: Option<PathBuf>,
    /// Compare two runbook files: what NEW adds to OLD.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], conflicts_with_all = ["runbook", "git"])]
    diff: Option<Vec<PathBuf>>,
    /// Compare two git revisions of the runbook (`REV1..REV2`), or one
    /// revision with the working tree (`REV`).
    #[arg(long, value_name = "REV1..REV2")]
    git: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Shorthand for `--format json`.
    #[arg(long, hide = true)]
    json: bool,
    /// Fail on findings of this severity and above.
    #[arg(long, value_enum, default_value_t = Deny::Errors)]
    deny: Deny,
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let format = if args.json { Format::Json } else { args.format };
    let deny = match args.deny {
        Deny::Errors => Severity::Error,
        Deny::Warnings => Severity::Warning,
    };
    let sandbox = Sandbox::new(SandboxConfig::default());
    let summary = match (&args.diff, &args.git, &args.runbook) {
        (Some(pair), _, _) => {
            let old = RunbookFiles::load(&Source::Disk, &pair[0])?;
            let new = RunbookFiles::load(&Source::Disk, &pair[1])?;
            print_diff(&runbox_review::diff(&old, &new), format)?
        }
        (None, Some(range), Some(path)) => {
            let (old, new) = git_sources(range, path)?;
            let old = RunbookFiles::load(&old, path)?;
            let new = RunbookFiles::load(&new, path)?;
            print_diff(&runbox_review::diff(&old, &new), format)?
        }
        (None, None, Some(path)) => print_review(
            &runbox_review::review(&sandbox, &Source::Disk, path)?,
            format,
        )?,
        (None, _, None) => bail!("name a runbook, or give --diff OLD NEW"),
    };
    if format == Format::Table {
        outln!("{}", verdict(&summary, deny));
    }
    Ok(if summary.passes(deny) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `REV1..REV2` as two git trees; a single `REV` is compared with the working tree.
fn git_sources(range: &str, path: &Path) -> Result<(Source, Source)> {
    Ok(match range.split_once("..") {
        Some((old, new)) => (Source::git(old, path)?, Source::git(new, path)?),
        None => (Source::git(range, path)?, Source::Disk),
    })
}

fn verdict(s: &Summary, deny: Severity) -> String {
    let result = if s.passes(deny) { "passes" } else { "fails" };
    format!(
        "{}, {}, {}: {result} (--deny {})",
        count(s.errors as u64, "error"),
        count(s.warnings as u64, "warning"),
        count(s.infos as u64, "info"),
        if deny == Severity::Error {
            "errors"
        } else {
            "warnings"
        }
    )
}

fn print_review(review: &Review, format: Format) -> Result<Summary> {
    if format == Format::Json {
        outln!("{}", serde_json::to_string_pretty(review)?);
        return Ok(review.summary);
    }
    outln!(
        "runbook {} ({}, {})",
        review.runbook,
        review.path,
        review.source
    );
    for step in &review.steps {
        outln!();
        print_step(step)?;
        for f in review
            .findings
            .iter()
            .filter(|f| f.step.as_deref() == Some(&step.step))
        {
            print_finding(f)?;
        }
    }
    let tools: Vec<_> = review
        .findings
        .iter()
        .filter(|f| f.step.is_none())
        .collect();
    if !tools.is_empty() {
        outln!();
        outln!("tools");
        for f in tools {
            print_finding(f)?;
        }
    }
    outln!();
    Ok(review.summary)
}

fn print_step(r: &StepReview) -> Result<()> {
    outln!("step {} ({})", r.step, r.action);
    let pin = match &r.pin {
        Some(_) => "pinned",
        None => "unpinned",
    };
    outln!(
        "  module     {} sha256 {} ({pin})",
        r.module,
        r.sha256.as_deref().unwrap_or("-")
    );
    let caps: Vec<_> = r.capabilities.iter().map(ToString::to_string).collect();
    outln!("  imports    {}", caps.join(", "));
    outln!("  kv_read    {:?}", r.kv_read);
    outln!("  kv_write   {:?}", r.kv_write);
    let tools: Vec<_> = r
        .tools
        .iter()
        .map(|t| match t.mode {
            Some(mode) => format!("{} ({mode})", t.name),
            None => format!("{} (unknown)", t.name),
        })
        .collect();
    outln!(
        "  tools      {}",
        if tools.is_empty() {
            "none".to_string()
        } else {
            tools.join(", ")
        }
    );
    outln!(
        "  safety     impact {}, mutates {}, idempotent {}, max_retries {}, cooldown {} ms",
        r.impact,
        r.mutates,
        r.idempotent,
        r.max_retries,
        r.cooldown_ms
    );
    outln!("  verdict    {}", r.verdict);
    Ok(())
}

fn print_finding(f: &Finding) -> Result<()> {
    let subject = match (&f.step, &f.tool) {
        (_, Some(tool)) => format!("tool {tool}: "),
        _ => String::new(),
    };
    outln!(
        "  {:<8} {:<26} {subject}{}",
        f.severity.to_string(),
        f.code.as_str(),
        f.message
    );
    Ok(())
}

fn print_diff(diff: &Diff, format: Format) -> Result<Summary> {
    if format == Format::Json {
        outln!("{}", serde_json::to_string_pretty(diff)?);
        return Ok(diff.summary);
    }
    outln!(
        "runbook {}: {} ({}) → {} ({})",
        diff.new.runbook,
        diff.old.path,
        diff.old.source,
        diff.new.path,
        diff.new.source
    );
    if diff.findings.is_empty() {
        outln!("  no changes to what any step may do");
    }
    let mut last_step = None;
    for f in &diff.findings {
        if f.step != last_step {
            outln!();
            match &f.step {
                Some(step) => outln!("step {step}"),
                None => outln!("tools"),
            }
            last_step.clone_from(&f.step);
        }
        print_finding(f)?;
    }
    outln!();
    Ok(diff.summary)
}
