//! The key layout of the incident plane: every key of an incident is built
//! here, from a validated [`IncidentId`] (which holds no `:`), so one
//! incident's prefix never covers another's.
//!
//! | key | record |
//! |---|---|
//! | `index:{id}` | the id, so incidents can be listed |
//! | `incident:{id}:meta` | [`crate::records::IncidentMeta`] |
//! | `incident:{id}:status` | [`crate::records::Status`] |
//! | `incident:{id}:owner` | [`crate::records::Owner`] |
//! | `incident:{id}:checkpoint` | [`crate::records::Checkpoint`] |
//! | `incident:{id}:steps:{step}:{attempt:06}` | [`crate::records::StepRecord`] |
//! | `incident:{id}:timeline:{seq:012}` | [`crate::records::TimelineEvent`] |
//! | `incident:{id}:approval:{step}:{attempt:06}` | [`crate::records::Approval`] |
//! | `incident:{id}:last_destructive` | [`crate::records::LastDestructive`] |
//! | `incident:{id}:why` | the message of the newest event that explains the status |
//!
//! Numbers are zero-padded so keys sort in attempt and sequence order.
//! Step KV lives in a separate plane (see `runbox-store`), never under these.

use crate::ident::IncidentId;

/// Prefix of the index of incident ids (`index:{id}` holds the id).
pub const INDEX: &str = "index:";

/// The index entry of an incident.
pub fn index(id: &IncidentId) -> String {
    format!("index:{id}")
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
pub fn meta(id: &IncidentId) -> String {
    format!("incident:{id}:meta")
}

/// The status.
pub fn status(id: &IncidentId) -> String {
    format!("incident:{id}:status")
}

/// The owner.
pub fn owner(id: &IncidentId) -> String {
    format!("incident:{id}:owner")
}

/// The checkpoint.
pub fn checkpoint(id: &IncidentId) -> String {
    format!("incident:{id}:checkpoint")
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
pub fn step(id: &IncidentId, step: &str, attempt: u32) -> String {
    format!("incident:{id}:steps:{step}:{attempt:06}")
}

/// Prefix of the timeline.
pub fn timeline(id: &IncidentId) -> String {
    format!("incident:{id}:timeline:")
}

/// One timeline event.
pub fn event(id: &IncidentId, seq: u64) -> String {
    format!("incident:{id}:timeline:{seq:012}")
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
pub fn approval(id: &IncidentId, step: &str, attempt: u32, human: &str) -> String {
    format!("incident:{id}:approval:{step}:{attempt:06}:{human}")
}

/// Present when the incident is a dry run (`runbox run --dry-run`).
pub fn dry_run(id: &IncidentId) -> String {
    format!("incident:{id}:dry_run")
}

/// The scope of the brake the incident escalated under (JSON string, or
/// `null` once released): a release hands it back to the agent.
pub fn braked(id: &IncidentId) -> String {
    format!("incident:{id}:braked")
}

/// The bytes of attempt recordings an incident has kept so far.
pub fn recorded_bytes(id: &IncidentId) -> String {
    format!("incident:{id}:recorded_bytes")
}

/// A used decision nonce: a signed statement counts once.
pub fn nonce(id: &IncidentId, nonce: &str) -> String {
    format!("incident:{id}:nonce:{nonce}")
}

/// Why the incident stands where it stands: the message of the newest
/// event that explains its status (`status`'s "why").
pub fn why(id: &IncidentId) -> String {
    format!("incident:{id}:why")
}

/// The last destructive step.
pub fn last_destructive(id: &IncidentId) -> String {
    format!("incident:{id}:last_destructive")
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
}
