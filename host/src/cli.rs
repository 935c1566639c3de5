//! Command-line interface: a thin clap layer over the library.
//!
//! Exit codes of `runbox run` (so an agent or a script can drive it):
//!
//! | code | meaning |
//! |---:|---|
//! | 0 | resolved |
//! | 2 | error: bad input, unknown incident, store unavailable (nothing written) |
//! | 3 | awaiting approval |
//! | 4 | escalated to a human |
//! | 5 | failed |
//! | 6 | a human owns the incident |
//! | 7 | blocked by a safety rule (read-only mode, missing token, changed module) |
//! | 8 | waiting for a cooldown or backoff (`--no-wait`) |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use runbox::engine::{Engine, RunExit, RunOptions};
use runbox::policy::StepPolicy;
use runbox::runbook::LoadedRunbook;
use runbox::sandbox::{Capabilities, MapKv, Outcome, Sandbox, SandboxConfig, StepReport};
use runbox::store::Store;
use runbox::tools::ToolRegistry;

/// Run incident-recovery runbooks as sandboxed WebAssembly steps with durable state.
#[derive(Debug, Parser)]
#[command(name = "runbox", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Data directory of the embedded store. Default: $XDG_DATA_HOME/runbox
    /// or ~/.local/share/runbox.
    #[arg(long, env = "RUNBOX_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "`runbox run` exits 0 resolved, 3 awaiting approval, 4 escalated, 5 failed, \
6 human owner, 7 blocked by a safety rule, 8 waiting (--no-wait); 2 on errors.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Open an incident with a runbook (validated fully first).
    Open {
        /// Incident id (letters, digits, `-`, `_`, `.`).
        id: String,
        /// The runbook file.
        #[arg(long)]
        runbook: PathBuf,
        /// Runbook parameters, `name=value`.
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Who opens it.
        #[arg(long = "as", default_value = "agent:runbox")]
        actor: String,
    },
    /// Execute steps until resolved, escalated, or waiting on a human.
    Run {
        /// Incident id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Run every incident open for the agent, concurrently.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Diagnosis mode: mutating and KV-writing steps are not run.
        #[arg(long)]
        read_only: bool,
        /// File holding the mutation token (else RUNBOX_MUTATION_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Return (exit 8) instead of waiting through backoff and cooldowns.
        #[arg(long)]
        no_wait: bool,
        /// The agent's name.
        #[arg(long, default_value = "runbox")]
        agent: String,
    },
    /// Status, owner, checkpoint, pending approval, next step, and why.
    Status {
        /// Incident id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The event history, one line per event.
    Timeline {
        /// Incident id.
        id: String,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Approve the attempt of a high-impact step that awaits approval.
    Approve(Decision),
    /// Deny it: the incident escalates to the denying human.
    Deny(Decision),
    /// A human takes the incident; the agent stops executing steps.
    Takeover(Actor),
    /// Hand the incident back to the agent from the current checkpoint.
    Handback(Actor),
    /// Settle an in-doubt or escalated step by stating its outcome.
    Resolve {
        /// Incident id.
        id: String,
        /// The step.
        #[arg(long)]
        step: String,
        /// ok, retry, escalate or fail.
        #[arg(long)]
        outcome: Outcome,
        /// The human deciding.
        #[arg(long = "as")]
        actor: String,
    },
    /// Ask for a fresh attempt of an in-doubt or escalated step.
    Retry(Settle),
    /// Skip an in-doubt or escalated step; the runbook goes on as after `ok`.
    Skip(Settle),
    /// The committed step KV of an incident, as JSON.
    Kv {
        /// Incident id.
        id: String,
    },
    /// Incidents with status and owner.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the mutation token.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Export an incident's step records and timeline for a postmortem.
    Export {
        /// Incident id.
        id: String,
        /// `json` or `markdown`.
        #[arg(long, default_value = "markdown")]
        format: String,
    },
    /// Check incident records for consistency (all incidents without an id).
    /// Exits 1 on any violation; in-doubt attempts are flagged, not violations.
    Verify {
        /// Incident id.
        id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Review what each step of a runbook can touch (imports, grants, tools).
    Review {
        /// The runbook file.
        runbook: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one step once in the sandbox and print its report as JSON.
    /// Nothing is persisted: this is the step author's test bench.
    Exec(ExecArgs),
}

#[derive(Debug, clap::Args)]
struct Decision {
    /// Incident id.
    id: String,
    /// The step awaiting approval.
    step: String,
    /// The human deciding.
    #[arg(long = "as")]
    actor: String,
}

#[derive(Debug, clap::Args)]
struct Actor {
    /// Incident id.
    id: String,
    /// The human.
    #[arg(long = "as")]
    actor: String,
}

#[derive(Debug, clap::Args)]
struct Settle {
    /// Incident id.
    id: String,
    /// The step.
    #[arg(long)]
    step: String,
    /// The human deciding.
    #[arg(long = "as")]
    actor: String,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create the mutation token: printed once, only its hash is stored.
    Init {
        /// Replace an existing token.
        #[arg(long)]
        rotate: bool,
    },
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

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not name=value"))
}

/// Entry point of the binary.
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
    match runtime.block_on(dispatch(cli)) {
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

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("runbox");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/runbox"),
        None => PathBuf::from(".runbox"),
    }
}

/// Compiled modules are kept beside the store, so a new process does not
/// recompile every step.
fn sandbox_config(data_dir: &Path) -> SandboxConfig {
    SandboxConfig {
        artifact_dir: Some(data_dir.join("modules")),
        ..SandboxConfig::default()
    }
}

/// An engine that may write (takes the data dir's lock).
fn engine(data_dir: &Option<PathBuf>) -> Result<Arc<Engine>> {
    let dir = data_dir.clone().unwrap_or_else(default_data_dir);
    let store = Store::open(&dir)?;
    let sandbox = Sandbox::new(sandbox_config(&dir));
    Ok(Arc::new(Engine::new(Arc::new(store), sandbox)))
}

/// An engine for read commands: works beside a running `runbox run` and on
/// a read-only data dir.
fn reader(data_dir: &Option<PathBuf>) -> Result<Arc<Engine>> {
    let dir = data_dir.clone().unwrap_or_else(default_data_dir);
    let store = Store::open_read_only(&dir)?;
    let sandbox = Sandbox::new(sandbox_config(&dir));
    Ok(Arc::new(Engine::new(Arc::new(store), sandbox)))
}

fn human(actor: &str) -> &str {
    actor.strip_prefix("human:").unwrap_or(actor)
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let data_dir = cli.data_dir;
    match cli.command {
        Command::Exec(args) => exec(args).await,
        Command::Review { runbook, json } => review(&runbook, json),
        Command::Verify { id, json } => verify(&data_dir, id, json),
        Command::Open {
            id,
            runbook,
            params,
            actor,
        } => {
            let params: BTreeMap<String, String> = params.into_iter().collect();
            let meta = engine(&data_dir)?.open(&id, &runbook, &params, &actor)?;
            println!(
                "opened {id} with runbook `{}` ({} steps)",
                meta.runbook_name,
                meta.modules.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            id,
            all,
            read_only,
            token_file,
            no_wait,
            agent,
        } => {
            let token = read_token(token_file.as_deref())?;
            let opts = RunOptions {
                read_only,
                token,
                no_wait,
                agent: Some(agent),
                progress: Some(Arc::new(|line: &str| eprintln!("runbox: {line}"))),
            };
            let engine = engine(&data_dir)?;
            if all {
                let mut worst = 0u8;
                for (id, exit) in engine.run_all(&opts).await? {
                    let code = match exit {
                        Ok(exit) => report_exit(&id, &exit),
                        Err(e) => {
                            eprintln!("runbox: {id}: {e}");
                            2
                        }
                    };
                    worst = worst.max(code);
                }
                return Ok(ExitCode::from(worst));
            }
            let id = id.expect("clap requires an id without --all");
            let exit = engine.run(&id, &opts).await?;
            Ok(ExitCode::from(report_exit(&id, &exit)))
        }
        Command::Status { id, json } => {
            let view = reader(&data_dir)?.view(&id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_status(&view);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Timeline { id, json } => {
            for event in reader(&data_dir)?.timeline(&id)? {
                if json {
                    println!("{}", serde_json::to_string(&event)?);
                } else {
                    println!("{}", event.line());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve(d) => {
            engine(&data_dir)?.approve(&d.id, &d.step, human(&d.actor), true)?;
            println!(
                "{}: approved `{}` as human:{}",
                d.id,
                d.step,
                human(&d.actor)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Deny(d) => {
            engine(&data_dir)?.approve(&d.id, &d.step, human(&d.actor), false)?;
            println!(
                "{}: denied `{}`; escalated to human:{}",
                d.id,
                d.step,
                human(&d.actor)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Takeover(a) => {
            engine(&data_dir)?.takeover(&a.id, human(&a.actor))?;
            println!("{}: now owned by human:{}", a.id, human(&a.actor));
            Ok(ExitCode::SUCCESS)
        }
        Command::Handback(a) => {
            engine(&data_dir)?.handback(&a.id, human(&a.actor), None)?;
            println!("{}: handed back to agent:runbox", a.id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Resolve {
            id,
            step,
            outcome,
            actor,
        } => {
            engine(&data_dir)?.resolve_step(&id, &step, outcome, human(&actor))?;
            println!(
                "{id}: `{step}` settled as {outcome} by human:{}",
                human(&actor)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry(s) => {
            engine(&data_dir)?.retry_step(&s.id, &s.step, human(&s.actor))?;
            println!("{}: `{}` will run again", s.id, s.step);
            Ok(ExitCode::SUCCESS)
        }
        Command::Skip(s) => {
            engine(&data_dir)?.skip_step(&s.id, &s.step, human(&s.actor))?;
            println!("{}: `{}` skipped", s.id, s.step);
            Ok(ExitCode::SUCCESS)
        }
        Command::Kv { id } => {
            let entries: serde_json::Map<String, serde_json::Value> = reader(&data_dir)?
                .kv(&id)?
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned().into()))
                .collect();
            println!("{}", serde_json::to_string_pretty(&entries)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::List { json } => {
            let list = reader(&data_dir)?.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<30} {:<18} {:<20} {:<16} STEP",
                    "ID", "STATUS", "OWNER", "RUNBOOK"
                );
                for i in list {
                    println!(
                        "{:<30} {:<18} {:<20} {:<16} {}",
                        i.id,
                        i.status.as_str(),
                        i.owner,
                        i.runbook,
                        i.step.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command: TokenCommand::Init { rotate },
        } => {
            let token = engine(&data_dir)?.init_token(rotate)?;
            eprintln!(
                "runbox: mutation token created; it is shown once and only its hash is stored:"
            );
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { id, format } => {
            let engine = reader(&data_dir)?;
            let p = runbox::export::postmortem(&engine, &id)?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&p)?),
                "markdown" | "md" => print!("{}", runbox::export::markdown(&p)),
                other => bail!("unknown export format `{other}` (json, markdown)"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_token(file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        return Ok(Some(token.trim().to_string()));
    }
    Ok(std::env::var("RUNBOX_MUTATION_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty()))
}

fn report_exit(id: &str, exit: &RunExit) -> u8 {
    let (code, line) = match exit {
        RunExit::Resolved => (0, "resolved".to_string()),
        RunExit::AwaitingApproval { step, attempt } => (
            3,
            format!(
                "awaiting approval of `{step}` attempt {attempt}: runbox approve {id} {step} --as NAME"
            ),
        ),
        RunExit::Escalated { reason } => (4, format!("escalated: {reason}")),
        RunExit::Failed { reason } => (5, format!("failed: {reason}")),
        RunExit::HumanOwner { owner } => (6, format!("owned by {owner}; the agent does not act")),
        RunExit::Blocked { reason } => (7, format!("blocked: {reason}")),
        RunExit::Waiting { until_ms, reason } => (
            8,
            format!(
                "waiting until {} for {reason}",
                runbox::incident::format_ms(*until_ms)
            ),
        ),
    };
    println!("{id}: {line}");
    code
}

fn print_status(v: &runbox::engine::IncidentView) {
    println!("incident   {}", v.id);
    println!("runbook    {}", v.runbook);
    println!("status     {}", v.status);
    println!("owner      {}", v.owner);
    println!(
        "checkpoint step {} attempt {} (version {})",
        v.checkpoint.step.as_deref().unwrap_or("-"),
        v.checkpoint.attempt,
        v.checkpoint.version
    );
    if let Some(step) = &v.pending_approval {
        println!(
            "approval   `{step}` attempt {} awaits a named human",
            v.checkpoint.attempt
        );
    }
    if let Some(f) = &v.in_doubt {
        println!(
            "in doubt   `{}` attempt {} (started mutating `{}`)",
            f.step, f.attempt, f.tool
        );
    }
    if let Some(why) = &v.why {
        println!("why        {why}");
    }
}

fn verify(data_dir: &Option<PathBuf>, id: Option<String>, json: bool) -> Result<ExitCode> {
    let engine = reader(data_dir)?;
    let ids = match id {
        Some(id) => vec![id],
        None => engine.list()?.into_iter().map(|s| s.id).collect(),
    };
    let mut clean = true;
    for id in ids {
        let report = runbox::verify::verify(&engine, &id)?;
        clean &= report.is_clean();
        if json {
            println!("{}", serde_json::to_string(&report)?);
            continue;
        }
        let verdict = if report.is_clean() {
            "ok"
        } else {
            "VIOLATIONS"
        };
        println!(
            "{id}: {verdict} ({} step records, {} events, {} KV keys)",
            report.records, report.events, report.kv_keys
        );
        for v in &report.violations {
            println!("  violation: {v}");
        }
        for f in &report.flags {
            println!("  in doubt:  {f}");
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn review(path: &Path, json: bool) -> Result<ExitCode> {
    let rb = LoadedRunbook::load(path)?;
    let tools = match rb.tools_path() {
        Some(p) => ToolRegistry::load(&p)?,
        None => ToolRegistry::empty(),
    };
    let sandbox = Sandbox::new(SandboxConfig::default());
    let reviews = runbox::review::review(&sandbox, &rb, Arc::new(tools));
    if json {
        println!("{}", serde_json::to_string_pretty(&reviews)?);
    } else {
        for r in &reviews {
            println!("step {} ({})", r.step, r.action);
            println!(
                "  module     {} sha256 {}",
                r.module,
                r.sha256.as_deref().unwrap_or("-")
            );
            println!("  imports    {}", r.imports.join(", "));
            println!("  kv_read    {:?}", r.kv_read);
            println!("  kv_write   {:?}", r.kv_write);
            println!("  tools      {}", r.tools.join(", "));
            println!(
                "  safety     impact {:?}, mutates {}, idempotent {}, max_retries {}, cooldown {} ms",
                r.impact, r.mutates, r.idempotent, r.max_retries, r.cooldown_ms
            );
            println!("  verdict    {}", r.verdict);
        }
    }
    let all_ok = reviews.iter().all(|r| r.verdict == "ok");
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
