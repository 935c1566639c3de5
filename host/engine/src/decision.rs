//! Human decisions: the statement a human signs for each action, bound to
//! the incident as it stands, and [`Humans::decide`], which verifies a signed
//! statement and carries it out. Every front-end (CLI, and later MCP and
//! HTTP) hands decisions in here; nothing else writes a human's decision.
//!
//! A statement binds the deployment (the store's identity), the incident,
//! its decision-relevant state ([`Stance`]: status and owner), the step and
//! attempt, the step's module sha256 and a digest of its resolved input,
//! grants and tools. It is checked when given, and an approval again right
//! before its step runs (after any restart): an approval whose binding no
//! longer holds, or that expired, is voided with a timeline event, and the
//! step waits.
//!
//! What the statement binds is what the human decided on, and nothing
//! else: a note, an alert or another approver's approval moves the
//! incident's checkpoint but not its stance, so a human who takes a minute
//! to sign (a FIDO touch, a key on another machine) is never starved by a
//! chatty agent, and two approvers sign in parallel. The decision is
//! committed fenced on the checkpoint it was checked against; when
//! commentary moved it meanwhile, the check runs again on the new one.

use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use runbox_core::attempt::Outcome;
use runbox_core::fleet_config::CONFIG;
use runbox_core::ident::{IncidentId, Name};
use runbox_core::records::{Approval, Checkpoint, IncidentMeta, Owner, Signed, Status};
use runbox_core::runbook::{LoadedRunbook, StepSpec};
use runbox_core::time::now_ms;
use runbox_core::tools::ToolRegistry;
use runbox_incidents::config::Fence;
use runbox_store::StoreError;
use runbox_store::StoreExt;
use runbox_store::keys::{self, Key};
use runbox_trust::{Action, Decision, Stance, Statement, TrustError, Verified};

use crate::change::Change;
use crate::{Engine, EngineError, Result};
use runbox_incidents::parse_id;

/// What a human is about to decide, for [`Humans::statement`].
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The action.
    pub action: Action,
    /// The incident.
    pub incident: &'a str,
    /// The step (approve, deny, resolve, retry, skip).
    pub step: Option<&'a str>,
    /// The outcome stated (resolve).
    pub outcome: Option<Outcome>,
    /// The human.
    pub signer: &'a str,
    /// How long the statement counts. Default in the CLI: [`DEFAULT_TTL`].
    pub ttl: Duration,
}

/// How long a statement counts unless `--expires` says otherwise: 30 minutes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);

/// How many times a decision is checked again when commentary (a note, an
/// alert) moved the incident between the check and the commit. Each round
/// is a few reads; an agent would have to commit between every read and
/// write, well past its note rate limit, to exhaust them.
const MAX_DECISION_ROUNDS: usize = 32;

/// What the statement binds, computed from the incident's state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    /// The incident's stance decided on (not compared before a step runs:
    /// the approval itself moved the incident).
    state: Option<Stance>,
    step: Option<String>,
    attempt: Option<u32>,
    module_sha256: Option<String>,
    subject_sha256: Option<String>,
}

impl From<&Statement> for Binding {
    /// What a statement says it binds, to compare with the incident's.
    fn from(s: &Statement) -> Self {
        Binding {
            state: s.state.clone(),
            step: s.step.clone(),
            attempt: s.attempt,
            module_sha256: s.module_sha256.clone(),
            subject_sha256: s.subject_sha256.clone(),
        }
    }
}

/// A verified human decision, ready to be written with the change it makes.
pub(crate) struct Proof {
    pub(crate) human: Owner,
    /// The checkpoint version the statement's binding was checked against;
    /// the decision is committed on exactly that version (the store's
    /// compare-and-write), or checked again.
    pub(crate) version: u64,
    signed: Signed,
    nonce: String,
    /// The versions of the fleet's signers that verified the statement,
    /// when they are the store's.
    fences: Vec<Fence>,
}

impl Proof {
    /// The human's name without the `human:` prefix.
    pub(crate) fn name(&self) -> &str {
        match &self.human {
            Owner::Human(n) | Owner::Agent(n) => n.as_str(),
        }
    }

    /// The checkpoint the decision applies to: the one its binding was
    /// checked against, or a conflict (checked again by `decide`) when the
    /// incident moved since.
    pub(crate) fn base(&self, id: &IncidentId, cp: Checkpoint) -> Result<Checkpoint> {
        if cp.version != self.version {
            return Err(EngineError::Store(StoreError::Conflict {
                incident: id.clone(),
                expected: runbox_store::Expect::Version(self.version),
                found: Some(cp.version),
            }));
        }
        Ok(cp)
    }

    /// The proof, committed only while the signers are `fences`' versions.
    fn fenced(self, fences: Vec<Fence>) -> Self {
        Proof { fences, ..self }
    }

    pub(crate) fn signed(&self) -> Signed {
        self.signed.clone()
    }

    /// Attaches the signed statement to the change's decision events and
    /// spends the nonce in the same commit.
    pub(crate) fn seal(&self, id: &IncidentId, change: &mut Change) {
        for e in change
            .events
            .iter_mut()
            .filter(|e| e.kind.is_human_decision())
        {
            e.signed = Some(self.signed.clone());
        }
        change.record(keys::nonce(id, &self.nonce), &now_ms());
        for fence in &self.fences {
            fence.hold(&mut change.shared);
        }
    }
}

impl Engine {
    /// Verifies a statement that names no incident (`rotate-token`,
    /// `release-brake`, `configure`) against `signers`: a listed human's,
    /// an `action`, within its time, for this deployment. Its binding is
    /// the caller's to check; `refuse` makes the caller's error.
    pub(crate) fn verify_unbound(
        &self,
        signers: &runbox_trust::AllowedSigners,
        decision: &Decision,
        action: Action,
        refuse: fn(String) -> EngineError,
    ) -> Result<Verified> {
        let v = signers.verify(decision)?;
        let s = &v.statement;
        if s.action != action || s.incident.is_some() {
            return Err(refuse(format!(
                "the statement is a `{}`, not a `{action}`",
                s.action
            )));
        }
        s.check_time(now_ms())
            .map_err(|m| refuse(format!("the statement {m}")))?;
        s.check_audience(&self.deployment_id()?).map_err(refuse)?;
        Ok(v)
    }

    /// Carries out a checked decision, fenced on the checkpoint its proof
    /// was checked against.
    fn carry_out(&self, id: &IncidentId, s: &Statement, proof: &Proof) -> Result<()> {
        let step = || s.step.clone().unwrap_or_default();
        match s.action {
            Action::Approve => self.approve_as(id, &step(), proof, true)?,
            Action::Deny => self.approve_as(id, &step(), proof, false)?,
            Action::Takeover => self.takeover_as(id, proof)?,
            Action::Handback => self.handback_as(id, proof, None)?,
            Action::Resolve => {
                let outcome = s
                    .outcome
                    .as_deref()
                    .and_then(|o| o.parse::<Outcome>().ok())
                    .ok_or_else(|| refused(id, "a `resolve` statement needs an outcome"))?;
                self.settle_as(id, &step(), proof, outcome.into())?;
            }
            Action::Retry => self.retry_as(id, &step(), proof)?,
            Action::Skip => {
                self.settle_as(
                    id,
                    &step(),
                    proof,
                    runbox_core::records::RecordOutcome::Skipped,
                )?;
            }
            Action::RotateToken | Action::ReleaseBrake | Action::Configure => {
                return Err(refused(
                    id,
                    format!(
                        "a `{}` statement names no incident: it is used by `runbox token init`, `runbox brake release`, `runbox human` or `runbox limits set`",
                        s.action
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks a verified statement against the incident: time, nonce and
    /// binding.
    fn proof(&self, id: &IncidentId, decision: &Decision, v: &Verified) -> Result<Proof> {
        let s = &v.statement;
        s.check_time(now_ms())
            .map_err(|m| refused(id, format!("the statement {m}")))?;
        self.incidents.meta(id)?;
        if self.store.exists(&keys::nonce(id, &s.nonce))? {
            return Err(refused(
                id,
                "this signed statement was used already: sign a fresh one",
            ));
        }
        let (expected, version) = self.binding(id, s.action, s.step.as_deref())?;
        let given = Binding::from(s);
        if given != expected {
            return Err(refused(id, mismatch(&given, &expected)));
        }
        Ok(Proof {
            version,
            human: Owner::Human(Name::new(s.signer.as_str())?),
            signed: Signed {
                statement: decision.statement.clone(),
                signature: decision.signature.clone(),
                fingerprint: v.fingerprint.clone(),
            },
            nonce: s.nonce.clone(),
            fences: Vec::new(),
        })
    }

    /// What a statement for `action` on `step` must bind now, and the
    /// checkpoint version that was read at.
    fn binding(
        &self,
        id: &IncidentId,
        action: Action,
        step: Option<&str>,
    ) -> Result<(Binding, u64)> {
        let step_bound = matches!(
            action,
            Action::Approve | Action::Deny | Action::Resolve | Action::Retry | Action::Skip
        );
        let cp = self.incidents.checkpoint(id)?;
        let state = Some(Stance {
            status: self.incidents.status_of(id)?,
            owner: self.incidents.owner_of(id)?,
        });
        if !step_bound {
            let binding = Binding {
                state,
                step: None,
                attempt: None,
                module_sha256: None,
                subject_sha256: None,
            };
            return Ok((binding, cp.version));
        }
        let step = step.ok_or_else(|| refused(id, format!("`{action}` needs a step")))?;
        let attempt = match action {
            Action::Approve | Action::Deny => {
                self.awaiting(id, step, &cp)?;
                cp.attempt
            }
            _ => {
                let (cp, _) = self.settleable(id, step)?;
                self.settle_attempt(id, step, &cp)?
            }
        };
        let meta = self.incidents.meta(id)?;
        let (rb, tools) = self.incidents.runbook(&meta)?;
        let spec = rb
            .step(step)
            .ok_or_else(|| refused(id, format!("unknown step `{step}`")))?;
        let binding = Binding {
            state,
            step: Some(step.to_string()),
            attempt: Some(attempt),
            module_sha256: meta.modules.get(step).cloned(),
            subject_sha256: Some(subject_digest(&rb, &meta, spec, &tools)),
        };
        Ok((binding, cp.version))
    }

    /// Checks `step` awaits approval at checkpoint `cp`.
    pub(crate) fn awaiting(&self, id: &IncidentId, step: &str, cp: &Checkpoint) -> Result<()> {
        let status = self.incidents.status_of(id)?;
        if status != Status::AwaitingApproval || cp.step.as_deref() != Some(step) {
            return Err(refused(
                id,
                format!(
                    "step `{step}` is not awaiting approval (status {status}, current step {})",
                    cp.step.as_deref().unwrap_or("none")
                ),
            ));
        }
        Ok(())
    }

    /// The approvals and denials of an attempt that still count (release
    /// 0.1's single approval included).
    pub(crate) fn approvals(
        &self,
        id: &IncidentId,
        step: &str,
        attempt: u32,
    ) -> Result<Vec<(Key<Approval>, Approval)>> {
        let all = self
            .store
            .read_all(&keys::attempt_approvals(id, step, attempt))?;
        Ok(all
            .into_iter()
            .filter(|(_, a)| a.voided.is_none() && a.attempt == attempt && a.step == step)
            .collect())
    }
}

/// The write paths of humans' signed decisions on incidents: the statement
/// a human signs ([`Humans::statement`]), and the decision carried out
/// ([`Humans::decide`]). From [`Engine::humans`].
#[derive(Clone, Copy)]
pub struct Humans<'a> {
    pub(crate) engine: &'a Engine,
}

impl Engine {
    /// Humans' signed decisions on incidents ([`Humans`]).
    pub fn humans(&self) -> Humans<'_> {
        Humans { engine: self }
    }
}

impl Humans<'_> {
    /// The statement `req.signer` must sign for `req`, bound to the
    /// incident's current state.
    pub fn statement(&self, req: &Request<'_>) -> Result<Statement> {
        let id = parse_id(req.incident)?;
        let mut s = Statement::new(
            req.action,
            req.signer,
            req.ttl,
            &self.engine.deployment_id()?,
        )?;
        let (b, _) = self.engine.binding(&id, req.action, req.step)?;
        s.incident = Some(id.to_string());
        s.step = b.step;
        s.attempt = b.attempt;
        s.module_sha256 = b.module_sha256;
        s.subject_sha256 = b.subject_sha256;
        s.state = b.state;
        s.outcome = req.outcome.map(|o| o.to_string());
        Ok(s)
    }

    /// Verifies a signed decision against the data dir's allowed_signers and
    /// the incident as it stands, then carries it out. Nothing is written
    /// unless every check passes.
    pub fn decide(&self, decision: &Decision) -> Result<Action> {
        // The commit is fenced on the signers that verified the statement;
        // when a round finds them moved, the next verifies it again.
        let verify = || -> Result<(Verified, Vec<Fence>)> {
            let (signers, fences) = self.engine.incidents.signers_fenced()?;
            Ok((signers.verify(decision)?, fences))
        };
        let (verified, fences) = verify()?;
        let s = &verified.statement;
        if s.action == Action::ReleaseBrake {
            self.engine.fleet().release_brake(decision)?;
            return Ok(s.action);
        }
        let id = parse_id(s.incident.as_deref().ok_or_else(|| {
            TrustError::Statement(format!("a `{}` statement names no incident", s.action))
        })?)?;
        s.check_audience(&self.engine.deployment_id()?)
            .map_err(|m| refused(&id, m))?;
        let mut checked = Some((verified.clone(), fences));
        for _ in 0..MAX_DECISION_ROUNDS {
            let (verified, fences) = match checked.take() {
                Some(first) => first,
                None => verify()?,
            };
            let proof = self.engine.proof(&id, decision, &verified)?.fenced(fences);
            match self.engine.carry_out(&id, s, &proof) {
                Err(EngineError::Store(StoreError::Conflict { .. })) => continue,
                Err(EngineError::Store(StoreError::SharedConflict { key, .. }))
                    if key.starts_with(CONFIG) =>
                {
                    continue;
                }
                done => return done.map(|()| s.action),
            }
        }
        Err(refused(
            &id,
            format!(
                "the incident moved under the decision {MAX_DECISION_ROUNDS} times in a row: hand the same signed statement in again"
            ),
        ))
    }
}

/// Whether an approval still holds right before its step runs: a valid
/// signature by a human still in allowed_signers, not expired, made for
/// this deployment (v1 approvals, stored before deployments were bound,
/// name none), bound to this incident, step, attempt, module and subject.
pub(crate) fn approval_holds(
    (signers, deployment): (&runbox_trust::AllowedSigners, &str),
    id: &IncidentId,
    rb: &LoadedRunbook,
    meta: &IncidentMeta,
    spec: &StepSpec,
    tools: &ToolRegistry,
    approval: &Approval,
) -> Result<(), String> {
    let Some(signed) = &approval.signed else {
        return if meta.signed_decisions {
            Err("it carries no signature".into())
        } else {
            Ok(()) // recorded by release 0.1, before signatures
        };
    };
    let v = signers
        .verify(&Decision::from(signed))
        .map_err(|e| format!("its signature no longer verifies: {e}"))?;
    let s = &v.statement;
    s.check_time(now_ms())?;
    if !s.is_v1() {
        s.check_audience(deployment)?;
    }
    let expected = Binding {
        state: s.state.clone(),
        step: Some(spec.id.clone()),
        attempt: Some(approval.attempt),
        module_sha256: meta.modules.get(&spec.id).cloned(),
        subject_sha256: Some(subject_digest(rb, meta, spec, tools)),
    };
    let given = Binding::from(s);
    if s.incident.as_deref() != Some(id.as_str()) || s.action != Action::Approve {
        return Err("it is not an approval of this incident".into());
    }
    if given != expected {
        return Err(mismatch(&given, &expected));
    }
    Ok(())
}

/// sha256 of what an approval covers besides the module: the step's
/// resolved input, its grants, limits and impact, and every tool it may call.
pub(crate) fn subject_digest(
    rb: &LoadedRunbook,
    meta: &IncidentMeta,
    spec: &StepSpec,
    tools: &ToolRegistry,
) -> String {
    #[derive(Serialize)]
    struct Subject<'a> {
        input: serde_json::Value,
        grants: &'a runbox_core::policy::Grants,
        limits: &'a runbox_core::policy::Limits,
        impact: runbox_core::runbook::Impact,
        tools: Vec<(&'a str, Option<&'a runbox_core::tools::ToolSpec>)>,
    }
    let subject = Subject {
        input: rb.step_input(spec, &meta.params),
        grants: &spec.grants,
        limits: &spec.limits,
        impact: spec.impact,
        tools: spec
            .grants
            .tools
            .iter()
            .map(|t| (t.as_str(), tools.get(t)))
            .collect(),
    };
    let bytes = serde_json::to_vec(&subject).expect("a subject always serializes");
    hex::encode(Sha256::digest(bytes))
}

fn mismatch(given: &Binding, expected: &Binding) -> String {
    let show = |b: &Binding| {
        format!(
            "{}, step {}, attempt {}, module {}, subject {}",
            b.state.as_ref().map_or("-".into(), ToString::to_string),
            b.step.as_deref().unwrap_or("-"),
            b.attempt.map_or("-".into(), |a| a.to_string()),
            b.module_sha256.as_deref().map_or("-", short),
            b.subject_sha256.as_deref().map_or("-", short),
        )
    };
    format!(
        "the statement is bound to {}, but the incident now stands at {}: sign a fresh statement",
        show(given),
        show(expected)
    )
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

pub(crate) fn refused(id: &IncidentId, message: impl Into<String>) -> EngineError {
    EngineError::Refused {
        id: id.to_string(),
        message: message.into(),
    }
}

/// A loaded runbook's step, or a refusal naming it.
pub(crate) fn spec_of<'a>(
    id: &IncidentId,
    rb: &'a LoadedRunbook,
    step: &str,
) -> Result<&'a StepSpec> {
    rb.step(step)
        .ok_or_else(|| refused(id, format!("unknown step `{step}`")))
}
