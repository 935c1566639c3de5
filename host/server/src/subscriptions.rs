//! MCP resource subscriptions: an agent that subscribes to an incident's
//! resources is told when they change (`notifications/resources/updated`),
//! so it waits without polling. Both forms clients speak are served:
//!
//! - `subscriptions/listen` (protocol 2026-07-28): one request names the
//!   resources, and its stream carries their updates until the client
//!   cancels it;
//! - `resources/subscribe` and `resources/unsubscribe` (earlier versions):
//!   updates arrive on the session.
//!
//! Either way the updates come from the server's one watcher of commits
//! ([`crate::changes`]): each commit of an incident updates every resource
//! of it a client subscribed to, as soon as it is durable (another runner's
//! commit on a shared store within [`crate::changes::LOOK_EVERY`]). An
//! update is a level trigger: the resource may have changed, read it again.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast::error::RecvError;

use crate::agents::Caller;
use crate::changes::{Changes, Listener};
use crate::error::ServiceError;
use crate::resources::IncidentResource;
use crate::service::Service;

/// The most resources one listen request, or one session's legacy
/// subscriptions, may name.
pub(crate) const MAX_SUBSCRIBED: usize = 64;

/// A subscribed resource and the incident whose commits update it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscribed {
    uri: String,
    incident: String,
}

impl Subscribed {
    /// A resource the caller may read, or why not (an unknown shape, an
    /// incident that does not exist or that it may not read).
    pub(crate) fn check(
        service: &Service,
        caller: &Caller,
        uri: &str,
    ) -> Result<Self, ServiceError> {
        let resource = IncidentResource::parse(uri)?;
        resource.read(service, caller)?;
        Ok(Subscribed {
            uri: uri.to_string(),
            incident: resource.incident().to_string(),
        })
    }
}

/// The URIs of `subscribed` that `changes` updates.
fn updated<'a>(subscribed: &'a [Subscribed], changes: &Changes) -> Vec<&'a str> {
    subscribed
        .iter()
        .filter(|s| match changes {
            Changes::Everything => true,
            Changes::Incidents(changed) => changed.iter().any(|c| c.id == s.incident),
        })
        .map(|s| s.uri.as_str())
        .collect()
}

/// Sends each update of `subscribed` through `send` until `stop` ends, the
/// watcher closes or `send` answers `false` (the client went away).
pub(crate) async fn forward<F, Fut>(
    mut listener: Listener,
    subscribed: Vec<Subscribed>,
    send: F,
    stop: impl Future<Output = ()>,
) where
    F: Fn(String) -> Fut,
    Fut: Future<Output = bool>,
{
    tokio::pin!(stop);
    loop {
        let changes = tokio::select! {
            () = &mut stop => return,
            heard = listener.receiver.recv() => match heard {
                Ok(changes) => changes,
                // Fell behind: any of them may have changed.
                Err(RecvError::Lagged(_)) => Changes::Everything,
                Err(RecvError::Closed) => return,
            },
        };
        for uri in updated(&subscribed, &changes) {
            if !send(uri.to_string()).await {
                return;
            }
        }
    }
}

/// One session's legacy subscriptions (`resources/subscribe`), each
/// forwarded by a task of its own until unsubscribed or the session ends.
#[derive(Debug, Clone, Default)]
pub(crate) struct Legacy(Arc<Mutex<BTreeMap<String, tokio::task::AbortHandle>>>);

impl Legacy {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, tokio::task::AbortHandle>> {
        runbox_core::sync::lock(&self.0)
    }

    /// Subscribes `subscribed` (again: no change), forwarding through
    /// `send`; refuses past [`MAX_SUBSCRIBED`].
    pub(crate) fn subscribe<F, Fut>(
        &self,
        service: &Service,
        subscribed: Subscribed,
        send: F,
    ) -> Result<(), ServiceError>
    where
        F: Fn(String) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let mut held = self.lock();
        held.retain(|_, task| !task.is_finished());
        if held.contains_key(&subscribed.uri) {
            return Ok(());
        }
        if held.len() >= MAX_SUBSCRIBED {
            return Err(ServiceError::bad_request(format!(
                "{MAX_SUBSCRIBED} resources are subscribed already in this session: unsubscribe one first"
            )));
        }
        let uri = subscribed.uri.clone();
        let task = tokio::spawn(forward(
            service.changes(),
            vec![subscribed],
            send,
            std::future::pending(),
        ));
        held.insert(uri, task.abort_handle());
        Ok(())
    }

    /// Ends the subscription to `uri`, if any.
    pub(crate) fn unsubscribe(&self, uri: &str) {
        if let Some(task) = self.lock().remove(uri) {
            task.abort();
        }
    }
}

impl Drop for Legacy {
    fn drop(&mut self) {
        // The last handle of a session's subscriptions: end their tasks.
        if Arc::strong_count(&self.0) == 1 {
            for task in self.lock().values() {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Changed;

    fn subscribed(uri: &str, incident: &str) -> Subscribed {
        Subscribed {
            uri: uri.into(),
            incident: incident.into(),
        }
    }

    #[test]
    fn a_commit_updates_every_subscribed_resource_of_its_incident_and_no_other() {
        let subs = [
            subscribed("runbox://incidents/A", "A"),
            subscribed("runbox://incidents/A/timeline", "A"),
            subscribed("runbox://incidents/B", "B"),
        ];
        let changed = Changes::Incidents(Arc::new(vec![Changed::new("A".into(), None)]));
        assert_eq!(
            updated(&subs, &changed),
            ["runbox://incidents/A", "runbox://incidents/A/timeline"]
        );
        assert_eq!(updated(&subs, &Changes::Everything).len(), 3);
    }
}
