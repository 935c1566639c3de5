//! The key layout of the incident plane, and its typed keys: every key of
//! an incident is built here, from a validated [`IncidentId`] (which holds
//! no `:`), so one incident's prefix never covers another's.
//!
//! | key | record |
//! |---|---|
//! | `index:{id}` | the id, so incidents can be listed |
//! | `incident:{id}:meta` | [`runbox_core::records::IncidentMeta`] |
//! | `incident:{id}:status` | [`runbox_core::records::Status`] |
//! | `incident:{id}:owner` | [`runbox_core::records::Owner`] |
//! | `incident:{id}:checkpoint` | [`runbox_core::records::Checkpoint`] |
//! | `incident:{id}:steps:{step}:{attempt:06}` | [`runbox_core::records::StepRecord`] |
//! | `incident:{id}:timeline:{seq:012}` | [`runbox_core::records::TimelineEvent`] |
//! | `incident:{id}:approval:{step}:{attempt:06}` | [`runbox_core::records::Approval`] |
//! | `incident:{id}:last_destructive` | [`runbox_core::records::LastDestructive`] |
//! | `incident:{id}:why` | the message of the newest event that explains the status |
//! | `incident:{id}:outbox:{seq:012}:{sink}` | [`runbox_core::notify::OutboxEntry`]: a notification of event `seq` to `sink` |
//! | `incident:{id}:alert` | [`runbox_core::alert::AlertState`]: the alert group behind it |
//!
//! The meta plane (host settings, beside the incidents) keeps alert groups
//! no route took: `alert-unrouted:{received_ms:013}:{group hash}` holds an
//! [`runbox_core::alert::UnroutedAlert`] ([`alert_unrouted`]).
//!
//! Numbers are zero-padded so keys sort in attempt and sequence order.
//! Step KV lives in a separate plane (see `runbox-store`), never under these.
//!
//! ## The codec is this module's alone
//!
//! A record's key is a [`Key<T>`], typed by the record stored under it,
//! and a set of records under one prefix is a [`Prefix<T>`]. Both are
//! opaque outside this crate: the engine, the read model and the server
//! build them with the functions here and hand them to the typed reads of
//! [`StoreExt`](crate::StoreExt) (`read`, `exists`, `read_all`,
//! `read_page`, `read_back`, `read_last`) and to [`Batch::put`](crate::Batch::put),
//! so nothing outside the store layer spells, parses or compares a key's
//! text, and a key and a record that do not belong together do not compile.
//! A key's `Display` names it in errors and logs; a backend sees the text
//! only as what a [`Batch`](crate::Batch) or a [`Group`] hands it.
//!
//! ```compile_fail
//! use runbox_core::ident::IncidentId;
//! use runbox_store::keys;
//! let id = IncidentId::new("INC-1").unwrap();
//! let text: &str = keys::status(&id).as_str(); // the codec is the store's
//! ```
//!
//! ```
//! use runbox_core::{ident::IncidentId, records::{Checkpoint, Status}};
//! use runbox_store::{keys, Batch, Expect, MemoryStore, Store, StoreExt};
//!
//! let store = MemoryStore::new();
//! let id = IncidentId::new("INC-1")?;
//! let mut batch = Batch::new(Checkpoint::first("diagnose"));
//! batch.put(keys::status(&id), &Status::Open).put(keys::index(&id), &id);
//! store.commit(&id, Expect::Absent, batch)?;
//! assert_eq!(store.read(&keys::status(&id))?, Some(Status::Open));
//! let listed: Vec<IncidentId> =
//!     store.read_all(&keys::incidents())?.into_iter().map(|(_, id)| id).collect();
//! assert_eq!(listed, [id]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::marker::PhantomData;

use runbox_core::alert::{AlertState, UnroutedAlert};
use runbox_core::ident::IncidentId;
use runbox_core::notify::OutboxEntry;
use runbox_core::records::{
    Approval, Checkpoint, IncidentMeta, LastDestructive, Owner, Status, StepRecord, TimelineEvent,
};
use serde::de::DeserializeOwned;

use crate::StoreError;

/// The key of one record of type `T`.
pub struct Key<T> {
    path: String,
    // `fn() -> T`: the key names a `T` without holding one (and is Send and
    // Sync whatever `T` is).
    record: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    fn new(path: String) -> Self {
        Key {
            path,
            record: PhantomData,
        }
    }

    /// The key as the store spells it.
    pub(crate) fn as_str(&self) -> &str {
        &self.path
    }

    /// The key's text, for a backend's write.
    pub(crate) fn into_string(self) -> String {
        self.path
    }
}

impl<T: DeserializeOwned> Key<T> {
    /// Decodes the record read under this key, naming the key when it is
    /// corrupt.
    pub fn decode(&self, bytes: &[u8]) -> Result<T, StoreError> {
        crate::decode(&self.path, bytes)
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        Key::new(self.path.clone())
    }
}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.path, f)
    }
}

impl<T> fmt::Display for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

impl<T> PartialEq for Key<T> {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl<T> Eq for Key<T> {}

// Keys sort as the store sorts them: by their bytes.
impl<T> PartialOrd for Key<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Key<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.path.cmp(&other.path)
    }
}

/// The prefix of a set of records of type `T`: every key a scan under it
/// returns is a [`Key<T>`].
pub struct Prefix<T> {
    path: String,
    record: PhantomData<fn() -> T>,
}

impl<T> Prefix<T> {
    fn new(path: String) -> Self {
        Prefix {
            path,
            record: PhantomData,
        }
    }

    /// The prefix as the store spells it.
    pub(crate) fn as_str(&self) -> &str {
        &self.path
    }

    /// A key a scan under this prefix returned, typed again (`None` when it
    /// is not under the prefix: what a backend must never return). The
    /// prefix itself may be a key: release 0.1 kept an attempt's one
    /// approval at exactly [`attempt_approvals`].
    pub(crate) fn key(&self, scanned: String) -> Option<Key<T>> {
        scanned.starts_with(&self.path).then(|| Key::new(scanned))
    }
}

impl<T> Clone for Prefix<T> {
    fn clone(&self) -> Self {
        Prefix::new(self.path.clone())
    }
}

impl<T> fmt::Debug for Prefix<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.path, f)
    }
}

impl<T> fmt::Display for Prefix<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// Keys of records of several types read in one round trip
/// ([`Store::get_many`](crate::Store::get_many), a commit's read-back):
/// the values come back in the order the keys were added, each decoded by
/// its own typed key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    keys: Vec<String>,
}

impl Group {
    /// An empty group.
    pub fn new() -> Self {
        Group::default()
    }

    /// The group with `key` added last.
    pub fn with<T>(mut self, key: &Key<T>) -> Self {
        self.keys.push(key.path.clone());
        self
    }

    /// The keys, in the order added: what a backend reads.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }
}

/// Prefix of the index of incident ids (`index:{id}` holds the id).
const INDEX: &str = "index:";

/// Every incident's index entry: the ids of every incident, in id order.
pub fn incidents() -> Prefix<IncidentId> {
    Prefix::new(INDEX.to_string())
}

/// The index entry of an incident.
pub fn index(id: &IncidentId) -> Key<IncidentId> {
    Key::new(format!("index:{id}"))
}

/// The incident an index key names, if it is one.
pub(crate) fn index_id(key: &str) -> Option<IncidentId> {
    key.strip_prefix(INDEX)
        .and_then(|id| IncidentId::new(id).ok())
}

/// Prefix of every record of `id`.
pub(crate) fn prefix(id: &IncidentId) -> String {
    format!("incident:{id}:")
}

/// The meta record.
pub fn meta(id: &IncidentId) -> Key<IncidentMeta> {
    Key::new(format!("incident:{id}:meta"))
}

/// The status.
pub fn status(id: &IncidentId) -> Key<Status> {
    Key::new(format!("incident:{id}:status"))
}

/// The owner.
pub fn owner(id: &IncidentId) -> Key<Owner> {
    Key::new(format!("incident:{id}:owner"))
}

/// The checkpoint.
pub fn checkpoint(id: &IncidentId) -> Key<Checkpoint> {
    Key::new(format!("incident:{id}:checkpoint"))
}

/// Every step record of `id`, by step and attempt.
pub fn steps(id: &IncidentId) -> Prefix<StepRecord> {
    Prefix::new(format!("incident:{id}:steps:"))
}

/// The records of one step, every attempt, oldest first.
pub fn step_attempts(id: &IncidentId, step: &str) -> Prefix<StepRecord> {
    Prefix::new(format!("incident:{id}:steps:{step}:"))
}

/// One step record.
pub fn step(id: &IncidentId, step: &str, attempt: u32) -> Key<StepRecord> {
    Key::new(format!("incident:{id}:steps:{step}:{attempt:06}"))
}

/// The timeline, in sequence order.
pub fn timeline(id: &IncidentId) -> Prefix<TimelineEvent> {
    Prefix::new(format!("incident:{id}:timeline:"))
}

/// One timeline event.
pub fn event(id: &IncidentId, seq: u64) -> Key<TimelineEvent> {
    Key::new(format!("incident:{id}:timeline:{seq:012}"))
}

/// Every approval and denial of `id`.
pub fn approvals(id: &IncidentId) -> Prefix<Approval> {
    Prefix::new(format!("incident:{id}:approval:"))
}

/// The approvals (and denials) of one attempt, one per human. Release 0.1
/// kept one approval per attempt at exactly this key.
pub fn attempt_approvals(id: &IncidentId, step: &str, attempt: u32) -> Prefix<Approval> {
    Prefix::new(format!("incident:{id}:approval:{step}:{attempt:06}"))
}

/// One human's approval or denial of an attempt.
pub fn approval(id: &IncidentId, step: &str, attempt: u32, human: &str) -> Key<Approval> {
    Key::new(format!(
        "incident:{id}:approval:{step}:{attempt:06}:{human}"
    ))
}

/// Present when the incident is a dry run (`runbox run --dry-run`).
pub fn dry_run(id: &IncidentId) -> Key<bool> {
    Key::new(format!("incident:{id}:dry_run"))
}

/// The scope of the brake the incident escalated under (JSON string, or
/// `null` once released): a release hands it back to the agent.
pub fn braked(id: &IncidentId) -> Key<Option<String>> {
    Key::new(format!("incident:{id}:braked"))
}

/// The bytes of attempt recordings an incident has kept so far.
pub fn recorded_bytes(id: &IncidentId) -> Key<u64> {
    Key::new(format!("incident:{id}:recorded_bytes"))
}

/// A used decision nonce: a signed statement counts once.
pub fn nonce(id: &IncidentId, nonce: &str) -> Key<u64> {
    Key::new(format!("incident:{id}:nonce:{nonce}"))
}

/// Why the incident stands where it stands: the message of the newest
/// event that explains its status (`status`'s "why").
pub fn why(id: &IncidentId) -> Key<Option<String>> {
    Key::new(format!("incident:{id}:why"))
}

/// The incident's outbox: the notifications its commits enqueued.
pub fn outbox(id: &IncidentId) -> Prefix<OutboxEntry> {
    Prefix::new(format!("incident:{id}:outbox:"))
}

/// The notification of event `seq` to `sink`.
pub fn outbox_entry(id: &IncidentId, seq: u64, sink: &str) -> Key<OutboxEntry> {
    Key::new(format!("incident:{id}:outbox:{seq:012}:{sink}"))
}

/// The last destructive step.
pub fn last_destructive(id: &IncidentId) -> Key<LastDestructive> {
    Key::new(format!("incident:{id}:last_destructive"))
}

/// The alert group behind an incident that an alert opened, as it stands.
pub fn alert(id: &IncidentId) -> Key<AlertState> {
    Key::new(format!("incident:{id}:alert"))
}

/// Prefix of the unrouted alert groups in the meta plane.
const ALERT_UNROUTED: &str = "alert-unrouted:";

/// The unrouted alert groups in the meta plane, oldest first.
pub fn unrouted_alerts() -> Prefix<UnroutedAlert> {
    Prefix::new(ALERT_UNROUTED.to_string())
}

/// The key of an unrouted alert group by its name, as a notification of
/// it records it (`None`: not such a key).
pub fn unrouted_alert_named(name: &str) -> Option<Key<UnroutedAlert>> {
    unrouted_alerts().key(name.to_string())
}

/// The meta-plane key of an unrouted alert group received at
/// `received_ms`: one per webhook, sorted by arrival time, so a group
/// Alertmanager sends again is recorded again, never overwritten.
pub fn alert_unrouted(received_ms: u64, group_key: &str) -> Key<UnroutedAlert> {
    Key::new(format!(
        "{ALERT_UNROUTED}{received_ms:013}:{}",
        UnroutedAlert::group_hash(group_key)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_attempt_and_sequence() {
        let id = IncidentId::new("i").unwrap();
        assert!(step(&id, "s", 9) < step(&id, "s", 10));
        assert!(event(&id, 99) < event(&id, 100));
    }

    #[test]
    fn one_incidents_prefix_never_covers_another() {
        let a = IncidentId::new("INC-1").unwrap();
        let b = IncidentId::new("INC-10").unwrap();
        assert!(!meta(&b).as_str().starts_with(&prefix(&a)));
        assert_eq!(index_id(index(&b).as_str()), Some(b));
    }

    #[test]
    fn unrouted_alert_keys_sort_by_arrival_and_stay_under_their_prefix() {
        let a = alert_unrouted(9_000, "{}:{a=\"b\"}");
        let b = alert_unrouted(10_000, "{}:{a=\"b\"}");
        assert!(a < b);
        assert!(a.as_str().starts_with(ALERT_UNROUTED) && !a.as_str().contains('{'));
        assert_eq!(unrouted_alerts().key(a.clone().into_string()), Some(a));
    }

    #[test]
    fn a_scanned_key_is_typed_again_only_under_its_prefix() {
        let id = IncidentId::new("INC-1").unwrap();
        let other = IncidentId::new("INC-2").unwrap();
        let timeline = timeline(&id);
        let seventh = event(&id, 7);
        assert_eq!(timeline.key(seventh.clone().into_string()), Some(seventh));
        assert_eq!(timeline.key(event(&other, 7).into_string()), None);
    }

    #[test]
    fn a_release_0_1_approval_reads_under_its_attempts_approvals() {
        use crate::{Batch, Expect, MemoryStore, Store, StoreExt};
        let id = IncidentId::new("OLD-1").unwrap();
        let attempt = attempt_approvals(&id, "restart", 1);
        // 0.1 wrote the attempt's one approval at exactly the prefix.
        let legacy: Key<Approval> = Key::new(attempt.as_str().to_string());
        let approval: Approval = serde_json::from_value(serde_json::json!({
            "step": "restart", "attempt": 1, "approved": true, "by": "alice", "at_ms": 1
        }))
        .unwrap();
        let store = MemoryStore::new();
        let mut batch = Batch::new(Checkpoint::first("restart"));
        batch.put(legacy.clone(), &approval);
        store.commit(&id, Expect::Absent, batch).unwrap();
        let read = store.read_all(&attempt).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, legacy);
        assert_eq!(store.read_all(&approvals(&id)).unwrap().len(), 1);
    }
}
