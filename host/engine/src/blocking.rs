//! The engine holds its store as an [`OffWorker`], which runs every write
//! through the store layer's one hand-off from async code
//! ([`runbox_store::blocking::in_place`]): a write made from any async path
//! leaves the runtime's other tasks to go on.

use std::sync::Arc;

use runbox_core::ident::IncidentId;
pub(crate) use runbox_store::blocking::{in_place, on_multi_threaded_runtime};
use runbox_store::keys::Group;
use runbox_store::{
    Batch, Claim, Expect, MetaSwap, Page, Shared, Store, StoreError, Values, Versioned,
};

/// The store as the engine (and its read model) hold it: every write runs
/// through [`in_place`], so no caller, whichever async path it came from
/// (a gate record, a note, a decision over HTTP, a delivery's record),
/// holds a worker while the store syncs or waits on etcd. Reads go
/// straight through: they wait on no disk sync.
pub(crate) struct OffWorker(pub(crate) Arc<dyn Store>);

#[deny(
    clippy::missing_trait_methods,
    reason = "a default method would bypass the backend's own (etcd claims, grouped reads)"
)]
impl Store for OffWorker {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key)
    }

    fn get_many(&self, keys: &Group) -> Result<Values, StoreError> {
        self.0.get_many(keys)
    }

    fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        self.0.scan(prefix, after, limit)
    }

    fn scan_back(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.0.scan_back(prefix, before, limit)
    }

    fn kv_get(&self, incident: &IncidentId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.kv_get(incident, key)
    }

    fn kv_scan(&self, incident: &IncidentId) -> Result<Page, StoreError> {
        self.0.kv_scan(incident)
    }

    fn commit(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: Batch,
    ) -> Result<(), StoreError> {
        in_place(|| self.0.commit(incident, expected, batch))
    }

    fn commit_and_read(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: Batch,
        read_back: &Group,
    ) -> Result<Values, StoreError> {
        in_place(|| self.0.commit_and_read(incident, expected, batch, read_back))
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.meta_get(key)
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        in_place(|| self.0.put_meta(key, value))
    }

    fn meta_create(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        in_place(|| self.0.meta_create(key, value))
    }

    fn meta_swap(&self, swap: &MetaSwap) -> Result<(), StoreError> {
        in_place(|| self.0.meta_swap(swap))
    }

    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.0.shared_get(key)
    }

    fn shared_scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.0.shared_scan(prefix, after, limit)
    }

    fn commit_shared(&self, shared: Shared) -> Result<(), StoreError> {
        in_place(|| self.0.commit_shared(shared))
    }

    fn meta_scan(&self) -> Result<Page, StoreError> {
        self.0.meta_scan()
    }

    fn restore(&self, incident: &IncidentId, records: Page, kv: Page) -> Result<(), StoreError> {
        in_place(|| self.0.restore(incident, records, kv))
    }

    fn runner(&self) -> &str {
        self.0.runner()
    }

    fn lease_held(&self) -> Result<(), String> {
        self.0.lease_held()
    }

    fn claim(&self, incident: &IncidentId) -> Result<Claim, StoreError> {
        in_place(|| self.0.claim(incident))
    }

    fn check_claim(&self, incident: &IncidentId) -> Result<(), StoreError> {
        self.0.check_claim(incident)
    }

    fn release(&self, incident: &IncidentId) -> Result<(), StoreError> {
        in_place(|| self.0.release(incident))
    }
}
