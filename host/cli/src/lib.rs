//! The `runbox` command as a library: a thin clap layer over the runbox
//! crates, with [`main`] as its one entry (`src/bin/runbox.rs` calls it;
//! wasmtime's CLI is built the same way). Each command lives in its own file
//! under `commands/`, with one entry function.
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
//! | 9 | another runner holds the incident (a store shared on etcd) |

mod commands;
mod context;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::commands::Command;
use crate::context::Context;

/// Run incident-recovery runbooks as sandboxed WebAssembly steps with durable state.
#[derive(Debug, Parser)]
#[command(name = "runbox", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Data directory of the embedded store. Default: $XDG_DATA_HOME/runbox
    /// or ~/.local/share/runbox.
    #[arg(long, env = "RUNBOX_DATA_DIR", global = true)]
    data_dir: Option<std::path::PathBuf>,
    /// Send human decisions (approve, deny, takeover, handback, resolve,
    /// retry, skip) to this `runbox serve` (`http://HOST:PORT`) instead of
    /// the data dir, authenticated with RUNBOX_AGENT_TOKEN.
    #[arg(long, env = "RUNBOX_SERVER", global = true)]
    server: Option<String>,
    /// Keep incidents on etcd instead of the data dir's embedded store:
    /// `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`. The fleet's humans,
    /// limits, alert routes and notification sinks are then the store's
    /// (`runbox human`, `limits set`, `alerts routes set`, `notify set`),
    /// the same for every runner; the data dir holds compiled modules and
    /// the sinks' secrets.
    #[arg(long, env = "RUNBOX_STORE", global = true)]
    store: Option<String>,
    /// This runner's name on a shared store (written in the owner key of
    /// each incident it runs). Default: HOSTNAME-PID.
    #[arg(long, env = "RUNBOX_RUNNER", global = true)]
    runner: Option<String>,
    /// How long after a runner stops renewing its lease (a crash, a pause,
    /// a partition) another may take its incidents, on a shared store.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_ttl: std::time::Duration,
    /// How log lines on stderr are written: `human` (one line of text
    /// each) or `json` (one JSON object each, for a log pipeline; the
    /// fields are tracing's: `timestamp`, `level`, `target`, the event's
    /// fields, `span` and `spans` with the incident, step and attempt).
    /// Which lines: RUNBOX_LOG (default `warn`).
    #[arg(
        long,
        env = "RUNBOX_LOG_FORMAT",
        global = true,
        default_value = "human"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line of text each.
    Human,
    /// One JSON object each.
    Json,
}

const EXIT_CODES: &str = "`runbox run` exits 0 resolved, 3 awaiting approval, 4 escalated, 5 failed, \
6 human owner, 7 blocked by a safety rule, 8 waiting (--no-wait), 9 another runner holds it; 2 on errors.";

/// Runs the `runbox` command line of this process and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runbox: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let traces = init_tracing(cli.log_format, runtime.handle());
    let code = run(cli, &runtime);
    // The last spans leave while the runtime that sends them still runs.
    if let Some(Err(e)) = traces.map(runbox_server::traces::Traces::shutdown) {
        eprintln!("runbox: {e}");
    }
    code
}

fn run(cli: Cli, runtime: &tokio::runtime::Runtime) -> ExitCode {
    // A store on etcd runs its client on this runtime, which outlives it.
    let _on_runtime = runtime.enter();
    let ctx = match Context::new(cli.data_dir)
        .with_server(cli.server)
        .with_store(cli.store.as_deref(), cli.runner, cli.lease_ttl)
    {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("runbox: {}", chain_text(&e));
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli.command.run(&ctx)) {
        Ok(code) => code,
        Err(e) if output::is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runbox: {}", chain_text(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each said once.
fn chain_text(e: &anyhow::Error) -> String {
    runbox_core::errors::one_line(e.chain().map(ToString::to_string))
}

/// Log lines on stderr (`RUNBOX_LOG`, `--log-format`), and spans to an
/// OTLP collector when the `OTEL_` variables name one (its exporter is
/// returned, to send the last spans at exit). Each has its own filter: a
/// span the logs do not show may still be exported.
fn init_tracing(
    format: LogFormat,
    runtime: &tokio::runtime::Handle,
) -> Option<runbox_server::traces::Traces> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("RUNBOX_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let (otel, traces) = match runbox_server::traces::from_env(runtime.clone()) {
        Ok(on) => on.unzip(),
        // Recovery goes on without traces: an outage is no time to refuse
        // to run for a telemetry setting.
        Err(e) => {
            eprintln!("runbox: traces off: {e}");
            (None, None)
        }
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(|| LogSink(std::io::stderr()));
    let logs = match format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Human => {
            // Colour only for a person at a terminal, and never under NO_COLOR.
            let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            logs.with_ansi(colour).with_filter(filter).boxed()
        }
    };
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(logs)
        .try_init();
    traces
}

/// Stderr for log lines, where a write that fails (stderr closed by the
/// process that started this one) drops the line: a log line that cannot
/// be written must never take the request it describes down with it (a
/// server with a closed stderr dropped every connection that logged).
struct LogSink(std::io::Stderr);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(self.0.write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}
