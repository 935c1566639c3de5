//! Alert groups no route took, as `runbox alerts` lists them: the
//! [`UnroutedAlert`] records of the meta plane.

use runbox_core::alert::UnroutedAlert;
use runbox_store::StoreExt;
use runbox_store::keys;

use crate::{Incidents, Result};

impl Incidents {
    /// Every unrouted alert group recorded, oldest first.
    pub fn unrouted_alerts(&self) -> Result<Vec<UnroutedAlert>> {
        let alerts = self.store().meta_read_all(&keys::unrouted_alerts())?;
        Ok(alerts.into_iter().map(|(_, alert)| alert).collect())
    }
}
