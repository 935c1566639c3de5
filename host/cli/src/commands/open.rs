use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use runbox_core::text::count;

use crate::context::Context;
use crate::output::outln;

/// The help's tail: a KV seed, exactly as a user would write it
/// (`tests/all/authoring.rs` checks every `Example … (JSON):` block of every
/// command's help against its schema).
const AFTER_HELP: &str = "Example KV seed (JSON):
  {\"svc/api/restarts\": 1, \"svc/api/owner\": \"team-a\", \"svc/api/window\": {\"max\": 3}}

The values are stored as `1`, `team-a` and `{\"max\":3}`: strings as they are, anything \
else as its JSON text. Format: docs/testing.md (schema: docs/schemas/kv-seed.schema.json).";

#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
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
    /// opening commit; `verify` counts it as the incident's own write.
    /// Format: docs/testing.md (schema: docs/schemas/kv-seed.schema.json).
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
    let meta =
        ctx.engine()?
            .opener()
            .open_with_kv(&args.id, &args.runbook, &params, &actor, &seed)?;
    let seeded = match meta.seeded_kv.len() {
        0 => String::new(),
        n => format!(", step KV seeded with {}", count(n as u64, "key")),
    };
    outln!(
        "opened {} with runbook `{}` ({}){seeded}",
        args.id,
        meta.runbook_name,
        count(meta.modules.len() as u64, "step")
    );
    Ok(ExitCode::SUCCESS)
}
