//! Delivering the outbox: one lane per (incident, sink), which takes that
//! incident's entries for that sink in event order (PagerDuty must hear
//! `trigger` before `resolve`), each until a receiver takes it or its tries
//! run out. Tries to one sink at once are capped by its `max_in_flight`;
//! between tries a lane waits an exponential backoff with jitter.
//!
//! Where a delivery stands is kept in the store's meta plane
//! ([`runbox_core::notify::Delivery`]), claimed before each try (see
//! [`crate::claim`]) and written after it: a process
//! killed between a receiver's 2xx and that write delivers the entry again
//! after its restart, with the same `Idempotency-Key`. At least once, never
//! zero times.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runbox_core::notify::{Delivery, DeliveryState, OutboxEntry, SinkKind};
use runbox_core::sync::lock;
use runbox_core::time::now_ms;
use runbox_engine::outbox::DeliveryNote;
use tracing::{Instrument, info_span, warn};

use crate::claim::{CLAIM_MARGIN_MS, Claimed};
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

/// What [`Notifier::try_once`] did.
pub(crate) enum Tried {
    /// Sent it once: where its delivery stands now, and what the timeline
    /// should say.
    Sent(Delivery, DeliveryNote),
    /// Nothing: it is delivered or parked.
    Settled,
    /// Nothing yet: not before this (ms since epoch).
    Later(u64),
}

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
        let mut lanes = lock(&self.lanes);
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
                let mut lanes = lock(&self.lanes);
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

    /// Tries `entry` until a receiver takes it or it is parked, by this
    /// runner or another.
    async fn drive(&self, entry: &OutboxEntry) {
        loop {
            match self.try_once(entry).await {
                Ok(Tried::Sent(delivery, note)) => {
                    self.record(entry, &note).await;
                    if delivery.state != DeliveryState::Pending {
                        return;
                    }
                }
                Ok(Tried::Settled) => return,
                Ok(Tried::Later(at)) => {
                    let wait = at.saturating_sub(now_ms());
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Err(e) => {
                    warn!(entry = %entry.id(), "cannot claim the delivery: {e}");
                    return;
                }
            }
        }
    }

    /// One try of `entry` if it is due and no other runner is trying it:
    /// claims it, sends it, writes where its delivery stands, and returns
    /// that with what the timeline should say.
    pub(crate) async fn try_once(&self, entry: &OutboxEntry) -> Result<Tried, NotifyError> {
        let resolved = self.resolved();
        let target = resolved.targets.get(&entry.sink);
        // Wait for a slot before claiming, so a claim is not spent waiting.
        let permit = resolved.permits.get(&entry.sink).cloned();
        let _permit = match &permit {
            Some(p) => p.acquire().await.ok(),
            None => None,
        };
        let hold = target.map_or(0, |t| t.sink.timeout_ms) + CLAIM_MARGIN_MS;
        let (mut delivery, claimed) = match self.claim(entry, hold)? {
            Claimed::Ours { delivery, bytes } => (delivery, bytes),
            Claimed::Settled => return Ok(Tried::Settled),
            Claimed::Later(at) => return Ok(Tried::Later(at)),
        };
        let answer = match target {
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
            } => self.failed(target, entry, &mut delivery, error, retry_after_ms),
        };
        runbox_telemetry::notification(
            &entry.sink,
            match delivery.state {
                DeliveryState::Delivered => "delivered",
                DeliveryState::Parked => "parked",
                DeliveryState::Pending => "failed",
            },
        );
        if let Err(e) = self.settle(entry, &claimed, &delivery) {
            // The receiver may have it: the next try (after a restart, if
            // need be, or by another runner) sends it again under the
            // same idempotency key.
            warn!(entry = %entry.id(), "cannot write the delivery state: {e}");
        }
        Ok(Tried::Sent(delivery, note))
    }

    fn failed(
        &self,
        target: Option<&Target>,
        entry: &OutboxEntry,
        delivery: &mut Delivery,
        error: String,
        retry_after_ms: Option<u64>,
    ) -> DeliveryNote {
        // A sink gone from notify.toml has no tries left.
        let sink = target.map(|t| &t.sink);
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
        post(&self.http, target, &notice).await
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
