//! `runbox-bench-export`: postmortem figures for BENCHMARKS.md. Forges an
//! incident of 1,000,000 timeline events and a data dir of 10,000
//! incidents, then times the release `runbox` binary exporting the first as
//! JSONL and reporting over the second, with each process's peak RSS.
//!
//! ```sh
//! cargo build --release -p runbox
//! cargo run --release -p runbox-tests --bin runbox-bench-export -- [--events N] [--incidents N]
//! ```

use std::path::Path;
use std::time::Instant;

use runbox_core::event::EventKind;
use runbox_core::records::{RecordOutcome, Status};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::forge::{Attempt, Forge};

const T0: u64 = 1_790_000_000_000;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// An incident of `events` events: per attempt, attempt-started, the
/// committed record, a retry scheduled and a cooldown.
fn forge_long(store: &RocksStore, events: u64) -> u64 {
    let mut f = Forge::open(store, "LONG-1", "api", T0);
    let mut t = T0;
    let mut n = 1;
    while f.events() + 4 < events {
        let at = Some(("restart", n));
        f.event(
            t,
            "agent:runbox",
            EventKind::AttemptStarted,
            at,
            "calling systemctl",
        );
        f.attempt(Attempt {
            step: "restart",
            attempt: n,
            outcome: RecordOutcome::Retry,
            span: (t, t + 40),
            tool: Some(("systemctl", 1)),
            error: None,
            human: None,
        });
        f.event(
            t + 41,
            "agent:runbox",
            EventKind::RetryScheduled,
            at,
            "retry in 1s",
        );
        f.event(
            t + 42,
            "agent:runbox",
            EventKind::Cooldown,
            at,
            "cooling down",
        );
        t += 1_000;
        n += 1;
    }
    while f.events() + 1 < events {
        f.event(t, "agent:runbox", EventKind::Blocked, None, "held");
    }
    f.end(Status::Resolved, t + 1);
    f.finish();
    u64::from(n - 1)
}

/// `incidents` small incidents of two runbooks with approvals and retries.
fn forge_many(store: &RocksStore, incidents: u64) {
    for i in 0..incidents {
        let t = T0 + i * 600_000;
        let runbook = if i % 3 == 0 { "db" } else { "api" };
        let mut f = Forge::open(store, &format!("INC-{i}"), runbook, t);
        let probe = |attempt, outcome, span| Attempt {
            step: "diagnose",
            attempt,
            outcome,
            span,
            tool: Some(("probe", 0)),
            error: None,
            human: None,
        };
        if i % 4 == 0 {
            f.attempt(probe(1, RecordOutcome::Retry, (t, t + 1_000 + i % 7)));
            f.attempt(probe(2, RecordOutcome::Ok, (t + 2_000, t + 2_500)));
        } else {
            f.attempt(probe(1, RecordOutcome::Ok, (t, t + 900 + i % 13)));
        }
        f.approval(
            "restart",
            1,
            t + 3_000,
            t + 30_000 + (i % 17) * 1_000,
            "alice",
        );
        f.attempt(Attempt {
            step: "restart",
            tool: Some(("systemctl", 0)),
            ..probe(1, RecordOutcome::Ok, (t + 40_000, t + 45_000))
        });
        f.end(Status::Resolved, t + 60_000 + i % 100 * 1_000);
        f.finish();
    }
}

/// Runs `runbox ARGS` on `data`: seconds and peak RSS in KiB.
fn measure(data: &Path, args: &[&str]) -> (f64, u64) {
    let run = runbox_tests::child::measure(data, args);
    assert!(
        run.status.success(),
        "runbox {args:?} failed ({})",
        run.status
    );
    (run.secs, run.peak_kib)
}

fn main() {
    let events = arg("--events", 1_000_000);
    let incidents = arg("--incidents", 10_000);
    let dir = tempfile::tempdir_in("/var/tmp").expect("a scratch dir under /var/tmp");

    // RUNBOX_BENCH_KEEP=1 keeps the forged data dirs (to profile by hand).
    let keep = std::env::var_os("RUNBOX_BENCH_KEEP").is_some();
    let root = if keep {
        dir.keep()
    } else {
        dir.path().to_path_buf()
    };
    let long = root.join("long");
    let started = Instant::now();
    let attempts = forge_long(&RocksStore::open(&long).unwrap(), events);
    println!(
        "forged LONG-1: {events} events, {attempts} attempts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for format in ["jsonl", "csv"] {
        let (secs, rss) = measure(&long, &["export", "LONG-1", "--format", format]);
        println!(
            "export --format {format:<5} {events} events + {attempts} records: {secs:.2} s, {:.0} events/s, peak RSS {:.1} MiB",
            events as f64 / secs,
            rss as f64 / 1024.0
        );
    }

    let many = root.join("many");
    let started = Instant::now();
    forge_many(&RocksStore::open(&many).unwrap(), incidents);
    println!(
        "forged {incidents} incidents in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for format in ["json", "table"] {
        let (secs, rss) = measure(&many, &["report", "--format", format]);
        println!(
            "report --format {format:<5} over {incidents} incidents: {secs:.2} s, peak RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    if keep {
        println!("kept {}", root.display());
    }
}
