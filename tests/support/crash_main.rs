//! Long crash-kill campaigns: `crash-campaign --kills 1000 --seed 7`.
//! See `tests/support/crash.rs` for what is checked after every kill.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use runbox_tests::crash::{Campaign, Fault};

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
    /// (runner-kill, runner-stop, member-kill).
    #[arg(long, value_delimiter = ',', value_parser = Fault::parse,
          default_value = "runner-kill,runner-stop,member-kill")]
    faults: Vec<Fault>,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    };
    let result = if args.etcd_runners > 0 {
        let cluster = runbox_tests::etcd::EtcdCluster::start(3);
        runbox_tests::crash::SharedCampaign {
            campaign: Campaign {
                store: Some(cluster.url("campaign")),
                ..campaign
            },
            runners: args.etcd_runners,
            incidents: args.incidents,
            cluster,
            faults: args.faults,
        }
        .run()
    } else {
        campaign.run()
    };
    match result {
        Ok(r) => {
            println!(
                "crash campaign seed {}: {} faults ({} runner stops, {} member kills of which {} leaders), {} kills over {} runs, {} incidents resolved, {} tool calls, {} human resolves, {} human retries, {:.1} s: all invariants held",
                args.seed,
                r.faults,
                r.runner_stops,
                r.member_kills,
                r.leader_kills,
                r.kills,
                r.runs,
                r.incidents_resolved,
                r.tool_calls,
                r.human_resolves,
                r.human_retries,
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
