use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Incident id (letters, digits, `-`, `_`, `.`).
    id: String,
    /// The runbook file.
    #[arg(long)]
    runbook: PathBuf,
    /// Runbook parameters, `name=value`.
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// The agent opening it: `agent:NAME` or `NAME` (a `human:NAME` is
    /// recorded as `agent:NAME`: opening is unsigned, and only a signed
    /// decision is a human's).
    #[arg(long = "as", default_value = "agent:runbox")]
    actor: String,
    /// Seed the incident's step KV from a JSON object of key to value
    /// (strings as they are, anything else as its JSON text), in the
    /// opening commit.
    #[arg(long)]
    kv: Option<PathBuf>,
}

pub(crate) fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not name=value"))
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let params: BTreeMap<String, String> = args.params.into_iter().collect();
    let seed = match &args.kv {
        Some(path) => super::load_kv_seed(path)?,
        None => BTreeMap::new(),
    };
    let actor = super::acting_agent(&args.actor)?.to_string();
    let meta = ctx
        .engine()?
        .open_with_kv(&args.id, &args.runbook, &params, &actor, &seed)?;
    outln!(
        "opened {} with runbook `{}` ({} steps)",
        args.id,
        meta.runbook_name,
        meta.modules.len()
    );
    Ok(ExitCode::SUCCESS)
}
