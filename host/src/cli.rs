//! Command-line interface.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use runbox::policy::StepPolicy;
use runbox::sandbox::{Capabilities, MapKv, Sandbox, SandboxConfig, StepReport};
use runbox::tools::ToolRegistry;

/// Run incident-recovery runbooks as sandboxed WebAssembly steps.
#[derive(Debug, Parser)]
#[command(name = "runbox", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one step once, in the sandbox, and print its report as JSON.
    /// Nothing is persisted: this is the step author's test bench.
    Exec(ExecArgs),
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// The step module (.wasm, or .wat text).
    module: PathBuf,
    /// The step policy (TOML). Without it the step gets no grants and default limits.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The step input, a JSON document.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Seed KV: a JSON object of key to value (strings as-is, anything else as JSON).
    #[arg(long)]
    kv: Option<PathBuf>,
    /// The tool registry (TOML).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Link mutating tools (stands in for the mutation token on the test bench).
    #[arg(long)]
    allow_mutate: bool,
    /// Diagnosis mode: no KV writes, no mutating tools.
    #[arg(long)]
    read_only: bool,
}

pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runbox: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Exec(args) => exec(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runbox: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUNBOX_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn exec(args: ExecArgs) -> Result<ExitCode> {
    let policy = match &args.policy {
        Some(path) => StepPolicy::load(path)?,
        None => StepPolicy::default(),
    };
    let tools = match &args.tools {
        Some(path) => ToolRegistry::load(path)?,
        None => ToolRegistry::empty(),
    };
    let input: serde_json::Value =
        serde_json::from_str(&args.input).context("--input is not valid JSON")?;
    let kv = match &args.kv {
        Some(path) => load_seed(path)?,
        None => MapKv::new(),
    };
    let caps = Capabilities {
        allow_mutate: args.allow_mutate,
        read_only: args.read_only,
    };
    let name = args
        .module
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "step".into());
    let sandbox = Sandbox::new(SandboxConfig::default());
    let report = match sandbox.prepare_file(&name, &args.module, &policy, Arc::new(tools), caps)? {
        Ok(step) => sandbox.run(&step, &input, Arc::new(kv), None).await,
        Err(error) => StepReport::stopped(error),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn load_seed(path: &Path) -> Result<MapKv> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read KV seed {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("KV seed {} is not valid JSON", path.display()))?;
    let Some(object) = value.as_object() else {
        bail!(
            "KV seed {} must be a JSON object of key to value",
            path.display()
        );
    };
    Ok(object
        .iter()
        .map(|(k, v)| {
            let bytes = match v {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (k.clone(), bytes)
        })
        .collect())
}
