//! `runbox store copy FROM TO`: move incidents between the embedded store
//! and etcd (either way), then check the copy record by record.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use runbox_core::ident::IncidentId;
use runbox_core::keys;
use runbox_store::{Page, Shared, Store, StoreError, StoreExt};

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Copy every incident (records and step KV), the meta plane (the
    /// mutation token's hash, agents) and the shared plane (shared KV,
    /// rate-limit counts, brakes) from one store to another, then compare
    /// them. FROM and TO are data dirs or `etcd://HOST:PORT[,…][/PREFIX]`.
    /// Stop every runner on both first; incidents TO has already are kept.
    ///
    /// TO stays a deployment of its own (signed decisions name the
    /// deployment they are for, so FROM's are not accepted there) unless
    /// --with-identity makes it FROM's: for moving a deployment, not for
    /// seeding one from another. Either way `verify` accepts the decisions
    /// the copied incidents carry.
    Copy {
        /// Where the incidents are.
        from: String,
        /// Where they go.
        to: String,
        /// Carry FROM's deployment identity to TO (a move).
        #[arg(long)]
        with_identity: bool,
    },
}

pub(crate) fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    let Command::Copy {
        from,
        to,
        with_identity,
    } = command;
    if from == to {
        bail!("FROM and TO are the same store");
    }
    let source = ctx.store_at(&from)?;
    let target = ctx.store_at(&to)?;
    let mut copied = 0;
    let mut kept = Vec::new();
    for id in ids(&*source)? {
        let (records, kv) = incident(&*source, &id)?;
        match target.restore(&id, records.clone(), kv.clone()) {
            Ok(()) => copied += 1,
            Err(StoreError::Conflict { .. }) => {
                kept.push(id.to_string());
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        // Verify: the copy reads back the same, record by record.
        if incident(&*target, &id)? != (records, kv) {
            bail!("incident {id} reads back differently from {to}: the copy is not trustworthy");
        }
    }
    for (key, value) in source.meta_scan()? {
        if !runbox_engine::deployment::is_identity_key(&key) {
            target.put_meta(&key, &value)?;
        }
    }
    runbox_engine::deployment::carry_identity(&*source, &*target, with_identity)?;
    let shared = shared_plane(&*source)?;
    let mut writes = Shared::default();
    for (key, value) in &shared {
        writes.put(key.clone(), value.clone());
        if writes.writes().len() == 64 {
            target.commit_shared(std::mem::take(&mut writes))?;
        }
    }
    if !writes.writes().is_empty() {
        target.commit_shared(writes)?;
    }
    if shared_plane(&*target)?.len() < shared.len() {
        bail!("the shared plane reads back short from {to}");
    }
    outln!(
        "copied {copied} incident(s), the meta plane and {} shared value(s) from {from} to {to}; each incident read back identical",
        shared.len()
    );
    if !kept.is_empty() {
        outln!(
            "kept {} incident(s) {to} had already: {}",
            kept.len(),
            kept.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ids(store: &dyn Store) -> Result<Vec<IncidentId>> {
    Ok(store
        .scan_all(keys::INDEX)?
        .into_iter()
        .filter_map(|(k, _)| keys::index_id(&k))
        .collect())
}

/// An incident's records (with its index entry) and step KV.
fn incident(store: &dyn Store, id: &IncidentId) -> Result<(Page, Page)> {
    let mut records = store.scan_all(&keys::prefix(id))?;
    if let Some(index) = store.get(&keys::index(id))? {
        records.push((keys::index(id), index));
    }
    records.sort();
    Ok((records, store.kv_scan(id)?))
}

fn shared_plane(store: &dyn Store) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(store
        .shared_scan_all("")?
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect())
}
