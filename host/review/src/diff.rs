//! What a change to a runbook adds and removes, step by step: the review a
//! pull request needs. Every widening is a warning; every narrowing is info.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::Serialize;

use runbox_core::policy::Params;
use runbox_core::runbook::{Impact, StepSpec};
use runbox_core::template::{Template, fill_known};

use crate::rules::granted_capabilities;
use crate::{Code, Finding, RunbookFiles, Summary};

/// The schema name of [`Diff`] JSON.
pub const DIFF_SCHEMA: &str = "runbox.review-diff/v1";

/// The differences between two versions of a runbook.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Diff {
    /// `runbox.review-diff/v1`.
    pub schema: String,
    /// The version before.
    pub old: Side,
    /// The version after.
    pub new: Side,
    /// What changed, in the new runbook's step order; tool changes last.
    pub findings: Vec<Finding>,
    /// Counts by severity.
    pub summary: Summary,
}

/// One version of the runbook.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Side {
    /// The runbook's name.
    pub runbook: String,
    /// The file.
    pub path: String,
    /// `working tree` or `revision REV`.
    pub source: String,
}

impl Side {
    fn of(files: &RunbookFiles) -> Self {
        Side {
            runbook: files.runbook.runbook.runbook.name.clone(),
            path: files.runbook.path.display().to_string(),
            source: files.source.label(),
        }
    }
}

/// Compares two versions of a runbook.
pub fn diff(old: &RunbookFiles, new: &RunbookFiles) -> Diff {
    let mut findings = Vec::new();
    for step in &new.runbook.runbook.steps {
        match old.runbook.step(&step.id) {
            None => findings.push(added(new, step)),
            Some(before) => step_diff(old, before, new, step, &mut findings),
        }
    }
    for step in &old.runbook.runbook.steps {
        if new.runbook.step(&step.id).is_none() {
            findings.push(Finding::step(
                Code::StepRemoved,
                &step.id,
                format!("step `{}` is gone", step.id),
            ));
        }
    }
    tool_diff(old, new, &mut findings);
    Diff {
        schema: DIFF_SCHEMA.to_string(),
        old: Side::of(old),
        new: Side::of(new),
        summary: Summary::of(&findings),
        findings,
    }
}

fn added(files: &RunbookFiles, step: &StepSpec) -> Finding {
    let caps: Vec<_> = granted_capabilities(files, step)
        .iter()
        .map(ToString::to_string)
        .collect();
    Finding::step(
        Code::StepAdded,
        &step.id,
        format!(
            "new step `{}`: capabilities [{}], kv_read {:?}, kv_write {:?}, tools {:?}, impact {}, module sha256 {}",
            step.id,
            caps.join(", "),
            step.grants.kv_read,
            step.grants.kv_write,
            step.grants.tools,
            step.impact,
            files
                .module(&step.id)
                .sha256
                .as_deref()
                .unwrap_or("unreadable"),
        ),
    )
}

fn step_diff(
    old: &RunbookFiles,
    before: &StepSpec,
    new: &RunbookFiles,
    after: &StepSpec,
    out: &mut Vec<Finding>,
) {
    let id = after.id.as_str();
    let (was, now) = (
        granted_capabilities(old, before),
        granted_capabilities(new, after),
    );
    for cap in now.difference(&was) {
        out.push(Finding::step(
            Code::CapabilityAdded,
            id,
            format!("gains capability {cap}"),
        ));
    }
    for cap in was.difference(&now) {
        out.push(Finding::step(
            Code::CapabilityRemoved,
            id,
            format!("loses capability {cap}"),
        ));
    }
    patterns(
        "kv_read",
        &before.grants.kv_read,
        &after.grants.kv_read,
        id,
        out,
    );
    patterns(
        "kv_write",
        &before.grants.kv_write,
        &after.grants.kv_write,
        id,
        out,
    );
    tools(new, before, after, out);
    safety(before, after, out);
    module(old, before, new, after, out);
    limits(before, after, out);
    for p in before
        .preconditions
        .iter()
        .filter(|p| !after.preconditions.contains(p))
    {
        out.push(Finding::step(
            Code::PreconditionRemoved,
            id,
            format!(
                "precondition {} is no longer checked",
                serde_json::to_string(p).unwrap_or_default()
            ),
        ));
    }
}

/// New patterns the old ones do not cover are widenings; patterns gone are
/// narrowings. Coverage is checked by matching the old globs against the
/// new pattern's own text, with each `{param}` standing for itself.
fn patterns(field: &str, before: &[String], after: &[String], id: &str, out: &mut Vec<Finding>) {
    let params: Params = before
        .iter()
        .chain(after)
        .filter_map(|p| Template::parse(p).ok())
        .flat_map(|t| {
            t.params()
                .map(|p| (p.to_string(), format!("_{p}_")))
                .collect::<Vec<_>>()
        })
        .collect();
    for p in after.iter().filter(|p| !before.contains(p)) {
        let new = fill_known(p, &params);
        let covered = before
            .iter()
            .any(|old| covers(&fill_known(old, &params), &new));
        if !covered {
            out.push(
                Finding::step(
                    Code::KvPatternWidened,
                    id,
                    format!("{field} adds `{p}`, which no old pattern covers"),
                )
                .change(format!("{before:?}"), format!("{after:?}")),
            );
        }
    }
    for p in before.iter().filter(|p| !after.contains(p)) {
        out.push(Finding::step(
            Code::KvPatternRemoved,
            id,
            format!("{field} drops `{p}`"),
        ));
    }
}

/// Whether the key pattern `old` matches every key `new` matches: segment
/// by segment, where only an old `**` covers a new `**` (or any run of
/// segments) and an old `*` covers any one segment of text.
fn covers(old: &str, new: &str) -> bool {
    let o: Vec<&str> = old.split('/').collect();
    let n: Vec<&str> = new.split('/').collect();
    segments_cover(&o, &n)
}

fn segments_cover(o: &[&str], n: &[&str]) -> bool {
    match (o.split_first(), n.split_first()) {
        (None, None) => true,
        (Some((&"**", rest)), _) => (0..=n.len()).any(|k| segments_cover(rest, &n[k..])),
        (Some((os, orest)), Some((ns, nrest))) => {
            !ns.contains("**")
                && wildcard(os.as_bytes(), ns.as_bytes())
                && segments_cover(orest, nrest)
        }
        _ => false,
    }
}

/// `*` in `pattern` matches any run of `text` (whose own `*`s are text).
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|k| wildcard(rest, &text[k..])),
        Some((c, rest)) => text.first() == Some(c) && wildcard(rest, &text[1..]),
    }
}

fn tools(new: &RunbookFiles, before: &StepSpec, after: &StepSpec, out: &mut Vec<Finding>) {
    let id = after.id.as_str();
    for t in after
        .grants
        .tools
        .iter()
        .filter(|t| !before.grants.tools.contains(t))
    {
        let mode = new
            .tools
            .get(t)
            .map_or("unknown".to_string(), |s| s.mode.to_string());
        out.push(Finding::tool(
            Code::ToolAdded,
            Some(id),
            t,
            format!("may now call tool `{t}` (mode {mode})"),
        ));
    }
    for t in before
        .grants
        .tools
        .iter()
        .filter(|t| !after.grants.tools.contains(t))
    {
        out.push(Finding::tool(
            Code::ToolRemoved,
            Some(id),
            t,
            format!("may no longer call `{t}`"),
        ));
    }
}

fn safety(before: &StepSpec, after: &StepSpec, out: &mut Vec<Finding>) {
    let id = after.id.as_str();
    let mut push = |code, message: String, old: String, new: String| {
        out.push(Finding::step(code, id, message).change(old, new));
    };
    match (before.impact, after.impact) {
        (Impact::High, Impact::Low) => push(
            Code::ApprovalLowered,
            "impact lowered from high to low: attempts no longer wait for a human's approval"
                .into(),
            "high".into(),
            "low".into(),
        ),
        (Impact::Low, Impact::High) => push(
            Code::ApprovalRaised,
            "impact raised to high: each attempt needs a human's approval".into(),
            "low".into(),
            "high".into(),
        ),
        _ => {}
    }
    if before.impact == Impact::High && after.impact == Impact::High {
        let (a0, a1) = (before.approvals, after.approvals);
        if a1 < a0 {
            push(
                Code::ApprovalLowered,
                format!("approvals {a0} → {a1}: fewer humans must approve"),
                a0.to_string(),
                a1.to_string(),
            );
        }
        let names = |s: &StepSpec| {
            if s.approvers.is_empty() {
                "any human".to_string()
            } else {
                s.approvers.join(", ")
            }
        };
        let widened = !before.approvers.is_empty()
            && (after.approvers.is_empty()
                || after
                    .approvers
                    .iter()
                    .any(|a| !before.approvers.contains(a)));
        if widened {
            push(
                Code::ApprovalLowered,
                format!("approvers widened: {} → {}", names(before), names(after)),
                names(before),
                names(after),
            );
        }
    }
    let (r0, r1) = (before.max_retries, after.max_retries);
    if r1 != r0 {
        let code = if r1 > r0 {
            Code::RetriesRaised
        } else {
            Code::RetriesLowered
        };
        push(
            code,
            format!("max_retries {r0} → {r1}"),
            r0.to_string(),
            r1.to_string(),
        );
    }
    let (c0, c1) = (before.cooldown_ms, after.cooldown_ms);
    if c1 != c0 {
        let code = if c1 < c0 {
            Code::CooldownShortened
        } else {
            Code::CooldownLengthened
        };
        push(
            code,
            format!("cooldown_ms {c0} → {c1}"),
            c0.to_string(),
            c1.to_string(),
        );
    }
    match (before.idempotent, after.idempotent) {
        (false, true) => push(
            Code::IdempotentDeclared,
            "now declared idempotent: an attempt in doubt re-runs without a human".into(),
            "false".into(),
            "true".into(),
        ),
        (true, false) => push(
            Code::IdempotentWithdrawn,
            "no longer idempotent: an attempt in doubt escalates".into(),
            "true".into(),
            "false".into(),
        ),
        _ => {}
    }
    match (&before.sha256, &after.sha256) {
        (Some(pin), None) => push(
            Code::PinRemoved,
            "the module pin was removed: any module at that path would run".into(),
            pin.clone(),
            "none".into(),
        ),
        (None, Some(pin)) => push(
            Code::PinAdded,
            "the module is pinned".into(),
            "none".into(),
            pin.clone(),
        ),
        _ => {}
    }
}

fn module(
    old: &RunbookFiles,
    before: &StepSpec,
    new: &RunbookFiles,
    after: &StepSpec,
    out: &mut Vec<Finding>,
) {
    let (m0, m1) = (old.module(&before.id), new.module(&after.id));
    if m0.sha256 == m1.sha256 && m0.sha256.is_some() {
        return;
    }
    let imports = |m: &crate::files::ModuleFile| -> BTreeSet<String> {
        m.caps
            .as_ref()
            .map(|c| c.import_names().into_iter().collect())
            .unwrap_or_default()
    };
    let (i0, i1) = (imports(m0), imports(m1));
    let list = |s: Vec<&String>| {
        if s.is_empty() {
            "none".to_string()
        } else {
            s.into_iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let digest =
        |m: &crate::files::ModuleFile| m.sha256.clone().unwrap_or_else(|| "unreadable".into());
    out.push(
        Finding::step(
            Code::ModuleChanged,
            &after.id,
            format!(
                "module changed ({} → {}): imports added: {}; removed: {}",
                before.module.display(),
                after.module.display(),
                list(i1.difference(&i0).collect()),
                list(i0.difference(&i1).collect()),
            ),
        )
        .change(digest(m0), digest(m1)),
    );
}

fn limits(before: &StepSpec, after: &StepSpec, out: &mut Vec<Finding>) {
    let fields = |s: &StepSpec| -> BTreeMap<String, u64> {
        serde_json::to_value(s.limits)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    };
    let (f0, f1) = (fields(before), fields(after));
    for (field, v1) in &f1 {
        let v0 = f0.get(field).copied().unwrap_or_default();
        if *v1 != v0 {
            let code = if *v1 > v0 {
                Code::LimitRaised
            } else {
                Code::LimitLowered
            };
            out.push(
                Finding::step(code, &after.id, format!("limits.{field} {v0} → {v1}"))
                    .change(v0, v1),
            );
        }
    }
}

/// Changes to the tools any step of the new runbook may call, once per tool.
fn tool_diff(old: &RunbookFiles, new: &RunbookFiles, out: &mut Vec<Finding>) {
    let granted = new.granted_tools();
    for name in granted {
        let (Some(t0), Some(t1)) = (old.tools.get(name), new.tools.get(name)) else {
            continue;
        };
        if t0.mode != t1.mode {
            let code = match t1.mode {
                runbox_core::tools::ToolMode::Mutate => Code::ToolNowMutates,
                runbox_core::tools::ToolMode::Read => Code::ToolNowReads,
            };
            out.push(
                Finding::tool(code, None, name, format!("mode {} → {}", t0.mode, t1.mode))
                    .change(t0.mode, t1.mode),
            );
        }
        let command = |t: &runbox_core::tools::ToolSpec| serde_json::json!({"argv": t.argv, "args": t.args, "env": t.env, "timeout_ms": t.timeout_ms, "output_bytes": t.output_bytes});
        if command(t0) != command(t1) {
            out.push(
                Finding::tool(
                    Code::ToolCommandChanged,
                    None,
                    name,
                    format!(
                        "command changed: `{}` → `{}`",
                        t0.argv.join(" "),
                        t1.argv.join(" ")
                    ),
                )
                .change(command(t0), command(t1)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn only_an_old_double_star_covers_a_new_one() {
        assert!(covers("svc/_s_/*", "svc/_s_/restarts"));
        assert!(covers("svc/*/restarts", "svc/_s_/restarts"));
        assert!(covers("svc/**", "svc/a/b/**"));
        assert!(!covers("svc/_s_/*", "svc/_s_/**"), "* to ** widens");
        assert!(!covers("a/*/c", "a/**/c"));
        assert!(!covers("svc/_s_/restarts", "svc/*/restarts"));
        assert!(!covers("svc/_s_/*", "svc/_s_/a/b"));
    }
}
