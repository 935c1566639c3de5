//! The `run` loop: gates, one attempt, the commit, the transition, and the
//! in-doubt handling after a crash.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{Instrument, info_span};

use super::change::{Change, escalation, follow};
use super::{Engine, EngineError, Progress, Result, RunExit, RunOptions};
use crate::incident::{
    Approval, Checkpoint, InFlight, IncidentMeta, LastDestructive, Owner, RecordOutcome, Status,
    StepRecord, TimelineEvent, keys, now_ms,
};
use crate::runbook::{Impact, LoadedRunbook, Precondition, StepSpec, step_input, substitute};
use crate::sandbox::{
    Capabilities, ErrorCategory, MutationGuard, Outcome, PreparedStep, StepError, StepReport,
    granted_modes,
};
use crate::store::{IncidentKv, Store};
use crate::tools::ToolRegistry;

impl Engine {
    /// Runs incident `id` until it is resolved, escalated, failed, waiting
    /// on a human, blocked, or (with `no_wait`) waiting on a timer.
    pub async fn run(&self, id: &str, opts: &RunOptions) -> Result<RunExit> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let span = info_span!("incident", incident = id);
        self.run_locked(id, opts).instrument(span).await
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
                !s.status.is_terminal()
                    && s.status != Status::Escalated
                    && s.owner.starts_with("agent:")
            })
            .map(|s| s.id)
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

    async fn run_locked(&self, id: &str, opts: &RunOptions) -> Result<RunExit> {
        let meta = self.meta(id)?;
        let (rb, tools) = self.runbook(&meta)?;
        let agent = format!("agent:{}", opts.agent.as_deref().unwrap_or("runbox"));
        let token_ok = match &opts.token {
            Some(t) => self.token_valid(t)?,
            None => false,
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
                id: id.into(),
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
            match self.gate(
                id, &meta, &rb, step, &tools, &cp, status, opts, token_ok, &agent,
            )? {
                Gate::Go {
                    approved_by,
                    prepared,
                } => {
                    let ctx = AttemptCtx {
                        id,
                        meta: &meta,
                        rb: &rb,
                        agent: &agent,
                        progress: opts.progress.clone(),
                    };
                    if let Some(exit) = self
                        .attempt(&ctx, step, &cp, &prepared, approved_by)
                        .await?
                    {
                        return Ok(exit);
                    }
                }
                Gate::Wait { until_ms, reason } => {
                    if opts.no_wait {
                        return Ok(RunExit::Waiting { until_ms, reason });
                    }
                    wait_until(until_ms, &reason, id, opts).await;
                }
                Gate::Stop(exit) => return Ok(exit),
            }
        }
    }

    /// The exit for an incident the agent cannot act on now, if any.
    fn settled_exit(
        &self,
        id: &str,
        status: Status,
        owner: &Owner,
        cp: &Checkpoint,
    ) -> Result<Option<RunExit>> {
        let last_reason = |kinds: &[&str]| -> Result<String> {
            Ok(self
                .timeline(id)?
                .into_iter()
                .rev()
                .find(|e| kinds.contains(&e.kind.as_str()))
                .map(|e| e.message)
                .unwrap_or_default())
        };
        Ok(match status {
            Status::Resolved => Some(RunExit::Resolved),
            Status::Failed => Some(RunExit::Failed {
                reason: last_reason(&["failed"])?,
            }),
            Status::Escalated => Some(RunExit::Escalated {
                reason: last_reason(&["escalated", "in-doubt", "denied"])?,
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
        id: &str,
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
            change.event(agent, "in-doubt", at, format!(
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
            self.apply(id, cp.version, change)?;
            return Ok(None);
        }
        let reason = format!(
            "attempt {} of `{}` started mutating tool `{}` at {} and never committed: its outcome is unknown and the step is not idempotent. A human must settle it: `runbox resolve|retry|skip {id} --step {} --as NAME`",
            flight.attempt,
            flight.step,
            flight.tool,
            crate::incident::format_ms(flight.started_at_ms),
            flight.step
        );
        change.event(agent, "in-doubt", at, reason.clone());
        let exit = escalation(&mut change, agent, at, reason);
        self.apply(id, cp.version, change)?;
        Ok(Some(exit))
    }

    #[allow(clippy::too_many_arguments)]
    fn gate(
        &self,
        id: &str,
        meta: &IncidentMeta,
        rb: &LoadedRunbook,
        step: &StepSpec,
        tools: &Arc<ToolRegistry>,
        cp: &Checkpoint,
        status: Status,
        opts: &RunOptions,
        token_ok: bool,
        agent: &str,
    ) -> Result<Gate> {
        let at = Some((step.id.as_str(), cp.attempt));
        let (_, mutates) = granted_modes(&step.policy(), tools);
        let writes_kv = !step.grants.kv_write.is_empty();
        let blocked = |message: String| -> Result<Gate> {
            let mut change = Change::default();
            change.event(agent, "blocked", at, message.clone());
            self.apply(id, cp.version, change)?;
            Ok(Gate::Stop(RunExit::Blocked { reason: message }))
        };
        if opts.read_only && (mutates || writes_kv) {
            let needs = if mutates {
                "a mutating tool"
            } else {
                "KV writes"
            };
            return blocked(format!(
                "read-only mode: step `{}` needs {needs}, which read-only mode never links",
                step.id
            ));
        }
        if mutates && !token_ok {
            let why = if opts.token.is_some() {
                "the mutation token presented does not match"
            } else {
                "no mutation token presented (RUNBOX_MUTATION_TOKEN or --token-file)"
            };
            return blocked(format!("step `{}` calls a mutating tool: {why}", step.id));
        }
        let caps = Capabilities {
            allow_mutate: token_ok,
            read_only: opts.read_only,
        };
        let recorded = meta.modules.get(&step.id).map(String::as_str);
        let prepared = match self.step_module(rb, step, tools, recorded, caps) {
            Ok(prepared) => prepared,
            Err(e) => return blocked(e.to_string()),
        };
        if let Some(reason) = self.failed_precondition(id, meta, step)? {
            return self
                .escalate(
                    id,
                    cp,
                    at,
                    agent,
                    format!("precondition of `{}` does not hold: {reason}", step.id),
                )
                .map(Gate::Stop);
        }
        let mut approved_by = None;
        if step.impact == Impact::High {
            match self
                .store
                .get::<Approval>(&keys::approval(id, &step.id, cp.attempt))?
            {
                Some(a) if a.approved => approved_by = Some(a.by),
                // A denial escalates at once, so this is only reached if the
                // status was changed by hand; refuse to run either way.
                Some(a) => {
                    return Ok(Gate::Stop(RunExit::Escalated {
                        reason: format!("{} denied attempt {} of `{}`", a.by, a.attempt, step.id),
                    }));
                }
                None => {
                    if status != Status::AwaitingApproval {
                        let mut change = Change {
                            status: Some(Status::AwaitingApproval),
                            ..Change::default()
                        };
                        change.event(agent, "approval-required", at, format!(
                            "step `{}` ({}) has impact high: attempt {} needs a named human's approval (`runbox approve {id} {} --as NAME`)",
                            step.id, step.action(), cp.attempt, step.id
                        ));
                        self.apply(id, cp.version, change)?;
                    }
                    return Ok(Gate::Stop(RunExit::AwaitingApproval {
                        step: step.id.clone(),
                        attempt: cp.attempt,
                    }));
                }
            }
        }
        let now = now_ms();
        if mutates
            && step.cooldown_ms > 0
            && let Some(last) = self
                .store
                .get::<LastDestructive>(&keys::last_destructive(id))?
        {
            let until = last.at_ms.saturating_add(step.cooldown_ms);
            if now < until {
                let reason = format!(
                    "cooldown of `{}`: the last destructive step `{}` committed at {}",
                    step.id,
                    last.step,
                    crate::incident::format_ms(last.at_ms)
                );
                self.record_cooldown(id, cp, at, agent, &reason, until)?;
                return Ok(Gate::Wait {
                    until_ms: until,
                    reason,
                });
            }
        }
        if let Some(until) = cp.not_before_ms.filter(|&t| now < t) {
            return Ok(Gate::Wait {
                until_ms: until,
                reason: format!("backoff before attempt {} of `{}`", cp.attempt, step.id),
            });
        }
        Ok(Gate::Go {
            approved_by,
            prepared: Box::new(prepared),
        })
    }

    /// Records that a cooldown holds a step, once per step and attempt.
    fn record_cooldown(
        &self,
        id: &str,
        cp: &Checkpoint,
        at: Option<(&str, u32)>,
        agent: &str,
        reason: &str,
        until: u64,
    ) -> Result<()> {
        let last: Option<TimelineEvent> = match cp.next_seq.checked_sub(1) {
            Some(seq) => self.store.get(&keys::event(id, seq))?,
            None => None,
        };
        let already = last.is_some_and(|e| {
            e.kind == "cooldown"
                && e.step.as_deref() == at.map(|a| a.0)
                && e.attempt == at.map(|a| a.1)
        });
        if !already {
            let mut change = Change::default();
            let message = format!(
                "{reason}; it may start at {}",
                crate::incident::format_ms(until)
            );
            change.event(agent, "cooldown", at, message);
            self.apply(id, cp.version, change)?;
        }
        Ok(())
    }

    fn failed_precondition(
        &self,
        id: &str,
        meta: &IncidentMeta,
        step: &StepSpec,
    ) -> Result<Option<String>> {
        for pre in &step.preconditions {
            let holds = match pre {
                Precondition::KvEquals { kv, equals } => {
                    let key = substitute(kv, &meta.params);
                    let value = self.store.kv_get(id, &key)?;
                    if value.as_deref() == Some(equals.as_bytes()) {
                        None
                    } else {
                        Some(format!("KV `{key}` is not {equals:?}"))
                    }
                }
                Precondition::KvExists { kv, exists } => {
                    let key = substitute(kv, &meta.params);
                    let present = self.store.kv_get(id, &key)?.is_some();
                    if present == *exists {
                        None
                    } else {
                        Some(format!(
                            "KV `{key}` {}",
                            if *exists { "is absent" } else { "exists" }
                        ))
                    }
                }
                Precondition::StepOutcome {
                    step: other,
                    outcome,
                } => {
                    let last = self
                        .store
                        .scan::<StepRecord>(&format!("{}{other}:", keys::steps(id)))?
                        .pop()
                        .map(|(_, r)| r);
                    match last {
                        Some(r) if r.outcome.as_str() == outcome => None,
                        Some(r) => Some(format!(
                            "step `{other}` last ended {}, not {outcome}",
                            r.outcome.as_str()
                        )),
                        None => Some(format!("step `{other}` has not run")),
                    }
                }
            };
            if holds.is_some() {
                return Ok(holds);
            }
        }
        Ok(None)
    }

    fn escalate(
        &self,
        id: &str,
        cp: &Checkpoint,
        at: Option<(&str, u32)>,
        actor: &str,
        reason: String,
    ) -> Result<RunExit> {
        let mut change = Change::default();
        let exit = escalation(&mut change, actor, at, reason);
        self.apply(id, cp.version, change)?;
        Ok(exit)
    }

    /// Runs one attempt and commits it.
    async fn attempt(
        &self,
        ctx: &AttemptCtx<'_>,
        step: &StepSpec,
        cp: &Checkpoint,
        prepared: &PreparedStep,
        approved_by: Option<String>,
    ) -> Result<Option<RunExit>> {
        let id = ctx.id;
        let attempt = cp.attempt;
        let span = info_span!("step", step = %step.id, attempt);
        let started = now_ms();
        let input = step_input(step, &ctx.meta.params);
        let version = Arc::new(Mutex::new(cp.version));
        let guard = InFlightGuard {
            store: self.store.clone(),
            commit: self.commit.clone(),
            id: id.to_string(),
            step: step.id.clone(),
            attempt,
            agent: ctx.agent.to_string(),
            version: version.clone(),
            started_at_ms: started,
        };
        let kv = Arc::new(IncidentKv::new(self.store.clone(), id));
        let report = self
            .sandbox
            .run(prepared, &input, kv, Some(Box::new(guard)))
            .instrument(span)
            .await;
        // The in-flight guard may have committed once (bumping the version);
        // `apply` checks the checkpoint is still at that version.
        let expected = *version.lock().unwrap_or_else(|p| p.into_inner());
        let record = StepRecord {
            step: step.id.clone(),
            action: step.action().to_string(),
            attempt,
            started_at_ms: started,
            ended_at_ms: now_ms(),
            outcome: report.outcome.into(),
            output: report.output.clone(),
            reason: report.reason.clone(),
            tool_calls: report.tool_calls.clone(),
            error: report.error.clone(),
            violations: report.violations.clone(),
            kv_keys: report.kv_writes.iter().map(|w| w.key.clone()).collect(),
            human_override: false,
            actor: ctx.agent.to_string(),
            module_sha256: ctx.meta.modules.get(&step.id).cloned(),
            approved_by,
        };
        let mut change = Change::default();
        let at = Some((step.id.as_str(), attempt));
        change.record(keys::step(id, &step.id, attempt), &record);
        for w in &report.kv_writes {
            change.kv.push((w.key.clone(), w.value.clone()));
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
        change.event(ctx.agent, "step-committed", at, summary);
        let exit = self.transition(ctx, step, cp, &report, &mut change);
        change
            .checkpoint
            .get_or_insert_with(|| Checkpoint {
                in_flight: None,
                ..cp.clone()
            })
            .in_flight = None;
        self.apply(id, expected, change)?;
        Ok(exit)
    }

    /// Decides where the incident goes after a report; fills `change`.
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
                    "retry-scheduled",
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

/// What the gates decided.
enum Gate {
    Go {
        approved_by: Option<String>,
        prepared: Box<PreparedStep>,
    },
    Wait {
        until_ms: u64,
        reason: String,
    },
    Stop(RunExit),
}

struct AttemptCtx<'a> {
    id: &'a str,
    meta: &'a IncidentMeta,
    rb: &'a LoadedRunbook,
    agent: &'a str,
    progress: Option<Progress>,
}

fn commit_summary(report: &StepReport) -> String {
    let mut parts = vec![format!("outcome {}", report.outcome)];
    if let Some(e) = &report.error {
        parts.push(format!("error {}", e.category));
    }
    for call in &report.tool_calls {
        parts.push(format!("tool {} ({}) rc {}", call.name, call.mode, call.rc));
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
        step: flight.step.clone(),
        action: step.action().into(),
        attempt: flight.attempt,
        started_at_ms: flight.started_at_ms,
        ended_at_ms: now_ms(),
        outcome: RecordOutcome::InDoubt,
        output: None,
        reason: Some(note.into()),
        tool_calls: Vec::new(),
        error: Some(StepError::new(
            ErrorCategory::Host,
            "no result committed before the process stopped",
        )),
        violations: Vec::new(),
        kv_keys: Vec::new(),
        human_override: false,
        actor: agent.into(),
        module_sha256: None,
        approved_by: None,
    }
}

async fn wait_until(until_ms: u64, reason: &str, id: &str, opts: &RunOptions) {
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

/// Makes `attempt started` durable before the first mutating tool call.
struct InFlightGuard {
    store: Arc<Store>,
    commit: Arc<Mutex<()>>,
    id: String,
    step: String,
    attempt: u32,
    agent: String,
    version: Arc<Mutex<u64>>,
    started_at_ms: u64,
}

impl MutationGuard for InFlightGuard {
    fn before_first_mutation(&mut self, tool: &str) -> std::result::Result<(), String> {
        let _commit = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let mut version = self.version.lock().unwrap_or_else(|p| p.into_inner());
        let cp: Checkpoint = self
            .store
            .get(&keys::checkpoint(&self.id))
            .map_err(|e| e.to_string())?
            .ok_or("the incident vanished")?;
        if cp.version != *version {
            return Err(format!(
                "checkpoint moved (version {} expected, found {})",
                *version, cp.version
            ));
        }
        let flight = InFlight {
            step: self.step.clone(),
            attempt: self.attempt,
            started_at_ms: self.started_at_ms,
            tool: tool.into(),
        };
        let event = TimelineEvent {
            seq: cp.next_seq,
            at_ms: now_ms(),
            actor: self.agent.clone(),
            kind: "attempt-started".into(),
            step: Some(self.step.clone()),
            attempt: Some(self.attempt),
            message: format!("about to call mutating tool `{tool}`"),
        };
        let next = Checkpoint {
            version: cp.version + 1,
            next_seq: cp.next_seq + 1,
            in_flight: Some(flight),
            ..cp
        };
        let mut batch = self.store.batch();
        batch
            .put(&keys::event(&self.id, event.seq), &event)
            .put(&keys::status(&self.id), &Status::Running)
            .put(&keys::checkpoint(&self.id), &next);
        batch.commit().map_err(|e| e.to_string())?;
        *version = next.version;
        Ok(())
    }
}
