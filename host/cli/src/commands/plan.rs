//! `runbox plan RUNBOOK [--param k=v]`: the path through a runbook, without
//! running anything: each step, what would hold it (approval, cooldown, the
//! mutation token, preconditions, rate limits and brakes as they stand in
//! the data dir now), the tools it may call with their mode, and where the
//! path depends on what the steps return.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use runbox_core::fleet_config::ConfigKind;
use runbox_core::limits::{Limit, LimitsFile, Params, Subject};
use runbox_core::runbook::{Impact, LoadedRunbook, Next, StepSpec};
use runbox_core::time::format_ms;
use runbox_core::tools::ToolRegistry;
use runbox_engine::Incidents;
use runbox_engine::fleet::EngagedBrake;

use crate::context::Context;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The runbook.
    runbook: PathBuf,
    /// Runbook parameters, `name=value` (checked as `open` checks them).
    #[arg(long = "param", value_parser = super::open::parse_param)]
    params: Vec<(String, String)>,
}

/// The data dir as it stands: limits and brakes, read only.
struct Fleet {
    limits: Vec<Limit>,
    brakes: Vec<EngagedBrake>,
    /// `None` when the data dir does not exist yet (nothing is counted).
    reader: Option<Incidents>,
}

pub(crate) fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let rb = LoadedRunbook::load(&args.runbook)?;
    let given: BTreeMap<String, String> = args.params.into_iter().collect();
    let params = rb.resolve_params(&given)?;
    let tools = match rb.tools_path() {
        Some(p) => ToolRegistry::load(&p)?,
        None => ToolRegistry::empty(),
    };
    let mut limits = rb.runbook.limits(&rb.path)?;
    // Plan writes nothing: a data dir that does not exist stays so.
    let reader = match ctx.shared_store() || ctx.data_dir().join("CURRENT").exists() {
        true => Some(ctx.reader()?),
        false => None,
    };
    match &reader {
        Some(r) if r.config_in_store() => {
            let text = r.config_text(ConfigKind::Limits)?;
            limits.extend(runbox_incidents::config::limits_of(&text)?);
        }
        _ => limits.extend(LimitsFile::load(&ctx.limits_path())?),
    }
    let brakes = match &reader {
        Some(r) => r.brakes()?,
        None => Vec::new(),
    };
    let fleet = Fleet {
        limits,
        brakes,
        reader,
    };
    outln!(
        "plan of `{}` with params {params:?} (nothing runs)",
        rb.runbook.runbook.name
    );
    for (i, step) in rb.runbook.steps.iter().enumerate() {
        outln!();
        outln!("{}. step {} ({})", i + 1, step.id, step.action());
        outln!("   input  {}", rb.step_input(step, &params));
        let calls: Vec<String> = step
            .grants
            .tools
            .iter()
            .map(|t| match tools.get(t) {
                Some(spec) => format!("{t} ({})", spec.mode),
                None => format!("{t} (not in the tools file)"),
            })
            .collect();
        outln!(
            "   tools  {}",
            if calls.is_empty() {
                "none".into()
            } else {
                calls.join(", ")
            }
        );
        for gate in gates(step, &tools) {
            outln!("   holds  {gate}");
        }
        for hold in fleet_holds(&fleet, &rb, step, &tools, &params)? {
            outln!("   holds  {hold}");
        }
        for path in paths(&rb, step) {
            outln!("   then   {path}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What could hold the step before it runs.
fn gates(step: &StepSpec, tools: &ToolRegistry) -> Vec<String> {
    let mut out = Vec::new();
    let mutates = tools.modes(&step.grants).mutate;
    if mutates {
        out.push("the mutation token (its mutating tools); read-only mode blocks it".to_string());
    }
    if step.impact == Impact::High {
        let who = if step.approvers.is_empty() {
            "any human in allowed_signers".to_string()
        } else {
            step.approvers.join(", ")
        };
        out.push(format!(
            "approval: {} signed approval(s) by {who}, per attempt",
            step.approvals
        ));
    }
    if mutates && step.cooldown_ms > 0 {
        out.push(format!(
            "cooldown: {} ms after the last committed destructive step",
            step.cooldown_ms
        ));
    }
    for p in &step.preconditions {
        out.push(format!(
            "precondition {} (escalates when it does not hold)",
            serde_json::to_string(p).unwrap_or_default()
        ));
    }
    out
}

/// The rate limits a mutating step needs and the brakes that cover it,
/// each with how it stands now.
fn fleet_holds(
    fleet: &Fleet,
    rb: &LoadedRunbook,
    step: &StepSpec,
    tools: &ToolRegistry,
    params: &Params,
) -> Result<Vec<String>> {
    let mutating = tools.mutating(&step.grants);
    if mutating.is_empty() {
        return Ok(Vec::new());
    }
    let name = &rb.runbook.runbook.name;
    let mut out = Vec::new();
    for limit in fleet
        .limits
        .iter()
        .filter(|l| l.applies_to_step(name, &step.id, &mutating))
    {
        let now = match &fleet.reader {
            Some(r) => {
                let fill = r.limit_fill(limit, params)?;
                match fill.frees_at_ms {
                    Some(at) if fill.is_full() => format!(
                        "FULL now ({} used; frees at {}): the step would {}",
                        fill.count,
                        format_ms(at),
                        limit.on_full
                    ),
                    _ => format!("{} of {} used now", fill.count, fill.max),
                }
            }
            None => "none used yet".into(),
        };
        out.push(format!("rate limit: {}; {now}", limit.describe(params)));
    }
    let subject = Subject {
        runbook: name,
        step: &step.id,
        tools: &mutating,
        params,
    };
    if let Some(b) = runbox_engine::fleet::covering(&fleet.brakes, &subject) {
        out.push(format!(
            "BRAKE ENGAGED now: {}; the step would escalate",
            b.brake.describe()
        ));
    }
    Ok(out)
}

/// Where the runbook goes from the step, by outcome.
fn paths(rb: &LoadedRunbook, step: &StepSpec) -> Vec<String> {
    let name = |n: &Next| match n {
        Next::Step(s) => format!("step {s}"),
        Next::Resolve => "resolve".into(),
        Next::Escalate => "escalate".into(),
        Next::Fail => "fail".into(),
    };
    let mut out: Vec<String> = step
        .branch
        .iter()
        .map(|b| {
            format!(
                "if output.{} == {}: {} (known only once the step runs)",
                b.field,
                b.equals,
                name(&b.next)
            )
        })
        .collect();
    out.push(format!("ok: {}", name(&rb.next_after_ok(step, None))));
    if step.max_retries > 0 {
        out.push(format!(
            "retry: up to {} more attempts, then escalate",
            step.max_retries
        ));
    } else {
        out.push("retry: escalate (no retries)".into());
    }
    out.push(format!("fail: {}", name(&rb.next_after_fail(step))));
    out.push("escalate: a human".into());
    out
}
