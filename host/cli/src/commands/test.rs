//! `runbox test RUNBOOK --case CASE.toml…`: a whole runbook run in memory
//! with scripted tool answers: no store on disk, no real tool, no side
//! effect. A case gives params, a KV seed, what each tool answers (one
//! answer or a sequence whose last repeats), which steps a tester approves,
//! and what to expect: the final status, the steps visited, KV after. The
//! case file's types are `runbox_core::case`; its reference is
//! `docs/testing.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use runbox_core::case::{Case, Expect};
use runbox_core::records::{Status, StepRecord};
use runbox_core::runbook::LoadedRunbook;
use runbox_engine::decision::{DEFAULT_TTL, Request};
use runbox_engine::{Engine, RunExit, RunOptions, TokenAuth};
use runbox_sandbox::{Sandbox, SandboxConfig, ToolScript};
use runbox_store::MemoryStore;
use runbox_trust::Action;
use runbox_trust::testing::TestHumans;

use crate::output::outln;

/// The help's tail: exit codes and a case file, exactly as a user would
/// write it (`tests/all/authoring.rs` parses every `Example … (TOML):`
/// block of every command's help against its schema).
const AFTER_HELP: &str = "Exit status: 0 when every case meets its expectations, 1 when one does \
not, 2 when a runbook or case cannot be read.

Example case file (TOML):
  description = \"503, a restart approved by a human, then healthy\"
  approve = [\"restart\"]              # steps a tester approves when they wait
  [params]
  service = \"api\"
  [kv]                               # step KV seeded at open
  \"svc/api/restarts\" = \"1\"
  [tools.http_probe]                 # one answer per call, in turn; the last repeats
  answers = [{ stdout = \"503\" }, { stdout = \"200\" }]
  [tools.restart_service]            # one answer for every call: rc, stdout, stderr
  rc = 0
  [expect]                           # each of status, steps, kv checked when given
  status = \"resolved\"                # or failed, escalated, awaiting-approval
  steps = [\"diagnose\", \"check_budget\", \"restart\", \"verify\"]
  kv = { \"svc/api/restarts\" = \"2\" }

Every field: docs/testing.md (schema: docs/schemas/case.schema.json).";

#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct Args {
    /// The runbook.
    runbook: PathBuf,
    /// Case files (TOML).
    #[arg(long = "case", required = true, num_args = 1..)]
    cases: Vec<PathBuf>,
}

pub(crate) async fn run(args: Args) -> Result<ExitCode> {
    let sandbox = Sandbox::new(SandboxConfig::default());
    let mut failed = 0;
    for case in &args.cases {
        let problems = run_case(&sandbox, &args.runbook, case).await?;
        if problems.is_empty() {
            outln!("  PASS");
        } else {
            failed += 1;
            for p in &problems {
                outln!("  FAIL {p}");
            }
        }
    }
    outln!(
        "{} of {} cases pass",
        args.cases.len() - failed,
        args.cases.len()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs one case; what did not meet its expectations.
async fn run_case(sandbox: &Sandbox, runbook: &Path, path: &Path) -> Result<Vec<String>> {
    let text = runbox_core::files::read_capped(path, runbox_core::files::MAX_USER_FILE_BYTES)
        .with_context(|| format!("cannot read case {}", path.display()))?;
    let case: Case =
        toml::from_str(&text).with_context(|| format!("invalid case {}", path.display()))?;
    if let Some((tool, why)) = case
        .tools
        .iter()
        .find_map(|(name, t)| Some((name, t.conflict()?)))
    {
        anyhow::bail!("invalid case {}: tool `{tool}`: {why}", path.display());
    }
    outln!("case {} {}", path.display(), case.description);
    let dir = tempfile::tempdir()?;
    let humans = TestHumans::new(dir.path().join("allowed_signers"));
    let script = Arc::new(ToolScript::new(
        case.tools
            .iter()
            .map(|(name, t)| (name.clone(), t.script()))
            .collect(),
    ));
    let engine = Engine::new(Arc::new(MemoryStore::new()), sandbox.clone())
        .with_allowed_signers(humans.path())
        .with_tool_script(script);
    // The token first: no human is registered yet in this throwaway store.
    let token = engine.fleet().init_token(false, TokenAuth::None)?;
    engine.opener().open_with_kv(
        "TEST-1",
        runbook,
        &case.params,
        "agent:runbox-test",
        &case.kv.to_bytes(),
    )?;
    let rb = LoadedRunbook::load(runbook)?;
    let exit = drive(&engine, &humans, &rb, &case, token).await?;
    let records = engine.incidents().step_records("TEST-1")?;
    for r in &records {
        print_record(r)?;
    }
    let status = engine.incidents().view("TEST-1")?.status;
    match why_stopped(&exit) {
        Some(why) => outln!("  status {status}: {why}"),
        None => outln!("  status {status}"),
    }
    let kv: BTreeMap<String, Vec<u8>> = engine.incidents().kv("TEST-1")?.into_iter().collect();
    Ok(check(&case.expect, status, &records, &kv))
}

/// What a stopped run says beyond its status, in words (never the
/// debugger's `Escalated { reason: … }`).
fn why_stopped(exit: &RunExit) -> Option<String> {
    match exit {
        RunExit::Resolved | RunExit::Stepped { .. } => None,
        RunExit::Escalated { reason } | RunExit::Failed { reason } => Some(reason.clone()),
        RunExit::Blocked { reason } => Some(format!("blocked: {reason}")),
        RunExit::AwaitingApproval { step, attempt } => Some(format!(
            "`{step}` attempt {attempt} waits for a human (the case does not `approve` it)"
        )),
        RunExit::Waiting { reason, .. } => Some(format!("waiting more than a minute for {reason}")),
        RunExit::HumanOwner { owner } => Some(format!("owned by {owner}")),
        RunExit::Elsewhere { runner } => Some(format!("runner `{runner}` holds it")),
    }
}

/// Runs until the incident stops, approving what the case approves and
/// waiting out short backoffs.
async fn drive(
    engine: &Engine,
    humans: &TestHumans,
    rb: &LoadedRunbook,
    case: &Case,
    token: String,
) -> Result<RunExit> {
    let opts = RunOptions {
        token: Some(token),
        no_wait: true,
        agent: Some("runbox-test".into()),
        ..RunOptions::default()
    };
    let mut approved = BTreeSet::new();
    loop {
        let exit = engine.runs().run("TEST-1", &opts).await?;
        match &exit {
            RunExit::AwaitingApproval { step, attempt }
                if case.approve.contains(step) && approved.insert((step.clone(), *attempt)) =>
            {
                approve(engine, humans, rb, step)?;
            }
            RunExit::Waiting { until_ms, .. } => {
                let wait = until_ms.saturating_sub(runbox_core::time::now_ms());
                if wait > 60_000 {
                    return Ok(exit);
                }
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
            _ => return Ok(exit),
        }
    }
}

/// As many testers as the step needs sign its approval: its named
/// approvers when it names them, else `tester1`, `tester2`, ….
fn approve(engine: &Engine, humans: &TestHumans, rb: &LoadedRunbook, step: &str) -> Result<()> {
    let spec = rb.step(step).context("the runbook lost a step")?;
    let names: Vec<String> = if spec.approvers.is_empty() {
        (1..=spec.approvals).map(|i| format!("tester{i}")).collect()
    } else {
        spec.approvers
            .iter()
            .take(spec.approvals as usize)
            .cloned()
            .collect()
    };
    for name in &names {
        let statement = engine.humans().statement(&Request {
            action: Action::Approve,
            incident: "TEST-1",
            step: Some(step),
            outcome: None,
            signer: name,
            ttl: DEFAULT_TTL,
        })?;
        engine
            .humans()
            .decide(&humans.sign(name, &statement.to_text()))?;
    }
    Ok(())
}

/// One line per committed attempt: `diagnose#1 ok {"class":"down"} ->
/// check_budget [http_probe rc 0]`.
fn print_record(r: &StepRecord) -> Result<()> {
    let said = match (&r.output, &r.reason, &r.error) {
        (_, _, Some(e)) => Some(format!("error {e}")),
        (Some(o), _, _) => Some(o.to_string()),
        (_, Some(reason), _) => Some(format!("{reason:?}")),
        _ => None,
    };
    let tools: Vec<String> = r
        .tool_calls
        .iter()
        .map(|c| format!("{} rc {}", c.name, c.rc))
        .collect();
    let mut line = format!("  {}#{} {}", r.step, r.attempt, r.outcome.as_str());
    if let Some(said) = said {
        line = format!("{line} {said}");
    }
    line = format!("{line} -> {}", r.next.as_deref().unwrap_or("-"));
    if !tools.is_empty() {
        line = format!("{line} [{}]", tools.join(", "));
    }
    outln!("{line}");
    Ok(())
}

fn check(
    expect: &Expect,
    status: Status,
    records: &[StepRecord],
    kv: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(want) = expect.status
        && want != status
    {
        problems.push(format!("status: expected {want}, got {status}"));
    }
    let visited: Vec<&str> = records.iter().map(|r| r.step.as_str()).collect();
    if let Some(want) = &expect.steps
        && want.iter().map(String::as_str).collect::<Vec<_>>() != visited
    {
        problems.push(format!("steps: expected {want:?}, got {visited:?}"));
    }
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    for (key, want) in expect.kv.to_bytes() {
        let got = kv.get(&key);
        if got != Some(&want) {
            problems.push(format!(
                "kv `{key}`: expected {:?}, got {}",
                text(&want),
                got.map_or("nothing".to_string(), |v| format!("{:?}", text(v)))
            ));
        }
    }
    problems
}
