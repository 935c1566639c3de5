//! The `run` loop: gates, one attempt, the commit, the transition, and the
//! in-doubt handling after a crash.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use runbox_core::attempt::{ErrorCategory, Outcome, StepError};
use runbox_core::event::EventKind;
use runbox_core::ident::{IncidentId, Name};
use runbox_core::keys;
use runbox_core::records::{
    Approval, Checkpoint, InFlight, IncidentMeta, LastDestructive, Owner, RecordOutcome, Signed,
    Status, StepRecord, TimelineEvent,
};
use runbox_core::runbook::{Impact, LoadedRunbook, Precondition, StepSpec, substitute};
use runbox_core::time::{format_ms, now_ms};
use runbox_core::tools::ToolRegistry;
use runbox_sandbox::{Capabilities, MutationGuard, PreparedStep, StepReport, Tape, granted_modes};
use runbox_store::{Store, StoreExt};
use tracing::{Instrument, info_span};

use crate::change::{self, At, Base, Change, escalation, follow};
use crate::gate::{self, Cooldown, Decision, Token};
use crate::kv::IncidentKv;
use crate::query::parse_id;
use crate::{Engine, EngineError, Progress, Result, RunExit, RunOptions};

impl Engine {
    /// Runs incident `id` until it is resolved, escalated, failed, waiting
    /// on a human, blocked, or (with `no_wait`) waiting on a timer.
    pub async fn run(&self, id: &str, opts: &RunOptions) -> Result<RunExit> {
        let id = parse_id(id)?;
        let lock = self.run_lock(&id);
        let _guard = lock.lock().await;
        let span = info_span!("incident", incident = %id);
        self.run_locked(&id, opts).instrument(span).await
    }

    /// Runs every incident that is open for the agent, concurrently.
    pub async fn run_all(
        self: &Arc<Self>,
        opts: &RunOptions,
    ) -> Result<Vec<(String, Result<RunExit>)>> {
        let runnable: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|s| {
                !s.status.is_terminal() && s.status != Status::Escalated && s.owner.is_agent()
            })
            .map(|s| s.id.to_string())
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for id in runnable {
            let engine = self.clone();
            let opts = opts.clone();
            tasks.spawn(async move {
                let exit = engine.run(&id, &opts).await;
                (id, exit)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => results.push((
                    "?".into(),
                    Err(EngineError::Refused {
                        id: "?".into(),
                        message: format!("run task failed: {e}"),
                    }),
                )),
            }
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(results)
    }

    async fn run_locked(&self, id: &IncidentId, opts: &RunOptions) -> Result<RunExit> {
        let meta = self.meta(id)?;
        let (rb, tools) = self.runbook(&meta)?;
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
        loop {
            let cp = self.checkpoint(id)?;
            let status = self.status_of(id)?;
            let owner = self.owner_of(id)?;
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
            let ctx = AttemptCtx {
                id,
                meta: &meta,
                rb: &rb,
                tools: &tools,
                agent: &agent,
                progress: opts.progress.clone(),
                dry_run,
            };
            if step.impact == Impact::High && self.void_stale_approvals(&ctx, step, &cp)? {
                continue;
            }
            let (inputs, prepared) = self.gate_inputs(&ctx, step, &cp, status, opts, token)?;
            let decision = gate::decide(&inputs.view(id, step, &cp));
            match self.apply_decision(&ctx, step, &cp, decision)? {
                Next::Attempt { approved_by } => {
                    // The module gate passed only because the module was prepared.
                    let Some(prepared) = prepared else {
                        return Err(EngineError::Refused {
                            id: id.to_string(),
                            message: format!("step `{step_id}` passed its gates unprepared"),
                        });
                    };
                    let turn = self
                        .attempts
                        .acquire()
                        .await
                        .map_err(|e| EngineError::Refused {
                            id: id.to_string(),
                            message: format!("no turn to run an attempt: {e}"),
                        })?;
                    let decisions = inputs.decisions.clone();
                    let exit = self
                        .attempt(&ctx, step, &cp, &prepared, approved_by, decisions)
                        .await?;
                    drop(turn);
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
        let (_, mutates) = granted_modes(&step.policy(), ctx.tools);
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
            cooldown,
        };
        Ok((gathered, prepared))
    }

    /// Whether this run is a dry run. The first dry run of an incident with
    /// no step record yet makes it a dry-run incident for good; a dry-run
    /// incident never runs live, and a live one never runs dry.
    fn dry_run_mode(&self, id: &IncidentId, asked: bool, agent: &str) -> Result<bool> {
        let marked = self.store.get(&keys::dry_run(id))?.is_some();
        match (marked, asked) {
            (true, true) | (false, false) => Ok(marked),
            (true, false) => Err(EngineError::Refused {
                id: id.to_string(),
                message: "this is a dry-run incident: it runs only with --dry-run, and never live (open a new incident to act)".into(),
            }),
            (false, true) => {
                let cp = self.checkpoint(id)?;
                // One record is enough to know it ran live: no need to read them all.
                if !self.store.scan(&keys::steps(id), None, 1)?.is_empty() {
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
    /// limit and what is left of the incident's; and the bytes recorded so far.
    fn recording_tape(&self, id: &IncidentId, input: &serde_json::Value) -> Result<(Tape, u64)> {
        let used: u64 = self.store.get_json(&keys::recorded_bytes(id))?.unwrap_or(0);
        let left = self.recording.per_incident.saturating_sub(used);
        let limit = self.recording.per_attempt.min(left);
        let tape = Tape::record(input, limit);
        let tape = match &self.tool_script {
            Some(script) => tape.with_script(script.clone()),
            None => tape,
        };
        Ok((tape, used))
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
    ) -> Result<bool> {
        let id = ctx.id;
        let at = Some((step.id.as_str(), cp.attempt));
        let mut change = Change::default();
        let approvals = self.approvals(id, &step.id, cp.attempt)?;
        if approvals.is_empty() {
            return Ok(false);
        }
        // A signer file that cannot be read is the host's problem: it stops
        // the run with its file and line, and voids nothing.
        let signers = self.signers()?;
        for (key, mut approval) in approvals {
            if !approval.approved {
                continue;
            }
            if let Err(why) = crate::decision::approval_holds(
                &signers, id, ctx.rb, ctx.meta, step, ctx.tools, &approval,
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
            return Ok(false);
        }
        change.status = Some(Status::AwaitingApproval);
        self.apply(id, cp, change)?;
        Ok(true)
    }

    /// The cooldown a destructive step is under, if the last destructive
    /// step committed; whether the timeline already says so.
    fn cooldown(
        &self,
        id: &IncidentId,
        step: &StepSpec,
        cp: &Checkpoint,
    ) -> Result<Option<Cooldown>> {
        let Some(last) = self
            .store
            .get_json::<LastDestructive>(&keys::last_destructive(id))?
        else {
            return Ok(None);
        };
        let last_event: Option<TimelineEvent> = match cp.next_seq.checked_sub(1) {
            Some(seq) => self.store.get_json(&keys::event(id, seq))?,
            None => None,
        };
        let recorded = last_event.is_some_and(|e| {
            e.kind == EventKind::Cooldown
                && e.step.as_deref() == Some(step.id.as_str())
                && e.attempt == Some(cp.attempt)
        });
        Ok(Some(Cooldown {
            until_ms: last.cooldown_until(step.cooldown_ms),
            last_step: last.step,
            last_at_ms: last.at_ms,
            recorded,
        }))
    }

    /// Records what a gate decided and says what the loop does next.
    fn apply_decision(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        decision: Decision,
    ) -> Result<Next> {
        let at = Some((step.id.as_str(), cp.attempt));
        let mut change = Change::default();
        let next = match decision {
            Decision::Go { approved_by } => return Ok(Next::Attempt { approved_by }),
            Decision::Block { reason } => {
                change.event(ctx.agent, EventKind::Blocked, at, reason.clone());
                Next::Exit(RunExit::Blocked { reason })
            }
            Decision::Escalate { reason } => {
                Next::Exit(escalation(&mut change, ctx.agent, at, reason))
            }
            Decision::RequestApproval { record, message } => {
                if record {
                    change.status = Some(Status::AwaitingApproval);
                    change.event(ctx.agent, EventKind::ApprovalRequired, at, message);
                }
                Next::Exit(RunExit::AwaitingApproval {
                    step: step.id.clone(),
                    attempt: cp.attempt,
                })
            }
            Decision::Denied { reason } => Next::Exit(RunExit::Escalated { reason }),
            Decision::Wait {
                until_ms,
                reason,
                record,
            } => {
                if let Some(message) = record {
                    change.event(ctx.agent, EventKind::Cooldown, at, message);
                }
                Next::Wait { until_ms, reason }
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
                        .last_json::<StepRecord>(&keys::step_attempts(id, other))?
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
    ) -> Result<Option<RunExit>> {
        let id = ctx.id;
        let attempt = cp.attempt;
        let span = info_span!("step", step = %step.id, attempt);
        let started = now_ms();
        let input = ctx.rb.step_input(step, &ctx.meta.params);
        let base = Arc::new(Mutex::new(cp.clone()));
        let guard = InFlightGuard {
            store: self.store.clone(),
            id: id.clone(),
            step: step.id.clone(),
            attempt,
            agent: ctx.agent.to_string(),
            base: base.clone(),
            started_at_ms: started,
        };
        let kv = Arc::new(IncidentKv::new(self.store.clone(), id.clone()));
        let (tape, recorded_before) = self.recording_tape(id, &input)?;
        // A dry run mutates nothing, so it has no attempt to mark in flight.
        let (tape, guard): (Tape, Option<Box<dyn MutationGuard>>) = if ctx.dry_run {
            (tape.with_dry_run(), None)
        } else {
            (tape, Some(Box::new(guard)))
        };
        let report = self
            .sandbox
            .run_on_tape(prepared, &input, kv, guard, tape)
            .instrument(span)
            .await;
        // The in-flight guard may have committed once: the attempt commits
        // on top of what it wrote.
        let base = base
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
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
            approved_by,
            decisions,
            recording: report.recording.clone(),
            ..StepRecord::new(
                step.id.clone(),
                step.action(),
                attempt,
                report.outcome.into(),
                ctx.agent.to_string(),
                started,
            )
        };
        let mut change = Change::default();
        let at = Some((step.id.as_str(), attempt));
        for w in &report.kv_writes {
            change.kv.push((w.key.clone(), w.value.clone()));
        }
        if let Some(recording) = &report.recording {
            change.record(
                keys::recorded_bytes(id),
                &(recorded_before + recording.bytes),
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
        let summary = commit_summary(&report);
        if let Some(progress) = &ctx.progress {
            progress(&format!("{id}: {}#{attempt} {summary}", step.id));
        }
        change.event(ctx.agent, EventKind::StepCommitted, at, summary);
        let exit = self.transition(ctx, step, cp, &report, &mut change);
        record.next = Some(where_next(&change, cp));
        change.record(keys::step(id, &step.id, attempt), &record);
        change
            .checkpoint
            .get_or_insert_with(|| Checkpoint {
                in_flight: None,
                ..cp.clone()
            })
            .in_flight = None;
        self.apply_async(id, base, change).await?;
        Ok(exit)
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
                follow(change, ctx.agent, at, cp, next, "ok")
            }
            Outcome::Fail => {
                let next = ctx.rb.next_after_fail(step);
                follow(
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
                    "step `{}` still asks to retry after {} attempts (max_retries {}): {}",
                    step.id,
                    cp.attempt,
                    step.max_retries,
                    report.reason.as_deref().unwrap_or("no reason")
                ),
            )),
        }
    }
}

/// What the run loop does after the gates.
enum Next {
    Attempt { approved_by: Option<String> },
    Wait { until_ms: u64, reason: String },
    Exit(RunExit),
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

/// Makes `attempt started` durable before the first mutating tool call,
/// through the same commit as everything else.
struct InFlightGuard {
    store: Arc<dyn Store>,
    id: IncidentId,
    step: String,
    attempt: u32,
    agent: String,
    /// The checkpoint the attempt started on; after the marker commits,
    /// the one the marker wrote.
    base: Arc<Mutex<Checkpoint>>,
    started_at_ms: u64,
}

impl MutationGuard for InFlightGuard {
    fn before_first_mutation(&mut self, tool: &str) -> std::result::Result<(), String> {
        let mut base = self
            .base
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at: At<'_> = Some((self.step.as_str(), self.attempt));
        let mut change = Change {
            checkpoint: Some(Checkpoint {
                in_flight: Some(InFlight {
                    step: self.step.clone(),
                    attempt: self.attempt,
                    started_at_ms: self.started_at_ms,
                    tool: tool.into(),
                }),
                ..base.clone()
            }),
            status: Some(Status::Running),
            ..Change::default()
        };
        change.event(
            &self.agent,
            EventKind::AttemptStarted,
            at,
            format!("about to call mutating tool `{tool}`"),
        );
        *base = change::commit(&*self.store, &self.id, Base::At(&base), change)
            .map_err(|e| e.to_string())?;
        Ok(())
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
