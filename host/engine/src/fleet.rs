//! Blast radius across incidents (see [`runbox_core::limits`]): what the
//! gate sees of brakes and rate limits, counting a mutating call's uses
//! before it runs, and brakes engaged and released.
//!
//! Counts and brakes live in the store's shared plane. A use is counted in
//! the commit that lets its call happen (the attempt's in-flight marker, or
//! a commit of its own for a later call), fenced on the count's version: two
//! incidents racing for the last use cannot both get it, and a runner killed
//! after the commit has counted the call it may have made, once.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use runbox_core::event::EventKind;
use runbox_core::fleet_config::ConfigKind;
use runbox_core::ident::{IncidentId, Name};
use runbox_core::limits::{Brake, BrakeScope, Limit, LimitsFile, Params, Subject};
use runbox_core::records::{Checkpoint, Owner, Signed, Status, TimelineEvent};
use runbox_core::runbook::LoadedRunbook;
use runbox_core::time::now_ms;
use runbox_core::tools::ToolRegistry;
use runbox_store::keys;
use runbox_store::{Shared, Store, StoreError, StoreExt, decode};
use runbox_trust::{Action, Decision, Statement};

use crate::change::Change;
use crate::gate::FleetHold;
use crate::{Engine, EngineError, Result};
use runbox_incidents::config::{self, Fence};
pub use runbox_incidents::fleet::{
    EngagedBrake, Held, brake_subject, covering, engaged_brakes, read_uses,
};

/// Engages the brake for `scope` unless one is engaged already; returns
/// the brake that holds.
pub(crate) fn trip(
    store: &dyn Store,
    scope: &BrakeScope,
    reason: &str,
    by: &str,
    incident: Option<&IncidentId>,
) -> Result<Brake> {
    let key = scope.key();
    let brake = Brake {
        scope: scope.to_string(),
        reason: reason.to_string(),
        by: by.to_string(),
        at_ms: now_ms(),
        incident: incident.map(ToString::to_string),
    };
    let json = serde_json::to_vec(&brake).expect("a brake always serializes");
    // Engaged meanwhile: that one holds. Released between the two reads:
    // engage it afresh.
    for _ in 0..8 {
        let mut shared = Shared::default();
        shared.expect(&key, None).put(&key, json.clone());
        match store.commit_shared(shared) {
            Ok(()) => return Ok(brake),
            Err(StoreError::SharedConflict { .. }) => {
                if let Some(v) = store.shared_get(&key)? {
                    return Ok(decode(&key, &v.value)?);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(fleet_error(format!(
        "brake `{scope}` keeps being engaged and released: try again"
    )))
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Released {
    /// The scope released.
    pub scope: String,
    /// The incidents it held, handed back to the agent.
    pub reopened: Vec<String>,
}

/// The longest reason a brake is engaged with.
pub const MAX_REASON_BYTES: usize = 1024;

impl Engine {
    /// The data dir's fleet-wide limits file ([`LimitsFile`]), read afresh
    /// at each gate so an edit counts at once. Default: none (only the
    /// runbooks' own limits).
    pub fn with_fleet_limits(mut self, path: impl Into<PathBuf>) -> Self {
        self.limits_file = Some(path.into());
        self
    }

    /// The limits that count an incident's steps: its runbook's and the
    /// fleet's; and, when the fleet's are the store's document, the version
    /// read, which every commit counting a call under them carries.
    pub(crate) fn limits_for(&self, rb: &LoadedRunbook) -> Result<(Vec<Limit>, Option<Fence>)> {
        let mut limits = rb.runbook.limits(&rb.path)?;
        if self.incidents.config_in_store() {
            let stored = config::read(&*self.store, ConfigKind::Limits)?;
            limits.extend(config::limits_of(stored.text())?);
            return Ok((limits, Some(stored.fence)));
        }
        if let Some(path) = &self.limits_file {
            limits.extend(LimitsFile::load(path)?);
        }
        Ok((limits, None))
    }

    /// What holds a mutating step across incidents now, if anything.
    pub(crate) fn fleet_hold(
        &self,
        id: &IncidentId,
        subject: &Subject<'_>,
        limits: &[Limit],
        cp: &Checkpoint,
    ) -> Result<Option<FleetHold>> {
        if let Some(b) = covering(&self.incidents.brakes()?, subject) {
            return Ok(Some(FleetHold::Brake {
                scope: b.brake.scope.clone(),
                brake: b.brake.describe(),
            }));
        }
        let now = now_ms();
        for limit in limits
            .iter()
            .filter(|l| l.applies_to_step(subject.runbook, subject.step, subject.tools))
        {
            let refuse = |message: String| EngineError::Refused {
                id: id.to_string(),
                message,
            };
            let key = limit.count_key(subject.params).map_err(refuse)?;
            let fill = read_uses(&*self.store, &key)?
                .0
                .fill(now, limit.window_ms, limit.max);
            if !fill.is_full() {
                continue;
            }
            let recorded = self.last_event_is(id, cp, EventKind::Limited, subject.step)?;
            return Ok(Some(FleetHold::Full {
                limit: limit.describe(subject.params),
                count: fill.count,
                frees_at_ms: fill.frees_at_ms.unwrap_or(now + limit.window_ms),
                on_full: limit.on_full,
                scope: limit.scope(subject.params).map_err(refuse)?.to_string(),
                recorded,
            }));
        }
        Ok(None)
    }

    /// Whether the newest event is of `kind` about this attempt of `step`.
    pub(crate) fn last_event_is(
        &self,
        id: &IncidentId,
        cp: &Checkpoint,
        kind: EventKind,
        step: &str,
    ) -> Result<bool> {
        let last: Option<TimelineEvent> = match cp.next_seq.checked_sub(1) {
            Some(seq) => self.store.read(&keys::event(id, seq))?,
            None => None,
        };
        Ok(last.is_some_and(|e| {
            e.kind == kind && e.step.as_deref() == Some(step) && e.attempt == Some(cp.attempt)
        }))
    }

    /// Whether `scope` covers a mutating step of some incident's runbook or
    /// of `runbooks`; when it does not, why not for each runbook whose
    /// parameters refused it (`service takes api, db in runbook \`web\``).
    fn scope_matches_something(
        &self,
        scope: &BrakeScope,
        runbooks: &[PathBuf],
    ) -> Result<Result<(), BTreeSet<String>>> {
        if *scope == BrakeScope::default() {
            return Ok(Ok(()));
        }
        let mut misses = BTreeSet::new();
        let mut fits = |rb: &LoadedRunbook, tools: &ToolRegistry| match params_fit(scope, rb) {
            Ok(()) => runbook_matches(scope, rb, tools),
            Err(why) => {
                misses.extend(why);
                false
            }
        };
        let mut seen = BTreeSet::new();
        for id in self.incidents.ids()? {
            let meta = self.incidents.meta(&id)?;
            if !seen.insert(Sha256::digest(&meta.runbook_text).to_vec()) {
                continue;
            }
            if let Ok((rb, tools)) = self.incidents.runbook(&meta)
                && fits(&rb, &tools)
            {
                return Ok(Ok(()));
            }
        }
        for path in runbooks {
            let Ok(rb) = LoadedRunbook::load(path) else {
                continue;
            };
            let tools = match rb.tools_path() {
                Some(p) => ToolRegistry::load(&p).unwrap_or_else(|_| ToolRegistry::empty()),
                None => ToolRegistry::empty(),
            };
            if fits(&rb, &tools) {
                return Ok(Ok(()));
            }
        }
        Ok(Err(misses))
    }

    /// Hands every incident escalated under `scope`'s brake back to the agent.
    fn reopen_braked(
        &self,
        scope: &BrakeScope,
        human: &Owner,
        signed: &Signed,
    ) -> Result<Vec<String>> {
        let scope_text = scope.to_string();
        let mut reopened = Vec::new();
        for id in self.incidents.ids()? {
            let Some((held_by, cp)) = self.incidents.brake_hold(&id)? else {
                continue;
            };
            let Some(step) = cp.step.clone().filter(|_| held_by == scope_text) else {
                continue;
            };
            // An attempt the brake stopped mid-way has its record: the
            // incident goes on with a fresh attempt.
            let ran = self.store.exists(&keys::step(&id, &step, cp.attempt))?;
            let attempt = cp.attempt + u32::from(ran);
            let mut change = Change::default();
            change.event(
                &human.to_string(),
                EventKind::BrakeReleased,
                Some((&step, attempt)),
                format!(
                    "{human} released brake `{scope_text}`; `{step}` runs again (attempt {attempt})"
                ),
            );
            change.events[0].signed = Some(signed.clone());
            change.record(keys::braked(&id), &None::<String>);
            change.status = Some(Status::Open);
            change.owner = Some(Owner::default_agent());
            change.checkpoint = Some(Checkpoint {
                attempt,
                not_before_ms: None,
                ..cp.clone()
            });
            match self.apply(&id, &cp, change) {
                Ok(_) => reopened.push(id.to_string()),
                // Someone acted on it meanwhile: theirs stands.
                Err(EngineError::Store(StoreError::Conflict { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(reopened)
    }
}

/// The write paths of what spans incidents: brakes, the fleet's
/// configuration on a shared store (its humans, limits, routes and sinks),
/// and the mutation token. From [`Engine::fleet`].
#[derive(Clone, Copy)]
pub struct Fleet<'a> {
    pub(crate) engine: &'a Engine,
}

impl Engine {
    /// Brakes, the fleet's configuration and the mutation token ([`Fleet`]).
    pub fn fleet(&self) -> Fleet<'_> {
        Fleet { engine: self }
    }
}

impl Fleet<'_> {
    /// Engages a brake on `scope` (`runbox brake engage`), by `by`
    /// (`agent:NAME`: engaging is unsigned, so never a human's), unless
    /// one is engaged already. The scope must
    /// match a mutating step of some incident's runbook, or of one of
    /// `runbooks` (files: a brake may be engaged before any incident opens).
    /// Engaging needs no signature: it only ever stops things.
    pub fn engage_brake(
        &self,
        scope: &str,
        reason: &str,
        by: &str,
        runbooks: &[PathBuf],
    ) -> Result<Brake> {
        let scope: BrakeScope = scope.parse()?;
        let by = Owner::unsigned(by).map_err(|m| fleet_error(format!("by: {m}")))?;
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
            return Err(fleet_error(format!(
                "a brake needs a reason of 1..={MAX_REASON_BYTES} bytes (--reason)"
            )));
        }
        if let Err(misses) = self.engine.scope_matches_something(&scope, runbooks)? {
            return Err(fleet_error(format!(
                "brake scope `{scope}` matches no mutating step of any incident's runbook{}: check its runbook, step, tool and parameter names{}",
                if runbooks.is_empty() {
                    ""
                } else {
                    " or of the runbooks given"
                },
                if misses.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", misses.into_iter().collect::<Vec<_>>().join("; "))
                }
            )));
        }
        trip(&*self.engine.store, &scope, reason, &by.to_string(), None)
    }

    /// The statement `signer` signs to release the brake on `scope`, bound
    /// to its current engagement.
    pub fn brake_statement(&self, scope: &str, signer: &str, ttl: Duration) -> Result<Statement> {
        let scope: BrakeScope = scope.parse()?;
        let engaged = self
            .engine
            .incidents
            .brake(&scope)?
            .ok_or_else(|| no_brake(&scope))?;
        let mut s = Statement::new(
            Action::ReleaseBrake,
            signer,
            ttl,
            &self.engine.deployment_id()?,
        )?;
        s.scope = Some(scope.to_string());
        s.subject_sha256 = Some(brake_subject(&scope, engaged.version));
        Ok(s)
    }

    /// Releases a brake on a human's signed `release-brake` statement, then
    /// hands the incidents it escalated back to the agent (each with the
    /// signed statement in its timeline). Nothing is written unless the
    /// signature, the time and the binding hold.
    pub fn release_brake(&self, decision: &Decision) -> Result<Released> {
        let (signers, signers_fences) = self.engine.incidents.signers_fenced()?;
        let refuse = fleet_error;
        let v = self
            .engine
            .verify_unbound(&signers, decision, Action::ReleaseBrake, refuse)?;
        let s = &v.statement;
        let scope: BrakeScope = s.scope.as_deref().unwrap_or_default().parse()?;
        let engaged = self
            .engine
            .incidents
            .brake(&scope)?
            .ok_or_else(|| no_brake(&scope))?;
        if s.subject_sha256.as_deref() != Some(brake_subject(&scope, engaged.version).as_str()) {
            return Err(refuse(format!(
                "the statement was made for another engagement of brake `{scope}`: sign a fresh one"
            )));
        }
        let mut shared = Shared::default();
        shared
            .expect(scope.key(), Some(engaged.version))
            .delete(scope.key());
        for fence in &signers_fences {
            fence.hold(&mut shared);
        }
        match self.engine.store.commit_shared(shared) {
            Err(StoreError::SharedConflict { key, .. })
                if signers_fences.iter().any(|f| f.key() == key) =>
            {
                return Err(refuse(
                    "the fleet's signers changed while the release was checked: hand the statement in again".into(),
                ));
            }
            other => other?,
        }
        let human = Owner::Human(Name::new(s.signer.as_str())?);
        let signed = Signed {
            statement: decision.statement.clone(),
            signature: decision.signature.clone(),
            fingerprint: v.fingerprint.clone(),
        };
        let reopened = self.engine.reopen_braked(&scope, &human, &signed)?;
        tracing::info!(scope = %scope, by = %human, reopened = reopened.len(), "brake released");
        Ok(Released {
            scope: scope.to_string(),
            reopened,
        })
    }
}

/// Whether every parameter `scope` names takes, in `rb`, the value it is
/// given: a brake on `service=apii` is refused where `service` takes only
/// `api` and `db`, instead of quietly stopping nothing. A runbook that does
/// not declare the parameter is no fit, without a reason to give.
fn params_fit(scope: &BrakeScope, rb: &LoadedRunbook) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    for (name, value) in &scope.params {
        let Some(spec) = rb.runbook.params.get(name) else {
            return Err(Vec::new());
        };
        if let Some(values) = spec.values.as_ref().filter(|v| !v.contains(value)) {
            why.push(format!(
                "`{name}` takes only {} in runbook `{}`, not `{value}`",
                values.join(", "),
                rb.runbook.runbook.name
            ));
        }
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}

/// Whether `scope` covers a mutating step of `rb`, for some value of the
/// parameters it names (the runbook must declare them).
fn runbook_matches(scope: &BrakeScope, rb: &LoadedRunbook, tools: &ToolRegistry) -> bool {
    let params: Params = rb
        .runbook
        .params
        .keys()
        .map(|k| (k.clone(), scope.params.get(k).cloned().unwrap_or_default()))
        .collect();
    rb.runbook.steps.iter().any(|step| {
        let mutating = tools.mutating(&step.grants);
        let subject = Subject {
            runbook: &rb.runbook.runbook.name,
            step: &step.id,
            tools: &mutating,
            params: &params,
        };
        !mutating.is_empty() && scope.covers(&subject)
    })
}

fn fleet_error(message: String) -> EngineError {
    EngineError::Fleet(message)
}

fn no_brake(scope: &BrakeScope) -> EngineError {
    fleet_error(format!(
        "no brake is engaged on `{scope}` (see `runbox brake list`)"
    ))
}
