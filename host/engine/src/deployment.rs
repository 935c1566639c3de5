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

use runbox_incidents::deployment::{
    COPIED_FROM_KEY, IDENTITY_KEY, copied_from, known, read_identity,
};
use runbox_store::{Store, StoreError};

pub use runbox_incidents::deployment::is_identity_key;

use crate::{Engine, Result};

impl Engine {
    /// This store's deployment identity, made on first use. Every writer
    /// racing to make it ends up with the same one (`Store::meta_create`).
    pub fn deployment_id(&self) -> Result<String> {
        Ok(ensure_identity(&**self.incidents.store())?)
    }
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
