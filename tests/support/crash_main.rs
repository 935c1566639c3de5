//! Long crash-kill campaigns: `crash-campaign --kills 1000 --seed 7`.
//! See `tests/support/crash.rs` for what is checked after every kill, and
//! `crash-campaign --check-history DIR/history.jsonl` to judge a kept
//! campaign's history again.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use runbox_tests::crash::{Campaign, Fault, SharedCampaign};
use runbox_tests::history::History;

/// SIGKILL `runbox run` at random moments and check the invariants after each kill.
#[derive(Parser)]
struct Args {
    /// Stop after this many kills (with --etcd-runners: faults).
    #[arg(long, default_value_t = 200)]
    kills: u32,
    /// RNG seed; the same seed gives the same kill schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest wait before a kill, in ms.
    #[arg(long, default_value_t = 600)]
    max_delay_ms: u64,
    /// The runbox binary. Default: `runbox` beside this binary (build it
    /// with the same profile first: `cargo build [--release] -p runbox`).
    #[arg(long)]
    runbox: Option<PathBuf>,
    /// Work directory (kept). Default: a fresh temporary directory (removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run RUNNERS `run --all --follow` runners on a 3-member etcd cluster
    /// started here, SIGKILLing a random one each time (0: one `runbox run`
    /// on the data dir's store, as before).
    #[arg(long, default_value_t = 0)]
    etcd_runners: usize,
    /// With --etcd-runners: incidents open at a time.
    #[arg(long, default_value_t = 20)]
    incidents: u32,
    /// With --etcd-runners: the kinds of fault to pick from, each as likely
    /// (runner-kill, runner-stop, member-kill, runner-partition,
    /// leader-partition, slow-link; the last three need root, `ip`, `tc`
    /// and `nft`, and run the cluster and runners in network namespaces).
    #[arg(long, value_delimiter = ',', value_parser = Fault::parse,
          default_value = "runner-kill,runner-stop,member-kill,runner-partition,leader-partition,slow-link")]
    faults: Vec<Fault>,
    /// Judge the history file of a kept campaign again, and exit.
    #[arg(long, value_name = "FILE")]
    check_history: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(file) = &args.check_history {
        return match History::replay(file) {
            Ok(h) => {
                println!(
                    "{}: {} events, {} mutating tool runs: all invariants held",
                    file.display(),
                    h.events,
                    h.tool_calls()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("INVARIANT BROKEN: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runbox = args.runbox.unwrap_or_else(|| {
        let me = std::env::current_exe().expect("current exe");
        me.with_file_name("runbox")
    });
    if !runbox.is_file() {
        eprintln!(
            "crash-campaign: no runbox binary at {}: build both with `cargo build [--release] --workspace --bins`, or pass --runbox",
            runbox.display()
        );
        return ExitCode::from(2);
    }
    let temp = tempfile::tempdir().expect("a temp dir");
    let dir = args.dir.unwrap_or_else(|| temp.path().to_path_buf());
    let campaign = Campaign {
        runbox,
        seed: args.seed,
        kills: args.kills,
        max_delay_ms: args.max_delay_ms,
        dir,
        store: None,
        net: None,
    };
    let result = if args.etcd_runners > 0 {
        SharedCampaign::start(campaign, args.etcd_runners, args.incidents, args.faults)
            .and_then(|mut shared| shared.run())
    } else {
        campaign.run()
    };
    match result {
        Ok(r) => {
            println!(
                "crash campaign seed {}: {} faults ({} runner stops, {} member kills of which {} leaders, {} runner partitions, {} leader partitions, {} slow links; latest mutating call after a cut: {}), {} kills over {} runs, {} incidents resolved, {} tool calls, {} human resolves, {} human retries, {} notifications delivered ({} requests), {} history events, every incident ended {:.1} s after the last fault, {:.1} s: all invariants held",
                args.seed,
                r.faults,
                r.runner_stops,
                r.member_kills,
                r.leader_kills,
                r.runner_partitions,
                r.leader_partitions,
                r.slow_links,
                r.latest_call_after_cut_ms
                    .map_or("none".to_string(), |ms| format!("{ms} ms")),
                r.kills,
                r.runs,
                r.incidents_resolved,
                r.tool_calls,
                r.human_resolves,
                r.human_retries,
                r.notifications,
                r.notification_requests,
                r.history_events,
                r.drained_s,
                r.seconds
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crash campaign seed {}: INVARIANT BROKEN: {e}", args.seed);
            ExitCode::FAILURE
        }
    }
}
