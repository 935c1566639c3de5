//! The attempt's guard: runs before each mutating tool call, and commits
//! what must be durable before the call happens.
//!
//! Before the first mutating call it makes `attempt started` durable (the
//! in-flight marker), with the step's shared KV writes so far, fenced on
//! the shared values the step read: a lock taken or a budget spent holds
//! before the restart it guards. Before every mutating call it checks the
//! brakes and counts the call against the rate limits that apply, in the
//! same commit. A brake, a limit exceeded, or shared state that moved
//! refuses the call: nothing was called.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use runbox_core::event::EventKind;
use runbox_core::fleet_config::CONFIG;
use runbox_core::ident::IncidentId;
use runbox_core::limits::{Limit, Params, SHARED_KV, Subject, Use, shared_kv_key};
use runbox_core::records::{Checkpoint, InFlight, Status};
use runbox_core::time::now_ms;
use runbox_sandbox::{MutationGuard, Refusal};
use runbox_store::{Store, StoreError};

use crate::change::{self, At, Base, Change};
use crate::fleet::{covering, engaged_brakes, read_uses, trip};
use crate::kv::SharedReads;
use crate::lock;
use runbox_incidents::config::Fence;

/// How often a call's count is retried when another incident's commit
/// moved it in between.
const COUNT_TRIES: usize = 16;

/// What the guard tells the attempt's commit afterwards.
#[derive(Debug, Default)]
pub(crate) struct GuardNotes {
    /// The scope of the brake that stopped a call, if one did.
    pub(crate) braked: Option<String>,
    /// Shared KV writes made durable with the marker (shared-plane key →
    /// value), so the final commit does not write them twice.
    pub(crate) shared_written: BTreeMap<String, Option<Vec<u8>>>,
    /// A shared key the step read changed before its first mutating call:
    /// nothing was called, so the step may simply run again.
    pub(crate) stale: Option<String>,
    /// This runner no longer holds the incident (its lease lapsed): the
    /// attempt commits nothing, and the runner leaves the incident to the
    /// next owner, who finds any mutation it started in doubt.
    pub(crate) lost: Option<runbox_store::StoreError>,
}

/// The step a guard watches, and where it stands.
pub(crate) struct AttemptGuard {
    pub(crate) store: Arc<dyn Store>,
    /// Where the commit's notifications go.
    pub(crate) outbox: Arc<crate::outbox::Outbox>,
    pub(crate) id: IncidentId,
    pub(crate) runbook: String,
    pub(crate) step: String,
    pub(crate) attempt: u32,
    pub(crate) agent: String,
    pub(crate) params: Params,
    /// The limits that may count this step's calls.
    pub(crate) limits: Vec<Limit>,
    /// The fleet's configuration the attempt was let through on: every
    /// commit here lands only while it stands.
    pub(crate) fences: Vec<Fence>,
    /// The checkpoint the attempt started on; after a guard commit, the one
    /// it wrote.
    pub(crate) base: Arc<Mutex<Checkpoint>>,
    pub(crate) started_at_ms: u64,
    pub(crate) reads: Arc<SharedReads>,
    pub(crate) notes: Arc<Mutex<GuardNotes>>,
}

impl MutationGuard for AttemptGuard {
    /// Called from an async host function: the claim check, the counts'
    /// reads and the synced commit go through the engine's one blocking
    /// adapter, so they hold up no other task of the worker.
    fn before_mutation(
        &mut self,
        tool: &str,
        first: bool,
        staged: &BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), Refusal> {
        crate::blocking::in_place(|| self.guard(tool, first, staged))
    }
}

impl AttemptGuard {
    fn guard(
        &mut self,
        tool: &str,
        first: bool,
        staged: &BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), Refusal> {
        // A runner whose lease lapsed stops before acting: another may
        // hold the incident by now.
        if let Err(e) = self.store.check_claim(&self.id) {
            let message = e.to_string();
            lock(&self.notes).lost = Some(e);
            return Err(Refusal::Held(message));
        }
        for _ in 0..COUNT_TRIES {
            self.check_brakes(tool)?;
            let Some(mut change) = self.counted(tool, first)? else {
                return Ok(());
            };
            if first {
                self.mark_in_flight(&mut change, tool, staged);
            }
            for fence in &self.fences {
                fence.hold(&mut change.shared);
            }
            let mut base = lock(&self.base);
            match change::commit(
                &*self.store,
                &self.outbox,
                &self.id,
                Base::At(&base),
                change.clone(),
            ) {
                Ok(next) => {
                    *base = next;
                    if first {
                        lock(&self.notes).shared_written = shared_writes(&change);
                    }
                    return Ok(());
                }
                Err(StoreError::SharedConflict { key, .. }) if read_moved(&key) => {
                    let refusal = Refusal::Held(format!(
                        "{} changed underneath since the step read it; nothing was called",
                        what_moved(&key)
                    ));
                    lock(&self.notes).stale = Some(key);
                    return Err(refusal);
                }
                // Another incident counted a use in between: count again.
                Err(StoreError::SharedConflict { .. }) => {
                    self.reads.restore(&change.shared);
                }
                Err(e) => return Err(Refusal::Host(e.to_string())),
            }
        }
        Err(Refusal::Held(format!(
            "the rate-limit count for `{tool}` kept moving under {COUNT_TRIES} tries; nothing was called"
        )))
    }
}

impl AttemptGuard {
    fn subject<'a>(&'a self, tools: &'a [&'a str]) -> Subject<'a> {
        Subject {
            runbook: &self.runbook,
            step: &self.step,
            tools,
            params: &self.params,
        }
    }

    fn check_brakes(&self, tool: &str) -> Result<(), Refusal> {
        let brakes = engaged_brakes(&*self.store).map_err(|e| Refusal::Host(e.to_string()))?;
        if let Some(b) = covering(&brakes, &self.subject(&[tool])) {
            lock(&self.notes).braked = Some(b.brake.scope.clone());
            return Err(Refusal::Held(b.brake.describe()));
        }
        Ok(())
    }

    /// A change counting this call against every limit that applies
    /// (`None`: nothing to count and nothing to mark). A full limit is
    /// exceeded: it trips its brake and refuses the call.
    fn counted(&self, tool: &str, first: bool) -> Result<Option<Change>, Refusal> {
        let now = now_ms();
        let mut change = Change::default();
        let at: At<'_> = Some((self.step.as_str(), self.attempt));
        for limit in self
            .limits
            .iter()
            .filter(|l| l.applies_to_call(&self.runbook, &self.step, tool, first))
        {
            let key = limit.count_key(&self.params).map_err(Refusal::Held)?;
            let (mut uses, version) =
                read_uses(&*self.store, &key).map_err(|e| Refusal::Host(e.to_string()))?;
            let fill = uses.fill(now, limit.window_ms, limit.max);
            if fill.is_full() {
                return Err(self.exceeded(limit, fill.count));
            }
            uses.prune(now, limit.window_ms);
            uses.uses.push(Use {
                at_ms: now,
                incident: self.id.to_string(),
                step: self.step.clone(),
                attempt: self.attempt,
                tool: tool.to_string(),
            });
            let json = serde_json::to_vec(&uses).expect("uses always serialize");
            change.shared.expect(&key, version).put(&key, json);
            change.event(
                &self.agent,
                EventKind::LimitUsed,
                at,
                format!(
                    "`{tool}` counted: use {} of {}, {}",
                    fill.count + 1,
                    limit.max,
                    limit.describe(&self.params)
                ),
            );
        }
        Ok((first || !change.events.is_empty()).then_some(change))
    }

    /// Trips the brake of a limit this call would exceed; the refusal.
    fn exceeded(&self, limit: &Limit, count: u32) -> Refusal {
        let scope = match limit.scope(&self.params) {
            Ok(scope) => scope,
            Err(e) => return Refusal::Held(e),
        };
        let reason = format!(
            "rate limit exceeded by incident {} ({count} used): {}",
            self.id,
            limit.describe(&self.params)
        );
        if let Err(e) = trip(&*self.store, &scope, &reason, &self.agent, Some(&self.id)) {
            return Refusal::Host(format!("cannot engage brake `{scope}`: {e}"));
        }
        lock(&self.notes).braked = Some(scope.to_string());
        Refusal::Held(format!("{reason}; brake `{scope}` engaged"))
    }

    /// Adds the in-flight marker, the shared writes staged so far and the
    /// fence on the shared values read so far.
    fn mark_in_flight(
        &self,
        change: &mut Change,
        tool: &str,
        staged: &BTreeMap<String, Option<Vec<u8>>>,
    ) {
        let base = lock(&self.base).clone();
        change.checkpoint = Some(Checkpoint {
            in_flight: Some(InFlight {
                step: self.step.clone(),
                attempt: self.attempt,
                started_at_ms: self.started_at_ms,
                tool: tool.into(),
            }),
            ..base
        });
        change.status = Some(Status::Running);
        change.event(
            &self.agent,
            EventKind::AttemptStarted,
            Some((self.step.as_str(), self.attempt)),
            format!("about to call mutating tool `{tool}`"),
        );
        // The marker's event comes first in the timeline.
        change.events.rotate_right(1);
        self.reads.fence(&mut change.shared);
        for (key, value) in staged {
            if let Some(shared) = shared_kv_key(key) {
                change.shared.write(shared, value.clone());
            }
        }
    }
}

/// Whether a refused commit's key is something the step decided on that
/// another writer moved (a shared KV value it read, the fleet's
/// configuration), rather than a count that moved between two calls.
fn read_moved(key: &str) -> bool {
    key.starts_with(SHARED_KV) || key.starts_with(CONFIG)
}

/// What moved, for people: `shared key \`svc/lock\``, `the fleet's limits`.
pub(crate) fn what_moved(key: &str) -> String {
    match key.strip_prefix(CONFIG) {
        Some(kind) => format!("the fleet's {kind}"),
        None => format!(
            "shared key `{}`",
            key.strip_prefix(SHARED_KV).unwrap_or(key)
        ),
    }
}

fn shared_writes(change: &Change) -> BTreeMap<String, Option<Vec<u8>>> {
    change
        .shared
        .writes()
        .iter()
        .filter(|(k, _)| k.starts_with(SHARED_KV))
        .cloned()
        .collect()
}
