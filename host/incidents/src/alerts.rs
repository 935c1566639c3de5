//! Alert groups no route took, as `runbox alerts` lists them: the
//! [`UnroutedAlert`] records of the meta plane.

use runbox_core::alert::UnroutedAlert;
use runbox_store::keys::ALERT_UNROUTED;

use crate::{Incidents, Result};

impl Incidents {
    /// Every unrouted alert group recorded, oldest first.
    pub fn unrouted_alerts(&self) -> Result<Vec<UnroutedAlert>> {
        // The meta plane is small (host settings): one scan, filtered.
        self.store()
            .meta_scan()?
            .into_iter()
            .filter(|(key, _)| key.starts_with(ALERT_UNROUTED))
            .map(|(key, bytes)| Ok(runbox_store::decode(&key, &bytes)?))
            .collect()
    }
}
