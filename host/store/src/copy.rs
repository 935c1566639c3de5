//! Copying a store's contents into another (`runbox store copy`): every
//! incident (records and step KV), the meta plane and the shared plane,
//! each incident read back and compared. Backends are interchangeable, so
//! this moves a deployment between the embedded store and etcd either way.
//!
//! ```
//! use runbox_store::{MemoryStore, copy::copy_store};
//! let (from, to) = (MemoryStore::new(), MemoryStore::new());
//! let copied = copy_store(&from, &to, &|_| false).unwrap();
//! assert_eq!(copied.incidents, 0);
//! ```

use crate::keys;
use runbox_core::ident::IncidentId;

use crate::{Page, Shared, Store, StoreError, StoreExt};

/// Shared values written per commit while copying: small enough for any
/// backend's one atomic write (etcd's default 128 operations per txn).
const SHARED_PER_COMMIT: usize = 64;

/// Why a copy stopped. What was copied before stays (each incident is
/// written whole or not at all).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A read or write failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An incident read back from the target differs from the source's.
    #[error("incident {0} reads back differently from the target: the copy is not trustworthy")]
    Mismatch(IncidentId),
    /// The target's shared plane has fewer values than were copied.
    #[error("the shared plane reads back short from the target ({found} of {copied} values)")]
    SharedShort {
        /// Values copied.
        copied: usize,
        /// Values found.
        found: usize,
    },
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// Incidents copied and read back identical.
    pub incidents: usize,
    /// Incidents the target had already, kept as they were.
    pub kept: Vec<IncidentId>,
    /// Shared-plane values copied.
    pub shared: usize,
}

/// Copies every incident, the meta plane (but keys `skip_meta` names) and
/// the shared plane of `source` into `target`. An incident the target has
/// already is kept, not overwritten. Stop every runner of both first.
pub fn copy_store(
    source: &dyn Store,
    target: &dyn Store,
    skip_meta: &dyn Fn(&str) -> bool,
) -> Result<Copied, CopyError> {
    let mut copied = Copied::default();
    for id in incident_ids(source)? {
        let (records, kv) = incident(source, &id)?;
        match target.restore(&id, records.clone(), kv.clone()) {
            Ok(()) => copied.incidents += 1,
            Err(StoreError::Conflict { .. }) => {
                copied.kept.push(id);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if incident(target, &id)? != (records, kv) {
            return Err(CopyError::Mismatch(id));
        }
    }
    for (key, value) in source.meta_scan()? {
        if !skip_meta(&key) {
            target.put_meta(&key, &value)?;
        }
    }
    copied.shared = copy_shared(source, target)?;
    Ok(copied)
}

/// The ids of every incident of `store`.
pub fn incident_ids(store: &dyn Store) -> Result<Vec<IncidentId>, StoreError> {
    Ok(store
        .scan_all(keys::incidents().as_str())?
        .into_iter()
        .filter_map(|(k, _)| keys::index_id(&k))
        .collect())
}

/// An incident's records (with its index entry) and step KV.
fn incident(store: &dyn Store, id: &IncidentId) -> Result<(Page, Page), StoreError> {
    let mut records = store.scan_all(&keys::prefix(id))?;
    if let Some(index) = store.get(keys::index(id).as_str())? {
        records.push((keys::index(id).into_string(), index));
    }
    records.sort();
    Ok((records, store.kv_scan(id)?))
}

fn copy_shared(source: &dyn Store, target: &dyn Store) -> Result<usize, CopyError> {
    let shared = shared_plane(source)?;
    let mut writes = Shared::default();
    for (key, value) in &shared {
        writes.put(key.clone(), value.clone());
        if writes.writes().len() == SHARED_PER_COMMIT {
            target.commit_shared(std::mem::take(&mut writes))?;
        }
    }
    if !writes.writes().is_empty() {
        target.commit_shared(writes)?;
    }
    let found = shared_plane(target)?.len();
    if found < shared.len() {
        return Err(CopyError::SharedShort {
            copied: shared.len(),
            found,
        });
    }
    Ok(shared.len())
}

fn shared_plane(store: &dyn Store) -> Result<Page, StoreError> {
    Ok(store
        .shared_scan_all("")?
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use crate::conformance::open;

    fn id(s: &str) -> IncidentId {
        IncidentId::new(s).unwrap()
    }

    /// Incidents, meta and shared values arrive; an incident the target
    /// had is kept; a skipped meta key stays behind.
    #[test]
    fn a_copy_carries_incidents_meta_and_shared_and_keeps_what_the_target_had() {
        let (from, to) = (MemoryStore::new(), MemoryStore::new());
        for i in ["INC-1", "INC-2"] {
            open(&from, &id(i));
        }
        open(&to, &id("INC-2"));
        from.put_meta("token", b"hash").unwrap();
        from.put_meta("identity", b"mine").unwrap();
        let mut shared = Shared::default();
        shared.put("brakes/all".to_string(), b"{}".to_vec());
        from.commit_shared(shared).unwrap();

        let copied = copy_store(&from, &to, &|k| k == "identity").unwrap();
        assert_eq!(copied.incidents, 1);
        assert_eq!(copied.kept, [id("INC-2")]);
        assert_eq!(copied.shared, 1);
        assert_eq!(incident_ids(&to).unwrap().len(), 2);
        assert_eq!(
            incident(&to, &id("INC-1")).unwrap(),
            incident(&from, &id("INC-1")).unwrap()
        );
        assert_eq!(to.meta_get("token").unwrap().as_deref(), Some(&b"hash"[..]));
        assert_eq!(to.meta_get("identity").unwrap(), None);
        assert!(to.shared_get("brakes/all").unwrap().is_some());
    }
}
