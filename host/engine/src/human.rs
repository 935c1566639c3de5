//! What humans do: approve or deny, take over and hand back, and settle an
//! in-doubt or escalated step (resolve, retry, skip) with the override flag.

use runbox_core::attempt::Outcome;
use runbox_core::event::EventKind;
use runbox_core::ident::{IncidentId, Name};
use runbox_core::keys;
use runbox_core::records::{
    Approval, Checkpoint, IncidentMeta, Owner, RecordOutcome, Status, StepRecord,
};
use runbox_core::runbook::{LoadedRunbook, Next, StepSpec};
use runbox_core::time::now_ms;
use runbox_store::StoreExt;

use crate::change::{Change, follow};
use crate::query::parse_id;
use crate::{Engine, EngineError, Result};

impl Engine {
    fn human(&self, name: &str) -> Result<Owner> {
        Ok(Owner::Human(
            Name::new(name).map_err(EngineError::invalid("human name"))?,
        ))
    }

    fn refused(id: &IncidentId, message: impl Into<String>) -> EngineError {
        EngineError::Refused {
            id: id.to_string(),
            message: message.into(),
        }
    }

    /// Approves (or denies) the attempt of `step` that awaits approval.
    pub fn approve(&self, id: &str, step: &str, actor: &str, approve: bool) -> Result<()> {
        let id = &parse_id(id)?;
        let human = self.human(actor)?.to_string();
        let cp = self.checkpoint(id)?;
        let status = self.status_of(id)?;
        if status != Status::AwaitingApproval || cp.step.as_deref() != Some(step) {
            return Err(Self::refused(
                id,
                format!(
                    "step `{step}` is not awaiting approval (status {status}, current step {})",
                    cp.step.as_deref().unwrap_or("none")
                ),
            ));
        }
        if self
            .store
            .get_json::<Approval>(&keys::approval(id, step, cp.attempt))?
            .is_some()
        {
            return Err(Self::refused(
                id,
                format!("attempt {} of `{step}` was already decided", cp.attempt),
            ));
        }
        let approval = Approval {
            step: step.into(),
            attempt: cp.attempt,
            by: human.clone(),
            at_ms: now_ms(),
            approved: approve,
        };
        let mut change = Change::default();
        let at = Some((step, cp.attempt));
        change.record(keys::approval(id, step, cp.attempt), &approval);
        if approve {
            change.event(
                &human,
                EventKind::Approved,
                at,
                format!("{human} approved attempt {} of `{step}`", cp.attempt),
            );
            change.status = Some(Status::Open);
        } else {
            let reason = format!(
                "{human} denied attempt {} of `{step}`; the incident is theirs",
                cp.attempt
            );
            change.event(&human, EventKind::Denied, at, reason.clone());
            change.event(&human, EventKind::Escalated, at, reason);
            change.status = Some(Status::Escalated);
            change.owner = Some(self.human(actor)?);
        }
        self.apply(id, &cp, change)?;
        Ok(())
    }

    /// A human takes the incident: the agent stops executing steps.
    pub fn takeover(&self, id: &str, actor: &str) -> Result<()> {
        let id = &parse_id(id)?;
        let human = self.human(actor)?;
        let cp = self.checkpoint(id)?;
        let owner = self.owner_of(id)?;
        if self.status_of(id)?.is_terminal() {
            return Err(Self::refused(id, "the incident is over"));
        }
        if owner == human {
            return Err(Self::refused(id, format!("{human} owns it already")));
        }
        let mut change = Change::default();
        change.event(
            &human.to_string(),
            EventKind::Takeover,
            None,
            format!("{human} took over from {owner}"),
        );
        change.owner = Some(human);
        self.apply(id, &cp, change)?;
        Ok(())
    }

    /// Hands the incident back to the agent from the current checkpoint.
    pub fn handback(&self, id: &str, actor: &str, agent: Option<&str>) -> Result<()> {
        let id = &parse_id(id)?;
        let human = self.human(actor)?;
        let cp = self.checkpoint(id)?;
        let status = self.status_of(id)?;
        if self.owner_of(id)?.is_agent() {
            return Err(Self::refused(id, "an agent owns it already"));
        }
        if status.is_terminal() {
            return Err(Self::refused(id, "the incident is over"));
        }
        if let Some(f) = &cp.in_flight {
            return Err(Self::refused(
                id,
                format!(
                    "attempt {} of `{}` is in doubt: settle it first (`runbox resolve|retry|skip {id} --step {} --as NAME`)",
                    f.attempt, f.step, f.step
                ),
            ));
        }
        if status == Status::Escalated {
            let step = cp.step.as_deref().unwrap_or("?");
            return Err(Self::refused(
                id,
                format!(
                    "it is escalated at `{step}`: settle the step first (`runbox resolve|retry|skip {id} --step {step} --as NAME`)"
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
        self.apply(id, &cp, change)?;
        Ok(())
    }

    /// Checks that `step` is the one a human may settle now.
    fn settleable(&self, id: &IncidentId, step: &str) -> Result<(Checkpoint, Status)> {
        let cp = self.checkpoint(id)?;
        let status = self.status_of(id)?;
        if cp.step.as_deref() != Some(step) {
            return Err(Self::refused(
                id,
                format!(
                    "`{step}` is not the current step (`{}`)",
                    cp.step.as_deref().unwrap_or("none")
                ),
            ));
        }
        if cp.in_flight.is_none() && !matches!(status, Status::Escalated | Status::Failed) {
            return Err(Self::refused(
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
    fn settle_attempt(&self, id: &IncidentId, step: &str, cp: &Checkpoint) -> Result<u32> {
        if let Some(f) = &cp.in_flight {
            return Ok(f.attempt);
        }
        let committed = self
            .store
            .get_json::<StepRecord>(&keys::step(id, step, cp.attempt))?
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
        let meta = self.meta(id)?;
        let (rb, _) = self.runbook(&meta)?;
        let spec = rb
            .step(step)
            .cloned()
            .ok_or_else(|| Self::refused(id, format!("unknown step `{step}`")))?;
        Ok((meta, rb, spec))
    }

    fn human_record(
        meta: &IncidentMeta,
        spec: &StepSpec,
        attempt: u32,
        outcome: RecordOutcome,
        human: &Owner,
        note: String,
    ) -> StepRecord {
        let now = now_ms();
        StepRecord {
            reason: Some(note),
            human_override: true,
            module_sha256: meta.modules.get(&spec.id).cloned(),
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

    /// A human states the outcome of an in-doubt or escalated step; the
    /// runbook's transition for that outcome follows.
    pub fn resolve_step(&self, id: &str, step: &str, outcome: Outcome, actor: &str) -> Result<()> {
        self.settle(&parse_id(id)?, step, actor, outcome.into())
    }

    /// A human skips an in-doubt or escalated step; the runbook goes on as
    /// after `ok`.
    pub fn skip_step(&self, id: &str, step: &str, actor: &str) -> Result<()> {
        self.settle(&parse_id(id)?, step, actor, RecordOutcome::Skipped)
    }

    /// Records a human's outcome for the step and follows its transition.
    fn settle(
        &self,
        id: &IncidentId,
        step: &str,
        actor: &str,
        outcome: RecordOutcome,
    ) -> Result<()> {
        let human = self.human(actor)?;
        let (cp, _) = self.settleable(id, step)?;
        let (meta, rb, spec) = self.settle_target(id, step)?;
        let attempt = self.settle_attempt(id, step, &cp)?;
        let (kind, note) = match outcome {
            RecordOutcome::Skipped => (EventKind::HumanSkip, format!("skipped by {human}")),
            o => (
                EventKind::HumanResolve,
                format!("outcome {} stated by {human}", o.as_str()),
            ),
        };
        let record = Self::human_record(&meta, &spec, attempt, outcome, &human, note.clone());
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
        follow(&mut change, &human.to_string(), at, &base, next, &note);
        if change.status == Some(Status::Escalated) {
            change.owner = Some(human);
        }
        self.apply(id, &cp, change)?;
        Ok(())
    }

    /// A human asks for a fresh attempt of an in-doubt or escalated step.
    pub fn retry_step(&self, id: &str, step: &str, actor: &str) -> Result<()> {
        let id = &parse_id(id)?;
        let human = self.human(actor)?;
        let (cp, _) = self.settleable(id, step)?;
        let attempt = self.settle_attempt(id, step, &cp)?;
        let mut change = Change::default();
        if cp.in_flight.is_some() {
            let (meta, _, spec) = self.settle_target(id, step)?;
            let note = format!("in doubt; {human} chose to retry");
            let record =
                Self::human_record(&meta, &spec, attempt, RecordOutcome::InDoubt, &human, note);
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
        self.apply(id, &cp, change)?;
        Ok(())
    }
}
