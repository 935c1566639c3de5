//! What the timeline adds up to: who owned the incident when, how long
//! approvals and holds took, and the derived [`Figures`]. [`Fold`] reads the
//! step records, then the events one at a time, so the figures of an
//! incident of a million events take no more memory than those of ten.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::Serialize;

use runbox_core::event::EventKind;
use runbox_core::records::{Owner, RecordOutcome, StepRecord, TimelineEvent};

use crate::stamp::{opt_rfc3339, rfc3339};

/// The figures a postmortem starts with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Figures {
    /// When the incident was opened.
    #[serde(rename = "opened", serialize_with = "rfc3339")]
    #[schemars(rename = "opened", with = "String")]
    pub opened_ms: u64,
    /// When it was resolved or failed; absent while it is not over.
    #[serde(rename = "ended", serialize_with = "opt_rfc3339")]
    #[schemars(rename = "ended", with = "Option<String>")]
    pub ended_ms: Option<u64>,
    /// From opening to resolution; absent unless resolved.
    pub time_to_resolve_ms: Option<u64>,
    /// From opening to its end, or to its newest event while not over.
    pub span_ms: u64,
    /// Of the span, the time an agent owned it.
    pub agent_ms: u64,
    /// Of the span, the time a human owned it.
    pub human_ms: u64,
    /// Time high-impact steps waited for a human's approval, all told.
    pub approval_wait_ms: u64,
    /// Approvals given.
    pub approvals: u32,
    /// Approvals denied.
    pub denials: u32,
    /// Escalations to a human.
    pub escalations: u32,
    /// Humans taking the incident.
    pub takeovers: u32,
    /// Humans handing it back to an agent.
    pub handbacks: u32,
    /// Step attempts recorded.
    pub attempts: u32,
    /// Attempts that asked to be retried.
    pub retries: u32,
    /// Attempts found in flight after a crash.
    pub in_doubt: u32,
    /// Attempts whose outcome a human decided.
    pub overrides: u32,
}

/// A change of owner: escalation, takeover, handback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct OwnerChange {
    /// The event's sequence number.
    pub seq: u64,
    /// When.
    #[serde(rename = "at", serialize_with = "rfc3339")]
    #[schemars(rename = "at", with = "String")]
    pub at_ms: u64,
    /// The event that changed it.
    pub kind: EventKind,
    /// Who made the change.
    pub by: String,
    /// The owner before.
    pub from: String,
    /// The owner after.
    pub to: String,
}

/// How a wait for approval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WaitEnd {
    /// Approved (by enough humans).
    Approved,
    /// A human denied it.
    Denied,
    /// The request stopped counting (expired, or the step changed).
    Voided,
    /// The step was settled another way (escalated, skipped, resolved).
    Settled,
    /// Still waiting when the records end.
    Pending,
}

/// A high-impact attempt waiting for a human's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Wait {
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// When approval was first asked for.
    #[serde(rename = "from", serialize_with = "rfc3339")]
    #[schemars(rename = "from", with = "String")]
    pub from_ms: u64,
    /// When the wait ended (the last approval it needed, or the decision
    /// that ended it); the newest event's time while pending.
    #[serde(rename = "to", serialize_with = "rfc3339")]
    #[schemars(rename = "to", with = "String")]
    pub to_ms: u64,
    /// How it ended.
    pub end: WaitEnd,
    /// The human whose decision ended it.
    pub by: Option<String>,
}

/// What kept a step from running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HoldKind {
    /// The cooldown after a destructive step.
    Cooldown,
    /// The backoff before a retry.
    Backoff,
}

impl HoldKind {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Cooldown => "cooldown",
            HoldKind::Backoff => "backoff",
        }
    }
}

/// A stretch of time a step was held: until its next attempt started, or
/// the newest event while still held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Hold {
    /// Cooldown or backoff.
    pub kind: HoldKind,
    /// The step held.
    pub step: String,
    /// From.
    #[serde(rename = "from", serialize_with = "rfc3339")]
    #[schemars(rename = "from", with = "String")]
    pub from_ms: u64,
    /// To.
    #[serde(rename = "to", serialize_with = "rfc3339")]
    #[schemars(rename = "to", with = "String")]
    pub to_ms: u64,
}

/// Everything [`Fold`] derives.
#[derive(Debug, Clone, Default)]
pub(crate) struct Folded {
    pub figures: Figures,
    pub owner_changes: Vec<OwnerChange>,
    pub waits: Vec<Wait>,
    pub holds: Vec<Hold>,
}

/// The owner an event leaves the incident with, if it changes it: the
/// engine escalates to the deciding human or else to `human:on-call`, a
/// takeover gives it to the human taking it, a handback to the agent its
/// message names.
pub(crate) fn new_owner(e: &TimelineEvent) -> Option<String> {
    match e.kind {
        EventKind::Takeover => Some(e.actor.clone()),
        EventKind::Escalated if e.actor.starts_with("human:") => Some(e.actor.clone()),
        EventKind::Escalated => Some(Owner::on_call().to_string()),
        EventKind::Handback => Some(
            e.message
                .split_whitespace()
                .find(|w| w.starts_with("agent:"))
                .map_or_else(|| Owner::default_agent().to_string(), str::to_string),
        ),
        _ => None,
    }
}

/// An approval asked for: when, and the newest approval given so far
/// (when, by whom).
type Asked = (u64, Option<(u64, String)>);

/// Reads an incident's records and events and adds them up.
pub(crate) struct Fold {
    out: Folded,
    /// When each attempt started, to end the hold before it.
    starts: HashMap<(String, u32), u64>,
    owner: String,
    owned_since: u64,
    last_ms: u64,
    waiting: HashMap<(String, u32), Asked>,
    held: HashMap<String, (HoldKind, u64)>,
}

impl Fold {
    /// A fold of an incident opened at `opened_ms`.
    pub(crate) fn new(opened_ms: u64) -> Self {
        Fold {
            out: Folded {
                figures: Figures {
                    opened_ms,
                    ..Figures::default()
                },
                ..Folded::default()
            },
            starts: HashMap::new(),
            owner: Owner::default_agent().to_string(),
            owned_since: opened_ms,
            last_ms: opened_ms,
            waiting: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// Counts one step record; give every record before the first event.
    pub(crate) fn step(&mut self, r: &StepRecord) {
        let f = &mut self.out.figures;
        f.attempts += 1;
        f.retries += u32::from(r.outcome == RecordOutcome::Retry);
        f.in_doubt += u32::from(r.outcome == RecordOutcome::InDoubt);
        f.overrides += u32::from(r.human_override);
        self.starts
            .insert((r.step.clone(), r.attempt), r.started_at_ms);
    }

    /// Reads the next event, in sequence order.
    pub(crate) fn event(&mut self, e: &TimelineEvent) {
        self.last_ms = self.last_ms.max(e.at_ms);
        self.count(e);
        if let Some(to) = new_owner(e) {
            self.hand_over(e, to);
        }
        self.track_wait(e);
        self.track_hold(e);
    }

    fn count(&mut self, e: &TimelineEvent) {
        let f = &mut self.out.figures;
        match e.kind {
            EventKind::Approved => f.approvals += 1,
            EventKind::Denied => f.denials += 1,
            EventKind::Escalated => f.escalations += 1,
            EventKind::Takeover => f.takeovers += 1,
            EventKind::Handback => f.handbacks += 1,
            EventKind::Resolved => {
                f.ended_ms = Some(e.at_ms);
                f.time_to_resolve_ms = Some(e.at_ms.saturating_sub(f.opened_ms));
            }
            EventKind::Failed => f.ended_ms = Some(e.at_ms),
            _ => {}
        }
    }

    fn hand_over(&mut self, e: &TimelineEvent, to: String) {
        if to == self.owner {
            return;
        }
        self.own_until(e.at_ms);
        let from = std::mem::replace(&mut self.owner, to.clone());
        self.out.owner_changes.push(OwnerChange {
            seq: e.seq,
            at_ms: e.at_ms,
            kind: e.kind,
            by: e.actor.clone(),
            from,
            to,
        });
    }

    /// Adds the time since the last change to the current owner's side.
    fn own_until(&mut self, at_ms: u64) {
        let held = at_ms.saturating_sub(self.owned_since);
        if self.owner.starts_with("agent:") {
            self.out.figures.agent_ms += held;
        } else {
            self.out.figures.human_ms += held;
        }
        self.owned_since = self.owned_since.max(at_ms);
    }

    fn track_wait(&mut self, e: &TimelineEvent) {
        let (Some(step), Some(attempt)) = (&e.step, e.attempt) else {
            return;
        };
        let key = (step.clone(), attempt);
        let end = match e.kind {
            EventKind::ApprovalRequired => {
                self.waiting.entry(key).or_insert((e.at_ms, None));
                return;
            }
            EventKind::Approved => {
                if let Some((_, last)) = self.waiting.get_mut(&key) {
                    *last = Some((e.at_ms, e.actor.clone()));
                }
                return;
            }
            EventKind::Denied => Some(WaitEnd::Denied),
            EventKind::ApprovalVoided => Some(WaitEnd::Voided),
            EventKind::AttemptStarted | EventKind::StepCommitted | EventKind::InDoubt => None,
            k if k.commits_record() || k == EventKind::Escalated => Some(WaitEnd::Settled),
            _ => return,
        };
        let Some((from_ms, approved)) = self.waiting.remove(&key) else {
            return;
        };
        let (to_ms, end, by) = match (end, approved) {
            (None, Some((at, by))) => (at, WaitEnd::Approved, Some(by)),
            (None, None) => (e.at_ms, WaitEnd::Settled, None),
            (Some(end), _) => (e.at_ms, end, Some(e.actor.clone())),
        };
        self.out.figures.approval_wait_ms += to_ms.saturating_sub(from_ms);
        self.out.waits.push(Wait {
            step: key.0,
            attempt,
            from_ms,
            to_ms,
            end,
            by,
        });
    }

    fn track_hold(&mut self, e: &TimelineEvent) {
        let Some(step) = &e.step else { return };
        let kind = match e.kind {
            EventKind::Cooldown => HoldKind::Cooldown,
            EventKind::RetryScheduled => HoldKind::Backoff,
            k if k.commits_record() || k == EventKind::AttemptStarted => {
                self.end_hold(step, e);
                return;
            }
            _ => return,
        };
        self.held.entry(step.clone()).or_insert((kind, e.at_ms));
    }

    fn end_hold(&mut self, step: &str, e: &TimelineEvent) {
        let Some((kind, from_ms)) = self.held.remove(step) else {
            return;
        };
        // The hold lasted until the attempt it held started, not until it
        // committed.
        let started = e
            .attempt
            .and_then(|a| self.starts.get(&(step.to_string(), a)).copied())
            .filter(|s| *s >= from_ms);
        self.out.holds.push(Hold {
            kind,
            step: step.to_string(),
            from_ms,
            to_ms: started.unwrap_or(e.at_ms),
        });
    }

    /// The figures, once every event has been read.
    pub(crate) fn finish(mut self) -> Folded {
        let end = self.out.figures.ended_ms.unwrap_or(self.last_ms);
        self.own_until(end);
        self.out.figures.span_ms = end.saturating_sub(self.out.figures.opened_ms);
        for ((step, attempt), (from_ms, approved)) in self.waiting {
            let (to_ms, end, by) = match approved {
                Some((at, by)) => (at, WaitEnd::Pending, Some(by)),
                None => (end, WaitEnd::Pending, None),
            };
            self.out.figures.approval_wait_ms += to_ms.saturating_sub(from_ms);
            self.out.waits.push(Wait {
                step,
                attempt,
                from_ms,
                to_ms,
                end,
                by,
            });
        }
        for (step, (kind, from_ms)) in self.held {
            self.out.holds.push(Hold {
                kind,
                step,
                from_ms,
                to_ms: end,
            });
        }
        self.out.waits.sort_by_key(|w| (w.from_ms, w.attempt));
        self.out.holds.sort_by_key(|h| h.from_ms);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, at_ms: u64, actor: &str, kind: EventKind, message: &str) -> TimelineEvent {
        TimelineEvent {
            seq,
            at_ms,
            actor: actor.into(),
            kind,
            step: Some("restart".into()),
            attempt: Some(1),
            message: message.into(),
            signed: None,
        }
    }

    #[test]
    fn owners_waits_and_time_add_up() {
        let mut fold = Fold::new(0);
        let mut record = StepRecord::new(
            "restart".into(),
            "restart",
            1,
            RecordOutcome::Ok,
            "agent:runbox".into(),
            7_000,
        );
        record.ended_at_ms = 8_000;
        fold.step(&record);
        for e in [
            event(0, 0, "agent:runbox", EventKind::Opened, "opened"),
            event(
                1,
                1_000,
                "agent:runbox",
                EventKind::ApprovalRequired,
                "wait",
            ),
            event(2, 2_000, "human:alice", EventKind::Takeover, "t"),
            event(3, 4_000, "human:alice", EventKind::Approved, "ok"),
            event(
                4,
                5_000,
                "human:alice",
                EventKind::Handback,
                "handed back to agent:bot at step `x`",
            ),
            event(5, 8_000, "agent:bot", EventKind::StepCommitted, "ok"),
            event(6, 10_000, "agent:bot", EventKind::Resolved, "done"),
        ] {
            fold.event(&e);
        }
        let out = fold.finish();
        let f = &out.figures;
        assert_eq!(f.time_to_resolve_ms, Some(10_000));
        assert_eq!((f.agent_ms, f.human_ms), (7_000, 3_000));
        assert_eq!(f.approval_wait_ms, 3_000);
        assert_eq!(
            (f.approvals, f.takeovers, f.handbacks, f.attempts),
            (1, 1, 1, 1)
        );
        let owners: Vec<&str> = out.owner_changes.iter().map(|c| c.to.as_str()).collect();
        assert_eq!(owners, ["human:alice", "agent:bot"]);
        assert_eq!(out.waits[0].end, WaitEnd::Approved);
        assert_eq!(out.waits[0].by.as_deref(), Some("human:alice"));
    }
}
