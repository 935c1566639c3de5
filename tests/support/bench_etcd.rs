//! `runbox-bench-etcd`: engine steps/s on etcd (3 members on loopback,
//! started here) beside the embedded RocksDB store, at 1 and 64 incidents
//! running at once, each incident 20 steps that finish ok at once (one
//! fenced commit each).
//!
//! ```sh
//! cargo run --release -p runbox-tests --bin runbox-bench-etcd
//! ```

use std::sync::Arc;

use runbox_store_etcd::{EtcdStore, Options};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::etcd::EtcdCluster;

const STEPS: usize = 20;

/// Steps/s of `incidents` incidents run at once on `store`.
fn steps_per_s(
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn runbox_store::Store>,
    incidents: usize,
    tag: &str,
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    runbox_tests::bench::ok_steps_per_s(rt, store, dir.path(), (incidents, STEPS), tag)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = EtcdCluster::start(3);
    println!("| store | 1 incident | 64 incidents |");
    println!("|---|---:|---:|");
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let rocks: Arc<dyn runbox_store::Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
        let r1 = steps_per_s(&rt, rocks.clone(), 1, &format!("R{round}a"));
        let r64 = steps_per_s(&rt, rocks, 64, &format!("R{round}b"));
        println!(
            "| RocksDB (embedded, synced), run {} | {r1:.0} steps/s | {r64:.0} steps/s |",
            round + 1
        );
        let url = cluster.url(&format!("bench{round}")).parse().unwrap();
        let etcd: Arc<dyn runbox_store::Store> =
            Arc::new(EtcdStore::connect(&url, Options::default()).unwrap());
        let e1 = steps_per_s(&rt, etcd.clone(), 1, &format!("E{round}a"));
        let e64 = steps_per_s(&rt, etcd, 64, &format!("E{round}b"));
        println!(
            "| etcd (3 members, loopback), run {} | {e1:.0} steps/s | {e64:.0} steps/s |",
            round + 1
        );
    }
}
