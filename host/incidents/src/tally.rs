//! Counting incidents for the gauges of `/metrics`: how many stand at each
//! status and owner kind, the notifications they owe, and the brakes
//! engaged. A scrape must
//! not cost the store without bound, so a tally reads at most `limit`
//! incidents of the index and says whether it stopped there.

use std::collections::BTreeMap;

use runbox_core::notify::DeliveryState;
use runbox_core::records::Status;
use runbox_store::StoreExt;
use runbox_store::keys;

use crate::{Incidents, Result};

/// Who owns an incident, as a gauge's label: `agent` or `human`.
pub type OwnerKind = &'static str;

/// What [`Incidents::tally`] counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Incidents by status and owner kind; every pair is present, zero or
    /// not, so a gauge that drops to zero says so.
    pub incidents: BTreeMap<(Status, OwnerKind), usize>,
    /// Notifications waiting for a try.
    pub pending: usize,
    /// Notifications out of tries.
    pub parked: usize,
    /// Brakes engaged now.
    pub brakes: usize,
    /// Whether more incidents than the limit exist (the counts cover the
    /// first `limit` of the index).
    pub truncated: bool,
}

impl Incidents {
    /// Counts the first `limit` incidents of the index by status and owner
    /// kind, the notifications they owe, and the brakes engaged.
    pub fn tally(&self, limit: usize) -> Result<Tally> {
        let mut tally = Tally {
            brakes: self.brakes()?.len(),
            ..Tally::default()
        };
        for status in Status::ALL {
            for owner in ["agent", "human"] {
                tally.incidents.insert((status, owner), 0);
            }
        }
        let page = self
            .store()
            .read_page(&keys::incidents(), None, limit.saturating_add(1))?;
        tally.truncated = page.len() > limit;
        for (_, id) in page.into_iter().take(limit) {
            let owner = if self.owner_of(&id)?.is_agent() {
                "agent"
            } else {
                "human"
            };
            *tally
                .incidents
                .entry((self.status_of(&id)?, owner))
                .or_default() += 1;
            for n in self.notifications(&id)? {
                match n.delivery.state {
                    DeliveryState::Pending => tally.pending += 1,
                    DeliveryState::Parked => tally.parked += 1,
                    DeliveryState::Delivered => {}
                }
            }
        }
        Ok(tally)
    }
}
