//! The transactional outbox: a notification is an entry written in the
//! same commit as the event it tells of (`change::commit` asks
//! `Outbox::enqueue` for the entries), so a crash after the commit loses
//! no notification and a refused commit enqueues none. Delivering entries is
//! `runbox-notify`'s job; this side only writes them, hands each committed
//! one to whoever [`Outbox::subscribe`]d, and records on the timeline what
//! became of a delivery ([`Engine::record_delivery`]).
//!
//! It is also where a commit is announced once durable
//! ([`Engine::commits`]): a live console hears of this process's commits
//! as they happen instead of polling for them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::notify::{NotifyEvent, OutboxEntry, Routing};
use runbox_core::records::{Checkpoint, IncidentMeta};
use runbox_store::keys;
use runbox_store::{Batch, Store, StoreError, StoreExt};
use tokio::sync::{broadcast, mpsc};

use crate::change::{Change, NewEvent};
use crate::lock;
use crate::{Engine, EngineError, Result};
use runbox_core::fleet_config::ConfigKind;
use runbox_incidents::config::{self, Fence};
use runbox_incidents::parse_id;
use std::sync::Arc;

/// Which sinks want which events, and where committed entries (and the
/// news of each commit) go next.
pub struct Outbox {
    routing: RoutingAt,
    feed: Mutex<Option<mpsc::UnboundedSender<OutboxEntry>>>,
    commits: broadcast::Sender<Committed>,
}

/// Where the sinks come from.
enum RoutingAt {
    /// The data dir's `notify.toml`, read when the process started.
    Fixed(Arc<Routing>),
    /// The fleet's sinks document in the store: read at first use and kept
    /// with the version read. Every commit carries that version, so a
    /// commit never enqueues by sinks that changed since: it finds the
    /// document moved, reads it again and commits afresh.
    Store(Mutex<Option<Cached>>),
}

/// The sinks document as read, with its version and when.
struct Cached {
    routing: Arc<Routing>,
    fence: Fence,
    read_at: std::time::Instant,
}

/// How long sinks read from the store are trusted before reading them
/// again: a process that only delivers (no commit to find them moved)
/// follows a change within this long.
const SINKS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// One durable commit, as [`Engine::commits`] announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The incident committed to.
    pub incident: IncidentId,
    /// Its checkpoint version after the commit.
    pub version: u64,
    /// The sequence number its next event will take: the commit's events
    /// end just before it.
    pub next_seq: u64,
}

/// Commits announced and not yet heard, per listener, before it lags (and
/// must look at every incident again). Default and only value: 1,024.
pub const COMMITS_BACKLOG: usize = 1024;

/// A sinks document that cannot be read, as the store's error.
fn unreadable(e: runbox_incidents::ReadError) -> StoreError {
    match e {
        runbox_incidents::ReadError::Store(e) => e,
        other => StoreError::io(
            runbox_store::Op::Read,
            Some(&ConfigKind::Sinks.key()),
            other.to_string(),
        ),
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(Routing::default())
    }
}

impl Outbox {
    /// An outbox for `routing` (the data dir's `notify.toml`).
    pub fn new(routing: Routing) -> Self {
        Outbox::at(RoutingAt::Fixed(Arc::new(routing)))
    }

    /// An outbox for the fleet's sinks document in the store.
    pub(crate) fn in_store() -> Self {
        Outbox::at(RoutingAt::Store(Mutex::default()))
    }

    fn at(routing: RoutingAt) -> Self {
        Outbox {
            routing,
            feed: Mutex::default(),
            commits: broadcast::channel(COMMITS_BACKLOG).0,
        }
    }

    /// The sinks, as this process knows them (from the store, read at
    /// first use and again whenever a commit finds them moved).
    pub fn routing(&self, store: &dyn Store) -> Result<Arc<Routing>, StoreError> {
        Ok(self.current(store)?.0)
    }

    /// The sinks and, when they are the store's, the version they were read at.
    fn current(&self, store: &dyn Store) -> Result<(Arc<Routing>, Option<Fence>), StoreError> {
        let cache = match &self.routing {
            RoutingAt::Fixed(routing) => return Ok((routing.clone(), None)),
            RoutingAt::Store(cache) => cache,
        };
        let mut cache = lock(cache);
        if let Some(c) = cache
            .as_ref()
            .filter(|c| c.read_at.elapsed() < SINKS_MAX_AGE)
        {
            return Ok((c.routing.clone(), Some(c.fence.clone())));
        }
        let stored = config::read(store, ConfigKind::Sinks).map_err(unreadable)?;
        let fence = stored.fence.clone();
        // Unchanged since: the same sinks (so a deliverer resolves them once).
        let routing = match cache.take() {
            Some(c) if c.fence == fence => c.routing,
            _ => Arc::new(config::sinks_of(stored.text()).map_err(unreadable)?),
        };
        *cache = Some(Cached {
            routing: routing.clone(),
            fence: fence.clone(),
            read_at: std::time::Instant::now(),
        });
        Ok((routing, Some(fence)))
    }

    /// The shared-plane key whose version every commit carries, if any.
    pub(crate) fn fenced_key(&self) -> Option<String> {
        matches!(self.routing, RoutingAt::Store(_)).then(|| ConfigKind::Sinks.key())
    }

    /// Forgets the sinks read: the next commit reads them again.
    pub(crate) fn forget(&self) {
        if let RoutingAt::Store(cache) = &self.routing {
            *lock(cache) = None;
        }
    }

    /// Every entry committed from now on, once its commit is durable. One
    /// subscriber at a time (the deliverer); a new one replaces the old.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<OutboxEntry> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.feed) = Some(tx);
        rx
    }

    /// Puts into `batch` an entry for each sink that wants one of `events`
    /// (numbered from `first_seq`), and returns them. `meta` is the
    /// incident's, when the change itself writes it (at `open`); otherwise
    /// it is read, and only when some event notifies.
    /// With the store's sinks, it also returns the version they were read
    /// at, for the commit to carry.
    pub(crate) fn enqueue(
        &self,
        store: &dyn Store,
        id: &IncidentId,
        first_seq: u64,
        events: &[NewEvent],
        at_ms: u64,
        batch: &mut Batch,
    ) -> Result<(Vec<OutboxEntry>, Option<Fence>), StoreError> {
        let (routing, fence) = self.current(store)?;
        let notifying: Vec<(u64, NotifyEvent)> = (first_seq..)
            .zip(events)
            .filter_map(|(seq, e)| Some((seq, NotifyEvent::of(e.kind)?)))
            .filter(|(_, n)| routing.any_wants(*n))
            .collect();
        if notifying.is_empty() {
            return Ok((Vec::new(), fence));
        }
        let (runbook, params) = match incident_meta(store, id, batch)? {
            Some(meta) => (meta.runbook_name, meta.params),
            None => (String::new(), BTreeMap::new()),
        };
        let mut entries = Vec::new();
        for (seq, event) in notifying {
            for sink in routing.sinks_for(event, &runbook, &params) {
                let entry = OutboxEntry {
                    incident: id.to_string(),
                    seq,
                    sink: sink.to_string(),
                    event,
                    at_ms,
                    unrouted: None,
                };
                batch.put(keys::outbox_entry(id, seq, sink), &entry);
                entries.push(entry);
            }
        }
        Ok((entries, fence))
    }

    /// Announces a durable commit of `incident` (at checkpoint `at`), and
    /// hands its entries to the deliverer, if one listens.
    pub(crate) fn committed(
        &self,
        incident: &IncidentId,
        at: &Checkpoint,
        entries: Vec<OutboxEntry>,
    ) {
        if self.commits.receiver_count() > 0 {
            // Nobody listening is no error: the news is only for the living.
            let _ = self.commits.send(Committed {
                incident: incident.clone(),
                version: at.version,
                next_seq: at.next_seq,
            });
        }
        if entries.is_empty() {
            return;
        }
        let feed = lock(&self.feed);
        if let Some(tx) = feed.as_ref() {
            for entry in entries {
                // A deliverer that stopped finds the entry in its next scan.
                let _ = tx.send(entry);
            }
        }
    }
}

/// The incident's meta: from the batch when the commit writes it (`open`),
/// else from the store.
fn incident_meta(
    store: &dyn Store,
    id: &IncidentId,
    batch: &Batch,
) -> Result<Option<IncidentMeta>, StoreError> {
    let key = keys::meta(id);
    match batch.records().get(&key) {
        Some(written) => written.map(Some),
        None => store.read(&key),
    }
}

/// What became of one try to deliver an entry, for the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryNote {
    /// A receiver took it.
    Delivered {
        /// What it answered: `HTTP 200`.
        answer: String,
    },
    /// The try failed; it is tried again, or parked when `parked`.
    Failed {
        /// Why: `HTTP 500`, `timed out after 10s`.
        error: String,
        /// Tries so far.
        attempts: u32,
        /// Out of tries: parked until `runbox notify retry`.
        parked: bool,
    },
}

/// How many times a delivery record is tried against a moving checkpoint.
const MAX_RECORD_ROUNDS: usize = 8;

impl Engine {
    /// The outbox: which sinks want which events.
    pub fn outbox(&self) -> &std::sync::Arc<Outbox> {
        &self.outbox
    }

    /// The sinks, as this engine knows them ([`Outbox::routing`] on its
    /// store).
    pub fn sinks(&self) -> Result<Arc<Routing>, StoreError> {
        self.outbox.routing(&*self.store)
    }

    /// Every commit this engine makes from now on, as each becomes
    /// durable. A receiver more than [`COMMITS_BACKLOG`] commits behind gets
    /// `Lagged` and should look at the store again. Commits made by other
    /// processes on a shared store are not announced here.
    pub fn commits(&self) -> broadcast::Receiver<Committed> {
        self.outbox.commits.subscribe()
    }

    /// Sends escalations to the sinks of `routing` (the data dir's
    /// `notify.toml`): every commit from now on enqueues an outbox entry
    /// for each sink that wants one of its events. Default: no sinks.
    pub fn with_notify(mut self, routing: Routing) -> Self {
        self.outbox = std::sync::Arc::new(Outbox::new(routing));
        self
    }

    /// Records on incident `entry.incident`'s timeline what became of a
    /// delivery (`notified`, `notify-failed`), after the run loop's current
    /// step if one runs.
    pub async fn record_delivery(&self, entry: &OutboxEntry, note: &DeliveryNote) -> Result<()> {
        if entry.unrouted.is_some() {
            // An unrouted alert has no timeline; `runbox alerts` shows it.
            return Ok(());
        }
        let id = parse_id(&entry.incident)?;
        let (kind, message) = match note {
            DeliveryNote::Delivered { answer } => (
                EventKind::Notified,
                format!(
                    "{} of `{}` (event {}): {answer}",
                    entry.sink, entry.event, entry.seq
                ),
            ),
            DeliveryNote::Failed {
                error,
                attempts,
                parked,
            } => {
                let then = if *parked {
                    "parked: `runbox notify retry` tries it again"
                } else {
                    "tried again"
                };
                (
                    EventKind::NotifyFailed,
                    format!(
                        "{} of `{}` (event {}), try {attempts}: {error}; {then}",
                        entry.sink, entry.event, entry.seq
                    ),
                )
            }
        };
        let lock = self.run_lock(&id);
        let _guard = lock.lock().await;
        for _ in 0..MAX_RECORD_ROUNDS {
            let cp = self.incidents.checkpoint(&id)?;
            let mut change = Change::default();
            change.event("runbox", kind, None, message.clone());
            match self.apply(&id, &cp, change) {
                Err(EngineError::Store(StoreError::Conflict { .. })) => continue,
                done => return done.map(|_| ()),
            }
        }
        Err(EngineError::Internal {
            what: "delivery record",
            message: format!("incident `{id}` moved {MAX_RECORD_ROUNDS} times in a row"),
        })
    }
}
