//! Agents and their bearer tokens: `runbox agent add NAME --can read|run|mutate|alert`
//! prints a token once and stores only its sha256, in the store's meta
//! plane. A token names its agent (`rbxa_NAME_SECRET`), so checking one is
//! a lookup by name and a constant-time comparison of hashes.

use std::collections::BTreeMap;
use std::sync::Arc;

use runbox_core::ident::Name;
use runbox_core::time::now_ms;
use runbox_store::{MetaSwap, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ErrorCode, ServiceError};

/// Where the registry lives in the meta plane.
const AGENTS_KEY: &str = "agents";

/// What an agent may do. `read`, `run` and `mutate` are a ladder (each
/// includes the ones before it); `alert` stands apart: it posts
/// Alertmanager webhooks and nothing else, and no other power posts them.
/// [`Power::allows`] is the one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    /// See incidents, timelines, records, runbooks.
    Read,
    /// Also open incidents, run non-mutating steps, escalate, add notes.
    Run,
    /// Also run mutating steps (when the server holds the mutation token).
    Mutate,
    /// Post Alertmanager webhooks (`POST /v1/alerts`): nothing else, not
    /// even a read.
    Alert,
}

impl Power {
    /// Whether an agent with this power may do what needs `needed`: up
    /// the ladder for `read`, `run` and `mutate`; `alert` only for
    /// `alert`. Deny by default: a new power allows nothing until written
    /// here.
    pub fn allows(self, needed: Power) -> bool {
        match (self.rung(), needed.rung()) {
            (Some(have), Some(need)) => have >= need,
            (None, None) => self == needed,
            (Some(_), None) | (None, Some(_)) => false,
        }
    }

    /// Its place on the read-run-mutate ladder (`alert` has none).
    fn rung(self) -> Option<u8> {
        match self {
            Power::Read => Some(0),
            Power::Run => Some(1),
            Power::Mutate => Some(2),
            Power::Alert => None,
        }
    }
}

impl std::str::FromStr for Power {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Power::Read),
            "run" => Ok(Power::Run),
            "mutate" => Ok(Power::Mutate),
            "alert" => Ok(Power::Alert),
            other => Err(format!(
                "unknown power `{other}` (read, run, mutate, alert)"
            )),
        }
    }
}

impl std::fmt::Display for Power {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Power::Read => "read",
            Power::Run => "run",
            Power::Mutate => "mutate",
            Power::Alert => "alert",
        })
    }
}

/// An agent as the registry keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentRecord {
    /// Its name: it acts as `agent:NAME`.
    pub name: String,
    /// What it may do.
    pub can: Power,
    /// sha256 of its token, hex.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub token_sha256: String,
    /// When it was added, ms since the epoch.
    pub added_ms: u64,
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The agent's (or the console's human's) name.
    pub name: Name,
    /// What it may do.
    pub can: Power,
    /// An agent with a bearer token, or a human in the web console.
    pub principal: Principal,
}

/// Who a [`Caller`] is: what its acts are recorded under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// An agent (bearer token, MCP over stdio, the control socket).
    Agent,
    /// A human signed in to the web console with a passkey: they may read
    /// and engage brakes (recorded as `agent:console-NAME`, an unsigned
    /// act); every decision still needs a fresh assertion.
    Human,
}

impl Caller {
    /// Agent `name`, with `can`.
    pub fn agent(name: Name, can: Power) -> Self {
        Caller {
            name,
            can,
            principal: Principal::Agent,
        }
    }

    /// Human `name` in the web console: `read`.
    pub fn human(name: Name) -> Self {
        Caller {
            name,
            can: Power::Read,
            principal: Principal::Human,
        }
    }

    /// Checks that the caller has `power`, naming what needs it.
    pub fn require(&self, power: Power, what: &str) -> Result<(), ServiceError> {
        if self.can.allows(power) {
            Ok(())
        } else {
            Err(ServiceError::forbidden(format!(
                "{} may {}; {what} needs `{power}`",
                self.actor(),
                self.can
            )))
        }
    }

    /// Who an unsigned act is recorded under: `agent:NAME`, or, for a
    /// human in the console, `agent:console-NAME`. Never `human:NAME`:
    /// the timeline keeps that for decisions the human signed, and a
    /// session's act (engaging a brake, which only stops) is not signed.
    pub fn actor(&self) -> String {
        match self.principal {
            Principal::Agent => format!("agent:{}", self.name),
            Principal::Human => format!("agent:console-{}", self.name),
        }
    }
}

/// How many times an edit of the registry starts over when another edit
/// (another runner of the fleet, another `agent add`) landed first.
const MAX_EDIT_ROUNDS: usize = 16;

/// The agents of one data dir.
#[derive(Clone)]
pub struct Agents {
    store: Arc<dyn Store>,
}

impl Agents {
    /// The registry in `store`'s meta plane.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Agents { store }
    }

    /// Applies `change` to the registry as stored, written back only if no
    /// other edit landed in between (`Store::meta_swap`; on etcd, across
    /// runners too); otherwise it starts over on the new registry.
    fn edit<T>(
        &self,
        change: impl Fn(&mut BTreeMap<String, AgentRecord>) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        for _ in 0..MAX_EDIT_ROUNDS {
            let stored = self.store.meta_get(AGENTS_KEY)?;
            let mut agents = decode(stored.as_deref())?;
            let out = change(&mut agents)?;
            let bytes = serde_json::to_vec(&agents).expect("agents serialize");
            let swap = MetaSwap::new()
                .expect(AGENTS_KEY, stored.as_deref())
                .put(AGENTS_KEY, &bytes);
            match self.store.meta_swap(&swap) {
                Err(StoreError::MetaConflict { .. }) => continue,
                done => return done.map(|()| out).map_err(ServiceError::from),
            }
        }
        Err(ServiceError::new(
            ErrorCode::Conflict,
            "the agent registry kept changing underneath this edit; retry",
        ))
    }

    fn load(&self) -> Result<BTreeMap<String, AgentRecord>, ServiceError> {
        decode(self.store.meta_get(AGENTS_KEY)?.as_deref())
    }

    /// Adds agent `name` with `can` and returns its token, the only time it
    /// is shown. Refused if the name is taken (remove it first).
    pub fn add(&self, name: &str, can: Power) -> Result<String, ServiceError> {
        let name = Name::new(name).map_err(|e| ServiceError::bad_request(e.to_string()))?;
        self.edit(|agents| {
            if agents.contains_key(name.as_str()) {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    format!("agent `{name}` exists; `runbox agent remove {name}` first"),
                ));
            }
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| {
                ServiceError::new(ErrorCode::Unavailable, format!("no randomness: {e}"))
            })?;
            let token = format!("rbxa_{name}_{}", hex::encode(secret));
            agents.insert(
                name.to_string(),
                AgentRecord {
                    name: name.to_string(),
                    can,
                    token_sha256: hex::encode(Sha256::digest(token.as_bytes())),
                    added_ms: now_ms(),
                },
            );
            Ok(token)
        })
    }

    /// Every agent, without token hashes.
    pub fn list(&self) -> Result<Vec<AgentRecord>, ServiceError> {
        Ok(self
            .load()?
            .into_values()
            .map(|a| AgentRecord {
                token_sha256: String::new(),
                ..a
            })
            .collect())
    }

    /// Removes agent `name`: its token stops working at once.
    pub fn remove(&self, name: &str) -> Result<(), ServiceError> {
        self.edit(|agents| match agents.remove(name) {
            Some(_) => Ok(()),
            None => Err(ServiceError::new(
                ErrorCode::NotFound,
                format!("no agent `{name}`"),
            )),
        })
    }

    /// The agent a bearer token belongs to. Every failure is the same
    /// `Unauthorized`, so a caller learns nothing about which names exist.
    pub fn authenticate(&self, token: &str) -> Result<Caller, ServiceError> {
        use subtle::ConstantTimeEq;
        let unknown = || ServiceError::new(ErrorCode::Unauthorized, "unknown or revoked token");
        let name = token
            .strip_prefix("rbxa_")
            .and_then(|rest| rest.rsplit_once('_'))
            .map(|(name, _)| name)
            .ok_or_else(unknown)?;
        let agents = self.load()?;
        let agent = agents.get(name).ok_or_else(unknown)?;
        let presented = hex::encode(Sha256::digest(token.as_bytes()));
        if !bool::from(presented.as_bytes().ct_eq(agent.token_sha256.as_bytes())) {
            return Err(unknown());
        }
        Ok(Caller::agent(
            Name::new(&agent.name).map_err(|_| unknown())?,
            agent.can,
        ))
    }
}

/// The registry from its stored bytes (none: no agents).
fn decode(stored: Option<&[u8]>) -> Result<BTreeMap<String, AgentRecord>, ServiceError> {
    let Some(bytes) = stored else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_slice(bytes).map_err(|e| {
        ServiceError::new(
            ErrorCode::Internal,
            format!("the agent registry is corrupt: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::Power;

    #[test]
    fn alert_allows_only_alert_and_nothing_else_allows_alert() {
        let all = [Power::Read, Power::Run, Power::Mutate, Power::Alert];
        for have in all {
            for need in all {
                let ladder = |p: Power| {
                    [Power::Read, Power::Run, Power::Mutate]
                        .iter()
                        .position(|q| *q == p)
                };
                let expected = match (ladder(have), ladder(need)) {
                    (Some(h), Some(n)) => h >= n,
                    _ => have == Power::Alert && need == Power::Alert,
                };
                assert_eq!(have.allows(need), expected, "{have} needs {need}");
            }
        }
        assert!(!Power::Mutate.allows(Power::Alert));
        assert!(!Power::Alert.allows(Power::Read));
        assert_eq!("alert".parse::<Power>(), Ok(Power::Alert));
    }
}
