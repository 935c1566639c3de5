//! What humans do: approve or deny, take over and hand back, and settle an
//! in-doubt or escalated step (resolve, retry, skip) with the override flag.
//! Each runs only with a [`Proof`]: a signed statement `decide` verified.

use runbox_core::event::EventKind;
use runbox_core::ident::{IncidentId, Name};
use runbox_core::records::{
    Approval, Checkpoint, IncidentMeta, Owner, RecordOutcome, Status, StepRecord, TimelineEvent,
};
use runbox_core::runbook::{LoadedRunbook, Next, StepSpec};
use runbox_core::time::now_ms;
use runbox_store::StoreExt;
use runbox_store::keys;

use crate::change::{Change, take_transition};
use crate::decision::{Proof, refused, spec_of};
use crate::{Engine, EngineError, Result};

impl Engine {
    /// Approves (or denies) the attempt of `step` that awaits approval, under
    /// the step's approval rules: who may approve, how many must, and never
    /// the agent that asked.
    pub(crate) fn approve_as(
        &self,
        id: &IncidentId,
        step: &str,
        proof: &Proof,
        approve: bool,
    ) -> Result<()> {
        let human = proof.human.to_string();
        let cp = proof.base(id, self.incidents.checkpoint(id)?)?;
        self.awaiting(id, step, &cp)?;
        let meta = self.incidents.meta(id)?;
        let (rb, _) = self.incidents.runbook(&meta)?;
        let spec = spec_of(id, &rb, step)?;
        let asked = self
            .incidents
            .last_event(id, |k| k == EventKind::ApprovalRequired)?;
        self.may_approve(id, spec, proof, asked.as_ref())?;
        let decided = self.approvals(id, step, cp.attempt)?;
        if decided.iter().any(|(_, a)| a.by == human) {
            return Err(refused(
                id,
                format!("{human} decided attempt {} of `{step}` already", cp.attempt),
            ));
        }
        let approval = Approval {
            step: step.into(),
            attempt: cp.attempt,
            by: human.clone(),
            at_ms: now_ms(),
            approved: approve,
            signed: Some(proof.signed()),
            voided: None,
        };
        let mut change = Change::default();
        let at = Some((step, cp.attempt));
        change.record(
            keys::approval(id, step, cp.attempt, proof.name()),
            &approval,
        );
        let mut opens = false;
        if approve {
            let count = decided.iter().filter(|(_, a)| a.approved).count() as u32 + 1;
            let of = spec.approvals;
            opens = count >= of;
            let more = if opens {
                change.status = Some(Status::Open);
                String::new()
            } else {
                format!("; {} more approval(s) needed", of - count)
            };
            change.event(
                &human,
                EventKind::Approved,
                at,
                format!(
                    "{human} approved attempt {} of `{step}` ({count} of {of}){more}",
                    cp.attempt
                ),
            );
        } else {
            let reason = format!(
                "{human} denied attempt {} of `{step}`; the incident is theirs",
                cp.attempt
            );
            change.event(&human, EventKind::Denied, at, reason.clone());
            change.event(&human, EventKind::Escalated, at, reason);
            change.status = Some(Status::Escalated);
            change.owner = Some(proof.human.clone());
        }
        proof.seal(id, &mut change);
        self.apply(id, &cp, change)?;
        // The approval that lets the step run ends its wait.
        if let Some(asked) = asked.filter(|_| opens) {
            let waited = approval.at_ms.saturating_sub(asked.at_ms) as f64 / 1000.0;
            runbox_telemetry::approval_waited(&meta.runbook_name, waited);
        }
        Ok(())
    }

    /// The step's approval rules: named approvers only, and no human who
    /// owns or asked for the attempt (`asked`, the request's event) as an
    /// agent.
    fn may_approve(
        &self,
        id: &IncidentId,
        spec: &StepSpec,
        proof: &Proof,
        asked: Option<&TimelineEvent>,
    ) -> Result<()> {
        let name = proof.name();
        if !spec.approvers.is_empty() && !spec.approvers.iter().any(|a| a == name) {
            return Err(refused(
                id,
                format!(
                    "only {} may approve `{}`, not {name}",
                    spec.approvers.join(", "),
                    spec.id
                ),
            ));
        }
        let as_agent = format!("agent:{name}");
        let requested_by = asked.map(|e| e.actor.as_str());
        if self.incidents.owner_of(id)?.to_string() == as_agent
            || requested_by == Some(as_agent.as_str())
        {
            return Err(refused(
                id,
                format!(
                    "{name} owns or asked for this attempt as {as_agent}, so cannot approve it"
                ),
            ));
        }
        Ok(())
    }

    /// A human takes the incident: the agent stops executing steps.
    pub(crate) fn takeover_as(&self, id: &IncidentId, proof: &Proof) -> Result<()> {
        let human = proof.human.clone();
        let cp = proof.base(id, self.incidents.checkpoint(id)?)?;
        let owner = self.incidents.owner_of(id)?;
        if self.incidents.status_of(id)?.is_terminal() {
            return Err(refused(id, "the incident is over"));
        }
        if owner == human {
            return Err(refused(id, format!("{human} owns it already")));
        }
        let mut change = Change::default();
        change.event(
            &human.to_string(),
            EventKind::Takeover,
            None,
            format!("{human} took over from {owner}"),
        );
        change.owner = Some(human);
        proof.seal(id, &mut change);
        self.apply(id, &cp, change)?;
        Ok(())
    }

    /// Hands the incident back to the agent from the current checkpoint.
    pub(crate) fn handback_as(
        &self,
        id: &IncidentId,
        proof: &Proof,
        agent: Option<&str>,
    ) -> Result<()> {
        let human = proof.human.clone();
        let cp = proof.base(id, self.incidents.checkpoint(id)?)?;
        let status = self.incidents.status_of(id)?;
        if self.incidents.owner_of(id)?.is_agent() {
            return Err(refused(id, "an agent owns it already"));
        }
        if status.is_terminal() {
            return Err(refused(id, "the incident is over"));
        }
        if let Some(f) = &cp.in_flight {
            return Err(refused(
                id,
                format!(
                    "attempt {} of `{}` is in doubt: settle it first (`runbox resolve|retry|skip {id} --step {} --as NAME --key KEY`)",
                    f.attempt, f.step, f.step
                ),
            ));
        }
        if status == Status::Escalated {
            let step = cp.step.as_deref().unwrap_or("?");
            return Err(refused(
                id,
                format!(
                    "it is escalated at `{step}`: settle the step first (`runbox resolve|retry|skip {id} --step {step} --as NAME --key KEY`)"
                ),
            ));
        }
        let agent = Owner::Agent(
            Name::new(agent.unwrap_or("runbox")).map_err(EngineError::invalid("agent name"))?,
        );
        let mut change = Change::default();
        change.event(
            &human.to_string(),
            EventKind::Handback,
            None,
            format!(
                "{human} handed back to {agent} at step `{}`",
                cp.step.as_deref().unwrap_or("none")
            ),
        );
        change.owner = Some(agent);
        proof.seal(id, &mut change);
        self.apply(id, &cp, change)?;
        Ok(())
    }

    /// Checks that `step` is the one a human may settle now.
    pub(crate) fn settleable(&self, id: &IncidentId, step: &str) -> Result<(Checkpoint, Status)> {
        let cp = self.incidents.checkpoint(id)?;
        let status = self.incidents.status_of(id)?;
        if cp.step.as_deref() != Some(step) {
            return Err(refused(
                id,
                format!(
                    "`{step}` is not the current step (`{}`)",
                    cp.step.as_deref().unwrap_or("none")
                ),
            ));
        }
        if cp.in_flight.is_none() && !matches!(status, Status::Escalated | Status::Failed) {
            return Err(refused(
                id,
                format!(
                    "`{step}` is neither in doubt nor escalated (status {status}); nothing to settle"
                ),
            ));
        }
        Ok((cp, status))
    }

    /// The attempt number a human decision is recorded under: the in-doubt
    /// attempt itself, or a fresh one after a committed attempt.
    pub(crate) fn settle_attempt(
        &self,
        id: &IncidentId,
        step: &str,
        cp: &Checkpoint,
    ) -> Result<u32> {
        if let Some(f) = &cp.in_flight {
            return Ok(f.attempt);
        }
        let committed = self
            .store
            .read(&keys::step(id, step, cp.attempt))?
            .is_some();
        Ok(if committed {
            cp.attempt + 1
        } else {
            cp.attempt
        })
    }

    /// The step a human settles, with the incident's meta and runbook.
    fn settle_target(
        &self,
        id: &IncidentId,
        step: &str,
    ) -> Result<(IncidentMeta, LoadedRunbook, StepSpec)> {
        let meta = self.incidents.meta(id)?;
        let (rb, _) = self.incidents.runbook(&meta)?;
        let spec = rb
            .step(step)
            .cloned()
            .ok_or_else(|| refused(id, format!("unknown step `{step}`")))?;
        Ok((meta, rb, spec))
    }

    fn human_record(
        meta: &IncidentMeta,
        spec: &StepSpec,
        attempt: u32,
        outcome: RecordOutcome,
        proof: &Proof,
        note: String,
    ) -> StepRecord {
        let now = now_ms();
        let human = &proof.human;
        StepRecord {
            reason: Some(note),
            human_override: true,
            module_sha256: meta.modules.get(&spec.id).cloned(),
            decisions: vec![proof.signed()],
            ..StepRecord::new(
                spec.id.clone(),
                spec.action(),
                attempt,
                outcome,
                human.to_string(),
                now,
            )
        }
    }

    /// Records a human's outcome for the step and follows its transition.
    pub(crate) fn settle_as(
        &self,
        id: &IncidentId,
        step: &str,
        proof: &Proof,
        outcome: RecordOutcome,
    ) -> Result<()> {
        let human = proof.human.clone();
        let (cp, _) = self.settleable(id, step)?;
        let cp = proof.base(id, cp)?;
        let (meta, rb, spec) = self.settle_target(id, step)?;
        let attempt = self.settle_attempt(id, step, &cp)?;
        let (kind, note) = match outcome {
            RecordOutcome::Skipped => (EventKind::HumanSkip, format!("skipped by {human}")),
            o => (
                EventKind::HumanResolve,
                format!("outcome {} stated by {human}", o.as_str()),
            ),
        };
        let record = Self::human_record(&meta, &spec, attempt, outcome, proof, note.clone());
        let next = match outcome {
            RecordOutcome::Ok | RecordOutcome::Skipped => rb.next_after_ok(&spec, None),
            RecordOutcome::Fail => rb.next_after_fail(&spec),
            RecordOutcome::Escalate => Next::Escalate,
            RecordOutcome::Retry | RecordOutcome::InDoubt => Next::Step(step.to_string()),
        };
        let mut change = Change::default();
        let at = Some((step, attempt));
        change.record(keys::step(id, step, attempt), &record);
        change.event(
            &human.to_string(),
            kind,
            at,
            format!("{human} settled attempt {attempt} of `{step}`: {note}"),
        );
        let base = Checkpoint {
            in_flight: None,
            attempt,
            not_before_ms: None,
            ..cp.clone()
        };
        take_transition(&mut change, &human.to_string(), at, &base, next, &note);
        if change.status == Some(Status::Escalated) {
            change.owner = Some(human);
        }
        proof.seal(id, &mut change);
        self.apply(id, &cp, change)?;
        Ok(())
    }

    /// A human asks for a fresh attempt of an in-doubt or escalated step.
    pub(crate) fn retry_as(&self, id: &IncidentId, step: &str, proof: &Proof) -> Result<()> {
        let human = proof.human.clone();
        let (cp, _) = self.settleable(id, step)?;
        let cp = proof.base(id, cp)?;
        let attempt = self.settle_attempt(id, step, &cp)?;
        let mut change = Change::default();
        if cp.in_flight.is_some() {
            let (meta, _, spec) = self.settle_target(id, step)?;
            let note = format!("in doubt; {human} chose to retry");
            let record =
                Self::human_record(&meta, &spec, attempt, RecordOutcome::InDoubt, proof, note);
            change.record(keys::step(id, step, attempt), &record);
        }
        let next_attempt = if cp.in_flight.is_some() {
            attempt + 1
        } else {
            attempt.max(cp.attempt + 1)
        };
        change.event(
            &human.to_string(),
            EventKind::HumanRetry,
            Some((step, next_attempt)),
            format!("{human} asked for attempt {next_attempt} of `{step}`"),
        );
        change.checkpoint = Some(Checkpoint {
            in_flight: None,
            attempt: next_attempt,
            not_before_ms: None,
            ..cp.clone()
        });
        change.status = Some(Status::Open);
        proof.seal(id, &mut change);
        self.apply(id, &cp, change)?;
        Ok(())
    }
}
