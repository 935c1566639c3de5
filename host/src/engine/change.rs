//! A change to one incident, built up by the run loop or a human action and
//! committed atomically by `Engine::apply`.

use serde::Serialize;

use super::RunExit;
use crate::incident::{Checkpoint, Owner, Status};
use crate::runbook::Next;

/// A change to one incident, committed atomically.
#[derive(Default)]
pub(super) struct Change {
    pub(super) checkpoint: Option<Checkpoint>,
    pub(super) status: Option<Status>,
    pub(super) owner: Option<Owner>,
    pub(super) events: Vec<NewEvent>,
    pub(super) records: Vec<(String, serde_json::Value)>,
    pub(super) kv: Vec<(String, Option<Vec<u8>>)>,
}

pub(super) struct NewEvent {
    pub(super) actor: String,
    pub(super) kind: &'static str,
    pub(super) step: Option<String>,
    pub(super) attempt: Option<u32>,
    pub(super) message: String,
}

impl Change {
    pub(super) fn event(
        &mut self,
        actor: &str,
        kind: &'static str,
        at: Option<(&str, u32)>,
        message: impl Into<String>,
    ) {
        self.events.push(NewEvent {
            actor: actor.to_string(),
            kind,
            step: at.map(|(s, _)| s.to_string()),
            attempt: at.map(|(_, a)| a),
            message: message.into(),
        });
    }

    pub(super) fn record<T: Serialize>(&mut self, key: String, value: &T) {
        self.records.push((
            key,
            serde_json::to_value(value).expect("records always serialize"),
        ));
    }
}

/// Fills `change` for an escalation and returns the exit.
pub(super) fn escalation(
    change: &mut Change,
    actor: &str,
    at: Option<(&str, u32)>,
    reason: String,
) -> RunExit {
    change.event(actor, "escalated", at, reason.clone());
    change.status = Some(Status::Escalated);
    change.owner = Some(Owner::on_call());
    RunExit::Escalated { reason }
}

/// Fills `change` for a transition to `next` and returns the exit, if the run ends.
pub(super) fn follow(
    change: &mut Change,
    actor: &str,
    at: Option<(&str, u32)>,
    cp: &Checkpoint,
    next: Next,
    why: &str,
) -> Option<RunExit> {
    match next {
        Next::Step(s) => {
            let attempt = if Some(&s) == cp.step.as_ref() {
                cp.attempt + 1
            } else {
                1
            };
            change.checkpoint = Some(Checkpoint {
                step: Some(s),
                attempt,
                in_flight: None,
                not_before_ms: None,
                ..cp.clone()
            });
            change.status = Some(Status::Open);
            None
        }
        Next::Resolve => {
            change.event(actor, "resolved", at, format!("incident resolved ({why})"));
            change.checkpoint = Some(Checkpoint {
                step: None,
                in_flight: None,
                not_before_ms: None,
                ..cp.clone()
            });
            change.status = Some(Status::Resolved);
            Some(RunExit::Resolved)
        }
        Next::Escalate => Some(escalation(
            change,
            actor,
            at,
            format!("runbook escalates after {why}"),
        )),
        Next::Fail => {
            let reason = format!("runbook fails the incident after {why}");
            change.event(actor, "failed", at, reason.clone());
            change.status = Some(Status::Failed);
            Some(RunExit::Failed { reason })
        }
    }
}
