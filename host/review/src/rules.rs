//! The review's rules: one function per kind of finding, each reading only
//! the runbook, the tools file and the module's own sections.

use std::collections::BTreeSet;
use std::path::Path;

use runbox_core::attempt::ErrorCategory;
use runbox_core::runbook::{Impact, StepSpec};
use runbox_core::template::Template;
use runbox_core::tools::Modes;
use runbox_core::tools::{ArgSpec, ToolMode, ToolSpec};
use runbox_sandbox::{Capabilities, PrepareError, Sandbox};

use crate::{Capability, Code, Finding, RunbookFiles};

/// Whether the sandbox loads the step under its grants, with every
/// capability its grants allow (token and mode are run-time matters): the
/// same check `open` makes, so review and runtime cannot disagree.
pub(crate) fn verdict(
    sandbox: &Sandbox,
    files: &RunbookFiles,
    step: &StepSpec,
) -> Result<(), PrepareError> {
    let module = files.module(&step.id);
    let Ok(bytes) = &module.bytes else {
        return Ok(()); // reported as `module-unreadable`
    };
    let caps = Capabilities {
        allow_mutate: true,
        read_only: false,
    };
    sandbox
        .prepare(&step.id, bytes, &step.policy(), files.tools.clone(), caps)
        .map(drop)
}

/// Every finding about one step.
pub(crate) fn step_findings(
    files: &RunbookFiles,
    step: &StepSpec,
    verdict: &Result<(), PrepareError>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    module_findings(files, step, verdict, &mut out);
    memory_finding(files, step, &mut out);
    grant_findings(files, step, &mut out);
    safety_findings(files, step, &mut out);
    out
}

fn module_findings(
    files: &RunbookFiles,
    step: &StepSpec,
    verdict: &Result<(), PrepareError>,
    out: &mut Vec<Finding>,
) {
    let id = step.id.as_str();
    let module = files.module(id);
    if let Err(why) = &module.bytes {
        out.push(Finding::step(Code::ModuleUnreadable, id, why.clone()));
    }
    match verdict {
        Ok(()) => {}
        Err(PrepareError::Module(e)) => {
            let code = match e.category {
                ErrorCategory::DeniedImport => Code::UngrantedImport,
                _ => Code::InvalidModule,
            };
            out.push(Finding::step(code, id, e.message.clone()));
        }
        // An unknown tool is reported by name below; `review_files` fails
        // on any other host error before findings are made.
        Err(PrepareError::Host(_)) => {}
    }
    match (&step.sha256, &module.sha256) {
        (Some(pin), Some(sha)) if !pin.eq_ignore_ascii_case(sha) => out.push(
            Finding::step(
                Code::PinMismatch,
                id,
                format!(
                    "{} has sha256 {sha}, but the runbook pins {pin}: rebuild the reviewed module, or review this one and run `runbox pin`",
                    module.path.display()
                ),
            )
            .change(pin, sha),
        ),
        (None, _) => out.push(Finding::step(
            Code::Unpinned,
            id,
            format!(
                "no sha256 pin: whatever is at {} runs; `runbox pin` writes the reviewed digest into the runbook",
                step.module.display()
            ),
        )),
        _ => {}
    }
}

/// A module whose initial memory is over its limit loads, but every
/// attempt stops when the memory is made (category `memory`): say so at
/// review, with both numbers.
fn memory_finding(files: &RunbookFiles, step: &StepSpec, out: &mut Vec<Finding>) {
    let Some(caps) = &files.module(&step.id).caps else {
        return;
    };
    let limit = step.limits.memory_bytes() as u64;
    for memory in caps.memories.iter().filter(|m| !m.imported) {
        let initial = memory.initial_pages.saturating_mul(memory.page_bytes);
        if initial > limit {
            out.push(Finding::step(
                Code::MemoryOverLimit,
                &step.id,
                format!(
                    "the module asks for {initial} bytes ({:.1} MiB, {} pages) of initial memory, but limits.memory_mib is {} ({limit} bytes): every attempt would stop with `memory`; raise memory_mib or build the module with less (a smaller stack or heap)",
                    initial as f64 / (1024.0 * 1024.0),
                    memory.initial_pages,
                    step.limits.memory_mib,
                ),
            ));
        }
    }
}

pub(crate) fn unknown_tools<'a>(
    files: &'a RunbookFiles,
    step: &'a StepSpec,
) -> impl Iterator<Item = &'a str> {
    step.grants
        .tools
        .iter()
        .map(String::as_str)
        .filter(|t| files.tools.get(t).is_none())
}

/// The capabilities a step's grants link (with the mutation token).
pub(crate) fn granted_capabilities(files: &RunbookFiles, step: &StepSpec) -> BTreeSet<Capability> {
    let Modes { read, mutate } = files.tools.modes(&step.grants);
    [
        (!step.grants.kv_read.is_empty(), Capability::KvRead),
        (!step.grants.kv_write.is_empty(), Capability::KvWrite),
        (read, Capability::ToolRead),
        (mutate, Capability::ToolMutate),
    ]
    .into_iter()
    .filter_map(|(granted, cap)| granted.then_some(cap))
    .collect()
}

fn grant_findings(files: &RunbookFiles, step: &StepSpec, out: &mut Vec<Finding>) {
    let id = step.id.as_str();
    for tool in unknown_tools(files, step) {
        let where_ = files
            .runbook
            .tools_path()
            .map_or("the runbook names no tools file".to_string(), |p| {
                p.display().to_string()
            });
        out.push(Finding::tool(
            Code::UnknownTool,
            Some(id),
            tool,
            format!("grants tool `{tool}`, which is not in {where_}"),
        ));
    }
    let shared = runbox_core::limits::SHARED_KEY;
    for pattern in &step.grants.kv_write {
        let rest = pattern.strip_prefix(shared).unwrap_or(pattern);
        if !rest.is_empty() && rest.chars().all(|c| c == '*' || c == '/') {
            out.push(Finding::step(
                Code::BareKvWrite,
                id,
                format!(
                    "kv_write pattern `{pattern}` lets the step write any key: name the keys (e.g. `svc/{{service}}/restarts`)"
                ),
            ));
        }
    }
    param_plane_findings(files, step, out);
    let reads: Vec<&String> = step
        .grants
        .kv_read
        .iter()
        .filter(|p| p.starts_with(shared))
        .collect();
    let writes: Vec<&String> = step
        .grants
        .kv_write
        .iter()
        .filter(|p| p.starts_with(shared))
        .collect();
    if !reads.is_empty() || !writes.is_empty() {
        out.push(Finding::step(
            Code::SharedKv,
            id,
            format!(
                "reaches state shared across incidents: reads {reads:?}, writes {writes:?} (committed with the step, fenced on what it read)"
            ),
        ));
    }
    if let Some(caps) = &files.module(id).caps {
        let imported: BTreeSet<Capability> = caps.capabilities().collect();
        for cap in granted_capabilities(files, step).difference(&imported) {
            out.push(Finding::step(
                Code::OverGrant,
                id,
                format!(
                    "granted {} ({}) but the module never imports it: remove the grant",
                    cap,
                    grant_text(step, files, *cap)
                ),
            ));
        }
    }
}

/// KV patterns a parameter could move into the shared (or another) plane:
/// `{ns}:svc/**` where `ns` may be `shared`. A parameter whose allowed
/// values name no plane is safe, and not reported.
fn param_plane_findings(files: &RunbookFiles, step: &StepSpec, out: &mut Vec<Finding>) {
    let params = &files.runbook.runbook.params;
    let planes = ["shared", "incident"];
    let patterns = step.grants.kv_read.iter().chain(&step.grants.kv_write);
    for pattern in patterns.filter(|p| runbox_core::policy::plane_reachable_by_param(p)) {
        let leading = pattern
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
            .map_or("", |(name, _)| name);
        let bounded = params
            .get(leading)
            .and_then(|spec| spec.values.as_ref())
            .is_some_and(|values| !values.iter().any(|v| planes.contains(&v.as_str())));
        if bounded {
            continue;
        }
        out.push(Finding::step(
            Code::ParamPlane,
            &step.id,
            format!(
                "KV pattern `{pattern}` starts with parameter `{leading}`: a value such as `shared` would reach state shared across incidents. `open` refuses that value; give `{leading}` allowed `values`, or write the plane (`shared:…`) in the pattern"
            ),
        ));
    }
}

/// The grants behind a capability, as a reviewer reads them in the runbook.
fn grant_text(step: &StepSpec, files: &RunbookFiles, cap: Capability) -> String {
    let tools = |mode: ToolMode| {
        let names: Vec<_> = step
            .grants
            .tools
            .iter()
            .filter(|t| files.tools.get(t).is_some_and(|s| s.mode == mode))
            .map(String::as_str)
            .collect();
        format!("tools {names:?}")
    };
    match cap {
        Capability::KvRead => format!("kv_read {:?}", step.grants.kv_read),
        Capability::KvWrite => format!("kv_write {:?}", step.grants.kv_write),
        Capability::ToolRead => tools(ToolMode::Read),
        Capability::ToolMutate => tools(ToolMode::Mutate),
        _ => String::new(),
    }
}

fn safety_findings(files: &RunbookFiles, step: &StepSpec, out: &mut Vec<Finding>) {
    let id = step.id.as_str();
    let mutates = files.tools.modes(&step.grants).mutate;
    if mutates && step.impact != Impact::High {
        out.push(Finding::step(
            Code::MutatingWithoutApproval,
            id,
            "can call a mutating tool without a human's approval: set `impact = \"high\"`",
        ));
    }
    if mutates && !step.idempotent && step.max_retries > 0 {
        out.push(Finding::step(
            Code::RetriedMutation,
            id,
            format!(
                "not idempotent, calls mutating tools, and retries up to {} times: a failed attempt may have changed the world; set `max_retries = 0` or make it idempotent",
                step.max_retries
            ),
        ));
    }
    if !files.has_explicit_timeout(id) {
        out.push(Finding::step(
            Code::NoTimeout,
            id,
            format!(
                "no explicit `limits.timeout_ms`: the default {} ms applies; say how long this step may take",
                step.limits.timeout_ms
            ),
        ));
    }
    let l = &step.limits;
    out.push(Finding::step(
        Code::Limits,
        id,
        format!(
            "timeout {} ms, memory {} MiB, stack {} KiB, output {} B, {} KV calls, {} tool calls",
            l.timeout_ms, l.memory_mib, l.stack_kib, l.output_bytes, l.kv_ops, l.tool_calls
        ),
    ));
    out.push(Finding::step(
        Code::Approval,
        id,
        match step.impact {
            Impact::High => format!(
                "impact high: each attempt waits for {} signed approval(s) by {}",
                step.approvals,
                if step.approvers.is_empty() {
                    "any human in allowed_signers".to_string()
                } else {
                    step.approvers.join(", ")
                }
            ),
            Impact::Low => "impact low: runs without approval".to_string(),
        },
    ));
    if step.max_retries > 0 {
        let b = &step.backoff;
        out.push(Finding::step(
            Code::Retries,
            id,
            format!(
                "up to {} retries, backoff from {} ms ×{} up to {} ms",
                step.max_retries, b.initial_ms, b.factor, b.max_ms
            ),
        ));
    }
    if step.cooldown_ms > 0 {
        out.push(Finding::step(
            Code::Cooldown,
            id,
            format!(
                "waits {} ms after the last destructive step",
                step.cooldown_ms
            ),
        ));
    }
    if step.idempotent {
        out.push(Finding::step(
            Code::Idempotent,
            id,
            "declared idempotent: an attempt in doubt after a crash is re-run without a human",
        ));
    }
}

/// Findings about the tools granted to any step, once per tool.
pub(crate) fn tool_findings(files: &RunbookFiles) -> Vec<Finding> {
    let granted = files.granted_tools();
    let mut out = Vec::new();
    for name in granted {
        let Some(spec) = files.tools.get(name) else {
            continue;
        };
        shell_finding(name, spec, &mut out);
        for (arg, arg_spec) in &spec.args {
            let unbounded = match arg_spec {
                ArgSpec::String { values, .. } => values.is_none().then_some("any string"),
                ArgSpec::Integer { min, max } => {
                    (min.is_none() || max.is_none()).then_some("an unbounded integer")
                }
                ArgSpec::Boolean => None,
            };
            if let Some(what) = unbounded {
                out.push(Finding::tool(
                    Code::UnboundedToolArg,
                    None,
                    name,
                    format!(
                        "argument `{arg}` accepts {what}: give allowed `values` (strings) or `min` and `max` (integers)"
                    ),
                ));
            }
        }
    }
    out
}

/// Programs that run inline code given after a flag: (program, flag letter).
const INLINE_CODE: &[(&str, char)] = &[
    ("sh", 'c'),
    ("bash", 'c'),
    ("dash", 'c'),
    ("zsh", 'c'),
    ("ksh", 'c'),
    ("ash", 'c'),
    ("busybox", 'c'),
    ("python", 'c'),
    ("python3", 'c'),
    ("perl", 'e'),
    ("ruby", 'e'),
    ("node", 'e'),
];

fn shell_finding(name: &str, spec: &ToolSpec, out: &mut Vec<Finding>) {
    let Some(script) = inline_script(&spec.argv) else {
        return;
    };
    let params: Vec<String> = Template::parse(script)
        .map(|t| t.params().map(str::to_string).collect())
        .unwrap_or_default();
    if params.is_empty() {
        out.push(Finding::tool(
            Code::ShellScript,
            None,
            name,
            format!("runs inline code `{}`", spec.argv.join(" ")),
        ));
    } else {
        out.push(Finding::tool(
            Code::ShellScriptParam,
            None,
            name,
            format!(
                "puts {} inside inline code (`{}`): a value becomes code; pass it as a separate argv entry (`sh -c 'cmd \"$1\"' sh {{arg}}`)",
                params.iter().map(|p| format!("`{{{p}}}`")).collect::<Vec<_>>().join(", "),
                spec.argv.join(" ")
            ),
        ));
    }
}

/// The inline script of an argv that runs a shell or interpreter with
/// `-c`/`-e` (also through `env`), if any.
fn inline_script(argv: &[String]) -> Option<&str> {
    let program = |s: &str| {
        Path::new(s)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut rest = argv;
    while let Some(first) = rest.first()
        && program(first) == "env"
    {
        rest = &rest[1..];
        while rest
            .first()
            .is_some_and(|a| a.starts_with('-') || a.contains('='))
        {
            rest = &rest[1..];
        }
    }
    let (first, args) = rest.split_first()?;
    let name = program(first);
    let flag = INLINE_CODE
        .iter()
        .find(|(p, _)| {
            *p == name
                || name
                    .strip_prefix(p)
                    .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        })?
        .1;
    // Options come first; the first operand (a script file) ends them.
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if !arg.starts_with('-') || arg.starts_with("--") {
            return None;
        }
        if arg.contains(flag) {
            return args.next().map(String::as_str);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::inline_script;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn inline_scripts_are_found_behind_env_flags_and_versions() {
        assert_eq!(inline_script(&argv("sh -c x")), Some("x"));
        assert_eq!(inline_script(&argv("/bin/bash -ec x")), Some("x"));
        assert_eq!(inline_script(&argv("env -i A=1 sh -c x")), Some("x"));
        assert_eq!(inline_script(&argv("python3.12 -c x")), Some("x"));
        assert_eq!(inline_script(&argv("perl -e x")), Some("x"));
        assert_eq!(inline_script(&argv("sh script.sh -c x")), None);
        assert_eq!(inline_script(&argv("systemctl restart x")), None);
        assert_eq!(inline_script(&argv("sh script.sh")), None);
    }
}
