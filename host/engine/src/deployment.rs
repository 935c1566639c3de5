//! The deployment's identity: 128 random bits made once per store (in its
//! meta plane), which every signed decision names as its `audience`. Two
//! deployments with the same runbooks, incident ids and humans (staging and
//! production) therefore never accept each other's decisions: a statement
//! signed for one is refused by the other, naming both.
//!
//! `runbox store copy` makes the copy a deployment of its own unless asked
//! to carry the identity (`--with-identity`, for moving a deployment to
//! another store); the identities a store's incidents were copied from are
//! kept, so `verify` accepts the decisions those incidents carry while new
//! decisions must name the store's own identity.

use runbox_store::{Store, StoreError};

use crate::{Engine, Incidents, Result};

/// The meta-plane key of the identity.
const IDENTITY_KEY: &str = "deployment";
/// The meta-plane key of the identities incidents were copied from (a JSON
/// list of strings).
const COPIED_FROM_KEY: &str = "deployment_copied_from";

impl Incidents {
    /// This store's deployment identity, if a writer made it already.
    pub fn deployment(&self) -> Result<Option<String>> {
        Ok(read_identity(&*self.store)?)
    }

    /// The identities whose decisions this store's records may carry: its
    /// own and those its incidents were copied from.
    pub fn known_deployments(&self) -> Result<Vec<String>> {
        Ok(known(&*self.store)?)
    }
}

impl Engine {
    /// This store's deployment identity, made on first use. Every writer
    /// racing to make it ends up with the same one (`Store::meta_create`).
    pub fn deployment_id(&self) -> Result<String> {
        Ok(ensure_identity(&*self.store)?)
    }
}

fn read_identity(store: &dyn Store) -> Result<Option<String>, StoreError> {
    Ok(store
        .meta_get(IDENTITY_KEY)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn copied_from(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    match store.meta_get(COPIED_FROM_KEY)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
            key: COPIED_FROM_KEY.into(),
            source,
        }),
        None => Ok(Vec::new()),
    }
}

fn known(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let mut known = copied_from(store)?;
    known.extend(read_identity(store)?);
    Ok(known)
}

fn ensure_identity(store: &dyn Store) -> Result<String, StoreError> {
    if let Some(id) = read_identity(store)? {
        return Ok(id);
    }
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| {
        StoreError::io(
            runbox_store::Op::Write,
            Some(IDENTITY_KEY),
            format!("no randomness for the deployment identity: {e}"),
        )
    })?;
    let made = store.meta_create(IDENTITY_KEY, hex::encode(raw).as_bytes())?;
    Ok(String::from_utf8_lossy(&made).into_owned())
}

/// Whether `store copy` leaves a meta-plane key to [`carry_identity`]: the
/// identity and the list of identities copied from.
pub fn is_identity_key(key: &str) -> bool {
    key == IDENTITY_KEY || key == COPIED_FROM_KEY
}

/// The identity part of `store copy` from `source` to `target`. With
/// `with_identity` the target becomes the source's deployment (a move);
/// otherwise it keeps (or makes) its own, and records the source's
/// identities as ones its copied incidents' decisions may name.
pub fn carry_identity(
    source: &dyn Store,
    target: &dyn Store,
    with_identity: bool,
) -> Result<(), StoreError> {
    let mut list = copied_from(target)?;
    let from = if with_identity {
        if let Some(id) = read_identity(source)? {
            target.put_meta(IDENTITY_KEY, id.as_bytes())?;
        }
        copied_from(source)?
    } else {
        known(source)?
    };
    let own = ensure_identity(target)?;
    for id in from {
        if !list.contains(&id) && id != own {
            list.push(id);
        }
    }
    let json = serde_json::to_vec(&list).expect("a list of strings serializes");
    target.put_meta(COPIED_FROM_KEY, &json)
}
