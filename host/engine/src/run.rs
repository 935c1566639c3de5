//! The `run` loop: gates, one attempt, the commit, the transition, and the
//! in-doubt handling after a crash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runbox_core::attempt::{ErrorCategory, Outcome, StepError};
use runbox_core::event::EventKind;
use runbox_core::ident::{IncidentId, Name};
use runbox_core::limits::{BrakeScope, SHARED_KV, Subject, shared_kv_key};
use runbox_core::records::{
    Approval, Checkpoint, InFlight, IncidentMeta, LastDestructive, Owner, RecordOutcome, Signed,
    Status, StepRecord,
};
use runbox_core::runbook::{Impact, LoadedRunbook, Precondition, StepSpec, substitute};
use runbox_core::time::{format_ms, now_ms};
use runbox_core::tools::ToolRegistry;
use runbox_incidents::config::Fence;
use runbox_sandbox::{Capabilities, MutationGuard, PreparedStep, StepReport, Tape};
use runbox_store::keys;
use runbox_store::{Claim, StoreError, StoreExt};
use tracing::{Instrument, info_span};

use crate::change::{At, Change, escalation, take_transition};
use crate::fleet;
use crate::gate::{self, Cooldown, FleetHold, Token, Verdict};
use crate::guard::{AttemptGuard, GuardNotes};
use crate::kv::IncidentKv;
use crate::lock;
use crate::{Engine, EngineError, Progress, Result, RunExit, RunOptions, blocking};
use runbox_incidents::{Standing, parse_id};

impl Engine {
    /// The incidents an agent may run now.
    pub(crate) fn runnable(&self) -> Result<Vec<String>> {
        Ok(self
            .incidents
            .list()?
            .into_iter()
            .filter(|s| {
                !s.status.is_terminal() && s.status != Status::Escalated && s.owner.is_agent()
            })
            .map(|s| s.id.to_string())
            .collect())
    }

    async fn run_locked(&self, id: &IncidentId, opts: &RunOptions) -> Result<RunExit> {
        let meta = self.incidents.meta(id)?;
        let (rb, tools) = self.incidents.runbook(&meta)?;
        let agent_name = Name::new(opts.agent.as_deref().unwrap_or("runbox"))
            .map_err(EngineError::invalid("agent name"))?;
        let agent = Owner::Agent(agent_name).to_string();
        let dry_run = self.dry_run_mode(id, opts.dry_run, &agent)?;
        let token = match &opts.token {
            // Nothing mutates in a dry run: its mutating calls are intercepted.
            _ if dry_run => Token::Valid,
            Some(t) if self.token_valid(t)? => Token::Valid,
            Some(_) => Token::Invalid,
            None => Token::Absent,
        };
        // Where the incident stood right after the last attempt's commit,
        // read in that commit (on etcd, in its transaction).
        let mut carried: Option<Standing> = None;
        loop {
            // Otherwise one read for the loop's inputs (one etcd round
            // trip), off this worker's other tasks.
            let standing = match carried.take() {
                Some(standing) => standing,
                None => blocking::in_place(|| self.incidents.standing(id))?,
            };
            let (cp, status, owner) = (standing.checkpoint, standing.status, standing.owner);
            if let Some(exit) = self.settled_exit(id, status, &owner, &cp)? {
                return Ok(exit);
            }
            let Some(step_id) = cp.step.clone() else {
                return Ok(RunExit::Resolved);
            };
            let step = rb.step(&step_id).ok_or_else(|| EngineError::Refused {
                id: id.to_string(),
                message: format!(
                    "checkpoint names step `{step_id}`, which the runbook does not have"
                ),
            })?;
            if cp.in_flight.is_some() {
                if let Some(exit) = self.handle_in_doubt(id, &cp, step, &agent)? {
                    return Ok(exit);
                }
                continue;
            }
            // Limits only ever hold mutating steps: no file read for the rest.
            let (limits, limits_fence) = if !tools.modes(&step.grants).mutate {
                (Vec::new(), None)
            } else {
                self.limits_for(&rb)?
            };
            let mut fences: Vec<Fence> = limits_fence.into_iter().collect();
            let ctx = AttemptCtx {
                id,
                meta: &meta,
                rb: &rb,
                tools: &tools,
                agent: &agent,
                progress: opts.progress.clone(),
                dry_run,
                limits: &limits,
                fences: Vec::new(),
                recorded_bytes: standing.recorded_bytes,
            };
            if step.impact == Impact::High {
                let (voided, signers_fences) = self.void_stale_approvals(&ctx, step, &cp)?;
                if voided {
                    continue;
                }
                fences.extend(signers_fences);
            }
            let ctx = AttemptCtx { fences, ..ctx };
            let gate_span = info_span!(
                "gate",
                step = %step.id,
                attempt = cp.attempt,
                next = tracing::field::Empty,
            );
            let (inputs, prepared, next) = gate_span.in_scope(|| -> Result<_> {
                let (inputs, prepared) = self.gate_inputs(&ctx, step, &cp, status, opts, token)?;
                let verdict = gate::verdict(&inputs.view(id, step, &cp));
                let next = self.apply_verdict(&ctx, step, &cp, verdict)?;
                tracing::Span::current().record("next", next.name());
                Ok((inputs, prepared, next))
            })?;
            match next {
                Next::Attempt { approved_by } => {
                    // The module gate passed only because the module was prepared.
                    let Some(prepared) = prepared else {
                        return Err(EngineError::Internal {
                            what: "gate",
                            message: format!(
                                "incident `{id}`: step `{step_id}` passed its gates unprepared"
                            ),
                        });
                    };
                    let turn =
                        self.attempts
                            .acquire()
                            .await
                            .map_err(|e| EngineError::Internal {
                                what: "attempt queue",
                                message: format!("incident `{id}`: no turn to run an attempt: {e}"),
                            })?;
                    let decisions = inputs.decisions.clone();
                    let (exit, standing) = self
                        .attempt(&ctx, step, &cp, &prepared, approved_by, decisions)
                        .await?;
                    drop(turn);
                    carried = Some(standing);
                    if let Some(exit) = exit {
                        return Ok(exit);
                    }
                    if opts.one_step {
                        return Ok(RunExit::Stepped {
                            step: step_id,
                            attempt: cp.attempt,
                        });
                    }
                }
                Next::Wait { until_ms, reason } => {
                    if opts.no_wait {
                        return Ok(RunExit::Waiting { until_ms, reason });
                    }
                    wait_until(until_ms, &reason, id, opts).await;
                }
                Next::Exit(exit) => return Ok(exit),
            }
        }
    }

    /// The exit for an incident the agent cannot act on now, if any.
    fn settled_exit(
        &self,
        id: &IncidentId,
        status: Status,
        owner: &Owner,
        cp: &Checkpoint,
    ) -> Result<Option<RunExit>> {
        let last_reason = |kinds: &[EventKind]| -> Result<String> {
            Ok(self
                .incidents
                .last_event(id, |k| kinds.contains(&k))?
                .map(|e| e.message)
                .unwrap_or_default())
        };
        Ok(match status {
            Status::Resolved => Some(RunExit::Resolved),
            Status::Failed => Some(RunExit::Failed {
                reason: last_reason(&[EventKind::Failed])?,
            }),
            Status::Escalated => Some(RunExit::Escalated {
                reason: last_reason(&[
                    EventKind::Escalated,
                    EventKind::InDoubt,
                    EventKind::Denied,
                ])?,
            }),
            _ if !owner.is_agent() => Some(RunExit::HumanOwner {
                owner: owner.to_string(),
            }),
            _ if cp.step.is_none() => Some(RunExit::Resolved),
            _ => None,
        })
    }

    /// An attempt that started a mutation and never committed.
    fn handle_in_doubt(
        &self,
        id: &IncidentId,
        cp: &Checkpoint,
        step: &StepSpec,
        agent: &str,
    ) -> Result<Option<RunExit>> {
        let flight = cp.in_flight.clone().expect("caller checked in_flight");
        let at = Some((flight.step.as_str(), flight.attempt));
        let mut change = Change::default();
        if step.idempotent {
            let record = in_doubt_record(
                step,
                &flight,
                agent,
                "in doubt after a crash; retried because the step is idempotent",
            );
            change.record(keys::step(id, &flight.step, flight.attempt), &record);
            change.event(agent, EventKind::InDoubt, at, format!(
                "attempt {} of `{}` started a mutation (`{}`) and never committed; the step is idempotent, so it runs again",
                flight.attempt, flight.step, flight.tool
            ));
            change.checkpoint = Some(Checkpoint {
                in_flight: None,
                attempt: flight.attempt + 1,
                not_before_ms: None,
                ..cp.clone()
            });
            change.status = Some(Status::Open);
            self.apply(id, cp, change)?;
            return Ok(None);
        }
        let reason = format!(
            "attempt {} of `{}` started mutating tool `{}` at {} and never committed: its outcome is unknown and the step is not idempotent. A human must settle it: `runbox resolve|retry|skip {id} --step {} --as NAME --key KEY`",
            flight.attempt,
            flight.step,
            flight.tool,
            format_ms(flight.started_at_ms),
            flight.step
        );
        change.event(agent, EventKind::InDoubt, at, reason.clone());
        let exit = escalation(&mut change, agent, at, reason);
        self.apply(id, cp, change)?;
        Ok(Some(exit))
    }

    /// Gathers what the gates look at, preparing the module on the way
    /// with the capabilities this run may link.
    fn gate_inputs(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        status: Status,
        opts: &RunOptions,
        token: Token,
    ) -> Result<(Gathered, Option<PreparedStep>)> {
        let id = ctx.id;
        let caps = Capabilities {
            allow_mutate: token == Token::Valid,
            read_only: opts.read_only,
        };
        let mutates = ctx.tools.modes(&step.grants).mutate;
        let recorded = ctx.meta.modules.get(&step.id).map(String::as_str);
        let (prepared, module_refused) =
            match self.step_module(ctx.rb, step, ctx.tools, recorded, caps) {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e.to_string())),
            };
        let (approval, decisions) = if step.impact == Impact::High {
            self.approval_state(id, step, cp.attempt)?
        } else {
            (None, Vec::new())
        };
        let cooldown = if mutates && step.cooldown_ms > 0 {
            self.cooldown(id, step, cp)?
        } else {
            None
        };
        let fleet = if mutates {
            let tools = ctx.tools.mutating(&step.grants);
            let subject = Subject {
                runbook: &ctx.rb.runbook.runbook.name,
                step: &step.id,
                tools: &tools,
                params: &ctx.meta.params,
            };
            self.fleet_hold(id, &subject, ctx.limits, cp)?
        } else {
            None
        };
        let gathered = Gathered {
            read_only: opts.read_only,
            mutates,
            writes_kv: !step.grants.kv_write.is_empty(),
            token,
            module_refused,
            failed_precondition: self.failed_precondition(id, ctx.meta, step)?,
            approval,
            decisions,
            awaiting_approval: status == Status::AwaitingApproval,
            fleet,
            cooldown,
        };
        Ok((gathered, prepared))
    }

    /// Whether this run is a dry run. The first dry run of an incident with
    /// no step record yet makes it a dry-run incident for good; a dry-run
    /// incident never runs live, and a live one never runs dry.
    fn dry_run_mode(&self, id: &IncidentId, asked: bool, agent: &str) -> Result<bool> {
        let marked = self.store.exists(&keys::dry_run(id))?;
        match (marked, asked) {
            (true, true) | (false, false) => Ok(marked),
            (true, false) => Err(EngineError::Refused {
                id: id.to_string(),
                message: "this is a dry-run incident: it runs only with --dry-run, and never live (open a new incident to act)".into(),
            }),
            (false, true) => {
                let cp = self.incidents.checkpoint(id)?;
                // One record is enough to know it ran live: no need to read them all.
                if !self.store.read_page_encoded(&keys::steps(id), None, 1)?.is_empty() {
                    return Err(EngineError::Refused {
                        id: id.to_string(),
                        message: "steps of this incident ran live already: a dry run needs an incident of its own".into(),
                    });
                }
                let mut change = Change::default();
                change.record(keys::dry_run(id), &true);
                change.event(
                    agent,
                    EventKind::DryRun,
                    None,
                    "dry run: every mutating tool call is intercepted and recorded, never run; this incident never runs live",
                );
                self.apply(id, &cp, change)?;
                Ok(true)
            }
        }
    }

    /// A tape recording what the next attempt sees, within the per-attempt
    /// limit and what is left of the incident's after the `used` bytes
    /// recorded so far.
    fn recording_tape(&self, used: u64, input: &serde_json::Value) -> Tape {
        let left = self.recording.per_incident.saturating_sub(used);
        let limit = self.recording.per_attempt.min(left);
        let tape = Tape::record(input, limit);
        match &self.tool_script {
            Some(script) => tape.with_script(script.clone()),
            None => tape,
        }
    }

    /// The approval gate's view of an attempt's decisions: a denial, or
    /// enough approvals (with their signed statements), or nothing yet.
    fn approval_state(
        &self,
        id: &IncidentId,
        step: &StepSpec,
        attempt: u32,
    ) -> Result<(Option<Approval>, Vec<Signed>)> {
        let decided = self.approvals(id, &step.id, attempt)?;
        if let Some((_, denial)) = decided.iter().find(|(_, a)| !a.approved) {
            return Ok((Some(denial.clone()), Vec::new()));
        }
        let approved: Vec<&Approval> = decided.iter().map(|(_, a)| a).collect();
        if approved.is_empty() || (approved.len() as u32) < step.approvals {
            return Ok((None, Vec::new()));
        }
        let by: Vec<&str> = approved.iter().map(|a| a.by.as_str()).collect();
        let approval = Approval {
            by: by.join(", "),
            ..approved[0].clone()
        };
        let signed = approved.iter().filter_map(|a| a.signed.clone()).collect();
        Ok((Some(approval), signed))
    }

    /// Right before a high-impact step runs, re-checks each approval of the
    /// attempt (signature, signer still listed, expiry, binding); voids the
    /// ones that no longer hold, in the timeline, and reports whether it did.
    fn void_stale_approvals(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
    ) -> Result<(bool, Vec<Fence>)> {
        let id = ctx.id;
        let at = Some((step.id.as_str(), cp.attempt));
        let mut change = Change::default();
        let approvals = self.approvals(id, &step.id, cp.attempt)?;
        if approvals.is_empty() {
            return Ok((false, Vec::new()));
        }
        // A signer file that cannot be read is the host's problem: it stops
        // the run with its file and line, and voids nothing. The fleet's
        // signers, when in the store, are fenced: the step's guard commits
        // only while they are the ones its approvals were checked against.
        let (signers, fences) = self.incidents.signers_fenced()?;
        let deployment = self.deployment_id()?;
        for (key, mut approval) in approvals {
            if !approval.approved {
                continue;
            }
            if let Err(why) = crate::decision::approval_holds(
                (&signers, &deployment),
                id,
                ctx.rb,
                ctx.meta,
                step,
                ctx.tools,
                &approval,
            ) {
                change.event(
                    ctx.agent,
                    EventKind::ApprovalVoided,
                    at,
                    format!(
                        "the approval of attempt {} of `{}` by {} no longer counts: {why}; the step waits for a new approval",
                        cp.attempt, step.id, approval.by
                    ),
                );
                approval.voided = Some(why);
                change.record(key, &approval);
            }
        }
        if change.events.is_empty() {
            return Ok((false, fences));
        }
        change.status = Some(Status::AwaitingApproval);
        self.apply(id, cp, change)?;
        Ok((true, fences))
    }

    /// The cooldown a destructive step is under, if the last destructive
    /// step committed; whether the timeline already says so.
    fn cooldown(
        &self,
        id: &IncidentId,
        step: &StepSpec,
        cp: &Checkpoint,
    ) -> Result<Option<Cooldown>> {
        let Some(last) = self.store.read(&keys::last_destructive(id))? else {
            return Ok(None);
        };
        Ok(Some(Cooldown {
            until_ms: last.cooldown_until(step.cooldown_ms),
            last_step: last.step,
            last_at_ms: last.at_ms,
            recorded: self.last_event_is(id, cp, EventKind::Cooldown, &step.id)?,
        }))
    }

    /// Records what a gate decided and says what the loop does next.
    fn apply_verdict(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        verdict: Verdict,
    ) -> Result<Next> {
        let at = Some((step.id.as_str(), cp.attempt));
        let mut change = Change::default();
        let next = match verdict {
            Verdict::Go { approved_by } => return Ok(Next::Attempt { approved_by }),
            Verdict::Block { reason } => {
                change.event(ctx.agent, EventKind::Blocked, at, reason.clone());
                Next::Exit(RunExit::Blocked { reason })
            }
            Verdict::Escalate { reason } => {
                Next::Exit(escalation(&mut change, ctx.agent, at, reason))
            }
            Verdict::RequestApproval { record, message } => {
                if record {
                    change.status = Some(Status::AwaitingApproval);
                    change.event(ctx.agent, EventKind::ApprovalRequired, at, message);
                }
                Next::Exit(RunExit::AwaitingApproval {
                    step: step.id.clone(),
                    attempt: cp.attempt,
                })
            }
            Verdict::Denied { reason } => Next::Exit(RunExit::Escalated { reason }),
            Verdict::Wait {
                until_ms,
                reason,
                record,
            } => {
                if let Some((kind, message)) = record {
                    change.event(ctx.agent, kind, at, message);
                }
                Next::Wait { until_ms, reason }
            }
            Verdict::Braked { scope, reason } => {
                Next::Exit(braked(&mut change, ctx, at, &scope, false, reason))
            }
            Verdict::TripBrake { scope, reason } => {
                let parsed: BrakeScope = scope.parse()?;
                let brake = fleet::trip(&*self.store, &parsed, &reason, ctx.agent, Some(ctx.id))?;
                let reason = format!("{reason}; {}", brake.describe());
                Next::Exit(braked(&mut change, ctx, at, &brake.scope, true, reason))
            }
        };
        if !change.events.is_empty() || change.status.is_some() {
            self.apply(ctx.id, cp, change)?;
        }
        Ok(next)
    }

    fn failed_precondition(
        &self,
        id: &IncidentId,
        meta: &IncidentMeta,
        step: &StepSpec,
    ) -> Result<Option<String>> {
        for pre in &step.preconditions {
            let failed = match pre {
                Precondition::KvEquals { kv, equals } => {
                    let key = substitute(kv, &meta.params);
                    let value = self.store.kv_get(id, &key)?;
                    (value.as_deref() != Some(equals.as_bytes()))
                        .then(|| format!("KV `{key}` is not {equals:?}"))
                }
                Precondition::KvExists { kv, exists } => {
                    let key = substitute(kv, &meta.params);
                    let present = self.store.kv_get(id, &key)?.is_some();
                    (present != *exists).then(|| {
                        format!(
                            "KV `{key}` {}",
                            if *exists { "is absent" } else { "exists" }
                        )
                    })
                }
                Precondition::StepOutcome {
                    step: other,
                    outcome,
                } => {
                    let last = self
                        .store
                        .read_last(&keys::step_attempts(id, other))?
                        .map(|(_, r)| r);
                    match last {
                        Some(r) if Some(r.outcome) == pre.expected_outcome() => None,
                        Some(r) => Some(format!(
                            "step `{other}` last ended {}, not {outcome}",
                            r.outcome
                        )),
                        None => Some(format!("step `{other}` has not run")),
                    }
                }
            };
            if failed.is_some() {
                return Ok(failed);
            }
        }
        Ok(None)
    }

    /// Runs one attempt and commits it.
    async fn attempt(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        prepared: &PreparedStep,
        approved_by: Option<String>,
        decisions: Vec<Signed>,
    ) -> Result<(Option<RunExit>, Standing)> {
        let id = ctx.id;
        let attempt = cp.attempt;
        let span = info_span!(
            "attempt",
            step = %step.id,
            attempt,
            outcome = tracing::field::Empty,
        );
        let trace_id = runbox_telemetry::traces::trace_id(&span);
        // The whole attempt is in its span: the sandbox's run and the commit.
        async {
            let started = now_ms();
            let input = ctx.rb.step_input(step, &ctx.meta.params);
            let base = Arc::new(Mutex::new(cp.clone()));
            let kv = Arc::new(IncidentKv::new(self.store.clone(), id.clone()));
            let notes = Arc::new(Mutex::new(GuardNotes::default()));
            let guard = AttemptGuard {
                store: self.store.clone(),
                outbox: self.outbox.clone(),
                id: id.clone(),
                runbook: ctx.rb.runbook.runbook.name.clone(),
                step: step.id.clone(),
                attempt,
                agent: ctx.agent.to_string(),
                params: ctx.meta.params.clone(),
                limits: ctx.limits.to_vec(),
                fences: ctx.fences.clone(),
                base: base.clone(),
                started_at_ms: started,
                reads: kv.reads(),
                notes: notes.clone(),
            };
            let reads = kv.reads();
            let recorded_before = ctx.recorded_bytes;
            let tape = self.recording_tape(recorded_before, &input);
            // A dry run mutates nothing, so it has no attempt to mark in flight.
            let (tape, guard): (Tape, Option<Box<dyn MutationGuard>>) = if ctx.dry_run {
                (tape.with_dry_run(), None)
            } else {
                (tape, Some(Box::new(guard)))
            };
            let report = self
                .sandbox
                .run_on_tape(prepared, &input, kv, guard, tape)
                .await;
            // The guard may have committed: the attempt commits on top of it.
            let base = lock(&base).clone();
            let mut notes = std::mem::take(&mut *lock(&notes));
            if let Some(lost) = notes.lost.take() {
                return Err(lost.into());
            }
            let done = AttemptDone {
                started,
                approved_by,
                decisions,
                recorded_before,
                notes,
                trace_id,
            };
            let committed = self
                .commit_attempt(ctx, step, cp, &report, &done, base.clone(), Some(&reads))
                .await;
            match committed {
                Err(EngineError::Store(StoreError::SharedConflict { key, .. })) => {
                    // The step decided on shared values another incident has
                    // changed since: none of its writes land. If it mutated,
                    // a human looks; if not, nothing happened and it runs again.
                    let report = stale_shared(report, &key);
                    let done = AttemptDone {
                        notes: GuardNotes {
                            stale: (!report.mutated()).then_some(key),
                            ..done.notes
                        },
                        ..done
                    };
                    self.commit_attempt(ctx, step, cp, &report, &done, base, None)
                        .await
                }
                // Past what the store takes in one commit (etcd's transaction
                // limits): the attempt is recorded without its writes and
                // recording, and a human looks.
                Err(EngineError::Store(StoreError::TooLarge { message, .. })) => {
                    let report = too_large(report, &message);
                    self.commit_attempt(ctx, step, cp, &report, &done, base, None)
                        .await
                }
                other => other,
            }
        }
        .instrument(span)
        .await
    }

    /// Commits an attempt's record, writes and transition on `base`
    /// (fenced on the shared values it read, if `reads`), and counts it;
    /// the exit, and where the incident stands after the commit.
    #[expect(
        clippy::too_many_arguments,
        reason = "one attempt's parts, as `attempt` holds them"
    )]
    async fn commit_attempt(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        report: &StepReport,
        done: &AttemptDone,
        base: Checkpoint,
        reads: Option<&crate::kv::SharedReads>,
    ) -> Result<(Option<RunExit>, Standing)> {
        let mut change = Change::default();
        if let Some(reads) = reads {
            reads.fence(&mut change.shared);
        }
        let exit = self.attempt_change(ctx, step, cp, report, done, &mut change);
        // Retried: the checkpoint stays on this step with the next attempt.
        let retried = change.checkpoint.as_ref().is_some_and(|next| {
            next.step.as_deref() == Some(&step.id) && next.attempt > cp.attempt
        });
        let (_, read) = self
            .apply_async(ctx.id, base, change, Standing::keys(ctx.id))
            .await?;
        let standing = Standing::decode(ctx.id, read)?;
        let outcome = RecordOutcome::from(report.outcome).as_str();
        tracing::Span::current().record("outcome", outcome);
        runbox_telemetry::attempt(
            &ctx.rb.runbook.runbook.name,
            &step.id,
            outcome,
            now_ms().saturating_sub(done.started) as f64 / 1000.0,
            !retried,
        );
        Ok((exit, standing))
    }

    /// Fills `change` with an attempt's record, writes and transition.
    fn attempt_change(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        report: &StepReport,
        done: &AttemptDone,
        change: &mut Change,
    ) -> Option<RunExit> {
        let id = ctx.id;
        let attempt = cp.attempt;
        let mut record = StepRecord {
            ended_at_ms: now_ms(),
            logs: report.logs.clone(),
            output: report.output.clone(),
            reason: report.reason.clone(),
            tool_calls: report.tool_calls.clone(),
            error: report.error.clone(),
            violations: report.violations.clone(),
            kv_keys: report.kv_writes.iter().map(|w| w.key.clone()).collect(),
            module_sha256: ctx.meta.modules.get(&step.id).cloned(),
            approved_by: done.approved_by.clone(),
            decisions: done.decisions.clone(),
            recording: report.recording.clone(),
            trace_id: done.trace_id.clone(),
            ..StepRecord::new(
                step.id.clone(),
                step.action(),
                attempt,
                report.outcome.into(),
                ctx.agent.to_string(),
                done.started,
            )
        };
        let at = Some((step.id.as_str(), attempt));
        for w in &report.kv_writes {
            match shared_kv_key(&w.key) {
                // Written with the in-flight marker already, as it is now.
                Some(key) if done.notes.shared_written.get(&key) == Some(&w.value) => {}
                Some(key) => {
                    change.shared.write(key, w.value.clone());
                }
                None => change.kv.push((w.key.clone(), w.value.clone())),
            }
        }
        if let Some(recording) = &report.recording {
            change.record(
                keys::recorded_bytes(id),
                &(done.recorded_before + recording.bytes),
            );
        }
        if report.mutated() {
            change.record(
                keys::last_destructive(id),
                &LastDestructive {
                    step: step.id.clone(),
                    attempt,
                    at_ms: record.ended_at_ms,
                },
            );
        }
        let summary = commit_summary(report);
        if let Some(progress) = &ctx.progress {
            progress(&format!("{id}: {}#{attempt} {summary}", step.id));
        }
        change.event(ctx.agent, EventKind::StepCommitted, at, summary);
        if let Some(scope) = &done.notes.braked {
            let why = report
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            // An attempt that mutated before the brake stopped it is not
            // the brake's to hand back: a human settles it.
            if report.mutated() {
                let why = format!(
                    "{why}; it had mutated already, so it stays with a human when the brake is released"
                );
                change.event(ctx.agent, EventKind::Braked, at, why);
            } else {
                change.event(ctx.agent, EventKind::Braked, at, why);
                change.record(keys::braked(id), &Some(scope.clone()));
            }
        }
        let exit = match &done.notes.stale {
            Some(key) if cp.attempt <= step.max_retries + STALE_RETRIES => {
                stale_retry(change, ctx.agent, step, cp, key);
                None
            }
            _ => self.transition(ctx, step, cp, report, change),
        };
        record.next = Some(where_next(change, cp));
        change.record(keys::step(id, &step.id, attempt), &record);
        change
            .checkpoint
            .get_or_insert_with(|| Checkpoint {
                in_flight: None,
                ..cp.clone()
            })
            .in_flight = None;
        exit
    }

    /// Decides where the incident goes after a report; fills `change`.
    /// (See [`where_next`] for how the record names it.)
    fn transition(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        report: &StepReport,
        change: &mut Change,
    ) -> Option<RunExit> {
        let at = Some((step.id.as_str(), cp.attempt));
        if let Some(error) = &report.error {
            return Some(escalation(
                change,
                ctx.agent,
                at,
                format!("step `{}` attempt {}: {error}", step.id, cp.attempt),
            ));
        }
        match report.outcome {
            Outcome::Ok => {
                let next = ctx.rb.next_after_ok(step, report.output.as_ref());
                take_transition(change, ctx.agent, at, cp, next, "ok")
            }
            Outcome::Fail => {
                let next = ctx.rb.next_after_fail(step);
                take_transition(
                    change,
                    ctx.agent,
                    at,
                    cp,
                    next,
                    report.reason.as_deref().unwrap_or("fail"),
                )
            }
            Outcome::Escalate => Some(escalation(
                change,
                ctx.agent,
                at,
                format!(
                    "step `{}` escalated: {}",
                    step.id,
                    report.reason.as_deref().unwrap_or("no reason given")
                ),
            )),
            Outcome::Retry if cp.attempt <= step.max_retries => {
                let delay = step.backoff.delay_ms(cp.attempt);
                change.event(
                    ctx.agent,
                    EventKind::RetryScheduled,
                    at,
                    format!(
                        "`{}` asked to retry ({}); attempt {} of {} in {} ms",
                        step.id,
                        report.reason.as_deref().unwrap_or("no reason"),
                        cp.attempt + 1,
                        step.max_retries + 1,
                        delay
                    ),
                );
                change.checkpoint = Some(Checkpoint {
                    attempt: cp.attempt + 1,
                    not_before_ms: Some(now_ms() + delay),
                    in_flight: None,
                    ..cp.clone()
                });
                change.status = Some(Status::Open);
                None
            }
            Outcome::Retry => Some(escalation(
                change,
                ctx.agent,
                at,
                format!(
                    "step `{}` still asks to retry after {} (max_retries {}): {}",
                    step.id,
                    runbox_core::text::count(cp.attempt, "attempt"),
                    step.max_retries,
                    report.reason.as_deref().unwrap_or("no reason")
                ),
            )),
        }
    }
}

/// The run loop, and what an agent adds to a run: run an incident
/// ([`Runs::run`]), every runnable one ([`Runs::run_all`]), each as it
/// becomes runnable ([`Runs::follow`]); a note ([`Runs::note`]) or an
/// escalation ([`Runs::escalate`]). From [`Engine::runs`].
#[derive(Clone, Copy)]
pub struct Runs<'a> {
    pub(crate) engine: &'a Engine,
}

impl Engine {
    /// The run loop ([`Runs`]).
    pub fn runs(&self) -> Runs<'_> {
        Runs { engine: self }
    }
}

impl Runs<'_> {
    /// Runs incident `id` until it is resolved, escalated, failed, waiting
    /// on a human, blocked, or (with `no_wait`) waiting on a timer.
    ///
    /// On a store several runners share, the incident is claimed first
    /// ([`runbox_store::Store::claim`]); one another runner holds is left
    /// alone ([`RunExit::Elsewhere`]), and the claim is given up when the
    /// run stops.
    pub async fn run(self, id: &str, opts: &RunOptions) -> Result<RunExit> {
        let id = parse_id(id)?;
        let lock = self.engine.run_lock(&id);
        let _guard = lock.lock().await;
        if let Claim::Theirs { runner } = self.engine.store.claim(&id)? {
            return Ok(RunExit::Elsewhere { runner });
        }
        let span = info_span!(
            "incident",
            incident = %id,
            runner = %self.engine.store.runner(),
            trace_id = tracing::field::Empty,
        );
        // In the log lines too, to go from a line to its trace.
        if let Some(trace) = runbox_telemetry::traces::trace_id(&span) {
            span.record("trace_id", trace);
        }
        let exit = self.engine.run_locked(&id, opts).instrument(span).await;
        // For another runner to take; a lapsed lease frees it too.
        if let Err(e) = self.engine.store.release(&id) {
            tracing::warn!(incident = %id, "could not give the incident up: {e}");
        }
        exit
    }

    /// Runs every incident that is open for the agent, concurrently.
    pub async fn run_all(self, opts: &RunOptions) -> Result<Vec<(String, Result<RunExit>)>> {
        let runnable = self.engine.runnable()?;
        let mut tasks = tokio::task::JoinSet::new();
        // Which incident each task runs, to name it if the task dies.
        let mut running = HashMap::new();
        for id in runnable {
            let engine = self.engine.clone();
            let opts = opts.clone();
            let incident = id.clone();
            let task = tasks.spawn(async move {
                let exit = engine.runs().run(&id, &opts).await;
                (id, exit)
            });
            running.insert(task.id(), incident);
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => results.push((
                    running.remove(&e.id()).unwrap_or_default(),
                    Err(EngineError::Internal {
                        what: "run task",
                        message: e.to_string(),
                    }),
                )),
            }
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(results)
    }
}

/// Fills `change` for an incident a brake holds (having tripped it, when
/// `tripped`): the events, the brake it waits on, the escalation.
fn braked(
    change: &mut Change,
    ctx: &AttemptCtx<'_>,
    at: At<'_>,
    scope: &str,
    tripped: bool,
    reason: String,
) -> RunExit {
    if tripped {
        change.event(ctx.agent, EventKind::BrakeEngaged, at, reason.clone());
    }
    change.event(ctx.agent, EventKind::Braked, at, reason.clone());
    change.record(keys::braked(ctx.id), &Some(scope.to_string()));
    escalation(change, ctx.agent, at, reason)
}

/// What an attempt leaves for its commit besides its report.
struct AttemptDone {
    started: u64,
    approved_by: Option<String>,
    decisions: Vec<Signed>,
    recorded_before: u64,
    notes: GuardNotes,
    /// The trace the attempt ran in, when traces are exported.
    trace_id: Option<String>,
}

/// How many more attempts than `max_retries` a step gets when shared state
/// it read moved before it acted (it called nothing, so running it again is
/// safe); past them it escalates.
pub(crate) const STALE_RETRIES: u32 = 16;

/// Schedules a fresh attempt, now, of a step whose shared reads went stale
/// before it acted.
fn stale_retry(change: &mut Change, agent: &str, step: &StepSpec, cp: &Checkpoint, key: &str) {
    let by = if key.starts_with(SHARED_KV) {
        "another incident wrote it"
    } else {
        "a human changed it"
    };
    change.event(
        agent,
        EventKind::RetryScheduled,
        Some((step.id.as_str(), cp.attempt)),
        format!(
            "{} changed underneath before `{}` acted ({by}); nothing was called: attempt {} runs now",
            crate::guard::what_moved(key),
            step.id,
            cp.attempt + 1
        ),
    );
    change.checkpoint = Some(Checkpoint {
        attempt: cp.attempt + 1,
        not_before_ms: None,
        in_flight: None,
        ..cp.clone()
    });
    change.status = Some(Status::Open);
}

/// A report whose commit found a shared value it read changed: its KV
/// writes are dropped and it ends in error, so the incident escalates.
fn stale_shared(mut report: StepReport, key: &str) -> StepReport {
    let message = format!(
        "{} changed underneath while the attempt ran: its KV writes are dropped{}",
        crate::guard::what_moved(key),
        report
            .error
            .as_ref()
            .map(|e| format!(" (the step had also failed: {e})"))
            .unwrap_or_default()
    );
    report.error = Some(StepError::new(ErrorCategory::Held, message));
    report.discarded_kv_writes.append(&mut report.kv_writes);
    report
}

/// A report whose commit is larger than the store takes: its KV writes,
/// output, recording and most logs are dropped, and it ends in error.
fn too_large(mut report: StepReport, why: &str) -> StepReport {
    let message = format!(
        "the attempt's commit is larger than the store takes ({why}): its KV writes, output and recording are dropped"
    );
    report.error = Some(StepError::new(ErrorCategory::Limit, message));
    report.discarded_kv_writes.append(&mut report.kv_writes);
    report.output = None;
    report.recording = None;
    report.logs.truncate(20);
    report
}

/// What the run loop does after the gates.
enum Next {
    Attempt { approved_by: Option<String> },
    Wait { until_ms: u64, reason: String },
    Exit(RunExit),
}

impl Next {
    /// What the gate span says was decided.
    fn name(&self) -> &'static str {
        match self {
            Next::Attempt { .. } => "attempt",
            Next::Wait { .. } => "wait",
            Next::Exit(_) => "exit",
        }
    }
}

/// The gate inputs the run loop reads from the store and the module.
struct Gathered {
    read_only: bool,
    mutates: bool,
    writes_kv: bool,
    token: Token,
    module_refused: Option<String>,
    failed_precondition: Option<String>,
    approval: Option<Approval>,
    /// The signed approvals the attempt would run under.
    decisions: Vec<Signed>,
    awaiting_approval: bool,
    fleet: Option<FleetHold>,
    cooldown: Option<Cooldown>,
}

impl Gathered {
    fn view<'a>(
        &self,
        id: &'a IncidentId,
        step: &'a StepSpec,
        cp: &Checkpoint,
    ) -> gate::Inputs<'a> {
        gate::Inputs {
            incident: id.as_str(),
            step: &step.id,
            action: step.action(),
            attempt: cp.attempt,
            read_only: self.read_only,
            mutates: self.mutates,
            writes_kv: self.writes_kv,
            token: self.token,
            module_refused: self.module_refused.clone(),
            failed_precondition: self.failed_precondition.clone(),
            high_impact: step.impact == Impact::High,
            approval: self.approval.clone(),
            awaiting_approval: self.awaiting_approval,
            fleet: self.fleet.clone(),
            cooldown: self.cooldown.clone(),
            not_before_ms: cp.not_before_ms,
            now_ms: now_ms(),
        }
    }
}

struct AttemptCtx<'a> {
    id: &'a IncidentId,
    meta: &'a IncidentMeta,
    rb: &'a LoadedRunbook,
    tools: &'a Arc<ToolRegistry>,
    agent: &'a str,
    progress: Option<Progress>,
    /// Mutating tool calls are intercepted, never run.
    dry_run: bool,
    /// The rate limits of the runbook and the fleet.
    limits: &'a [runbox_core::limits::Limit],
    /// The fleet's configuration the attempt was let through on (its
    /// limits, the signers its approvals were checked against): every
    /// commit the guard makes carries them.
    fences: Vec<Fence>,
    /// Bytes recorded for replay before this attempt.
    recorded_bytes: u64,
}

fn commit_summary(report: &StepReport) -> String {
    let mut parts = vec![format!("outcome {}", report.outcome)];
    if let Some(e) = &report.error {
        parts.push(format!("error {}", e.category));
    }
    for call in &report.tool_calls {
        if call.dry_run {
            parts.push(format!(
                "tool {} ({}) intercepted: dry run, not run",
                call.name, call.mode
            ));
        } else {
            parts.push(format!("tool {} ({}) rc {}", call.name, call.mode, call.rc));
        }
    }
    if !report.kv_writes.is_empty() {
        parts.push(format!("{} KV writes", report.kv_writes.len()));
    }
    if let Some(r) = &report.reason {
        parts.push(format!("reason: {r}"));
    }
    parts.join(", ")
}

fn in_doubt_record(step: &StepSpec, flight: &InFlight, agent: &str, note: &str) -> StepRecord {
    StepRecord {
        ended_at_ms: now_ms(),
        reason: Some(note.into()),
        error: Some(StepError::new(
            ErrorCategory::Host,
            "no result committed before the process stopped",
        )),
        ..StepRecord::new(
            flight.step.clone(),
            step.action(),
            flight.attempt,
            RecordOutcome::InDoubt,
            agent.to_string(),
            flight.started_at_ms,
        )
    }
}

async fn wait_until(until_ms: u64, reason: &str, id: &IncidentId, opts: &RunOptions) {
    loop {
        let now = now_ms();
        if now >= until_ms {
            return;
        }
        let left = until_ms - now;
        if let Some(progress) = &opts.progress {
            progress(&format!(
                "{id}: waiting {:.1}s for {reason}",
                left as f64 / 1000.0
            ));
        }
        tokio::time::sleep(Duration::from_millis(left.min(5_000))).await;
    }
}

/// Where a change sends the incident, as a step record names it.
fn where_next(change: &Change, cp: &Checkpoint) -> String {
    match change.status {
        Some(Status::Resolved) => return "resolve".into(),
        Some(Status::Escalated) => return "escalate".into(),
        Some(Status::Failed) => return "fail".into(),
        _ => {}
    }
    match change.checkpoint.as_ref().and_then(|c| c.step.clone()) {
        Some(step) if Some(&step) == cp.step.as_ref() => "retry".into(),
        Some(step) => step,
        None => "resolve".into(),
    }
}
