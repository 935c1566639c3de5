//! Brakes and rate limits across incidents, as they stand (see
//! [`runbox_core::limits`]): what `brake list`, `limits` and the gates read.
//! Engaging, counting and releasing are the engine's.

use serde::Serialize;
use sha2::{Digest, Sha256};

use runbox_core::ident::IncidentId;
use runbox_core::limits::{
    BRAKES, Brake, BrakeScope, Fill, LIMIT_COUNTS, Limit, Params, SHARED_KEY, SHARED_KV, Subject,
    Uses,
};
use runbox_core::records::{Checkpoint, Owner, Status};
use runbox_core::time::now_ms;
use runbox_store::keys;
use runbox_store::{Store, StoreExt, Versioned, decode};

use crate::{Incidents, ReadError, Result};

/// An engaged brake and its version, which a release statement binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct EngagedBrake {
    /// The brake.
    #[serde(flatten)]
    pub brake: Brake,
    /// Its shared-plane version: a release is for this engagement only.
    pub version: u64,
}

/// An incident a brake holds: escalated by it, waiting for its release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    /// The incident.
    pub incident: String,
    /// The step the brake stopped.
    pub step: Option<String>,
    /// Its attempt.
    pub attempt: u32,
}

impl Incidents {
    /// Every engaged brake, in scope order.
    pub fn brakes(&self) -> Result<Vec<EngagedBrake>> {
        engaged_brakes(&**self.store())
    }

    /// The incidents each brake holds, by scope: those it escalated and
    /// that its release would hand back (`runbox brake list`).
    pub fn held_by_brakes(&self) -> Result<std::collections::BTreeMap<String, Vec<Held>>> {
        let mut held: std::collections::BTreeMap<String, Vec<Held>> = Default::default();
        for id in self.ids()? {
            let Some((scope, cp)) = self.brake_hold(&id)? else {
                continue;
            };
            held.entry(scope).or_default().push(Held {
                incident: id.to_string(),
                step: cp.step,
                attempt: cp.attempt,
            });
        }
        Ok(held)
    }

    /// The brake that holds `id`, with its checkpoint: the incident is still
    /// escalated by that brake (a status change clears the mark), with the
    /// on-call humans (a human who took it over keeps it), and no attempt
    /// in doubt (a human settles that, brake or not). Only such an incident
    /// is the brake's to hand back.
    pub fn brake_hold(&self, id: &IncidentId) -> Result<Option<(String, Checkpoint)>> {
        let mark: Option<Option<String>> = self.store().read(&keys::braked(id))?;
        let Some(scope) = mark.flatten() else {
            return Ok(None);
        };
        if self.status_of(id)? != Status::Escalated || self.owner_of(id)? != Owner::on_call() {
            return Ok(None);
        }
        let cp = self.checkpoint(id)?;
        if cp.in_flight.is_some() || cp.step.is_none() {
            return Ok(None);
        }
        Ok(Some((scope, cp)))
    }

    /// The shared namespace's step KV, as steps name it (`shared:…`).
    pub fn shared_kv(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .store()
            .shared_scan_all(SHARED_KV)?
            .into_iter()
            .map(|(k, v)| (format!("{SHARED_KEY}{}", &k[SHARED_KV.len()..]), v.value))
            .collect())
    }

    /// Every rate-limit count, by key, with its uses.
    pub fn limit_counts(&self) -> Result<Vec<(String, Uses)>> {
        self.store()
            .shared_scan_all(LIMIT_COUNTS)?
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), decode(&k, &v.value)?)))
            .collect()
    }

    /// How full `limit` is now for an incident with `params`.
    pub fn limit_fill(&self, limit: &Limit, params: &Params) -> Result<Fill> {
        let key = limit.count_key(params).map_err(ReadError::Limit)?;
        let (uses, _) = read_uses(&**self.store(), &key)?;
        Ok(uses.fill(now_ms(), limit.window_ms, limit.max))
    }

    /// The brake engaged for exactly `scope`, if any.
    pub fn brake(&self, scope: &BrakeScope) -> Result<Option<EngagedBrake>> {
        let key = scope.key();
        self.store()
            .shared_get(&key)?
            .map(|v| engaged(&key, v))
            .transpose()
    }
}

/// Every engaged brake of `store`, in scope order, however many.
pub fn engaged_brakes(store: &dyn Store) -> Result<Vec<EngagedBrake>> {
    store
        .shared_scan_all(BRAKES)?
        .into_iter()
        .map(|(k, v)| engaged(&k, v))
        .collect()
}

fn engaged(key: &str, v: Versioned) -> Result<EngagedBrake> {
    Ok(EngagedBrake {
        brake: decode(key, &v.value)?,
        version: v.version,
    })
}

/// The first brake that covers `subject`. A brake whose scope no longer
/// parses covers everything: a brake errs on the side of stopping.
pub fn covering<'b>(brakes: &'b [EngagedBrake], subject: &Subject<'_>) -> Option<&'b EngagedBrake> {
    brakes.iter().find(|b| {
        b.brake
            .scope
            .parse::<BrakeScope>()
            .map_or(true, |scope| scope.covers(subject))
    })
}

/// The uses of a count and their version.
pub fn read_uses(store: &dyn Store, key: &str) -> Result<(Uses, Option<u64>)> {
    Ok(match store.shared_get(key)? {
        Some(v) => (decode(key, &v.value)?, Some(v.version)),
        None => (Uses::default(), None),
    })
}

/// What `release-brake` binds: the scope and the engagement's version.
pub fn brake_subject(scope: &BrakeScope, version: u64) -> String {
    hex::encode(Sha256::digest(format!("{scope}\n{version}")))
}
