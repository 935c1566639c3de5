//! Live pages: one watcher per server looks at every incident's checkpoint
//! version (each commit moves it) and tells the open consoles which
//! incidents changed, over server-sent events. The browser then fetches
//! the page it shows again; the server renders it, so what a human reads
//! is always the server's escaped rendering, never text the client put
//! together.
//!
//! One watcher, not one per console: 100 open consoles cost one scan of
//! the store per tick, not a hundred.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use runbox_incidents::Incidents;
use tokio::sync::broadcast;

/// How often the watcher looks: a change shows in an open console within
/// about this, plus a page fetch.
pub const TICK: Duration = Duration::from_millis(100);

/// The changes the watcher announces: the ids of incidents that changed
/// (opened, committed) since its last look.
pub(crate) type Changes = Arc<Vec<String>>;

/// The watcher, started with the first console that listens and stopped
/// when the last one goes.
#[derive(Default)]
pub(crate) struct Live {
    sender: std::sync::Mutex<Weak<broadcast::Sender<Changes>>>,
}

impl Live {
    /// A receiver of changes, starting the watcher if none runs.
    pub(crate) fn subscribe(&self, incidents: &Incidents) -> Listener {
        let mut slot = self
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = slot.upgrade() {
            return Listener {
                receiver: sender.subscribe(),
                _sender: sender,
            };
        }
        let (sender, receiver) = broadcast::channel(64);
        let sender = Arc::new(sender);
        *slot = Arc::downgrade(&sender);
        // Read before the subscriber's stream opens (and its page looks
        // again), not later in the task: a commit in between would count
        // as seen and be announced to nobody.
        let seen = versions(incidents);
        tokio::spawn(watch(incidents.clone(), seen, Arc::downgrade(&sender)));
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

/// Every incident's checkpoint version, by id (an incident that cannot be
/// read is left out this tick).
fn versions(incidents: &Incidents) -> BTreeMap<String, u64> {
    let Ok(ids) = incidents.ids() else {
        return BTreeMap::new();
    };
    ids.iter()
        .filter_map(|id| Some((id.to_string(), incidents.checkpoint(id).ok()?.version)))
        .collect()
}

/// Looks every [`TICK`] until no console listens.
async fn watch(
    incidents: Incidents,
    mut seen: BTreeMap<String, u64>,
    sender: Weak<broadcast::Sender<Changes>>,
) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(sender) = sender.upgrade() else {
            return;
        };
        let reader = incidents.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || versions(&reader)).await else {
            continue;
        };
        let changed: Vec<String> = now
            .iter()
            .filter(|(id, v)| seen.get(*id) != Some(v))
            .map(|(id, _)| id.clone())
            .collect();
        seen = now;
        if !changed.is_empty() {
            let _ = sender.send(Arc::new(changed));
        }
    }
}
