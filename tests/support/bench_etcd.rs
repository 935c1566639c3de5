//! `runbox-bench-etcd`: engine steps/s on etcd (3 members on loopback,
//! started here) beside the embedded RocksDB store, at 1 and 64 incidents
//! running at once, each incident 100 steps that finish ok at once (one
//! fenced commit each). The reference, on the same cluster in the same run:
//! etcd's own ceiling for the transaction a step commits (a compare on the
//! checkpoint's revision and on the runner's fence, then puts of a step
//! record, a timeline event, the checkpoint and a commit id), from 1 client
//! in turn and from 64 at once, each on keys of its own.
//!
//! ```sh
//! cargo run --release -p runbox-tests --bin runbox-bench-etcd [-- --json]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use runbox_engine::Engine;
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store_etcd::{EtcdStore, Options};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::etcd::EtcdCluster;

/// Steps of each incident: enough that a run at 64 incidents lasts seconds,
/// as the raw reference does, so what is paid once an incident (its claim,
/// its first reads, giving it up) weighs as it does in a real one, not as
/// in a burst of under a second.
const STEPS: usize = 100;

/// How long each raw transaction figure runs.
const RAW_FOR: Duration = Duration::from_secs(3);

/// Bytes of each put of the raw transaction: about what a step's commit
/// writes (its record, a timeline event, the checkpoint, the commit id).
const RAW_PUTS: [(&str, usize); 4] = [
    ("record", 1536),
    ("event", 320),
    ("checkpoint", 256),
    ("commit", 32),
];

/// Steps/s of `incidents` incidents run at once by `engine`.
fn steps_per_s(rt: &tokio::runtime::Runtime, engine: Engine, incidents: usize, tag: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    runbox_tests::bench::engine_ok_steps_per_s(rt, engine, dir.path(), (incidents, STEPS), tag)
}

/// An engine on etcd as a runner there has one: the fleet's configuration
/// in the store, so every commit carries the sinks' version.
fn runner(store: Arc<EtcdStore>) -> Engine {
    Engine::new(store, Sandbox::new(SandboxConfig::default())).with_config_in_store()
}

/// An engine on the embedded store, its configuration the data dir's.
fn embedded(store: Arc<RocksStore>) -> Engine {
    Engine::new(store, Sandbox::new(SandboxConfig::default()))
}

/// One raw client's keys: a fence it created once, and its checkpoint's
/// last revision.
struct Raw {
    prefix: String,
    fence: i64,
    checkpoint: i64,
}

impl Raw {
    async fn new(client: &mut Client, prefix: String) -> Self {
        let fence = client
            .put(format!("{prefix}/owner"), "runner", None)
            .await
            .expect("the fence is put")
            .header()
            .expect("a header")
            .revision();
        Raw {
            prefix,
            fence,
            checkpoint: 0,
        }
    }

    /// One fenced compare-and-put of a step's size; it must succeed.
    async fn commit(&mut self, client: &mut Client, step: usize) {
        let key = |name: &str| format!("{}/{name}", self.prefix);
        let checkpoint = if self.checkpoint == 0 {
            Compare::version(key("checkpoint"), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key("checkpoint"), CompareOp::Equal, self.checkpoint)
        };
        let fence = Compare::create_revision(key("owner"), CompareOp::Equal, self.fence);
        let puts: Vec<TxnOp> = RAW_PUTS
            .iter()
            .map(|(name, bytes)| {
                let name = if *name == "record" || *name == "event" {
                    format!("{name}/{step}")
                } else {
                    (*name).to_string()
                };
                TxnOp::put(key(&name), vec![b'x'; *bytes], None)
            })
            .collect();
        let txn = Txn::new().when([checkpoint, fence]).and_then(puts);
        let answer = client.txn(txn).await.expect("the transaction is answered");
        assert!(answer.succeeded(), "a raw transaction's compare failed");
        self.checkpoint = answer.header().expect("a header").revision();
    }
}

/// Transactions/s of `clients` raw clients at once for [`RAW_FOR`], and
/// the mean ms of one.
fn raw_txns(
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
    clients: usize,
    tag: &str,
) -> (f64, f64) {
    rt.block_on(async {
        let client = Client::connect(endpoints, None)
            .await
            .expect("etcd answers");
        let mut tasks = Vec::new();
        let started = Instant::now();
        for i in 0..clients {
            let mut client = client.clone();
            let prefix = format!("raw/{tag}/{i}");
            tasks.push(tokio::spawn(async move {
                let mut raw = Raw::new(&mut client, prefix).await;
                let mut done = 0;
                while started.elapsed() < RAW_FOR {
                    raw.commit(&mut client, done).await;
                    done += 1;
                }
                done
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("a raw client");
        }
        let secs = started.elapsed().as_secs_f64();
        let per_s = total as f64 / secs;
        (per_s, clients as f64 * 1000.0 / per_s)
    })
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let mut figures = serde_json::Map::new();
    let mut keep = |key: &str, value: f64| {
        figures
            .entry(key.to_string())
            .or_insert(serde_json::json!(value));
    };
    eprintln!("| what | 1 at a time | 64 at once |");
    eprintln!("|---|---:|---:|");
    for round in 0..2 {
        let (_, txn_ms_1) = raw_txns(&rt, &endpoints, 1, &format!("a{round}"));
        let (txn_per_s_64, _) = raw_txns(&rt, &endpoints, 64, &format!("b{round}"));
        eprintln!(
            "| raw etcd transaction of a step's size, run {} | {txn_ms_1:.2} ms | {txn_per_s_64:.0} txn/s |",
            round + 1
        );
        let url = cluster.url(&format!("bench{round}")).parse().unwrap();
        let etcd = {
            let _on_runtime = rt.enter();
            Arc::new(EtcdStore::connect(&url, Options::default()).unwrap())
        };
        let e1 = steps_per_s(&rt, runner(etcd.clone()), 1, &format!("E{round}a"));
        let before = etcd.group_stats();
        let e64 = steps_per_s(&rt, runner(etcd.clone()), 64, &format!("E{round}b"));
        let after = etcd.group_stats();
        // How many commits went in one etcd request, on average, at 64.
        let per_request =
            (after.commits - before.commits) as f64 / (after.groups - before.groups).max(1) as f64;
        let step_ms_1 = 1000.0 / e1;
        eprintln!(
            "| runbox step on etcd (3 members, loopback), run {} | {step_ms_1:.2} ms ({:.1}x the raw transaction) | {e64:.0} steps/s ({:.0}% of raw; {per_request:.1} commits a request) |",
            round + 1,
            step_ms_1 / txn_ms_1,
            100.0 * e64 / txn_per_s_64
        );
        let dir = tempfile::tempdir().unwrap();
        let rocks = Arc::new(RocksStore::open(dir.path()).unwrap());
        let r1 = steps_per_s(&rt, embedded(rocks.clone()), 1, &format!("R{round}a"));
        let r64 = steps_per_s(&rt, embedded(rocks), 64, &format!("R{round}b"));
        eprintln!(
            "| runbox step on RocksDB (embedded, synced), run {} | {:.2} ms | {r64:.0} steps/s |",
            round + 1,
            1000.0 / r1
        );
        // The first run's figures are the JSON's; the second shows the spread.
        keep("etcd_txn_ms_1", txn_ms_1);
        keep("etcd_txn_per_s_64", txn_per_s_64);
        keep("etcd_step_ms_1", step_ms_1);
        keep("etcd_steps_per_s_64", e64);
        keep("etcd_step_ratio_1", step_ms_1 / txn_ms_1);
        keep("etcd_steps_share_64", e64 / txn_per_s_64);
        keep("etcd_commits_per_request_64", per_request);
        keep("rocksdb_step_ms_1", 1000.0 / r1);
        keep("rocksdb_steps_per_s_64", r64);
    }
    if json {
        println!("{}", serde_json::Value::Object(figures));
    }
}
