//! The console's pages, rendered on the server through maud, which escapes
//! every string it is given: a step output of `<script>…</script>`, a note,
//! a param or an alert label shows as text. Text from outside the host
//! (notes, reasons, logs, timeline messages, a brake's reason) also goes
//! through the one inert-text rule (`runbox_core::inert`), as in every
//! other human-facing output: a newline or a bidi override cannot forge a
//! line. No page carries inline script
//! or style (the CSP forbids both); `console.js` adds live updates and the
//! passkey ceremonies to pages that work as plain HTML.

use maud::{DOCTYPE, Markup, html};

use runbox_core::inert::inert;
use runbox_core::records::{Status, StepRecord, TimelineEvent};
use runbox_core::time::format_ms;
use runbox_engine::IncidentSummary;
use runbox_engine::fleet::EngagedBrake;

use super::assets;
use super::session::Session;
use crate::service::IncidentDetail;

/// What one incident waits on, in a word or three.
pub(crate) fn waiting_on(d: &IncidentDetail) -> String {
    let v = &d.view;
    if v.status.is_terminal() {
        return "nothing (over)".into();
    }
    if let Some(scope) = &v.braked_by {
        return format!("brake {scope}");
    }
    if let Some(a) = &d.approval {
        return format!("approval of {} ({} needed)", a.step, a.approvals);
    }
    if !v.owner.is_agent() {
        return format!("{} (owner)", v.owner);
    }
    if v.status == Status::Escalated {
        return "a human".into();
    }
    if let Some(until) = &d.waiting_until {
        return format!("cooldown or backoff until {until}");
    }
    "the agent".into()
}

/// The page around `main`, for `session` (none: signed out). `main` is
/// swapped for a fresh rendering when what it shows changes; `fixed` (a
/// form a human may be typing into) stays as it is.
pub(crate) fn page(
    title: &str,
    session: Option<&Session>,
    live: &str,
    main: Markup,
    fixed: Option<Markup>,
) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · runbox" }
                link rel="stylesheet" href=(assets::url(assets::CSS));
                script src=(assets::url(assets::LIVE)) defer {}
                script src=(assets::url(assets::JS)) defer {}
                @if let Some(s) = session {
                    meta name="csrf" content=(s.csrf);
                    meta name="live-worker" content=(assets::url(assets::LIVE));
                }
            }
            body {
                header {
                    nav aria-label="runbox" {
                        a href="/ui" { "Incidents" }
                        a href="/ui/brakes" { "Brakes" }
                        @if let Some(s) = session {
                            span.who { "human:" (s.human) }
                            form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    div id="live" data-live=(live) { (main) }
                    @if let Some(fixed) = fixed { (fixed) }
                }
                div id="status" role="status" aria-live="polite" {}
            }
        }
    }
    .into_string()
}

/// The incident list's filter: `status` (a choice) and `q` (text in id,
/// runbook, owner, status or what it waits on).
pub(crate) fn filter(q: &str, status: StatusFilter) -> Markup {
    html! {
        form.filter method="get" action="/ui" role="search" {
            label for="status-filter" { "Status" }
            select id="status-filter" name="status" {
                @for choice in StatusFilter::choices() {
                    option value=(choice.as_str()) selected[choice == status] { (choice.as_str()) }
                }
            }
            label for="q" { "Filter" }
            input id="q" name="q" type="search" value=(q) placeholder="id, runbook, owner, waiting on";
            button type="submit" { "Filter" }
        }
    }
}

/// Which statuses the incident list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum StatusFilter {
    /// Every incident.
    #[default]
    Any,
    /// Those not over (neither resolved nor failed).
    Active,
    /// Those in one status.
    Is(Status),
}

impl StatusFilter {
    /// The choices, in the order the form offers them: every status
    /// there is ([`Status::ALL`]), after `any` and `active`.
    fn choices() -> impl Iterator<Item = StatusFilter> {
        [StatusFilter::Any, StatusFilter::Active]
            .into_iter()
            .chain(Status::ALL.map(StatusFilter::Is))
    }

    /// The form's value: `any`, `active`, or a status's name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Any => "any",
            StatusFilter::Active => "active",
            StatusFilter::Is(s) => s.as_str(),
        }
    }

    /// The filter a form value names (empty: [`StatusFilter::Any`]), or
    /// `None` for a value that names none.
    pub(crate) fn parse(value: &str) -> Option<StatusFilter> {
        if value.is_empty() {
            return Some(StatusFilter::Any);
        }
        Self::choices().find(|c| c.as_str() == value)
    }

    /// Whether an incident in `status` is shown.
    pub(crate) fn shows(self, status: Status) -> bool {
        match self {
            StatusFilter::Any => true,
            StatusFilter::Active => !status.is_terminal(),
            StatusFilter::Is(s) => s == status,
        }
    }
}

/// The incident list.
pub(crate) fn incidents(rows: &[(IncidentSummary, String)]) -> Markup {
    html! {
        h1 { "Incidents" }
        @if rows.is_empty() {
            p { "No incident matches." }
        } @else {
            div.scroll {
                table {
                    thead { tr { th { "Incident" } th { "Status" } th { "Waiting on" } th { "Owner" } th { "Runbook" } th { "Step" } } }
                    tbody {
                        @for (s, waiting) in rows {
                            tr data-status=(s.status) {
                                td { a href=(format!("/ui/incidents/{}", s.id)) { (s.id) } }
                                td { span class=(format!("badge {}", s.status)) { (s.status) } }
                                td { (waiting) }
                                td { (s.owner) }
                                td { (s.runbook) }
                                td { (s.step.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What the pending step will do, in plain words.
pub(crate) struct StepFacts {
    /// Lines of `what: value`.
    pub(crate) lines: Vec<(String, String)>,
}

/// A button that starts a decision signed with a passkey.
fn decide_button(label: &str, action: &str, step: Option<&str>, outcome: Option<&str>) -> Markup {
    html! {
        button type="button" class="decide" data-action=(action) data-step=[step] data-outcome=[outcome] { (label) }
    }
}

/// One incident's page.
///
/// The timeline is append-only, so a live page that shows it up to event
/// `after` takes in only the rest ([`Timeline::After`], from a fetch with
/// `?after=` or a part pushed by the server): the head again, the
/// timeline from there. `ol#timeline` says which part it holds
/// (`data-after`, absent when whole) and its last event (`data-last`),
/// each event its `data-seq`, the head its checkpoint (`data-version`).
/// The page's script appends the events it lacks from a part that starts
/// at or before its own last, keeps the newer head, and fetches itself
/// again when a part starts later (it missed one).
pub(crate) fn incident(
    d: &IncidentDetail,
    facts: Option<&StepFacts>,
    brakes: &[EngagedBrake],
    timeline: &Timeline,
) -> Markup {
    let v = &d.view;
    html! {
        div #head data-version=(v.checkpoint.version) { (incident_head(d, facts, brakes)) }
        section aria-labelledby="timeline-h" {
            h2 id="timeline-h" { "Timeline" }
            ol #timeline .timeline data-after=[timeline.after()] data-last=[timeline.last()] {
                @for e in timeline.events() {
                    li data-seq=(e.seq) {
                        time { (format_ms(e.at_ms)) }
                        " " span.kind { (e.kind) }
                        " " span.actor { (e.actor) }
                        @if let Some(s) = &e.step { " · " code { (s) } }
                        p.msg { (inert(&e.message)) }
                        @if let Some(s) = &e.signed { p.signed { "signed with " code { (s.fingerprint) } } }
                    }
                }
            }
        }
        p { a href=(format!("/ui/incidents/{}/postmortem", v.id)) { "Postmortem" } }
    }
}

/// The changed part of incident `id`'s page (`main`, an [`incident`] with
/// a part of its timeline), as a live page takes it in.
pub(crate) fn live_part(id: &str, main: Markup) -> String {
    html! { div id="live" data-live=(id) { (main) } }.into_string()
}

/// The events an incident page shows.
pub(crate) enum Timeline {
    /// All of them.
    Whole(Vec<TimelineEvent>),
    /// Those after sequence number `after`.
    After {
        /// The last event the page already shows.
        after: u64,
        /// The events after it.
        events: Vec<TimelineEvent>,
    },
}

impl Timeline {
    fn events(&self) -> &[TimelineEvent] {
        match self {
            Timeline::Whole(events) | Timeline::After { events, .. } => events,
        }
    }

    fn after(&self) -> Option<u64> {
        match self {
            Timeline::Whole(_) => None,
            Timeline::After { after, .. } => Some(*after),
        }
    }

    /// The last event shown once this part is in: a part with no event
    /// leaves the page's last as it was.
    fn last(&self) -> Option<u64> {
        self.events().last().map(|e| e.seq).or(self.after())
    }
}

/// An incident page above its timeline: facts, approval, decisions, plan,
/// last step record.
fn incident_head(d: &IncidentDetail, facts: Option<&StepFacts>, brakes: &[EngagedBrake]) -> Markup {
    let v = &d.view;
    let step = v.checkpoint.step.as_deref();
    html! {
        h1 { "Incident " (v.id) }
        dl.facts {
            dt { "Status" } dd { span class=(format!("badge {}", v.status)) { (v.status) } }
            dt { "Waiting on" } dd { (waiting_on(d)) }
            dt { "Owner" } dd { (v.owner) }
            dt { "Runbook" } dd { (v.runbook) }
            @for (k, val) in &v.params { dt { "Param " (k) } dd { code { (val) } } }
            @if let Some(why) = &v.why { dt { "Why" } dd { (inert(why)) } }
        }
        @if let Some(a) = &d.approval {
            section.approval aria-labelledby="approval-h" {
                h2 id="approval-h" { "Approval wanted: step " (a.step) ", attempt " (a.attempt) }
                @if let Some(f) = facts {
                    dl.facts { @for (k, val) in &f.lines { dt { (k) } dd { (val) } } }
                }
                @if !brakes.is_empty() {
                    p { "Engaged brakes: " @for b in brakes { code { (b.brake.scope) } " " } }
                }
                p.actions {
                    (decide_button("Approve", "approve", Some(&a.step), None))
                    (decide_button("Deny", "deny", Some(&a.step), None))
                }
            }
        }
        @if !v.status.is_terminal() {
            section aria-labelledby="decide-h" {
                h2 id="decide-h" { "Decide" }
                p.actions {
                    @if v.owner.is_agent() {
                        (decide_button("Take over", "takeover", None, None))
                    } @else {
                        (decide_button("Hand back to the agent", "handback", None, None))
                    }
                    @if let Some(s) = v.in_doubt.as_ref().map(|f| f.step.as_str()).or(step) {
                        @if v.status == Status::Escalated {
                            (decide_button(&format!("Resolve {s} as ok"), "resolve", Some(s), Some("ok")))
                            (decide_button(&format!("Retry {s}"), "retry", Some(s), None))
                            (decide_button(&format!("Skip {s}"), "skip", Some(s), None))
                        }
                    }
                }
            }
        }
        @if let Some(n) = &d.next_step {
            section aria-labelledby="plan-h" {
                h2 id="plan-h" { "Next" }
                p { "Step " code { (n.step) } " (" (n.action) "), attempt " (n.attempt) ": "
                    (if n.mutates { "may change the world" } else { "reads only" })
                    @if n.high_impact { ", high impact: " (n.approvals) " approval(s)" } }
            }
        }
        @if let Some(r) = &v.last_step { (record(r)) }
    }
}

/// A step record: outcome, tool calls, logs, output, KV writes.
fn record(r: &StepRecord) -> Markup {
    html! {
        section aria-labelledby="last-h" {
            h2 id="last-h" { "Last step: " (r.step) ", attempt " (r.attempt) }
            dl.facts {
                dt { "Outcome" } dd { (r.outcome) }
                @if let Some(reason) = &r.reason { dt { "Reason" } dd { (inert(reason)) } }
                dt { "By" } dd { (r.actor) }
                @if !r.kv_keys.is_empty() { dt { "KV written" } dd { (r.kv_keys.join(", ")) } }
            }
            @if !r.tool_calls.is_empty() {
                h3 { "Tool calls" }
                ul { @for c in &r.tool_calls { li { code { (c.name) } " (" (c.mode) ") rc " (c.rc) } } }
            }
            @if !r.logs.is_empty() {
                h3 { "Logs" }
                pre { @for l in &r.logs { (inert(&l.message)) "\n" } }
            }
            @if let Some(out) = &r.output {
                h3 { "Output" }
                pre { (serde_json::to_string_pretty(out).unwrap_or_default()) }
            }
        }
    }
}

/// Brakes across incidents, the rate-limit counts, and the form that
/// engages one (engaging only ever stops things).
pub(crate) fn brakes(brakes: &[EngagedBrake], counts: &[(String, usize)]) -> Markup {
    html! {
        h1 { "Brakes" }
        @if brakes.is_empty() { p { "No brake is engaged." } }
        @else {
            div.scroll { table {
                thead { tr { th { "Scope" } th { "Reason" } th { "By" } th { "Since" } th { "Release" } } }
                tbody { @for b in brakes { tr {
                    td { code { (b.brake.scope) } }
                    td { (inert(&b.brake.reason)) }
                    td { (b.brake.by) }
                    td { (format_ms(b.brake.at_ms)) }
                    td { button type="button" class="decide" data-action="release-brake" data-scope=(b.brake.scope) { "Release" } }
                } } }
            } }
        }
        h2 { "Rate limits" }
        @if counts.is_empty() { p { "No rate-limited use counted." } }
        @else {
            ul { @for (key, n) in counts { li { code { (key) } ": " (n) " use(s) counted" } } }
        }
    }
}

/// The form that engages a brake, for the session with `csrf`.
pub(crate) fn engage_form(csrf: &str) -> Markup {
    html! {
        h2 { "Engage a brake" }
        form method="post" action="/ui/brakes" {
            input type="hidden" name="csrf" value=(csrf);
            label for="scope" { "Scope" }
            input id="scope" name="scope" required placeholder="all, runbook=NAME, tool=NAME, service=api";
            label for="reason" { "Reason" }
            input id="reason" name="reason" required;
            button type="submit" { "Engage" }
        }
    }
}

/// The sign-in page.
pub(crate) fn login() -> Markup {
    html! {
        h1 { "Sign in" }
        p { "Sign in with the passkey you enrolled (`runbox human add NAME --passkey`)." }
        button type="button" id="login" { "Sign in with a passkey" }
    }
}

/// The enrollment page: the link's secret stays in its fragment, which
/// never reaches a server log.
pub(crate) fn enroll() -> Markup {
    html! {
        h1 { "Enroll a passkey" }
        p { "This one-time link adds a passkey for the human it was made for. Your device asks for a fingerprint, a face, a PIN or a security key." }
        button type="button" id="enroll" { "Create a passkey" }
    }
}
