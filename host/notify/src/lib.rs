//! # runbox-notify: escalations that reach a person
//!
//! "Stop on uncertainty and escalate" helps only if someone hears it. Each
//! commit of an event a sink wants (an escalation, an approval request, an
//! attempt in doubt, a brake, a resolve) writes an outbox entry in the same
//! batch (see `runbox_engine::outbox`); this crate delivers those entries to
//! the sinks of the data dir's `notify.toml`:
//!
//! - `webhook`: the [`message::Notice`] as JSON, signed
//!   (`Runbox-Signature: t=…,v1=HMAC-SHA256`, see [`sign`]);
//! - `slack`: an incoming-webhook message with blocks;
//! - `pagerduty`: an Events API v2 event (`trigger`, `acknowledge` on a
//!   takeover, `resolve`), one PagerDuty incident per runbox incident.
//!
//! Every request carries `Idempotency-Key: ENTRY-ID`; a receiver drops
//! what it has seen. A failed try is tried again after an exponential
//! backoff; after the sink's `max_attempts` the entry is parked (shown by
//! `runbox status` and `runbox notify list`) until `runbox notify retry`.
//! The timeline records each try (`notified`, `notify-failed`).
//!
//! The process that owns the data dir delivers: `runbox serve` and
//! `runbox mcp` for as long as they run ([`Notifier::start`]), and each
//! command that commits (`run`, a decision, a brake) before it exits
//! ([`Notifier::flush`]).
//!
//! ```no_run
//! # async fn demo(engine: std::sync::Arc<runbox_engine::Engine>) -> Result<(), runbox_notify::NotifyError> {
//! let notifier = runbox_notify::Notifier::new(engine, "data".as_ref())?;
//! let deliverer = notifier.start(); // delivers until the process exits
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod claim;
mod deliver;
mod http;
pub mod message;
pub mod sign;
mod target;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runbox_core::notify::{Delivery, DeliveryState, NotifyEvent, OutboxEntry, Routing};
use runbox_core::sync::lock;
use runbox_core::time::now_ms;
use runbox_engine::Engine;
use runbox_incidents::{Notification, ReadError};
use runbox_store::StoreError;
use runbox_store::StoreExt;
use tokio::sync::Semaphore;
use tracing::warn;

pub use claim::CLAIM_MARGIN_MS;
pub use deliver::{MAX_BACKOFF_MS, MAX_RETRY_AFTER_MS};
pub use http::{HttpClient, SendError};

/// How old an unrouted alert may be and still be told by a process that
/// starts after it was recorded: a day. An alert older than that is no
/// news to page about (`runbox alerts` still lists it).
pub const UNROUTED_HORIZON_MS: u64 = 86_400_000;
pub use target::MAX_SECRET_BYTES;

use target::Target;

/// Why notifications cannot be delivered or read.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A sink's URL or secret cannot be read.
    #[error("{origin}: {what} from {source_name}: {message}")]
    Secret {
        /// The sink: `notify.toml sinks[0] (hook)`.
        origin: String,
        /// `url` or `secret`.
        what: String,
        /// Where it was looked for.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// An outbox entry cannot be made into a notice.
    #[error("notification {id}: {message}")]
    Entry {
        /// The entry.
        id: String,
        /// Why.
        message: String,
    },
    /// No sink has this name.
    #[error("no sink named `{0}` in notify.toml")]
    UnknownSink(String),
    /// No parked notification has this id.
    #[error("no parked notification `{0}` (see `runbox notify list`)")]
    NotParked(String),
    /// Reading the incidents failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Notifier::flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Notifications a receiver took.
    pub delivered: usize,
    /// Notifications still not delivered (waiting, or parked).
    pub owed: usize,
}

/// Delivers the outbox of one engine's store.
pub struct Notifier {
    engine: Arc<Engine>,
    /// Where relative secret and URL files are read from.
    dir: PathBuf,
    /// The sinks as last resolved; resolved again when the engine's sinks
    /// change (the fleet's sinks document in a shared store).
    resolved: Mutex<Arc<Resolved>>,
    http: http::HttpClient,
    lanes: deliver::Lanes,
}

/// Each sink's URL and secret, read, and its slots for deliveries in flight.
pub(crate) struct Resolved {
    routing: Arc<Routing>,
    pub(crate) targets: BTreeMap<String, Target>,
    pub(crate) permits: BTreeMap<String, Arc<Semaphore>>,
}

impl Resolved {
    fn of(routing: Arc<Routing>, dir: &Path) -> Result<Resolved, NotifyError> {
        let mut targets = BTreeMap::new();
        let mut permits = BTreeMap::new();
        for sink in routing.sinks() {
            targets.insert(sink.name.clone(), Target::resolve(sink, dir)?);
            let n = usize::try_from(sink.max_in_flight).unwrap_or(1);
            permits.insert(sink.name.clone(), Arc::new(Semaphore::new(n)));
        }
        Ok(Resolved {
            routing,
            targets,
            permits,
        })
    }
}

impl Notifier {
    /// A notifier for `engine`'s sinks (`Engine::with_notify`, or the
    /// store's), reading their URLs and secrets now; relative paths are
    /// read from `dir`.
    pub fn new(engine: Arc<Engine>, dir: &Path) -> Result<Arc<Notifier>, NotifyError> {
        let routing = engine.sinks()?;
        let resolved = Resolved::of(routing, dir)?;
        Ok(Arc::new(Notifier {
            engine,
            dir: dir.to_path_buf(),
            resolved: Mutex::new(Arc::new(resolved)),
            http: http::HttpClient::new(),
            lanes: deliver::Lanes::default(),
        }))
    }

    /// Whether any sink is configured.
    pub fn has_sinks(&self) -> bool {
        !self.resolved().targets.is_empty()
    }

    /// The sinks as they stand: resolved again when the engine's changed.
    /// Sinks whose secret cannot be read here keep the last resolution,
    /// and say why.
    pub(crate) fn resolved(&self) -> Arc<Resolved> {
        let mut resolved = lock(&self.resolved);
        match self.engine.sinks() {
            Ok(routing) if Arc::ptr_eq(&routing, &resolved.routing) => {}
            Ok(routing) => match Resolved::of(routing, &self.dir) {
                Ok(fresh) => *resolved = Arc::new(fresh),
                Err(e) => warn!("the sinks changed, but cannot be read here: {e}"),
            },
            Err(e) => warn!("cannot read the sinks: {e}"),
        }
        resolved.clone()
    }

    /// Delivers every undelivered entry, and each one committed from now
    /// on, until the process exits.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        // Subscribe before the scan: an entry committed in between is in
        // both, and its lane sends it once (a delivered entry is skipped).
        let mut feed = self.engine.outbox().subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            match me.engine.incidents().undelivered() {
                Ok(waiting) => {
                    for n in waiting
                        .into_iter()
                        .filter(|n| n.delivery.state == DeliveryState::Pending)
                    {
                        me.enqueue(n.entry);
                    }
                }
                Err(e) => warn!("cannot scan the outbox: {e}"),
            }
            if let Err(e) = me.scan_unrouted() {
                warn!("cannot scan the unrouted alerts: {e}");
            }
            while let Some(entry) = feed.recv().await {
                me.enqueue(entry);
            }
        })
    }

    /// Tells the sinks that want `alert-unrouted` of the unrouted alert
    /// group just recorded at `key` (received at `received_ms`).
    pub fn unrouted_recorded(self: &Arc<Self>, key: &str, received_ms: u64) {
        for sink in self.unrouted_sinks() {
            self.enqueue(OutboxEntry::unrouted(key, received_ms, &sink));
        }
    }

    fn unrouted_sinks(&self) -> Vec<String> {
        self.resolved()
            .targets
            .values()
            .filter(|t| t.sink.events.contains(&NotifyEvent::AlertUnrouted))
            .map(|t| t.sink.name.clone())
            .collect()
    }

    /// Queues the unrouted alerts of the last [`UNROUTED_HORIZON_MS`] not
    /// told yet: what a process that stopped before telling left.
    fn scan_unrouted(self: &Arc<Self>) -> Result<(), NotifyError> {
        let sinks = self.unrouted_sinks();
        if sinks.is_empty() {
            return Ok(());
        }
        let since = now_ms().saturating_sub(UNROUTED_HORIZON_MS);
        let store = self.engine.incidents().store();
        for (key, alert) in store.meta_read_all(&runbox_store::keys::unrouted_alerts())? {
            let key = key.to_string();
            if alert.received_ms < since {
                continue;
            }
            for sink in &sinks {
                let entry = OutboxEntry::unrouted(&key, alert.received_ms, sink);
                if self
                    .engine
                    .incidents()
                    .notification(entry.clone())?
                    .delivery
                    .state
                    == DeliveryState::Pending
                {
                    self.enqueue(entry);
                }
            }
        }
        Ok(())
    }

    /// Tries each due entry (pending, its backoff over) once, within
    /// `budget`: what a command that committed does before it exits.
    /// Entries left undelivered wait for the next process that owns the
    /// data dir.
    pub async fn flush(&self, budget: Duration) -> Result<Flushed, NotifyError> {
        let owed = self.engine.incidents().undelivered()?;
        let mut flushed = Flushed {
            delivered: 0,
            owed: owed.len(),
        };
        if !self.has_sinks() {
            return Ok(flushed);
        }
        let now = now_ms();
        let due = owed.into_iter().filter(|n| {
            n.delivery.state == DeliveryState::Pending
                && n.delivery.next_at_ms.is_none_or(|at| at <= now)
        });
        let deadline = tokio::time::Instant::now() + budget;
        for n in due {
            let Ok(tried) = tokio::time::timeout_at(deadline, self.try_once(&n.entry)).await else {
                break;
            };
            if let deliver::Tried::Sent(delivery, note) = tried? {
                self.record(&n.entry, &note).await;
                if delivery.state == DeliveryState::Delivered {
                    flushed.delivered += 1;
                    flushed.owed -= 1;
                }
            }
        }
        Ok(flushed)
    }

    /// Makes parked notifications (all, or the one with `id`) pending
    /// again with a fresh budget of tries, and queues them when this
    /// notifier delivers ([`Notifier::start`]). Returns them.
    pub fn retry(self: &Arc<Self>, id: Option<&str>) -> Result<Vec<Notification>, NotifyError> {
        let parked: Vec<Notification> = self
            .engine
            .incidents()
            .undelivered()?
            .into_iter()
            .filter(|n| id.is_none_or(|id| n.id == id))
            .filter(|n| n.delivery.state == DeliveryState::Parked)
            .collect();
        if let Some(id) = id
            && parked.is_empty()
        {
            return Err(NotifyError::NotParked(id.to_string()));
        }
        let mut out = Vec::with_capacity(parked.len());
        for mut n in parked {
            n.delivery = Delivery {
                last_error: n.delivery.last_error,
                ..Delivery::default()
            };
            if self.unpark(&n.entry, &n.delivery)? {
                out.push(n);
            }
        }
        if let Some(id) = id
            && out.is_empty()
        {
            // Another retry or runner moved it between the read and the write.
            return Err(NotifyError::NotParked(id.to_string()));
        }
        Ok(out)
    }

    /// Queues `notifications` on their lanes (after [`Notifier::retry`],
    /// in a process that delivers).
    pub fn queue(self: &Arc<Self>, notifications: &[Notification]) {
        for n in notifications {
            self.enqueue(n.entry.clone());
        }
    }
}

/// Checks `routing`'s sinks as a deliverer would start them: each URL and
/// secret read from where it is (relative paths from `dir`).
pub fn check(routing: &Routing, dir: &Path) -> Result<(), NotifyError> {
    for sink in routing.sinks() {
        Target::resolve(sink, dir)?;
    }
    Ok(())
}

/// Sends a sample notice to the sink `name` of `routing` once: what it
/// answered (`HTTP 200`), or why the try failed.
pub async fn send_sample(
    routing: &Routing,
    dir: &Path,
    name: &str,
) -> Result<Result<String, String>, NotifyError> {
    let sink = routing
        .sink(name)
        .ok_or_else(|| NotifyError::UnknownSink(name.into()))?;
    let target = Target::resolve(sink, dir)?;
    let notice = message::Notice::sample(name);
    Ok(
        match deliver::post(&http::HttpClient::new(), &target, &notice).await {
            deliver::Answer::Taken(code) => Ok(format!("HTTP {code}")),
            deliver::Answer::Refused { error, .. } => Err(error),
        },
    )
}
