//! The deployment's identity, as read: 128 random bits made once per store
//! (in its meta plane, by the engine's first write), which every signed
//! decision names as its `audience`. Two deployments with the same
//! runbooks, incident ids and humans (staging and production) therefore
//! never accept each other's decisions.
//!
//! `runbox store copy` keeps the identities a store's incidents were copied
//! from, so `verify` accepts the decisions those incidents carry while new
//! decisions must name the store's own identity.

use runbox_store::{Store, StoreError};

use crate::{Incidents, Result};

/// The meta-plane key of the identity.
pub const IDENTITY_KEY: &str = "deployment";
/// The meta-plane key of the identities incidents were copied from (a JSON
/// list of strings).
pub const COPIED_FROM_KEY: &str = "deployment_copied_from";

impl Incidents {
    /// This store's deployment identity, if a writer made it already.
    pub fn deployment(&self) -> Result<Option<String>> {
        Ok(read_identity(&**self.store())?)
    }

    /// The identities whose decisions this store's records may carry: its
    /// own and those its incidents were copied from.
    pub fn known_deployments(&self) -> Result<Vec<String>> {
        Ok(known(&**self.store())?)
    }
}

/// The identity of `store`, if made.
pub fn read_identity(store: &dyn Store) -> Result<Option<String>, StoreError> {
    Ok(store
        .meta_get(IDENTITY_KEY)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The identities `store`'s incidents were copied from.
pub fn copied_from(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    match store.meta_get(COPIED_FROM_KEY)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
            key: COPIED_FROM_KEY.into(),
            source,
        }),
        None => Ok(Vec::new()),
    }
}

/// Its own identity and those it was copied from.
pub fn known(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let mut known = copied_from(store)?;
    known.extend(read_identity(store)?);
    Ok(known)
}

/// Whether `store copy` leaves a meta-plane key to the identity's own
/// carrying: the identity and the list of identities copied from.
pub fn is_identity_key(key: &str) -> bool {
    key == IDENTITY_KEY || key == COPIED_FROM_KEY
}
