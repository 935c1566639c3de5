//! Reading the outbox: the notifications incidents' commits enqueued and
//! where each delivery stands (`runbox notify list`, `status`, the
//! deliverer's scan at start).

use runbox_core::ident::IncidentId;
use runbox_core::notify::{Delivery, DeliveryState, OutboxEntry, delivery_key};
use runbox_store::StoreExt;
use runbox_store::keys;
use serde::{Deserialize, Serialize};

use crate::{Incidents, Result};

/// One outbox entry and where its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Notification {
    /// The entry's id (the receivers' `Idempotency-Key`).
    pub id: String,
    /// The entry as committed.
    #[serde(flatten)]
    pub entry: OutboxEntry,
    /// Its delivery (pending with no tries, until the first try).
    pub delivery: Delivery,
}

impl Notification {
    /// Not delivered yet: waiting for a try, or parked.
    pub fn is_owed(&self) -> bool {
        self.delivery.state != DeliveryState::Delivered
    }
}

impl Incidents {
    /// Every notification of incident `id`, in event order.
    pub fn notifications(&self, id: &IncidentId) -> Result<Vec<Notification>> {
        let entries = self.store().read_all(&keys::outbox(id))?;
        entries
            .into_iter()
            .map(|(_, entry)| self.notification(entry))
            .collect()
    }

    /// Every notification of every incident, incident by incident.
    pub fn every_notification(&self) -> Result<Vec<Notification>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            out.extend(self.notifications(&id)?);
        }
        Ok(out)
    }

    /// The notifications of every incident not delivered yet (pending or
    /// parked), incident by incident.
    pub fn undelivered(&self) -> Result<Vec<Notification>> {
        let mut all = self.every_notification()?;
        all.retain(Notification::is_owed);
        Ok(all)
    }

    /// Where the delivery of `entry` stands.
    pub fn notification(&self, entry: OutboxEntry) -> Result<Notification> {
        let id = entry.id();
        let (_, delivery) = self.delivery(&id)?;
        Ok(Notification {
            id,
            entry,
            delivery,
        })
    }

    /// Where the delivery of entry `entry_id` stands (pending with no
    /// tries, before its first), with the bytes it is stored as: what a
    /// conditional write of the next state expects.
    pub fn delivery(&self, entry_id: &str) -> Result<(Option<Vec<u8>>, Delivery)> {
        let key = delivery_key(entry_id);
        let stored = self.store().meta_get(&key)?;
        let delivery = match &stored {
            Some(bytes) => runbox_store::decode(&key, bytes)?,
            None => Delivery::default(),
        };
        Ok((stored, delivery))
    }
}
