//! `runbox-bench-notify`: 1,000 escalations across 100 incidents (each
//! escalated by its agent, then a human's signed `retry` of its step and
//! `handback`, ten times) delivered to a webhook receiver on loopback that refuses 30% of
//! requests while they are committed, then recovers. Every escalation must
//! be delivered (none lost, none parked); the figure is the delay from the
//! recovery to each delivery still owed then, beside its reference: the
//! longest backoff those deliveries were scheduled to wait at that moment.
//!
//! ```sh
//! cargo run --release -p runbox-tests --bin runbox-bench-notify -- --json
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runbox_core::notify::{NotifyFile, Routing};
use runbox_engine::Engine;
use runbox_engine::decision::{DEFAULT_TTL, Request};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::receiver::{Mode, Receiver};
use runbox_trust::Action;
use runbox_trust::testing::TestHumans;

const INCIDENTS: usize = 100;
const ROUNDS: usize = 10;

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let figures = rt.block_on(run());
    if json {
        println!("{figures}");
    } else {
        println!("{}", serde_json::to_string_pretty(&figures).unwrap());
    }
}

async fn run() -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::spawn(Mode::FailShare(300)).await;
    std::fs::write(
        dir.path().join("hook.key"),
        "bench-hmac-key-of-32-bytes-long!",
    )
    .unwrap();
    let file: NotifyFile = toml::from_str(&format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"hook.key\"\nevents = [\"escalated\"]\nmax_attempts = 100\n",
        receiver.url()
    ))
    .unwrap();
    let routing = Routing::check(file, "notify.toml").unwrap();
    let humans = TestHumans::new(dir.path().join("allowed_signers"));
    let store = Arc::new(RocksStore::open(&dir.path().join("data")).unwrap());
    let engine = Arc::new(
        Engine::new(store, Sandbox::new(SandboxConfig::default()))
            .with_allowed_signers(humans.path())
            .with_notify(routing),
    );
    let notifier = runbox_notify::Notifier::new(engine.clone(), dir.path()).unwrap();
    notifier.start();
    let rb = runbox_tests::ok_runbook(dir.path(), 1);
    let ids: Vec<String> = (0..INCIDENTS).map(|i| format!("N-{i}")).collect();
    for id in &ids {
        engine
            .opener()
            .open(id, &rb, &BTreeMap::new(), "agent:bench")
            .unwrap();
    }
    let started = Instant::now();
    for round in 0..ROUNDS {
        for id in &ids {
            engine
                .runs()
                .escalate(id, "bench", &format!("round {round}"))
                .await
                .unwrap();
            for (action, step) in [(Action::Retry, Some("s0")), (Action::Handback, None)] {
                let statement = engine
                    .humans()
                    .statement(&Request {
                        action,
                        incident: id,
                        step,
                        outcome: None,
                        signer: "alice",
                        ttl: DEFAULT_TTL,
                    })
                    .unwrap();
                engine
                    .humans()
                    .decide(&humans.sign("alice", &statement.to_text()))
                    .unwrap();
            }
        }
    }
    let committed_s = started.elapsed().as_secs_f64();
    // The receiver recovers: what is still owed, and the longest wait its
    // backoff has scheduled.
    let now = runbox_core::time::now_ms();
    let owed = engine.incidents().undelivered().unwrap();
    let scheduled_ms = owed
        .iter()
        .filter_map(|n| n.delivery.next_at_ms)
        .map(|at| at.saturating_sub(now))
        .max()
        .unwrap_or(0);
    receiver.set_mode(Mode::Ok);
    let recovered_ms = runbox_core::time::now_ms();
    let total = INCIDENTS * ROUNDS;
    let deadline = Instant::now() + Duration::from_secs(600);
    let firsts = loop {
        let firsts = first_deliveries(&receiver);
        if firsts.len() >= total || Instant::now() > deadline {
            break firsts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut delays: Vec<u64> = owed
        .iter()
        .filter_map(|n| firsts.get(&n.id))
        .map(|at| at.saturating_sub(recovered_ms))
        .collect();
    delays.sort_unstable();
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0)
    };
    let received = receiver.received();
    let parked = engine
        .incidents()
        .undelivered()
        .unwrap()
        .iter()
        .filter(|n| n.delivery.state == runbox_core::notify::DeliveryState::Parked)
        .count();
    serde_json::json!({
        "bench": "notify",
        "escalations": total,
        "incidents": INCIDENTS,
        "delivered": firsts.len(),
        "lost": total - firsts.len().min(total),
        "parked": parked,
        "requests": received.len(),
        "refused_requests": received.iter().filter(|r| r.answered != 200).count(),
        "commit_s": committed_s,
        "owed_at_recovery": owed.len(),
        "delay_after_recovery_p50_ms": pct(0.50),
        "delay_after_recovery_p99_ms": pct(0.99),
        "delay_after_recovery_max_ms": pct(1.0),
        "reference_longest_scheduled_wait_ms": scheduled_ms,
        "p99_over_reference": pct(0.99) as f64 / scheduled_ms.max(1) as f64,
    })
}

/// When each idempotency key was first answered 200.
fn first_deliveries(receiver: &Receiver) -> HashMap<String, u64> {
    let mut firsts = HashMap::new();
    for r in receiver.received() {
        if r.answered == 200
            && let Some(key) = r.key
        {
            firsts.entry(key).or_insert(r.at_ms);
        }
    }
    firsts
}
