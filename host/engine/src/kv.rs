//! Step KV reads of one incident, for the sandbox: its own keys, and the
//! shared namespace (`shared:…`) with the version of each value read, so
//! the commit that depends on them can be fenced on them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use runbox_core::ident::IncidentId;
use runbox_core::limits::shared_kv_key;
use runbox_sandbox::KvSource;
use runbox_store::{Shared, Store};

/// The committed step KV of one incident, as a step's reads see it.
pub struct IncidentKv {
    store: Arc<dyn Store>,
    incident: IncidentId,
    reads: Arc<SharedReads>,
}

/// The shared values an attempt read that its commit has not yet been
/// fenced on: shared-plane key → the version first seen (`None`: absent).
#[derive(Debug, Default)]
pub(crate) struct SharedReads(Mutex<BTreeMap<String, Option<u64>>>);

impl SharedReads {
    fn reads(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Option<u64>>> {
        crate::lock(&self.0)
    }

    /// Adds an expectation for every value read to `shared`, and forgets
    /// them: once a commit is fenced on them, later commits need not be.
    pub(crate) fn fence(&self, shared: &mut Shared) {
        for (key, version) in std::mem::take(&mut *self.reads()) {
            shared.expect(key, version);
        }
    }

    /// Puts back expectations a commit that failed took with [`Self::fence`].
    pub(crate) fn restore(&self, shared: &Shared) {
        let mut reads = self.reads();
        for (key, version) in shared.expectations() {
            if key.starts_with(runbox_core::limits::SHARED_KV) {
                reads.entry(key.clone()).or_insert(*version);
            }
        }
    }
}

impl IncidentKv {
    /// The KV view of `incident`.
    pub fn new(store: Arc<dyn Store>, incident: IncidentId) -> Self {
        IncidentKv {
            store,
            incident,
            reads: Arc::default(),
        }
    }

    /// The shared values read so far.
    pub(crate) fn reads(&self) -> Arc<SharedReads> {
        self.reads.clone()
    }
}

impl KvSource for IncidentKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(shared) = shared_kv_key(key) else {
            return self
                .store
                .kv_get(&self.incident, key)
                .map_err(|e| e.to_string());
        };
        let value = self.store.shared_get(&shared).map_err(|e| e.to_string())?;
        // The first version seen is the one the step's decisions rest on.
        self.reads
            .reads()
            .entry(shared)
            .or_insert(value.as_ref().map(|v| v.version));
        Ok(value.map(|v| v.value))
    }
}
