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

/// Called once, before the first mutating tool call of an attempt runs, so
/// the engine can make `attempt started` durable. An error stops the step
/// before the mutation happens.
pub trait MutationGuard: Send {
    /// Records that a mutation is about to begin.
    fn before_first_mutation(&mut self, tool: &str) -> Result<(), String>;
}
