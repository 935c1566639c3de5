//! What the sandbox asks of its caller: committed KV to read, and a hook
//! that makes an attempt durable before its first mutation.

use std::collections::BTreeMap;

/// Where a step's KV reads come from (the engine's committed store, or a
/// seed map for `runbox exec`).
pub trait KvSource: Send + Sync {
    /// The committed value of `key` in the step KV namespace.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
}

/// An in-memory [`KvSource`].
pub type MapKv = BTreeMap<String, Vec<u8>>;

impl KvSource for MapKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(BTreeMap::get(self, key).cloned())
    }
}

/// Called before every mutating tool call of an attempt runs, so the
/// engine can make `attempt started` durable (before the first), count the
/// call against fleet-wide rate limits and check brakes. A refusal stops
/// the step before the mutation happens.
pub trait MutationGuard: Send {
    /// A mutating call of `tool` is about to run; `first` for the
    /// attempt's first. `staged` holds the step's KV writes so far, which
    /// the guard may make durable with the marker (shared keys: a lock
    /// taken before a restart must hold before the restart).
    fn before_mutation(
        &mut self,
        tool: &str,
        first: bool,
        staged: &BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), Refusal>;
}

/// Why a [`MutationGuard`] stopped a mutating call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A safety rule holds it (a brake, a full rate limit, shared state
    /// that moved): the step ends with error category `held`.
    Held(String),
    /// The host failed (the marker is not durable): category `host`.
    Host(String),
}
