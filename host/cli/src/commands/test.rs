//! `runbox test RUNBOOK --case CASE.toml…`: a whole runbook run in memory
//! with scripted tool answers: no store on disk, no real tool, no side
//! effect. A case gives params, a KV seed, what each tool answers (one
//! answer or a sequence whose last repeats), which steps a tester approves,
//! and what to expect: the final status, the steps visited, KV after.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use runbox_core::records::StepRecord;
use runbox_core::runbook::LoadedRunbook;
use runbox_engine::decision::{DEFAULT_TTL, Request};
use runbox_engine::{Engine, RunExit, RunOptions, TokenAuth};
use runbox_sandbox::{Sandbox, SandboxConfig, ScriptedAnswer, ToolScript};
use runbox_store::MemoryStore;
use runbox_trust::Action;
use runbox_trust::testing::TestHumans;
use serde::Deserialize;

use crate::output::outln;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when every case meets its expectations, 1 when one does \
not, 2 when a runbook or case cannot be read.\n\n\
A case file:\n\n  \
[params]\n  service = \"api\"\n  \
[kv]                          # step KV seeded at open\n  \"svc/api/restarts\" = \"1\"\n  \
[tools.http_probe]            # a sequence; the last answer repeats\n  \
answers = [{ stdout = \"503\" }, { stdout = \"200\" }]\n  \
[tools.restart_service]       # one answer: rc, stdout, stderr\n  rc = 0\n  \
approve = [\"restart\"]          # steps a tester approves when asked\n  \
[expect]\n  status = \"resolved\"\n  steps = [\"diagnose\", \"check_budget\", \"restart\", \"verify\"]\n  \
kv = { \"svc/api/restarts\" = \"2\" }"
)]
pub(crate) struct Args {
    /// The runbook.
    runbook: PathBuf,
    /// Case files (TOML).
    #[arg(long = "case", required = true, num_args = 1..)]
    cases: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case shows.
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    /// Step KV at open: strings as they are, anything else as its JSON text.
    #[serde(default)]
    kv: BTreeMap<String, toml::Value>,
    #[serde(default)]
    tools: BTreeMap<String, ToolCase>,
    /// Steps a tester approves each time they wait for approval.
    #[serde(default)]
    approve: Vec<String>,
    #[serde(default)]
    expect: Expect,
}

/// One answer (`rc`, `stdout`, `stderr`), or a sequence of them
/// (`answers`) whose last repeats.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCase {
    #[serde(default)]
    answers: Option<Vec<ScriptedAnswer>>,
    #[serde(default)]
    rc: i32,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    status: Option<String>,
    steps: Option<Vec<String>>,
    #[serde(default)]
    kv: BTreeMap<String, String>,
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
    outln!("case {} {}", path.display(), case.description);
    let dir = tempfile::tempdir()?;
    let humans = TestHumans::new(dir.path().join("allowed_signers"));
    let script = Arc::new(ToolScript::new(
        case.tools
            .iter()
            .map(|(name, t)| {
                let one = ScriptedAnswer {
                    rc: t.rc,
                    stdout: t.stdout.clone(),
                    stderr: t.stderr.clone(),
                };
                (name.clone(), t.answers.clone().unwrap_or_else(|| vec![one]))
            })
            .collect(),
    ));
    let engine = Engine::new(Arc::new(MemoryStore::new()), sandbox.clone())
        .with_allowed_signers(humans.path())
        .with_tool_script(script);
    // The token first: no human is registered yet in this throwaway store.
    let token = engine.init_token(false, TokenAuth::None)?;
    let seed = case
        .kv
        .iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            (k.clone(), text.into_bytes())
        })
        .collect();
    engine.open_with_kv("TEST-1", runbook, &case.params, "agent:runbox-test", &seed)?;
    let rb = LoadedRunbook::load(runbook)?;
    let exit = drive(&engine, &humans, &rb, &case, token).await?;
    let records = engine.step_records("TEST-1")?;
    for r in &records {
        print_record(r)?;
    }
    let status = engine.view("TEST-1")?.status.to_string();
    outln!("  status {status} ({exit:?})");
    let kv: BTreeMap<String, String> = engine
        .kv("TEST-1")?
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    Ok(check(&case.expect, &status, &records, &kv))
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
        let exit = engine.run("TEST-1", &opts).await?;
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
        let statement = engine.statement(&Request {
            action: Action::Approve,
            incident: "TEST-1",
            step: Some(step),
            outcome: None,
            signer: name,
            ttl: DEFAULT_TTL,
        })?;
        engine.decide(&humans.sign(name, &statement.to_text()))?;
    }
    Ok(())
}

fn print_record(r: &StepRecord) -> Result<()> {
    let said = match (&r.output, &r.reason, &r.error) {
        (_, _, Some(e)) => format!("error {e}"),
        (Some(o), _, _) => o.to_string(),
        (_, Some(reason), _) => format!("{reason:?}"),
        _ => String::new(),
    };
    let tools: Vec<String> = r
        .tool_calls
        .iter()
        .map(|c| format!("{} rc {}", c.name, c.rc))
        .collect();
    outln!(
        "  {}#{} {} {said} -> {} [{}]",
        r.step,
        r.attempt,
        r.outcome.as_str(),
        r.next.as_deref().unwrap_or("-"),
        tools.join(", ")
    );
    Ok(())
}

fn check(
    expect: &Expect,
    status: &str,
    records: &[StepRecord],
    kv: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(want) = &expect.status
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
    for (key, want) in &expect.kv {
        let got = kv.get(key);
        if got != Some(want) {
            problems.push(format!("kv `{key}`: expected {want:?}, got {got:?}"));
        }
    }
    problems
}
