//! The postmortem as Markdown: the step table, what the steps said, the
//! human decisions and the timeline.

use std::fmt::Write as _;

use runbox_core::inert::inert;
use runbox_core::records::timeline_line;
use runbox_core::text::count;
use runbox_core::time::format_ms;

use crate::postmortem::{Postmortem, StepView};
use crate::stamp::span;

/// Outside text in a code block: inert (one line, no control characters)
/// and no backtick, so it cannot close the fence or start a line of its own.
fn fenced(text: &str) -> String {
    inert(text).replace('`', "\\u0060")
}

/// Outside text inline (a list item, a table cell): an inert code span with
/// no backtick or pipe, so it cannot end the span, add a cell or a row, or
/// become a link or an image.
fn span_of(text: &str) -> String {
    format!("`{}`", fenced(text).replace('|', "\\|"))
}

/// What each attempt said: output or reason, error, and log lines, inert
/// and labelled with their step, so no step text can break out of its block.
fn step_details(out: &mut String, steps: &[StepView]) {
    let said: Vec<&StepView> = steps
        .iter()
        .filter(|r| {
            r.output.is_some() || r.reason.is_some() || r.error.is_some() || !r.logs.is_empty()
        })
        .collect();
    if said.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## What the steps said\n\n```");
    for r in said {
        let _ = writeln!(out, "{}#{}", r.step, r.attempt);
        let from = format!("from step {}", r.step);
        if let Some(output) = &r.output {
            let _ = writeln!(out, "  output {from}: {}", fenced(&output.to_string()));
        }
        if let Some(reason) = &r.reason {
            let _ = writeln!(out, "  reason {from}: {}", fenced(reason));
        }
        if let Some(error) = &r.error {
            let category = r.error_category.map_or("", |c| c.as_str());
            let _ = writeln!(out, "  error  {}", fenced(&format!("{category}: {error}")));
        }
        for log in &r.logs {
            let _ = writeln!(
                out,
                "  log    {} {from}: {}",
                log.level,
                fenced(&log.message)
            );
        }
    }
    let _ = writeln!(out, "```");
}

/// The trace each attempt ran in, when traces were exported: where to look
/// in the trace backend.
fn traces(out: &mut String, steps: &[StepView]) {
    let traced: Vec<(&StepView, &str)> = steps
        .iter()
        .filter_map(|r| Some((r, r.trace_id.as_deref()?)))
        .collect();
    if traced.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Traces\n");
    for (r, trace) in traced {
        let _ = writeln!(out, "- {}#{}: trace {}", r.step, r.attempt, span_of(trace));
    }
}

/// Renders a postmortem as Markdown.
pub fn markdown(p: &Postmortem) -> String {
    let mut out = String::new();
    let i = &p.incident;
    let f = &p.figures;
    let _ = writeln!(out, "# Incident {} ({})\n", i.id, p.runbook.name);
    let _ = writeln!(out, "- status: **{}**, owner: {}", i.status, i.owner);
    let params: Vec<String> = p
        .params
        .iter()
        .map(|(k, v)| format!("{k}={}", span_of(v)))
        .collect();
    let _ = writeln!(out, "- params: {}", params.join(", "));
    let _ = writeln!(
        out,
        "- opened {} by {}; {} so far, agent {}, human {}{}",
        format_ms(i.opened_ms),
        i.opened_by,
        span(f.span_ms),
        span(f.agent_ms),
        span(f.human_ms),
        f.time_to_resolve_ms
            .map(|t| format!(", resolved in {}", span(t)))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "- {}, {}, {} in doubt, {}, {} (waited {}), {}, {}",
        count(f.attempts, "attempt"),
        count(f.retries, "retry"),
        f.in_doubt,
        count(f.escalations, "escalation"),
        count(f.approvals, "approval"),
        span(f.approval_wait_ms),
        count(f.denials, "denial"),
        count(f.overrides, "override")
    );
    if let Some(why) = &i.why {
        let _ = writeln!(out, "- last word: {}", span_of(why));
    }
    let _ = writeln!(out, "\n## Steps\n");
    let _ = writeln!(
        out,
        "| step | action | attempt | start | end | outcome | tool rc | error | override | actor | next |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---|---|---:|---|---|---|---|");
    for r in &p.steps {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.step,
            r.action,
            r.attempt,
            format_ms(r.started_ms),
            format_ms(r.ended_ms),
            r.outcome.as_str(),
            r.tool_calls
                .last()
                .map(|c| c.rc.to_string())
                .unwrap_or_else(|| "-".into()),
            r.error_category.map_or("-", |c| c.as_str()),
            if r.human_override { "yes" } else { "no" },
            r.actor,
            r.next.as_deref().unwrap_or("-"),
        );
    }
    step_details(&mut out, &p.steps);
    traces(&mut out, &p.steps);
    if !p.decisions.is_empty() {
        let _ = writeln!(out, "\n## Human decisions\n");
        let _ = writeln!(out, "| # | when | decision | step | by | key | signature |");
        let _ = writeln!(out, "|---:|---|---|---|---|---|---|");
        for d in &p.decisions {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                d.seq,
                format_ms(d.at_ms),
                d.kind.as_str(),
                d.step.as_deref().unwrap_or(""),
                d.by,
                key_of(d),
                match (&d.problem, d.verified) {
                    (_, true) => "verified".to_string(),
                    (Some(why), false) => format!("NOT VERIFIED: {}", span_of(why)),
                    (None, false) => "NOT VERIFIED".to_string(),
                }
            );
        }
    }
    let _ = writeln!(out, "\n## Timeline\n\n```");
    for e in &p.timeline {
        let line = timeline_line(
            e.seq,
            e.at_ms,
            e.kind,
            &e.actor,
            (e.step.as_deref(), e.attempt),
            &e.message,
        );
        let _ = writeln!(out, "{}", fenced(&line));
    }
    let _ = writeln!(out, "```");
    out
}

/// The key of a decision: its fingerprint, and its name when it has one.
fn key_of(d: &crate::postmortem::DecisionView) -> String {
    let fingerprint = d.fingerprint.as_deref().unwrap_or("-");
    match &d.key_label {
        Some(label) => format!("{fingerprint} ({label})"),
        None => fingerprint.to_string(),
    }
}
