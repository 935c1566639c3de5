//! One sender per entry. Runners sharing a store (etcd) each deliver what
//! they find owed; before a try, a runner claims the entry's delivery state
//! with a conditional write (`Store::meta_swap` on the bytes it read), so
//! that of two runners racing for one entry one sends it and the other
//! waits for the outcome. A claim holds for the sink's timeout and
//! [`CLAIM_MARGIN_MS`]: a runner that stops mid-send (killed, partitioned)
//! leaves the entry to the others after that, and the entry is sent again
//! under its one `Idempotency-Key` (at least once, never zero times).
//!
//! A runner is named by its store (`Store::runner`): its `--runner` name on
//! etcd, which it keeps across a restart, so a restarted runner takes its
//! own claims back at once; `local` on the embedded store, which one
//! process opens at a time.

use runbox_core::notify::{Delivery, DeliveryState, OutboxEntry, delivery_key};
use runbox_core::time::now_ms;
use runbox_store::{MetaSwap, StoreError};

use crate::{Notifier, NotifyError};

/// How long a claim outlives the sink's timeout: room for the write of
/// the outcome after the receiver's answer.
pub const CLAIM_MARGIN_MS: u64 = 5_000;
/// How often a claim is tried against other runners' writes before the
/// entry is left for a moment.
const CLAIM_TRIES: usize = 4;
/// How long a lane waits after losing every claim try.
const CONTENDED_WAIT_MS: u64 = 100;

/// Where an entry stands for this runner.
pub(crate) enum Claimed {
    /// This runner sends it now: the state as claimed, and the bytes that
    /// must still stand when the outcome is written.
    Ours { delivery: Delivery, bytes: Vec<u8> },
    /// Delivered or parked: nothing to send.
    Settled,
    /// Not before this (ms since epoch): its backoff, or another runner's
    /// claim.
    Later(u64),
}

impl Notifier {
    /// Claims `entry` for one try, holding it for `hold_ms`, if it is
    /// pending, due, and no other runner's claim holds.
    pub(crate) fn claim(&self, entry: &OutboxEntry, hold_ms: u64) -> Result<Claimed, NotifyError> {
        let key = delivery_key(&entry.id());
        let store = self.engine.incidents().store();
        for _ in 0..CLAIM_TRIES {
            let (old, current) = self.engine.incidents().delivery(&entry.id())?;
            let now = now_ms();
            if current.state != DeliveryState::Pending {
                return Ok(Claimed::Settled);
            }
            if let Some(until) = current.claimed_by_other(store.runner(), now) {
                return Ok(Claimed::Later(until));
            }
            if let Some(at) = current.next_at_ms.filter(|&at| at > now) {
                return Ok(Claimed::Later(at));
            }
            let delivery = Delivery {
                claimed_by: Some(store.runner().to_string()),
                claimed_until_ms: Some(now.saturating_add(hold_ms)),
                ..current
            };
            let bytes = encode(&delivery);
            match store.meta_swap(
                &MetaSwap::new()
                    .expect(&key, old.as_deref())
                    .put(&key, &bytes),
            ) {
                Ok(()) => return Ok(Claimed::Ours { delivery, bytes }),
                Err(StoreError::MetaConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Claimed::Later(now_ms() + CONTENDED_WAIT_MS))
    }

    /// Writes the outcome of a try made under the claim whose bytes are
    /// `claimed`, and gives the claim up. A runner whose claim lapsed and
    /// was taken by another writes nothing: the other's try stands.
    pub(crate) fn settle(
        &self,
        entry: &OutboxEntry,
        claimed: &[u8],
        outcome: &Delivery,
    ) -> Result<(), NotifyError> {
        let key = delivery_key(&entry.id());
        let outcome = Delivery {
            claimed_by: None,
            claimed_until_ms: None,
            ..outcome.clone()
        };
        let swap = MetaSwap::new()
            .expect(&key, Some(claimed))
            .put(&key, &encode(&outcome));
        Ok(self.engine.incidents().store().meta_swap(&swap)?)
    }
}

impl Notifier {
    /// Makes `entry`'s delivery `fresh` if it is parked as read just
    /// before, on the bytes read: of two operators retrying it at once, or
    /// a retry racing a runner that took it up again, one writes. Whether
    /// this one did.
    pub(crate) fn unpark(
        &self,
        entry: &OutboxEntry,
        fresh: &Delivery,
    ) -> Result<bool, NotifyError> {
        let key = delivery_key(&entry.id());
        let (old, current) = self.engine.incidents().delivery(&entry.id())?;
        if current.state != DeliveryState::Parked {
            return Ok(false);
        }
        let swap = MetaSwap::new()
            .expect(&key, old.as_deref())
            .put(&key, &encode(fresh));
        match self.engine.incidents().store().meta_swap(&swap) {
            Ok(()) => Ok(true),
            Err(StoreError::MetaConflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

pub(crate) fn encode(delivery: &Delivery) -> Vec<u8> {
    serde_json::to_vec(delivery).expect("a delivery always serializes")
}
