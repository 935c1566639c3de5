//! Which incidents changed: one watcher per server tells its listeners,
//! the open consoles and MCP resource subscriptions. A console is sent
//! each change over server-sent events with the part of its page that
//! changed, rendered once on the server for every console that shows it
//! (its head, and its timeline after the last event announced before; see
//! `console::pages::incident`). A page that cannot append a part (it missed
//! one) fetches itself again. Either way what a human reads is always the
//! server's escaped rendering, never text the client put together. An MCP
//! client is sent `notifications/resources/updated` for the resources it
//! subscribed to.
//!
//! The watcher hears of this process's commits as the engine announces
//! them ([`Engine::commits`]), so a step shows as soon as it is durable.
//! Commits it cannot hear of (another runner's, on a shared store) it
//! finds by looking at every incident's checkpoint version each
//! [`LOOK_EVERY`]; so does a watcher that fell behind the announcements.
//!
//! One watcher, not one per listener: 100 open consoles cost one
//! subscription and one scan per look, not a hundred.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use runbox_engine::Engine;
use runbox_engine::outbox::Committed;
use runbox_incidents::Incidents;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// How often the watcher looks at the store for commits nobody announced
/// (another runner's on a shared store): such a change shows in an open
/// console within about this, plus a page fetch.
pub const LOOK_EVERY: Duration = Duration::from_millis(500);

/// What consoles are told: the incidents that changed (opened,
/// committed), or [`Changes::Everything`] when the watcher cannot say.
#[derive(Debug, Clone)]
pub(crate) enum Changes {
    /// These incidents changed.
    Incidents(Arc<Vec<Changed>>),
    /// Anything may have changed: a console looks again whatever it shows.
    Everything,
}

/// One incident that changed.
#[derive(Debug)]
pub(crate) struct Changed {
    /// Its id.
    pub(crate) id: String,
    /// The last event announced before this change, when the watcher knew
    /// the incident before it: the part shows the timeline after it.
    pub(crate) after: Option<u64>,
    /// The part of its page that changed, rendered by the first console
    /// stream that sends it and shared by the others (`None`: not
    /// renderable, and the pages fetch themselves).
    pub(crate) part: tokio::sync::OnceCell<Option<Arc<str>>>,
}

impl Changed {
    pub(crate) fn new(id: String, after: Option<u64>) -> Self {
        Changed {
            id,
            after,
            part: tokio::sync::OnceCell::new(),
        }
    }
}

/// Where an incident stood when last heard of or seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    version: u64,
    next_seq: u64,
}

impl Seen {
    /// The last event it had, if any.
    fn last_event(self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }
}

/// One changed incident as a `changed` event carries it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct WireChange {
    /// The incident's id, or `*` (in no id): anything may have changed.
    pub(crate) id: String,
    /// The part of its page that changed (`div#live`), when rendered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) part: Option<Arc<str>>,
}

impl WireChange {
    /// The wire form of [`Changes::Everything`].
    pub(crate) fn everything() -> Self {
        WireChange {
            id: "*".to_owned(),
            part: None,
        }
    }
}

/// The watcher, started with the first console that listens and stopped
/// when the last one goes.
#[derive(Default)]
pub(crate) struct Live {
    sender: std::sync::Mutex<Weak<broadcast::Sender<Changes>>>,
}

impl Live {
    /// A receiver of changes, starting the watcher if none runs.
    pub(crate) fn subscribe(&self, engine: &Engine) -> Listener {
        let mut slot = runbox_core::sync::lock(&self.sender);
        if let Some(sender) = slot.upgrade() {
            return Listener {
                receiver: sender.subscribe(),
                _sender: sender,
            };
        }
        let (sender, receiver) = broadcast::channel(64);
        let sender = Arc::new(sender);
        *slot = Arc::downgrade(&sender);
        // Subscribe and read before the subscriber's stream opens (and its
        // page looks again), not later in the task: a commit in between
        // would count as seen and be announced to nobody.
        let watcher = Watcher {
            commits: engine.commits(),
            positions: Positions(versions(engine.incidents())),
            incidents: engine.incidents().clone(),
        };
        tokio::spawn(watcher.run(Arc::downgrade(&sender)));
        Listener {
            receiver,
            _sender: sender,
        }
    }
}

/// One console's subscription; it keeps the watcher alive.
pub(crate) struct Listener {
    pub(crate) receiver: broadcast::Receiver<Changes>,
    _sender: Arc<broadcast::Sender<Changes>>,
}

/// The one task that turns commits into [`Changes`].
struct Watcher {
    commits: broadcast::Receiver<Committed>,
    positions: Positions,
    incidents: Incidents,
}

/// The changes of `first` and every commit announced with it, taken in one
/// batch so a burst of commits is one message to each console.
fn heard(
    positions: &mut Positions,
    commits: &mut broadcast::Receiver<Committed>,
    first: Result<Committed, RecvError>,
) -> Option<Changes> {
    let mut changed = Vec::new();
    let mut next = first;
    loop {
        match next {
            Ok(c) => {
                let now = Seen {
                    version: c.version,
                    next_seq: c.next_seq,
                };
                positions.note(c.incident.to_string(), now, &mut changed);
            }
            // Fell behind: which ones is lost, so every console looks.
            Err(RecvError::Lagged(_)) => return Some(Changes::Everything),
            Err(RecvError::Closed) => break,
        }
        next = match commits.try_recv() {
            Ok(c) => Ok(c),
            Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        };
    }
    (!changed.is_empty()).then(|| Changes::Incidents(Arc::new(changed)))
}

/// Every incident's checkpoint as last heard or seen.
#[derive(Debug, Default)]
struct Positions(BTreeMap<String, Seen>);

impl Positions {
    /// Notes that `id` stands at `now`; news (a checkpoint newer than the
    /// one heard or seen) goes into `changed`, once per batch. The newest
    /// is kept: a commit announced after a scan read is not news twice.
    fn note(&mut self, id: String, now: Seen, changed: &mut Vec<Changed>) {
        let was = self.0.get(&id).copied();
        if was.is_some_and(|was| was.version >= now.version) {
            return;
        }
        self.0.insert(id.clone(), now);
        // A second commit in one batch needs no entry of its own: the
        // part after the first's `after` covers both.
        if !changed.iter().any(|c| c.id == id) {
            changed.push(Changed::new(id, was.and_then(Seen::last_event)));
        }
    }
}

impl Watcher {
    /// Announces changes until no console listens.
    async fn run(mut self, sender: Weak<broadcast::Sender<Changes>>) {
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changes = tokio::select! {
                first = self.commits.recv() => heard(&mut self.positions, &mut self.commits, first),
                _ = look.tick() => self.look().await,
            };
            let Some(sender) = sender.upgrade() else {
                return;
            };
            match changes {
                Some(changes) => {
                    let _ = sender.send(changes);
                }
                // The engine is gone: the server is stopping.
                None if self.commits.is_closed() => return,
                None => {}
            }
        }
    }

    /// The incidents whose checkpoint moved since last seen, by a scan.
    async fn look(&mut self) -> Option<Changes> {
        let reader = self.incidents.clone();
        let now = tokio::task::spawn_blocking(move || versions(&reader))
            .await
            .ok()?;
        let mut changed = Vec::new();
        for (id, seen) in now {
            self.positions.note(id, seen, &mut changed);
        }
        (!changed.is_empty()).then(|| Changes::Incidents(Arc::new(changed)))
    }
}

/// Where every incident stands, by id (an incident that cannot be read
/// is left out this look).
fn versions(incidents: &Incidents) -> BTreeMap<String, Seen> {
    let Ok(ids) = incidents.ids() else {
        return BTreeMap::new();
    };
    ids.iter()
        .filter_map(|id| {
            let cp = incidents.checkpoint(id).ok()?;
            let seen = Seen {
                version: cp.version,
                next_seq: cp.next_seq,
            };
            Some((id.to_string(), seen))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: u64, next_seq: u64) -> Seen {
        Seen { version, next_seq }
    }

    fn news(p: &mut Positions, batch: &[(&str, Seen)]) -> Vec<(String, Option<u64>)> {
        let mut changed = Vec::new();
        for (id, now) in batch {
            p.note((*id).to_owned(), *now, &mut changed);
        }
        changed.into_iter().map(|c| (c.id, c.after)).collect()
    }

    #[test]
    fn a_part_starts_after_the_last_event_announced_before() {
        let mut p = Positions::default();
        // Unknown before: no `after`, so pages fetch themselves.
        assert_eq!(news(&mut p, &[("A", at(1, 1))]), [("A".into(), None)]);
        assert_eq!(news(&mut p, &[("A", at(2, 4))]), [("A".into(), Some(0))]);
        // Two commits in one batch: one entry, from the first's `after`.
        assert_eq!(
            news(&mut p, &[("A", at(3, 5)), ("B", at(1, 1)), ("A", at(4, 7))]),
            [("A".into(), Some(3)), ("B".into(), None)]
        );
    }

    fn commit(id: &str, version: u64, next_seq: u64) -> Committed {
        Committed {
            incident: id.parse().unwrap(),
            version,
            next_seq,
        }
    }

    #[tokio::test]
    async fn a_burst_of_commits_is_one_message_and_a_watcher_behind_says_everything() {
        let (tx, mut rx) = broadcast::channel(4);
        let mut p = Positions::default();
        for v in 1..=3 {
            tx.send(commit("A", v, v)).unwrap();
        }
        let first = rx.recv().await;
        let Some(Changes::Incidents(changed)) = heard(&mut p, &mut rx, first) else {
            panic!("news expected");
        };
        assert_eq!(changed.len(), 1);
        assert!(rx.try_recv().is_err(), "the burst was taken whole");
        // More commits than the backlog holds: which ones is lost.
        for v in 4..=10 {
            tx.send(commit("B", v, v)).unwrap();
        }
        let first = rx.recv().await;
        assert!(matches!(
            heard(&mut p, &mut rx, first),
            Some(Changes::Everything)
        ));
    }

    #[test]
    fn what_was_heard_is_not_news_again_when_a_scan_sees_it_or_an_older_state() {
        let mut p = Positions::default();
        news(&mut p, &[("A", at(5, 9))]);
        // A scan that read before the announced commit, then one after.
        assert!(news(&mut p, &[("A", at(4, 8))]).is_empty());
        assert!(news(&mut p, &[("A", at(5, 9))]).is_empty());
        assert_eq!(p.0["A"], at(5, 9));
    }
}
