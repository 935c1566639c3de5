//! A change to one incident and [`commit`], the one path every write takes:
//! the run loop's attempts, the in-flight marker, gates that record why they
//! hold, human actions and `open`.
//!
//! A change is built from the checkpoint it was decided on; [`commit`] turns
//! it into one store [`Batch`] (the next checkpoint with its version bumped,
//! timeline events numbered on from the checkpoint's `next_seq`, records,
//! status, owner, step KV) and hands it to [`Store::commit`], which writes
//! it only if the checkpoint is still the one the change was decided on.

use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::records::{Checkpoint, Owner, Signed, Status, TimelineEvent};
use runbox_core::runbook::Next;
use runbox_core::time::now_ms;
use runbox_store::keys::{self, Group, Key};
use runbox_store::{Batch, Expect, Records, Shared, Store, StoreError, Values};
use runbox_telemetry::CommitResult;
use serde::Serialize;

use crate::RunExit;
use crate::outbox::Outbox;

/// A change to one incident, committed atomically by [`commit`].
#[derive(Default, Clone)]
pub(crate) struct Change {
    /// The next checkpoint (its version and `next_seq` are set by
    /// [`commit`]); `None` keeps the current one.
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) status: Option<Status>,
    pub(crate) owner: Option<Owner>,
    pub(crate) events: Vec<NewEvent>,
    /// Records, encoded once here and written as they are.
    pub(crate) records: Records,
    pub(crate) kv: Vec<(String, Option<Vec<u8>>)>,
    /// What the change expects of and writes to the shared plane (shared
    /// step KV, rate-limit counts), checked and written with it.
    pub(crate) shared: Shared,
}

#[derive(Clone)]
pub(crate) struct NewEvent {
    pub(crate) actor: String,
    pub(crate) kind: EventKind,
    pub(crate) step: Option<String>,
    pub(crate) attempt: Option<u32>,
    pub(crate) message: String,
    /// The human's signed statement, for decision events (see `Proof::seal`).
    pub(crate) signed: Option<Signed>,
}

/// A step and attempt an event is about.
pub(crate) type At<'a> = Option<(&'a str, u32)>;

impl Change {
    pub(crate) fn event(
        &mut self,
        actor: &str,
        kind: EventKind,
        at: At<'_>,
        message: impl Into<String>,
    ) {
        self.events.push(NewEvent {
            actor: actor.to_string(),
            kind,
            step: at.map(|(s, _)| s.to_string()),
            attempt: at.map(|(_, a)| a),
            message: message.into(),
            signed: None,
        });
    }

    /// Writes `value` under its typed key in the change's commit.
    pub(crate) fn record<T: Serialize>(&mut self, key: Key<T>, value: &T) {
        self.records.put(key, value);
    }
}

/// What a change was decided on.
#[derive(Clone)]
pub(crate) enum Base<'a> {
    /// Nothing: the change creates the incident at this first checkpoint.
    New(Checkpoint),
    /// The incident's checkpoint as it was read.
    At(&'a Checkpoint),
}

/// Commits `change` to incident `id`, decided on `base`, with an outbox
/// entry for each sink of `outbox` that wants one of its events. Returns the
/// checkpoint it wrote. A checkpoint that moved since `base` was read (or an
/// incident that exists, for [`Base::New`]) is [`StoreError::Conflict`], and
/// nothing is written.
pub(crate) fn commit(
    store: &dyn Store,
    outbox: &Outbox,
    id: &IncidentId,
    base: Base<'_>,
    change: Change,
) -> Result<Checkpoint, StoreError> {
    commit_and_read(store, outbox, id, base, change, &Group::new()).map(|(next, _)| next)
}

/// How often a commit is made afresh when it finds the fleet's sinks
/// changed since this process read them (each time it reads them again).
const SINKS_TRIES: usize = 4;

/// [`commit`], and the records under `read_back` as of right after it
/// ([`Store::commit_and_read`]: on etcd in the same round trip).
pub(crate) fn commit_and_read(
    store: &dyn Store,
    outbox: &Outbox,
    id: &IncidentId,
    base: Base<'_>,
    change: Change,
    read_back: &Group,
) -> Result<(Checkpoint, Values), StoreError> {
    let Some(sinks) = outbox.fenced_key() else {
        return commit_once(store, outbox, id, base, change, read_back);
    };
    for _ in 1..SINKS_TRIES {
        match commit_once(store, outbox, id, base.clone(), change.clone(), read_back) {
            Err(StoreError::SharedConflict { key, .. }) if key == sinks => outbox.forget(),
            done => return done,
        }
    }
    commit_once(store, outbox, id, base, change, read_back)
}

fn commit_once(
    store: &dyn Store,
    outbox: &Outbox,
    id: &IncidentId,
    base: Base<'_>,
    change: Change,
    read_back: &Group,
) -> Result<(Checkpoint, Values), StoreError> {
    let span = tracing::info_span!(
        "commit",
        incident = %id,
        events = change.events.len(),
        result = tracing::field::Empty,
    );
    let _entered = span.enter();
    let is_new = matches!(base, Base::New(_));
    let (expected, first_seq, mut next) = match base {
        Base::New(first) => (Expect::Absent, 0, change.checkpoint.unwrap_or(first)),
        Base::At(cp) => (
            Expect::Version(cp.version),
            cp.next_seq,
            change.checkpoint.unwrap_or_else(|| cp.clone()),
        ),
    };
    next.version = expected.next_version();
    next.next_seq = first_seq + change.events.len() as u64;
    let mut batch = Batch::new(next.clone());
    let at_ms = now_ms();
    // `status` reads why the incident stands where it stands from one
    // record, whatever the timeline's length (`null` until there is a why).
    let why = change
        .events
        .iter()
        .rev()
        .find(|e| e.kind.explains_status());
    if why.is_some() || is_new {
        batch.put(keys::why(id), &why.map(|e| e.message.clone()));
    }
    // The outbox entries of the events, in the same batch: a notification
    // exists exactly when its event does.
    let (entries, sinks_read) =
        outbox.enqueue(store, id, first_seq, &change.events, at_ms, &mut batch)?;
    // Gathered only when a recorder counts them: no allocation otherwise.
    let kinds: Vec<&'static str> = if runbox_telemetry::recording() {
        change.events.iter().map(|e| e.kind.as_str()).collect()
    } else {
        Vec::new()
    };
    for (seq, e) in (first_seq..).zip(change.events) {
        let event = TimelineEvent {
            seq,
            at_ms,
            actor: e.actor,
            kind: e.kind,
            step: e.step,
            attempt: e.attempt,
            message: e.message,
            signed: e.signed,
        };
        batch.put(keys::event(id, seq), &event);
    }
    batch.put_all(change.records);
    for (key, value) in change.kv {
        batch.kv(key, value);
    }
    *batch.shared_mut() = change.shared;
    if let Some(fence) = sinks_read {
        fence.hold(batch.shared_mut());
    }
    if let Some(status) = change.status {
        batch.put(keys::status(id), &status);
        // A brake's hold ends with the status it set: whatever moves the
        // incident on (a human's settling, a release) clears the mark, so
        // a later release never hands back an escalation it did not cause.
        let braked = keys::braked(id);
        if !batch.records().contains(&braked) {
            batch.put(braked, &None::<String>);
        }
    }
    if let Some(owner) = &change.owner {
        batch.put(keys::owner(id), owner);
    }
    let started = std::time::Instant::now();
    let written = store.commit_and_read(id, expected, batch, read_back);
    let result = match &written {
        Ok(_) => CommitResult::Ok,
        Err(StoreError::Conflict { .. } | StoreError::SharedConflict { .. }) => {
            CommitResult::Conflict
        }
        Err(_) => CommitResult::Error,
    };
    span.record("result", result.as_str());
    runbox_telemetry::commit(result, started.elapsed().as_secs_f64(), kinds);
    let read = written?;
    outbox.committed(id, &next, entries);
    Ok((next, read))
}

/// Fills `change` for an escalation and returns the exit.
pub(crate) fn escalation(change: &mut Change, actor: &str, at: At<'_>, reason: String) -> RunExit {
    change.event(actor, EventKind::Escalated, at, reason.clone());
    change.status = Some(Status::Escalated);
    change.owner = Some(Owner::on_call());
    RunExit::Escalated { reason }
}

/// Fills `change` for a transition to `next` and returns the exit, if the run ends.
pub(crate) fn take_transition(
    change: &mut Change,
    actor: &str,
    at: At<'_>,
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
            change.event(
                actor,
                EventKind::Resolved,
                at,
                format!("incident resolved ({why})"),
            );
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
            change.event(actor, EventKind::Failed, at, reason.clone());
            change.status = Some(Status::Failed);
            Some(RunExit::Failed { reason })
        }
    }
}
