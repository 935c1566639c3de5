//! Delivering the outbox: one lane per (incident, sink), which takes that
//! incident's entries for that sink in event order (PagerDuty must hear
//! `trigger` before `resolve`), each until a receiver takes it or its tries
//! run out. Tries to one sink at once are capped by its `max_in_flight`;
//! between tries a lane waits an exponential backoff with jitter.
//!
//! Where a delivery stands is kept in the store's meta plane
//! ([`runbox_core::notify::Delivery`]), written after each try: a process
//! killed between a receiver's 2xx and that write delivers the entry again
//! after its restart, with the same `Idempotency-Key`. At least once, never
//! zero times.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runbox_core::notify::{Delivery, DeliveryState, OutboxEntry, SinkKind, delivery_key};
use runbox_core::time::now_ms;
use runbox_engine::outbox::DeliveryNote;
use tracing::{Instrument, info_span, warn};

use crate::http::{HttpClient, Reply};
use crate::message::Notice;
use crate::sign::{SIGNATURE_HEADER, signature};
use crate::target::{Secret, Target};
use crate::{Notifier, NotifyError};

/// The longest wait between two tries of one entry.
pub const MAX_BACKOFF_MS: u64 = 300_000;
/// The longest `Retry-After` a receiver may ask for and be heeded.
pub const MAX_RETRY_AFTER_MS: u64 = 3_600_000;

/// One (incident, sink) pair's entries waiting, by event sequence.
pub(crate) type Lanes = Mutex<HashMap<(String, String), BTreeMap<u64, OutboxEntry>>>;

/// What one try got.
pub(crate) enum Answer {
    /// 2xx.
    Taken(u16),
    /// Anything else, with how long the receiver asked to wait, if it did.
    Refused {
        error: String,
        retry_after_ms: Option<u64>,
    },
}

impl Notifier {
    /// Queues `entry` on its lane, starting the lane if it is idle.
    pub(crate) fn enqueue(self: &Arc<Self>, entry: OutboxEntry) {
        let key = (entry.incident.clone(), entry.sink.clone());
        let mut lanes = self
            .lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(queue) = lanes.get_mut(&key) {
            queue.insert(entry.seq, entry);
            return;
        }
        lanes.insert(key.clone(), BTreeMap::from([(entry.seq, entry)]));
        let me = self.clone();
        let span = info_span!("notify", incident = %key.0, sink = %key.1);
        tokio::spawn(async move { me.lane(key).await }.instrument(span));
    }

    /// Delivers a lane's entries in order until it is empty.
    async fn lane(self: Arc<Self>, key: (String, String)) {
        loop {
            let entry = {
                let mut lanes = self
                    .lanes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match lanes.get_mut(&key).and_then(BTreeMap::pop_first) {
                    Some((_, entry)) => entry,
                    None => {
                        lanes.remove(&key);
                        return;
                    }
                }
            };
            self.drive(&entry).await;
        }
    }

    /// Tries `entry` until a receiver takes it or it is parked.
    async fn drive(&self, entry: &OutboxEntry) {
        let mut delivery = match self.delivery_of(entry) {
            Ok(d) => d,
            Err(e) => {
                warn!(entry = %entry.id(), "cannot read the delivery state: {e}");
                return;
            }
        };
        // Each try writes the state it returns: go on from that.
        while delivery.state == DeliveryState::Pending {
            if let Some(at) = delivery.next_at_ms {
                let wait = at.saturating_sub(now_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let (next, note) = self.try_once(entry, delivery).await;
            self.record(entry, &note).await;
            delivery = next;
        }
    }

    /// One try of `entry`: sends it, writes where its delivery stands, and
    /// returns that with what the timeline should say.
    pub(crate) async fn try_once(
        &self,
        entry: &OutboxEntry,
        mut delivery: Delivery,
    ) -> (Delivery, DeliveryNote) {
        let answer = match self.targets.get(&entry.sink) {
            Some(target) => self.send(target, entry).await,
            None => Answer::Refused {
                error: format!("no sink named `{}` in notify.toml now", entry.sink),
                retry_after_ms: None,
            },
        };
        delivery.attempts += 1;
        let note = match answer {
            Answer::Taken(code) => {
                delivery.state = DeliveryState::Delivered;
                delivery.delivered_ms = Some(now_ms());
                delivery.next_at_ms = None;
                DeliveryNote::Delivered {
                    answer: format!("HTTP {code}"),
                }
            }
            Answer::Refused {
                error,
                retry_after_ms,
            } => self.failed(entry, &mut delivery, error, retry_after_ms),
        };
        if let Err(e) = self.save(entry, &delivery) {
            // The receiver may have it: the next try (after a restart, if
            // need be) sends it again under the same idempotency key.
            warn!(entry = %entry.id(), "cannot write the delivery state: {e}");
        }
        (delivery, note)
    }

    fn failed(
        &self,
        entry: &OutboxEntry,
        delivery: &mut Delivery,
        error: String,
        retry_after_ms: Option<u64>,
    ) -> DeliveryNote {
        // A sink gone from notify.toml has no tries left.
        let sink = self.targets.get(&entry.sink).map(|t| &t.sink);
        let parked = sink.is_none_or(|s| delivery.attempts >= s.max_attempts);
        delivery.last_error = Some(error.clone());
        if let (false, Some(sink)) = (parked, sink) {
            let wait = backoff(sink.backoff_ms, delivery.attempts, &entry.id())
                .max(retry_after_ms.unwrap_or(0).min(MAX_RETRY_AFTER_MS));
            delivery.next_at_ms = Some(now_ms() + wait);
        } else {
            delivery.state = DeliveryState::Parked;
            delivery.next_at_ms = None;
        }
        DeliveryNote::Failed {
            error,
            attempts: delivery.attempts,
            parked,
        }
    }

    /// Sends `entry` to `target` once.
    async fn send(&self, target: &Target, entry: &OutboxEntry) -> Answer {
        let notice = match Notice::of(self.engine.incidents(), entry) {
            Ok(n) => n,
            Err(e) => {
                return Answer::Refused {
                    error: format!("cannot build the notice: {e}"),
                    retry_after_ms: None,
                };
            }
        };
        let permit = self.permits.get(&entry.sink).cloned();
        let _permit = match &permit {
            Some(p) => p.acquire().await.ok(),
            None => None,
        };
        post(&self.http, target, &notice).await
    }

    /// Where `entry`'s delivery stands (pending with no tries, at first).
    pub(crate) fn delivery_of(&self, entry: &OutboxEntry) -> Result<Delivery, NotifyError> {
        Ok(self
            .engine
            .incidents()
            .notification(entry.clone())?
            .delivery)
    }

    pub(crate) fn save(&self, entry: &OutboxEntry, delivery: &Delivery) -> Result<(), NotifyError> {
        let json = serde_json::to_vec(delivery).expect("a delivery always serializes");
        self.engine
            .incidents()
            .store()
            .put_meta(&delivery_key(&entry.id()), &json)?;
        Ok(())
    }

    /// Puts what became of a try on the incident's timeline.
    pub(crate) async fn record(&self, entry: &OutboxEntry, note: &DeliveryNote) {
        if let Err(e) = self.engine.record_delivery(entry, note).await {
            warn!(entry = %entry.id(), "cannot record the delivery on the timeline: {e}");
        }
    }
}

/// POSTs `notice` to `target` once, as its kind wants it.
pub(crate) async fn post(http: &HttpClient, target: &Target, notice: &Notice) -> Answer {
    let secret = target
        .secret
        .as_ref()
        .map(Secret::expose)
        .unwrap_or_default();
    let body = match target.sink.kind {
        SinkKind::Webhook => notice.webhook_body(),
        SinkKind::Slack => notice.slack_body(),
        SinkKind::Pagerduty => notice.pagerduty_body(secret),
    };
    let signed = (target.sink.kind == SinkKind::Webhook)
        .then(|| signature(secret.as_bytes(), now_ms() / 1000, &body));
    let mut headers = vec![("idempotency-key", notice.id.as_str())];
    if let Some(signed) = &signed {
        headers.push((SIGNATURE_HEADER, signed.as_str()));
    }
    let timeout = Duration::from_millis(target.sink.timeout_ms);
    match http
        .post(target.url.expose(), &headers, body, timeout)
        .await
    {
        Reply::Status { code, .. } if (200..300).contains(&code) => Answer::Taken(code),
        Reply::Status {
            code,
            retry_after_ms,
        } => Answer::Refused {
            error: format!("HTTP {code}"),
            retry_after_ms,
        },
        Reply::TimedOut => Answer::Refused {
            error: format!("no answer within {}ms", target.sink.timeout_ms),
            retry_after_ms: None,
        },
        Reply::Failed(error) => Answer::Refused {
            error,
            retry_after_ms: None,
        },
    }
}

/// The wait before try `attempts + 1`: `first` doubled per try, at most
/// [`MAX_BACKOFF_MS`], less up to a fifth at random, so entries that failed
/// together do not all come back at once.
fn backoff(first: u64, attempts: u32, salt: &str) -> u64 {
    use std::hash::BuildHasher;
    let doubled = first.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
    let wait = doubled.min(MAX_BACKOFF_MS);
    let noise = std::collections::hash_map::RandomState::new().hash_one((salt, attempts));
    wait - noise % (wait / 5 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_a_little_jitter() {
        for (attempts, base) in [(1, 1000), (2, 2000), (3, 4000), (30, MAX_BACKOFF_MS)] {
            let wait = backoff(1000, attempts, "e");
            assert!(
                wait <= base && wait >= base - base / 5,
                "{attempts}: {wait}"
            );
        }
    }
}
