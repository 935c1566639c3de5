//! The key layout of the incident plane: every key of an incident is built
//! here, from a validated [`IncidentId`] (which holds no `:`), so one
//! incident's prefix never covers another's.
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
//! A record's key is a [`Key<T>`], typed by the record stored under it: the
//! store reads it as a `T` (`StoreExt::read`) and a batch writes a `T`
//! under it (`Batch::put`), so a key and a record that do not belong
//! together do not compile. Prefixes, which name many records, are strings.

use std::fmt;
use std::marker::PhantomData;

use runbox_core::alert::{AlertState, UnroutedAlert};
use runbox_core::ident::IncidentId;
use runbox_core::notify::OutboxEntry;
use runbox_core::records::{
    Approval, Checkpoint, IncidentMeta, LastDestructive, Owner, Status, StepRecord, TimelineEvent,
};

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
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// The key's string, for an untyped use (a raw page, a log line).
    pub fn into_string(self) -> String {
        self.path
    }
}

impl<T> std::ops::Deref for Key<T> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.path
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

impl<T> PartialEq<str> for Key<T> {
    fn eq(&self, other: &str) -> bool {
        self.path == other
    }
}

impl<T> PartialEq<&str> for Key<T> {
    fn eq(&self, other: &&str) -> bool {
        self.path == *other
    }
}

impl<T> PartialEq<String> for Key<T> {
    fn eq(&self, other: &String) -> bool {
        &self.path == other
    }
}

impl<T> PartialEq<Key<T>> for String {
    fn eq(&self, other: &Key<T>) -> bool {
        *self == other.path
    }
}

impl<T> PartialEq<Key<T>> for &String {
    fn eq(&self, other: &Key<T>) -> bool {
        **self == other.path
    }
}

impl<T> From<Key<T>> for String {
    fn from(key: Key<T>) -> String {
        key.path
    }
}

/// Prefix of the index of incident ids (`index:{id}` holds the id).
pub const INDEX: &str = "index:";

/// The index entry of an incident.
pub fn index(id: &IncidentId) -> Key<IncidentId> {
    Key::new(format!("index:{id}"))
}

/// The incident an index key names, if it is one.
pub fn index_id(key: &str) -> Option<IncidentId> {
    key.strip_prefix(INDEX)
        .and_then(|id| IncidentId::new(id).ok())
}

/// Prefix of every record of `id`.
pub fn prefix(id: &IncidentId) -> String {
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

/// Prefix of all step records.
pub fn steps(id: &IncidentId) -> String {
    format!("incident:{id}:steps:")
}

/// Prefix of the records of one step, every attempt.
pub fn step_attempts(id: &IncidentId, step: &str) -> String {
    format!("incident:{id}:steps:{step}:")
}

/// One step record.
pub fn step(id: &IncidentId, step: &str, attempt: u32) -> Key<StepRecord> {
    Key::new(format!("incident:{id}:steps:{step}:{attempt:06}"))
}

/// Prefix of the timeline.
pub fn timeline(id: &IncidentId) -> String {
    format!("incident:{id}:timeline:")
}

/// One timeline event.
pub fn event(id: &IncidentId, seq: u64) -> Key<TimelineEvent> {
    Key::new(format!("incident:{id}:timeline:{seq:012}"))
}

/// Prefix of every approval.
pub fn approvals(id: &IncidentId) -> String {
    format!("incident:{id}:approval:")
}

/// The approvals (and denials) of one attempt, one per human. Release 0.1
/// kept one approval per attempt at exactly this key.
pub fn attempt_approvals(id: &IncidentId, step: &str, attempt: u32) -> String {
    format!("incident:{id}:approval:{step}:{attempt:06}")
}

/// One human's approval or denial of an attempt.
pub fn approval(id: &IncidentId, step: &str, attempt: u32, human: &str) -> Key<Approval> {
    Key::new(format!(
        "incident:{id}:approval:{step}:{attempt:06}:{human}"
    ))
}

/// An approval's key as a scan under [`approvals`] returned it, typed
/// again (`None` when `key` is not an approval key of `id`).
pub fn approval_scanned(id: &IncidentId, key: String) -> Option<Key<Approval>> {
    key.strip_prefix(&approvals(id))
        .is_some_and(|rest| !rest.is_empty())
        .then(|| Key::new(key))
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

/// Prefix of the incident's outbox: the notifications its commits enqueued.
pub fn outbox(id: &IncidentId) -> String {
    format!("incident:{id}:outbox:")
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
pub const ALERT_UNROUTED: &str = "alert-unrouted:";

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
        assert!(!meta(&b).starts_with(&prefix(&a)));
        assert_eq!(index_id(&index(&b)), Some(b));
    }

    #[test]
    fn unrouted_alert_keys_sort_by_arrival_and_stay_under_their_prefix() {
        let a = alert_unrouted(9_000, "{}:{a=\"b\"}");
        let b = alert_unrouted(10_000, "{}:{a=\"b\"}");
        assert!(a < b);
        assert!(a.starts_with(ALERT_UNROUTED) && !a.contains('{'));
    }
}
