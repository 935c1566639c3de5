//! What can happen to an incident: the kinds of timeline events.

use serde::{Deserialize, Serialize};

macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// The kind of a timeline event. Stored as its kebab-case name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
        pub enum EventKind {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }
    };
}

event_kinds! {
    /// The incident was opened.
    Opened = "opened",
    /// A step attempt committed its record.
    StepCommitted = "step-committed",
    /// Before the first mutating tool call: the attempt is durable as in flight.
    AttemptStarted = "attempt-started",
    /// A step asked to retry; the next attempt is scheduled.
    RetryScheduled = "retry-scheduled",
    /// An in-flight attempt was found after a crash.
    InDoubt = "in-doubt",
    /// Handed to a human.
    Escalated = "escalated",
    /// A safety rule kept a step from running in this mode.
    Blocked = "blocked",
    /// A high-impact step waits for a named human.
    ApprovalRequired = "approval-required",
    /// A human approved an attempt.
    Approved = "approved",
    /// A human denied an attempt.
    Denied = "denied",
    /// An approval stopped counting before its step ran: expired, or bound
    /// to another module, input or grants than the step has now.
    ApprovalVoided = "approval-voided",
    /// A cooldown holds a destructive step.
    Cooldown = "cooldown",
    /// A human took the incident.
    Takeover = "takeover",
    /// A human handed it back to the agent.
    Handback = "handback",
    /// A human stated a step's outcome.
    HumanResolve = "human-resolve",
    /// A human asked for a fresh attempt.
    HumanRetry = "human-retry",
    /// A human skipped a step.
    HumanSkip = "human-skip",
    /// The incident became a dry run: mutating calls are intercepted.
    DryRun = "dry-run",
    /// A note on the timeline, by an agent or a human.
    Note = "note",
    /// A full rate limit holds a mutating step (it waits, or escalates).
    Limited = "limited",
    /// A mutating call was counted against a rate limit.
    LimitUsed = "limit-used",
    /// A brake holds a mutating step; the incident escalates.
    Braked = "braked",
    /// A brake was engaged (by a human, or by a limit this incident exceeded).
    BrakeEngaged = "brake-engaged",
    /// A human released the brake that held this incident; it runs again.
    BrakeReleased = "brake-released",
    /// The incident is resolved.
    Resolved = "resolved",
    /// The incident failed.
    Failed = "failed",
    /// A notification reached its sink (the outbox entry is delivered).
    Notified = "notified",
    /// A notification's delivery failed (it is tried again, or parked).
    NotifyFailed = "notify-failed",
    /// Its alert group fired again (Alertmanager's webhook).
    Alert = "alert",
    /// Its alert group resolved: news for the humans and the runbook's
    /// verify step, never a resolution of the incident by itself.
    AlertResolved = "alert-resolved",
}

impl EventKind {
    /// Kinds that say why an incident stands where it stands (`status`'s "why").
    pub fn explains_status(self) -> bool {
        matches!(
            self,
            EventKind::Escalated
                | EventKind::Blocked
                | EventKind::ApprovalRequired
                | EventKind::Failed
                | EventKind::Resolved
                | EventKind::InDoubt
                | EventKind::RetryScheduled
                | EventKind::Takeover
                | EventKind::Handback
                | EventKind::Denied
                | EventKind::ApprovalVoided
                | EventKind::HumanResolve
                | EventKind::HumanSkip
                | EventKind::HumanRetry
                | EventKind::BrakeReleased
        )
    }

    /// Kinds committed together with a step record of the same step and attempt.
    pub fn commits_record(self) -> bool {
        matches!(
            self,
            EventKind::StepCommitted
                | EventKind::InDoubt
                | EventKind::HumanResolve
                | EventKind::HumanSkip
                | EventKind::HumanRetry
        )
    }
}

impl EventKind {
    /// Kinds that record a human's decision, which carries a signed statement.
    pub fn is_human_decision(self) -> bool {
        matches!(
            self,
            EventKind::Approved
                | EventKind::Denied
                | EventKind::Takeover
                | EventKind::Handback
                | EventKind::HumanResolve
                | EventKind::HumanRetry
                | EventKind::HumanSkip
                | EventKind::BrakeReleased
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), *kind);
        }
    }
}
