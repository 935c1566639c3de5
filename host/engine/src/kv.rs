//! Step KV reads of one incident, for the sandbox.

use std::sync::Arc;

use runbox_core::ident::IncidentId;
use runbox_sandbox::KvSource;
use runbox_store::Store;

/// The committed step KV of one incident, as a step's reads see it.
pub struct IncidentKv {
    store: Arc<dyn Store>,
    incident: IncidentId,
}

impl IncidentKv {
    /// The KV view of `incident`.
    pub fn new(store: Arc<dyn Store>, incident: IncidentId) -> Self {
        IncidentKv { store, incident }
    }
}

impl KvSource for IncidentKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store
            .kv_get(&self.incident, key)
            .map_err(|e| e.to_string())
    }
}
