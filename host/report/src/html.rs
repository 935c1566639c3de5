//! Self-contained HTML pages: inline CSS and SVG, no script, no fetches.
//!
//! Every string that came from a step, a tool or a user is interpolated
//! through maud, which escapes it, so a step output of
//! `<script>alert(1)</script>` shows as text. The page also carries a
//! Content-Security-Policy that forbids scripts and fetches outright, in
//! case a future change ever let markup through.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use runbox_core::inert::inert;
use runbox_core::records::RecordOutcome;
use runbox_core::text::count;
use runbox_core::time::format_ms;

use crate::chart::{self, outcome_class};
use crate::patterns::{Patterns, RunbookPatterns, mix, p50_p95};
use crate::postmortem::{Postmortem, StepView};
use crate::stamp::span;

const CSS: &str = r#"
:root { --ok:#2e7d32; --retry:#f9a825; --escalate:#ef6c00; --fail:#c62828; --in-doubt:#6a1b9a; --skipped:#757575; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1b1b1b; max-width: 1400px; }
@media (max-width: 600px) { body { margin: 1em .6em; } }
time { white-space: nowrap; }
nav ul { list-style: none; padding: 0; margin: .4em 0; display: flex; flex-wrap: wrap; gap: 0 1.2em; }
.scroll { overflow-x: auto; max-width: 100%; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.summary { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 16px; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; word-break: break-all; max-height: 20em; overflow: auto; background: #fafafa; margin: 2px 0; }
.badge { color: #fff; border-radius: 3px; padding: 0 5px; white-space: nowrap; }
.badge.outcome-retry, .badge.outcome-escalate { color: #1b1b1b; }
.outcome-ok { fill: var(--ok); background: var(--ok); } .outcome-retry { fill: var(--retry); background: var(--retry); }
.outcome-escalate { fill: var(--escalate); background: var(--escalate); } .outcome-fail { fill: var(--fail); background: var(--fail); }
.outcome-in-doubt { fill: var(--in-doubt); background: var(--in-doubt); } .outcome-skipped { fill: var(--skipped); background: var(--skipped); }
.chart-scroll { overflow-x: auto; border: 1px solid #ddd; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
.lane:nth-child(odd) .lane-bg { fill: #fafafa; } .lane:nth-child(even) .lane-bg { fill: #f0f0f0; }
.owned { fill: #bbdefb; opacity: .55; }
.handoff { stroke: #1565c0; stroke-width: 2; stroke-dasharray: 4 2; }
.hold.cooldown { fill: #90a4ae; opacity: .6; } .hold.backoff { fill: #ffe082; opacity: .8; }
.wait { fill: #ffcc80; opacity: .55; stroke: #ef6c00; stroke-dasharray: 2 2; }
.mark { stroke: #000; stroke-width: .6; fill: #fff; }
.mark.approved { fill: var(--ok); } .mark.denied { fill: var(--fail); } .mark.escalated { fill: var(--escalate); }
.mark.takeover, .mark.handback { fill: #1565c0; }
.mark.human-resolve, .mark.human-retry, .mark.human-skip { fill: #7b1fa2; } .mark.approval-required { fill: #ffcc80; }
svg.overview, svg.histogram { max-width: 100%; height: auto; }
.attempt-group { fill: none; stroke: #333; stroke-width: 1; }
svg text.attempt-label { font-size: 11px; fill: #333; }
.tick { stroke: #ccc; } .tick-label { text-anchor: middle; fill: #666; }
.legend span { display: inline-block; margin-right: 12px; } .legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }
.bar { height: 14px; display: flex; min-width: 160px; } .bar i { display: block; height: 100%; }
"#;

/// The page around `body`: no script may run and nothing may be fetched.
fn page(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy"
                    content="default-src 'none'; style-src 'unsafe-inline'; img-src data:";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body { (body) }
        }
    }
    .into_string()
}

/// The postmortem of one incident as one self-contained HTML page: a
/// summary, the timeline chart, the step table, the human decisions and the
/// full event log.
pub fn html(p: &Postmortem) -> String {
    let title = format!("Incident {} — postmortem", p.incident.id);
    page(
        &title,
        html! {
            header {
                h1 { "Incident " (p.incident.id) }
                p { "Runbook " strong { (p.runbook.name) } " (sha256 " code { (p.runbook.sha256.get(..12).unwrap_or_default()) } "…), " (p.schema) }
                (contents(!p.decisions.is_empty()))
            }
            main {
                section #summary aria-label="Summary" { (summary(p)) }
                section #timeline { h2 { "Timeline" } (legend()) (chart::timeline(p)) }
                section #steps { h2 { "Steps" } (scroll("Steps", step_table(&p.steps))) }
                @if !p.decisions.is_empty() {
                    section #decisions { h2 { "Human decisions" } (scroll("Human decisions", decision_table(p))) }
                }
                section #events {
                    h2 { "Event log (" (count(p.timeline.len() as u64, "event")) ")" }
                    (scroll("Event log", event_table(p)))
                }
            }
        },
    )
}

/// The page's sections, to jump to.
fn contents(decisions: bool) -> Markup {
    html! {
        nav aria-label="Sections" {
            ul {
                li { a href="#timeline" { "Timeline" } }
                li { a href="#steps" { "Steps" } }
                @if decisions { li { a href="#decisions" { "Human decisions" } } }
                li { a href="#events" { "Event log" } }
            }
        }
    }
}

/// `content` (a wide table) scrolling sideways in its own box, so the page
/// itself fits a phone; the box takes keyboard focus, so it scrolls
/// without a mouse too.
fn scroll(name: &str, content: Markup) -> Markup {
    html! {
        div.scroll role="region" aria-label=(name) tabindex="0" { (content) }
    }
}

/// A time, kept on one line (RFC 3339 has hyphens a browser would break
/// at).
fn at(ms: u64) -> Markup {
    let t = format_ms(ms);
    html! { time datetime=(t) { (t) } }
}

fn summary(p: &Postmortem) -> Markup {
    let (i, f) = (&p.incident, &p.figures);
    html! {
        dl.summary {
            dt { "Status" } dd { strong { (i.status) } " — owner " (i.owner) @if i.dry_run { " (dry run)" } }
            @if let Some(why) = &i.why { dt { "Last word" } dd { (inert(why)) } }
            dt { "Opened" } dd { (at(i.opened_ms)) " by " (i.opened_by) }
            dt { "Duration" } dd { (span(f.span_ms)) @if let Some(t) = f.time_to_resolve_ms { " — resolved in " (span(t)) } }
            dt { "Agent / human time" } dd { (span(f.agent_ms)) " / " (span(f.human_ms)) }
            dt { "Attempts" } dd { (f.attempts) " (" (count(f.retries, "retry")) ", " (f.in_doubt) " in doubt, " (f.overrides) " decided by a human)" }
            dt { "Escalations" } dd { (f.escalations) }
            dt { "Approvals" } dd { (f.approvals) " given, " (f.denials) " denied, " (span(f.approval_wait_ms)) " waiting in all" }
            dt { "Params" } dd { @for (k, v) in &p.params { code { (k) "=" (inert(v)) } " " } }
            dt { "Owners" } dd {
                "agent:runbox from " (at(i.opened_ms))
                @for c in &p.owner_changes { "; " (c.to) " from " (at(c.at_ms)) " (" (c.kind.as_str()) " by " (c.by) ")" }
            }
        }
    }
}

fn legend() -> Markup {
    html! {
        p.legend {
            @for o in RecordOutcome::ALL {
                span { i class=(outcome_class(o)) {} (o.as_str().replace('-', " ")) }
            }
            span { "shaded: owner (blue), approval wait (orange), cooldown (grey), backoff (yellow); ◆ decisions and escalations" }
        }
    }
}

fn step_table(steps: &[StepView]) -> Markup {
    html! {
        table.steps {
            thead { tr { th { "step" } th { "#" } th { "action" } th { "actor" } th { "started" } th { "took" }
                th { "outcome" } th { "tools (mode rc)" } th { "error" } th { "override" } th { "approved by" } th { "next" } th { "said" } } }
            tbody {
                @for s in steps {
                    tr {
                        td { (s.step) @if let Some(t) = &s.trace_id { br; small title="OpenTelemetry trace id" { "trace " code { (t) } } } } td.num { (s.attempt) } td { (s.action) } td { (s.actor) }
                        td { (at(s.started_ms)) } td.num { (span(s.duration_ms)) }
                        td { span class={ "badge " (outcome_class(s.outcome)) } { (s.outcome.as_str()) } }
                        td { @for c in &s.tool_calls { (c.name) " (" (c.mode) " " (c.rc) ")" br; } }
                        td { @if let Some(c) = s.error_category { (c.as_str()) ": " } (s.error.as_deref().unwrap_or("")) }
                        td { @if s.human_override { "yes" } }
                        td { @for a in &s.approvals { (a.by) @if a.verified { " ✓" } @else { " (not verified)" } br; } }
                        td { (s.next.as_deref().unwrap_or("")) }
                        td { (said(s)) }
                    }
                }
            }
        }
    }
}

/// What an attempt said: output, reason, logs, refused calls.
fn said(s: &StepView) -> Markup {
    html! {
        @if let Some(reason) = &s.reason { pre { (inert(reason)) } }
        @if let Some(output) = &s.output {
            details { summary { "output" } pre { (serde_json::to_string_pretty(output).unwrap_or_default()) } }
        }
        @if !s.logs.is_empty() {
            details { summary { (count(s.logs.len() as u64, "log line")) } pre { @for l in &s.logs { (l.level) " " (inert(&l.message)) "
    " } } }
        }
        @for v in &s.violations { pre { "refused " (v.category.as_str()) ": " (inert(&v.message)) } }
    }
}

fn decision_table(p: &Postmortem) -> Markup {
    html! {
        table.decisions {
            thead { tr { th { "#" } th { "when" } th { "decision" } th { "step" } th { "by" } th { "key" } th { "signature" } } }
            tbody {
                @for d in &p.decisions {
                    tr {
                        td.num { (d.seq) } td { (at(d.at_ms)) } td { (d.kind.as_str()) }
                        td { (d.step.as_deref().unwrap_or("")) @if let Some(a) = d.attempt { "#" (a) } }
                        td { (d.by) } td { code { (d.fingerprint.as_deref().unwrap_or("-")) } @if let Some(l) = &d.key_label { " (" (l) ")" } }
                        td { @if d.verified { "verified" } @else { "NOT VERIFIED: " (d.problem.as_deref().unwrap_or("")) } }
                    }
                }
            }
        }
    }
}

fn event_table(p: &Postmortem) -> Markup {
    html! {
        table.events {
            thead { tr { th { "seq" } th { "at" } th { "kind" } th { "actor" } th { "step" } th { "message" } } }
            tbody {
                @for e in &p.timeline {
                    tr {
                        td.num { (e.seq) } td { (at(e.at_ms)) } td { (e.kind.as_str()) } td { (e.actor) }
                        td { (e.step.as_deref().unwrap_or("")) @if let Some(a) = e.attempt { "#" (a) } }
                        td { (inert(&e.message)) }
                    }
                }
            }
        }
    }
}

/// The failure patterns across incidents as one page: per runbook, a table
/// of its steps with a bar of their outcomes, and a histogram of the time
/// to resolve.
pub fn patterns_html(p: &Patterns) -> String {
    page(
        "runbox: failure patterns",
        html! {
            header {
                h1 { "Failure patterns" }
                p { (count(p.incidents as u64, "incident")) @if let Some(s) = p.since_ms { " opened since " (at(s)) } ", " (p.schema) }
            }
            main {
                (legend())
                @for rb in &p.runbooks { section { (runbook_section(rb, p)) } }
            }
        },
    )
}

fn runbook_section(rb: &RunbookPatterns, p: &Patterns) -> Markup {
    let times: Vec<u64> = p
        .per_incident
        .iter()
        .filter(|i| i.runbook == rb.runbook)
        .filter_map(|i| i.figures.time_to_resolve_ms)
        .collect();
    html! {
        h2 { "Runbook " (rb.runbook) }
        p { (count(u64::from(rb.incidents), "incident")) " (" (mix(&rb.statuses)) "); time to resolve p50/p95 " (p50_p95(&rb.time_to_resolve_ms)) }
        (scroll(&format!("Steps of {}", rb.runbook), patterns_table(rb)))
        @if !times.is_empty() { h3 { "Time to resolve" } (histogram(&times)) }
    }
}

/// The steps of a runbook, one row each with a bar of its outcomes.
fn patterns_table(rb: &RunbookPatterns) -> Markup {
    html! {
        table.patterns {
            thead { tr { th { "step" } th { "attempts" } th { "outcomes" } th { "" } th { "override" }
                th { "duration p50/p95" } th { "approval wait p50/p95" } th { "errors" } th { "tool return codes" } } }
            tbody {
                @for s in &rb.steps {
                    tr {
                        td { (s.step) } td.num { (s.attempts) }
                        td { div.bar { @for (o, n) in &s.outcomes {
                            i class=(outcome_class(*o)) style=(format!("width:{:.1}%", f64::from(*n) * 100.0 / f64::from(s.attempts.max(1)))) title=(format!("{n} {o}")) {}
                        } } }
                        td { (mix(&s.outcomes)) }
                        td.num { (format!("{:.0}%", s.override_rate * 100.0)) }
                        td { (p50_p95(&s.duration_ms)) } td { (p50_p95(&s.approval_wait_ms)) }
                        td { (mix(&s.error_categories)) }
                        td { @for (tool, rcs) in &s.tool_rcs { (tool) ": " (mix(rcs)) br; } }
                    }
                }
            }
        }
    }
}

/// A histogram of durations in ten bins.
fn histogram(values: &[u64]) -> Markup {
    const W: f64 = 480.0;
    const H: f64 = 120.0;
    let (lo, hi) = (
        *values.iter().min().unwrap_or(&0),
        *values.iter().max().unwrap_or(&0),
    );
    let width = (hi - lo).max(1);
    let mut bins = [0u32; 10];
    for v in values {
        bins[(((v - lo) * 10 / width) as usize).min(9)] += 1;
    }
    let most = f64::from(*bins.iter().max().unwrap_or(&1)).max(1.0);
    html! {
        svg.histogram xmlns="http://www.w3.org/2000/svg" role="img" width=(W) height=(H + 20.0)
            viewBox=(format!("0 0 {W} {}", H + 20.0)) {
            title { "Time to resolve" }
            @for (i, n) in bins.iter().enumerate() {
                @let h = f64::from(*n) * H / most;
                rect.outcome-ok x=(i as f64 * W / 10.0 + 1.0) y=(H - h) width=(W / 10.0 - 2.0) height=(h) {
                    title { (count(*n, "incident")) " from " (span(lo + width * i as u64 / 10)) }
                }
            }
            text x="0" y=(H + 15.0) { (span(lo)) }
            text x=(W) y=(H + 15.0) text-anchor="end" { (span(hi)) }
        }
    }
}
