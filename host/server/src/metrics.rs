//! `/metrics`: the Prometheus exposition of this process's metrics (the
//! catalog of `runbox_telemetry`), for `runbox serve` on its own listener
//! and for `run --follow` and `mcp` on `--metrics-listen ADDR`.
//!
//! Counters and histograms live in memory: a scrape reads no store. The
//! gauges that need the store (incidents by status and owner, owed
//! notifications) are counted in the background at most once per
//! [`TALLY_INTERVAL`], from at most [`TALLY_LIMIT`] incidents; a scrape
//! shows the last count and never waits for one (a store that stopped
//! answering leaves the scrape as fast as ever).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use runbox_engine::Engine;
use tracing::warn;

/// At most this many incidents are read to count the store gauges.
pub const TALLY_LIMIT: usize = 10_000;
/// The store gauges are counted at most this often.
pub const TALLY_INTERVAL: Duration = Duration::from_secs(15);
/// The exposition's media type (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of the duration histograms, in seconds: a tool call or a commit
/// takes milliseconds, an attempt up to minutes.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets of the approval wait: minutes to a day.
const APPROVAL_SECONDS: &[f64] = &[
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0,
];

/// Why metrics cannot be exported.
#[derive(Debug, thiserror::Error)]
#[error("cannot export metrics: {0}")]
pub struct MetricsError(String);

/// The process's recorder: installed on first use, shared after.
static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder for this process, once (later calls
/// return the same handle), and describes every metric of the catalog.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(runbox_telemetry::APPROVAL_WAIT_SECONDS.into()),
                        APPROVAL_SECONDS,
                    )
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            runbox_telemetry::describe(env!("CARGO_PKG_VERSION"));
            Ok(handle)
        })
        .clone()
        .map_err(MetricsError)
}

/// What `/metrics` answers for one engine's store.
pub struct Exposition {
    handle: PrometheusHandle,
    engine: Arc<Engine>,
    /// When the store gauges were last counted, and whether a count runs.
    tallied: Mutex<Tallied>,
}

#[derive(Default)]
struct Tallied {
    at: Option<Instant>,
    running: bool,
}

impl Exposition {
    /// The exposition of this process's metrics, with store gauges read
    /// from `engine`'s store. Installs the recorder if need be.
    pub fn new(engine: Arc<Engine>) -> Result<Arc<Exposition>, MetricsError> {
        Ok(Arc::new(Exposition {
            handle: install()?,
            engine,
            tallied: Mutex::new(Tallied::default()),
        }))
    }

    /// The exposition text. A scrape never waits on the store: when the
    /// store gauges are older than [`TALLY_INTERVAL`] it starts counting
    /// them in the background, and shows the last count.
    pub fn render(self: &Arc<Self>) -> String {
        self.tally_if_stale();
        self.handle.run_upkeep();
        self.handle.render()
    }

    fn tally_if_stale(self: &Arc<Self>) {
        {
            let mut t = runbox_core::sync::lock(&self.tallied);
            if t.running || t.at.is_some_and(|at| at.elapsed() < TALLY_INTERVAL) {
                return;
            }
            t.running = true;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.tally();
            let mut t = runbox_core::sync::lock(&me.tallied);
            *t = Tallied {
                at: Some(Instant::now()),
                running: false,
            };
        });
    }

    fn tally(&self) {
        match self.engine.incidents().tally(TALLY_LIMIT) {
            Ok(tally) => {
                if tally.truncated {
                    warn!("runbox_incidents counts the first {TALLY_LIMIT} incidents only");
                }
                runbox_telemetry::incidents(
                    tally
                        .incidents
                        .iter()
                        .map(|((status, owner), n)| (status.as_str(), *owner, *n)),
                );
                runbox_telemetry::notifications_owed(tally.pending, tally.parked);
                runbox_telemetry::brakes_engaged(tally.brakes);
            }
            Err(e) => warn!("cannot count incidents for /metrics: {e}"),
        }
    }
}
