//! An in-memory [`Store`]: the reference semantics, for unit tests and
//! benchmarks. Nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use crate::keys;
use runbox_core::ident::IncidentId;
use runbox_core::sync::lock;

use crate::{
    Batch, Expect, MetaSwap, Page, Shared, Store, StoreError, Versioned, check_expected,
    checkpoint_entry,
};

/// A [`Store`] held in memory. One lock guards all of it: commits of
/// different incidents serialize, which is fine without an fsync to share.
#[derive(Debug, Default)]
pub struct MemoryStore {
    planes: Mutex<Planes>,
}

#[derive(Debug, Default)]
struct Planes {
    records: BTreeMap<String, Vec<u8>>,
    kv: BTreeMap<(IncidentId, String), Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
    shared: BTreeMap<String, Versioned>,
    /// The last shared revision written.
    shared_revision: u64,
}

impl Planes {
    fn check_shared(&self, shared: &Shared) -> Result<(), StoreError> {
        shared.check(|key| Ok(self.shared.get(key).map(|v| v.version)))
    }

    fn write_shared(&mut self, shared: Shared) {
        if shared.writes().is_empty() {
            return;
        }
        self.shared_revision += 1;
        let version = self.shared_revision;
        for (key, value) in shared.writes {
            match value {
                Some(value) => self.shared.insert(key, Versioned { value, version }),
                None => self.shared.remove(&key),
            };
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn planes(&self) -> MutexGuard<'_, Planes> {
        // Every update below is applied whole under the lock; a panic cannot
        // leave a half-applied commit, so a poisoned lock is safe to reuse.
        lock(&self.planes)
    }
}

fn page<'a>(
    items: impl Iterator<Item = (&'a String, &'a Vec<u8>)>,
    prefix: &str,
    limit: usize,
) -> Page {
    items
        .take_while(|(k, _)| k.starts_with(prefix))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.planes().records.get(key).cloned())
    }

    fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let planes = self.planes();
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        Ok(page(
            planes.records.range((start, Bound::Unbounded)),
            prefix,
            limit,
        ))
    }

    fn scan_back(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let planes = self.planes();
        let end = match before {
            Some(b) => Bound::Excluded(b.to_string()),
            None => Bound::Unbounded,
        };
        let items = planes
            .records
            .range((Bound::Included(prefix.to_string()), end))
            .rev()
            .filter(|(k, _)| k.starts_with(prefix));
        Ok(items
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn kv_get(&self, incident: &IncidentId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .planes()
            .kv
            .get(&(incident.clone(), key.to_string()))
            .cloned())
    }

    fn kv_scan(&self, incident: &IncidentId) -> Result<Page, StoreError> {
        let planes = self.planes();
        Ok(planes
            .kv
            .range((incident.clone(), String::new())..)
            .take_while(|((i, _), _)| i == incident)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: Batch,
    ) -> Result<(), StoreError> {
        batch.validate(incident, expected)?;
        let mut planes = self.planes();
        let key = keys::checkpoint(incident);
        let stored = planes.records.get(key.as_str()).map(Vec::as_slice);
        check_expected(incident, expected, key.as_str(), stored)?;
        planes.check_shared(&batch.shared)?;
        let (cp_key, cp_bytes) = checkpoint_entry(incident, &batch);
        planes.records.insert(cp_key, cp_bytes);
        for (k, v) in batch.records.entries {
            planes.records.insert(k, v);
        }
        for (k, v) in batch.kv {
            let key = (incident.clone(), k);
            match v {
                Some(v) => planes.kv.insert(key, v),
                None => planes.kv.remove(&key),
            };
        }
        planes.write_shared(batch.shared);
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.planes().meta.get(key).cloned())
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.planes().meta.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn meta_create(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut planes = self.planes();
        Ok(planes
            .meta
            .entry(key.to_string())
            .or_insert_with(|| value.to_vec())
            .clone())
    }

    fn meta_swap(&self, swap: &MetaSwap) -> Result<(), StoreError> {
        let mut planes = self.planes();
        swap.check(|key| Ok(planes.meta.get(key).cloned()))?;
        for (key, value) in swap.puts() {
            planes.meta.insert(key.clone(), value.clone());
        }
        Ok(())
    }

    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.planes().shared.get(key).cloned())
    }

    fn shared_scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let planes = self.planes();
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        Ok(planes
            .shared
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn meta_scan(&self) -> Result<Page, StoreError> {
        let planes = self.planes();
        Ok(planes
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn restore(&self, incident: &IncidentId, records: Page, kv: Page) -> Result<(), StoreError> {
        let mut planes = self.planes();
        let cp = keys::checkpoint(incident);
        check_expected(
            incident,
            Expect::Absent,
            cp.as_str(),
            planes.records.get(cp.as_str()).map(Vec::as_slice),
        )?;
        crate::check_restore(incident, &records)?;
        planes.records.extend(records);
        for (k, v) in kv {
            planes.kv.insert((incident.clone(), k), v);
        }
        Ok(())
    }

    fn commit_shared(&self, shared: Shared) -> Result<(), StoreError> {
        shared.validate()?;
        let mut planes = self.planes();
        planes.check_shared(&shared)?;
        planes.write_shared(shared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    crate::conformance_tests!(crate::conformance::Fixture::new(crate::MemoryStore::new()));
}
