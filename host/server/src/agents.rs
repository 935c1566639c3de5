//! Agents and their bearer tokens: `runbox agent add NAME --can read|run|mutate`
//! prints a token once and stores only its sha256, in the store's meta
//! plane. A token names its agent (`rbxa_NAME_SECRET`), so checking one is
//! a lookup by name and a constant-time comparison of hashes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use runbox_core::ident::Name;
use runbox_core::time::now_ms;
use runbox_store::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ErrorCode, ServiceError};

/// Where the registry lives in the meta plane.
const AGENTS_KEY: &str = "agents";

/// What an agent may do. Each power includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    /// See incidents, timelines, records, runbooks.
    Read,
    /// Also open incidents, run non-mutating steps, escalate, add notes.
    Run,
    /// Also run mutating steps (when the server holds the mutation token).
    Mutate,
}

impl std::str::FromStr for Power {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Power::Read),
            "run" => Ok(Power::Run),
            "mutate" => Ok(Power::Mutate),
            other => Err(format!("unknown power `{other}` (read, run, mutate)")),
        }
    }
}

impl std::fmt::Display for Power {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Power::Read => "read",
            Power::Run => "run",
            Power::Mutate => "mutate",
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
    /// The agent's name.
    pub name: Name,
    /// What it may do.
    pub can: Power,
}

impl Caller {
    /// Checks that the caller has `power`, naming what needs it.
    pub fn require(&self, power: Power, what: &str) -> Result<(), ServiceError> {
        if self.can >= power {
            Ok(())
        } else {
            Err(ServiceError::forbidden(format!(
                "agent:{} may {}; {what} needs `{power}`",
                self.name, self.can
            )))
        }
    }

    /// `agent:NAME`.
    pub fn actor(&self) -> String {
        format!("agent:{}", self.name)
    }
}

/// The agents of one data dir.
#[derive(Clone)]
pub struct Agents {
    store: Arc<dyn Store>,
    /// Held across an edit's read and write, so two edits at once (two
    /// `agent add` through the control socket) never lose one another.
    edits: Arc<Mutex<()>>,
}

impl Agents {
    /// The registry in `store`'s meta plane.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Agents {
            store,
            edits: Arc::default(),
        }
    }

    fn edit(&self) -> MutexGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere leaves nothing torn.
        self.edits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the store answers a read of the registry.
    pub fn reachable(&self) -> Result<(), ServiceError> {
        self.store.meta_get(AGENTS_KEY)?;
        Ok(())
    }

    fn load(&self) -> Result<BTreeMap<String, AgentRecord>, ServiceError> {
        match self.store.meta_get(AGENTS_KEY)? {
            None => Ok(BTreeMap::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ServiceError::new(
                    ErrorCode::Unavailable,
                    format!("the agent registry is corrupt: {e}"),
                )
            }),
        }
    }

    fn save(&self, agents: &BTreeMap<String, AgentRecord>) -> Result<(), ServiceError> {
        let bytes = serde_json::to_vec(agents).expect("agents serialize");
        Ok(self.store.put_meta(AGENTS_KEY, &bytes)?)
    }

    /// Adds agent `name` with `can` and returns its token, the only time it
    /// is shown. Refused if the name is taken (remove it first).
    pub fn add(&self, name: &str, can: Power) -> Result<String, ServiceError> {
        let name = Name::new(name).map_err(|e| ServiceError::bad_request(e.to_string()))?;
        let _edit = self.edit();
        let mut agents = self.load()?;
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
        self.save(&agents)?;
        Ok(token)
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
        let _edit = self.edit();
        let mut agents = self.load()?;
        if agents.remove(name).is_none() {
            return Err(ServiceError::new(
                ErrorCode::NotFound,
                format!("no agent `{name}`"),
            ));
        }
        self.save(&agents)
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
        Ok(Caller {
            name: Name::new(&agent.name).map_err(|_| unknown())?,
            can: agent.can,
        })
    }
}
