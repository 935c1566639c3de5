use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use runbox_core::policy::StepPolicy;
use runbox_core::tools::ToolRegistry;
use runbox_sandbox::{Capabilities, MapKv, PrepareError, Sandbox, SandboxConfig, StepReport};

use crate::output::outln;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Prints one JSON report: `outcome` is what the engine would act on \
(the step's own outcome, or `escalate` when the sandbox stopped it or it broke its policy), \
`step_outcome` is what the step passed to `finish` (absent if it never did).\n\n\
Exit status: 0 when the step ran to `finish` without an error or policy violation (whatever its \
outcome), 1 when the sandbox stopped it or it broke its policy (`error` says why), 2 when it \
could not be run at all (unreadable module, broken policy or tools file, bad --input)."
)]
pub(crate) struct Args {
    /// The step module (.wasm, or .wat text); with --runbook, the step's own.
    #[arg(required_unless_present = "runbook")]
    module: Option<PathBuf>,
    /// Run a step of this runbook with its own grants, limits, tools and
    /// input (the params of `--param`, or their defaults).
    #[arg(long, requires = "step", conflicts_with_all = ["policy", "tools", "module"])]
    runbook: Option<PathBuf>,
    /// The step of --runbook.
    #[arg(long, requires = "runbook")]
    step: Option<String>,
    /// A runbook parameter, `name=value` (with --runbook).
    #[arg(long = "param", requires = "runbook", value_parser = super::open::parse_param)]
    params: Vec<(String, String)>,
    /// The step policy (TOML). Without it the step gets no grants and default limits.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The step input, a JSON document.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Seed KV: a JSON object of key to value (strings as they are, anything
    /// else as its JSON text; docs/testing.md).
    #[arg(long)]
    kv: Option<PathBuf>,
    /// The tool registry (TOML).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Link mutating tools (stands in for the mutation token on the test bench).
    #[arg(long)]
    allow_mutate: bool,
    /// Diagnosis mode: no KV writes, no mutating tools (a module importing
    /// either is refused; a diagnosis step returns its finding as its output).
    #[arg(long)]
    read_only: bool,
}

/// What runs: the module, its policy and tools, and (from a runbook) its input.
struct Bench {
    module: PathBuf,
    policy: StepPolicy,
    tools: ToolRegistry,
    input: Option<serde_json::Value>,
}

fn bench(args: &Args) -> Result<Bench> {
    let (Some(path), Some(step)) = (&args.runbook, &args.step) else {
        return Ok(Bench {
            module: args.module.clone().unwrap_or_default(),
            policy: match &args.policy {
                Some(path) => StepPolicy::load(path)?,
                None => StepPolicy::default(),
            },
            tools: match &args.tools {
                Some(path) => ToolRegistry::load(path)?,
                None => ToolRegistry::empty(),
            },
            input: None,
        });
    };
    let rb = runbox_core::runbook::LoadedRunbook::load(path)?;
    let spec = rb.step(step).ok_or_else(|| {
        let ids: Vec<&str> = rb.runbook.steps.iter().map(|s| s.id.as_str()).collect();
        anyhow::anyhow!(
            "{} has no step `{step}` (its steps: {})",
            path.display(),
            ids.join(", ")
        )
    })?;
    let given: std::collections::BTreeMap<String, String> = args.params.iter().cloned().collect();
    let params = rb.resolve_params(&given)?;
    Ok(Bench {
        module: rb.module_path(spec),
        policy: spec.policy(),
        tools: match rb.tools_path() {
            Some(p) => ToolRegistry::load(&p)?,
            None => ToolRegistry::empty(),
        },
        input: Some(rb.step_input(spec, &params)),
    })
}

pub(crate) async fn run(args: Args) -> Result<ExitCode> {
    let Bench {
        module,
        policy,
        tools,
        input: runbook_input,
    } = bench(&args)?;
    let cap = runbox_core::files::MAX_USER_FILE_BYTES;
    if args.input.len() as u64 > cap {
        anyhow::bail!(
            "--input is {} bytes, more than the {cap}-byte limit",
            args.input.len()
        );
    }
    let input: serde_json::Value = match runbook_input {
        Some(input) => input,
        None => serde_json::from_str(&args.input).context("--input is not valid JSON")?,
    };
    let kv = match &args.kv {
        Some(path) => super::load_kv_seed(path)?,
        None => MapKv::new(),
    };
    let caps = Capabilities {
        allow_mutate: args.allow_mutate,
        read_only: args.read_only,
    };
    let name = module
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "step".into());
    let sandbox = Sandbox::new(SandboxConfig::default());
    let report = match sandbox.prepare_file(&name, &module, &policy, Arc::new(tools), caps) {
        Ok(step) => sandbox.run(&step, &input, Arc::new(kv), None).await,
        Err(PrepareError::Module(error)) => StepReport::stopped(error),
        Err(PrepareError::Host(e)) => return Err(e.into()),
    };
    outln!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
