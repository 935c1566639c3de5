//! `runbox-bench-http`: the agent interface's figures for BENCHMARKS.md.
//! `get_incident` and `run_step` of a no-op step over HTTP, with 64
//! concurrent clients (reqwest), against the API served in this process on
//! loopback over the embedded RocksDB store.
//!
//! ```sh
//! cargo run --release -p runbox-tests --bin runbox-bench-http -- [--clients N] [--steps N]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use runbox_engine::Engine;
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_server::{Power, Service, ServiceConfig};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::fixture;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// Requests/s over the whole phase, and the p50 and p99 latency.
fn summarize(name: &str, mut latencies: Vec<Duration>, wall: Duration) {
    latencies.sort();
    let n = latencies.len();
    let at = |p: f64| latencies[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    println!(
        "{name:<44} {:>8.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   (n={n})",
        n as f64 / wall.as_secs_f64(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() {
    let clients = arg("--clients", 64);
    let steps = arg("--steps", 40);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    let mut text = String::from("[runbook]\nname = \"noop\"\n");
    for i in 0..steps {
        text.push_str(&format!(
            "[[steps]]\nid = \"s{i}\"\nmodule = \"{}\"\n",
            fixture("engine/ok.wat").display()
        ));
    }
    std::fs::write(runbooks.join("noop.toml"), text).unwrap();
    let store = Arc::new(RocksStore::open(&dir.path().join("data")).unwrap());
    let engine = Arc::new(Engine::new(store, Sandbox::new(SandboxConfig::default())));
    let service = Arc::new(Service::new(
        engine,
        ServiceConfig {
            runbooks: vec![runbooks],
            ..ServiceConfig::default()
        },
    ));
    let token = service.agents().add("bench", Power::Run).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(runbox_server::http::serve(listener, service, None, &[]));

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    for c in 0..clients {
        let r = http
            .post(format!("{url}/v1/incidents"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"runbook": "noop", "id": format!("B-{c}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    println!("{clients} clients, loopback, RocksDB; runbook of {steps} no-op steps");

    for (name, path, method, per_client) in [
        (
            "GET /v1/incidents/{id} (get_incident)",
            "",
            reqwest::Method::GET,
            200,
        ),
        (
            "POST /v1/incidents/{id}/steps:run (run_step)",
            "/steps:run",
            reqwest::Method::POST,
            steps,
        ),
    ] {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let (http, url, token, method) =
                (http.clone(), url.clone(), token.clone(), method.clone());
            tasks.spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    let r = http
                        .request(method.clone(), format!("{url}/v1/incidents/B-{c}{path}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            });
        }
        let mut all = Vec::new();
        while let Some(l) = tasks.join_next().await {
            all.extend(l.unwrap());
        }
        summarize(name, all, started.elapsed());
    }
}
